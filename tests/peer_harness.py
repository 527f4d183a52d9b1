"""What the PeerSession tests share: the real embedded pipeline (loaded once per module),
a ``Server`` that opens PeerSessions for aiortc test clients, and the fixtures.

A test module imports the fixtures it uses (``pipeline``, ``server``, ``clients``) by
name, which registers them there; ``server`` here overrides conftest's (a serve process).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from avatarchat.config import load_config
from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.peer import PeerSession
from avatarchat.server.settings import ServerSettings
from tests.configs import greedy_default
from tests.rtc_client import RtcTestClient

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The embedded default config at temperature 0 (a long story is long every run), loaded
    once. Loaded in a throwaway loop: the handlers are plain objects (models, thread pools)
    that each test's own loop can use."""
    config = load_config(greedy_default(tmp_path_factory.mktemp("config")))
    return asyncio.run(Pipeline.load(config, progress=lambda _: None))


class Server:
    """``offer_fn`` for the client, opening PeerSessions directly; closes them at the end."""

    def __init__(self, pipeline: Pipeline, settings: ServerSettings | None = None) -> None:
        self.pipeline = pipeline
        self.settings = settings or ServerSettings()
        self.peers: list[PeerSession] = []
        self.closed: list[PeerSession] = []
        self.events: list[tuple[str, Any]] = []

    # The duck-typed metrics sink.
    def session_opened(self) -> None: self.events.append(("opened", None))
    def session_closed(self) -> None: self.events.append(("closed", None))
    def turn_done(self, timings_ms: dict[str, float]) -> None: self.events.append(("turn", timings_ms))
    def turn_cut(self, reason: str, timings_ms: dict[str, float]) -> None: self.events.append(("cut", (reason, timings_ms)))
    def error(self, stage: str) -> None: self.events.append(("error", stage))

    async def offer_fn(self, sdp: str, type_: str) -> str:
        peer, answer = await PeerSession.open(self.pipeline, sdp, type_, self.settings, metrics=self,
                                              on_closed=self.closed.append)
        self.peers.append(peer)
        return answer

    async def client(self) -> RtcTestClient:
        client = RtcTestClient()
        await client.connect(self.offer_fn)
        return client

    async def shutdown(self) -> None:
        for peer in self.peers:
            await peer.close("test over")


@pytest.fixture
async def server(pipeline: Pipeline) -> AsyncIterator[Server]:
    srv = Server(pipeline)
    yield srv
    await srv.shutdown()


@pytest.fixture
async def clients() -> AsyncIterator[list[RtcTestClient]]:
    made: list[RtcTestClient] = []
    yield made
    for c in made:
        await c.close()


def reply_done(turn: int | None = None) -> Any:
    return lambda m: m["type"] == "reply" and m["final"] and (turn is None or m["turn"] == turn)


def assert_final_matches(deltas: list[dict[str, Any]], final: dict[str, Any]) -> None:
    """The final reply is the streamed deltas, unless the model hit its token cap: then it
    stops where the voice did (an unfinished last sentence is not said)."""
    streamed = "".join(d["text"] for d in deltas).strip()
    assert deltas, "no reply deltas before the final"
    if final.get("truncated") is True:
        assert streamed.startswith(final["text"].strip()), (streamed, final)
    else:
        assert streamed == final["text"].strip(), (streamed, final)
