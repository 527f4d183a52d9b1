"""Qwen on Bailian (DashScope) through its OpenAI-compatible mode: the ``openai_compatible``
handler, as ``configs/bailian.yaml`` sets it up, against a local server that speaks that
mode's documented protocol (``avatarchat.testing.services.qwen_compatible``; DashScope
itself cannot be reached from here), driven by the official ``openai`` client.

Pinned: the path, the bearer key, the model, streaming, the persona first, DashScope's
``enable_thinking: false`` at the top level of the body, the token cap; a rejected key stops
start-up with one line (``check``) and, in a live turn, is an error the engine answers with
its fallback line; a stream cut mid-answer fails only its turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from avatarchat.config import load_config
from avatarchat.engine.events import ErrorEvent, Event, ReplyEnd, ReplyText, TurnCancelled
from avatarchat.engine.handler import HandlerLoadError, SessionInfo, SessionSettings
from avatarchat.engine.session import Session
from avatarchat.handlers.llm.openai_compatible import OpenAICompatibleLLM, OpenAICompatibleOptions
from avatarchat.testing.services import qwen_compatible
from avatarchat.testing.services.base import GOOD_KEY, LocalService

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bailian.yaml"


@pytest.fixture
async def server() -> AsyncIterator[LocalService]:
    async with LocalService(qwen_compatible.app) as svc:
        yield svc


def _bailian_llm(svc: LocalService, monkeypatch: pytest.MonkeyPatch, key: str = GOOD_KEY,
                 check: bool = False) -> OpenAICompatibleLLM:
    """The LLM section of configs/bailian.yaml, pointed at the local server."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", key)
    monkeypatch.setenv("DASHSCOPE_HTTP_URL", svc.url)
    stage = load_config(CONFIG).stages["llm"]
    options = stage.options
    assert isinstance(options, OpenAICompatibleOptions)
    llm = OpenAICompatibleLLM(options.model_copy(update={"check": check}))
    llm.use_session(load_config(CONFIG).session)
    llm.load()
    return llm


async def _turn(session: Session, text: str) -> list[Event]:
    turn = session.say(text)
    out: list[Event] = []

    async def collect() -> None:
        async for event in session.events():
            if event.turn == turn:
                out.append(event)
                if isinstance(event, ReplyEnd | TurnCancelled):
                    return

    await asyncio.wait_for(collect(), 30)
    return out


async def test_streams_qwen_with_the_request_dashscope_expects(server: LocalService,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    llm = _bailian_llm(server, monkeypatch)
    settings = load_config(CONFIG).session
    async with Session([llm], SessionInfo("t", settings)) as session:
        events = await _turn(session, "What is the capital of France?")
    deltas = [e.text for e in events if isinstance(e, ReplyText)]
    assert len(deltas) >= 3, deltas  # streamed word by word, not one block
    assert "".join(deltas).strip() == "The capital of France is Paris."
    request = server.seen[-1]
    assert request["path"] == "/compatible-mode/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {GOOD_KEY}"
    body = request["body"]
    assert body["model"] == llm.options.model and body["model"].startswith("qwen")
    assert body["stream"] is True
    assert body["enable_thinking"] is False, "Qwen3 models need thinking off to stream the answer itself"
    assert body["max_tokens"] == llm.options.max_tokens
    assert body["messages"][0] == {"role": "system", "content": settings.system_prompt}
    assert body["messages"][-1] == {"role": "user", "content": "What is the capital of France?"}


async def test_a_rejected_key_stops_start_up_with_one_line(server: LocalService,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HandlerLoadError) as failed:
        _bailian_llm(server, monkeypatch, key="sk-wrong", check=True)
    message = str(failed.value)
    assert "rejected the API key" in message and "\n" not in message
    assert "sk-wrong" not in message
    # The check asked for one token of the configured model.
    assert server.seen[-1]["body"]["max_tokens"] == 1


async def test_a_rejected_key_in_a_live_turn_is_the_fallback_line(server: LocalService,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    llm = _bailian_llm(server, monkeypatch, key="sk-revoked")
    async with Session([llm], SessionInfo("t", SessionSettings(fallback_reply="No brain."))) as session:
        events = await _turn(session, "Hello?")
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and "rejected the API key" in errors[0].message
        fallback = [e for e in await _events_after(session, 5) if isinstance(e, ReplyText)]
        assert "".join(e.text for e in fallback) == "No brain."


async def _events_after(session: Session, seconds: float) -> list[Event]:
    """What the session emits until it has been quiet (the fallback reply's turn)."""
    out: list[Event] = []

    async def collect() -> None:
        async for event in session.events():
            out.append(event)
            if isinstance(event, ReplyEnd):
                return

    await asyncio.wait_for(collect(), seconds)
    return out


async def test_a_stream_cut_mid_answer_fails_only_its_turn(server: LocalService,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    llm = _bailian_llm(server, monkeypatch)
    async with Session([llm], SessionInfo("t", SessionSettings(fallback_reply=""))) as session:
        server.fault = "drop_mid_stream"
        events = await _turn(session, "What color is the sky?")
        assert any(isinstance(e, ErrorEvent) and "broke off" in e.message for e in events), events
        server.fault = None
        events = await _turn(session, "What color is the sky?")
        assert "".join(e.text for e in events if isinstance(e, ReplyText)).strip() == "The sky is blue on a clear day."
