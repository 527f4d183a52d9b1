"""`avatarchat serve` over HTTP: health, signaling errors and limits, metrics, idle timeout, TLS.

The real aiohttp app runs on 127.0.0.1 with a fast stand-in pipeline loader and a STAND-IN
peer factory (``StandInPeer`` below): these tests are about the HTTP layer and the session
bookkeeping. The real WebRTC path (``PeerSession``) has its own tests.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from avatarchat.bench.harness import free_port
from avatarchat.cli.main import main
from avatarchat.cli.serve import serve, settings_from_args, tls_context
from avatarchat.server.app import STATE, create_app
from avatarchat.server.httpguard import GuardedRunner
from avatarchat.server.metrics import BUCKETS_MS, Metrics
from avatarchat.server.peer import OfferError
from avatarchat.engine.handler import SessionSettings
from avatarchat.server.settings import ServerSettings
from avatarchat.server.tls import TLSError, self_signed_cert, ssl_context

OFFER = {"sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n", "type": "offer"}


class StandInPeer:
    """STAND-IN for ``PeerSession`` (same ``open``/``close``/``id``/``last_activity``), no WebRTC.

    Like the real one it counts itself in ``metrics`` and calls ``on_closed(peer)`` once.
    ``open`` refuses an SDP containing ``refuse`` with ``OfferError`` (``library``: one that wraps a
    library's exception) and crashes on ``crash``.
    """

    opened: list[StandInPeer] = []
    open_delay = 0.0

    def __init__(self, metrics: Metrics | None, on_closed: Callable[..., None] | None) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.last_activity = time.monotonic()
        self.closed_reason: str | None = None
        self.closed_at: float | None = None
        self._metrics = metrics
        self._on_closed = on_closed

    @classmethod
    async def open(cls, pipeline: Any, sdp: str, type_: str, settings: ServerSettings, *,
                   metrics: Metrics | None = None, on_closed: Callable[..., None] | None = None
                   ) -> tuple[StandInPeer, str]:
        assert pipeline == "pipeline" and type_ == "offer" and isinstance(settings, ServerSettings)
        await asyncio.sleep(cls.open_delay)
        if "refuse" in sdp:
            raise OfferError("the offer has no audio track")
        if "crash" in sdp:
            raise RuntimeError("secret internal detail")
        if "library" in sdp:  # as PeerSession wraps what aiortc raises
            try:
                raise ValueError("aiortc internals: DTLS fingerprint sha-999 at 0xdeadbeef")
            except ValueError as exc:
                raise OfferError(f"the offer cannot be answered: {exc}") from None
        peer = cls(metrics, on_closed)
        cls.opened.append(peer)
        if metrics is not None:
            metrics.session_opened()
        return peer, "v=0 stand-in answer"

    async def close(self, reason: str = "closed") -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self.closed_at = time.monotonic()
            if self._metrics is not None:
                self._metrics.session_closed()
            if self._on_closed is not None:
                self._on_closed(self)


@pytest.fixture(autouse=True)
def fresh_peers() -> None:
    StandInPeer.opened = []
    StandInPeer.open_delay = 0.0


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>avatar</title>")
    (root / "app.js").write_text("export {};")
    (tmp_path / "secret.txt").write_text("outside the web root")
    return root


@asynccontextmanager
async def running(settings: ServerSettings | None = None, *, loaded: asyncio.Event | None = None,
                  web_root: Path | None = None, metrics: Metrics | None = None,
                  session: SessionSettings | None = None) -> AsyncIterator[tuple[str, web.Application]]:
    """The app on 127.0.0.1 (a free port); the pipeline 'loads' when ``loaded`` is set."""

    async def loader() -> str:
        if loaded is not None:
            await loaded.wait()
        return "pipeline"

    settings = settings or ServerSettings()
    app = create_app(loader, settings, peer_factory=StandInPeer.open, web_root=web_root, metrics=metrics,
                     session=session)
    runner = GuardedRunner(app, settings.http)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        if loaded is None:
            await app[STATE].wait_loaded()
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


async def post(http: aiohttp.ClientSession, url: str, body: Any = OFFER, **kw: Any) -> tuple[int, Any]:
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    kw.setdefault("headers", {"Content-Type": "application/json"})
    async with http.post(url + "/api/offer", data=data, **kw) as r:
        assert r.content_type == "application/json", await r.text()
        return r.status, await r.json()


async def test_healthz_says_loading_then_ready() -> None:
    loaded = asyncio.Event()
    async with running(ServerSettings(max_sessions=3), loaded=loaded) as (url, app), aiohttp.ClientSession() as http:
        async with http.get(url + "/healthz") as r:
            assert (r.status, await r.json()) == (503, {"status": "loading"})
        assert await post(http, url) == (503, {"error": "models are still loading"})
        loaded.set()
        await app[STATE].wait_loaded()
        async with http.get(url + "/healthz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ready", "sessions": 0, "max_sessions": 3})


async def test_offer_answers_and_counts_the_session() -> None:
    async with running() as (url, app), aiohttp.ClientSession() as http:
        status, body = await post(http, url)
        assert status == 200
        # The stand-in pipeline has no avatar a page could draw: video, whatever was asked.
        assert body == {"sdp": "v=0 stand-in answer", "type": "answer", "session_id": StandInPeer.opened[0].id,
                        "avatar": "video"}
        async with http.get(url + "/healthz") as r:
            assert (await r.json())["sessions"] == 1


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    ([1, 2], "JSON object"),
    ({"type": "offer"}, '"sdp" is missing'),
    ({"sdp": 5, "type": "offer"}, '"sdp" is missing or not a non-empty string'),
    ({"sdp": "v=0"}, '"type" is missing'),
    ({"sdp": "v=0", "type": "answer"}, '"type" must be "offer"'),
    ({"sdp": "v=0 refuse", "type": "offer"}, "the offer has no audio track"),
])
async def test_bad_offers_get_400_with_a_json_message(body: Any, message: str) -> None:
    async with running() as (url, app), aiohttp.ClientSession() as http:
        status, reply = await post(http, url, body)
        assert status == 400 and message in reply["error"]
        assert len(app[STATE].manager) == 0


async def test_wrong_or_missing_content_type_gets_415() -> None:
    # Required, not only checked when sent: a cross-site form or simple fetch sends none or text/plain.
    async with running() as (url, app), aiohttp.ClientSession() as http:
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/json; charset=latin-1"},
                        {"Content-Type": "application/x-www-form-urlencoded"}):
            status, reply = await post(http, url, json.dumps(OFFER), headers=headers)
            assert status == 415 and ("application/json" in reply["error"] or "UTF-8" in reply["error"]), headers
        status, reply = await post(http, url, json.dumps(OFFER).encode(), headers={},
                                   skip_auto_headers=["Content-Type"])
        assert status == 415 and "Content-Type: application/json" in reply["error"]
        assert len(app[STATE].manager) == 0
        assert (await post(http, url, OFFER, headers={"Content-Type": "application/json; charset=utf-8"}))[0] == 200


async def test_oversized_bodies_get_413_json_with_or_without_content_length() -> None:
    big = json.dumps({"sdp": "a" * 1_000_000, "type": "offer"}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    async with running() as (url, _), aiohttp.ClientSession() as http:
        status, reply = await post(http, url, big)
        assert status == 413 and "too large" in reply["error"]
        status, reply = await post(http, url, chunked())
        assert status == 413 and "too large" in reply["error"]
        assert (await post(http, url))[0] == 200  # and it still answers after refusing them


async def test_a_crash_in_the_peer_is_500_json_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    async with running() as (url, app), aiohttp.ClientSession() as http:
        status, reply = await post(http, url, {"sdp": "v=0 crash", "type": "offer"})
        assert status == 500 and "secret" not in reply["error"] and "Traceback" not in reply["error"]
        error_id = re.fullmatch(r"could not start the session \(error id ([0-9a-f]{8})\)", reply["error"]).group(1)
        assert "secret internal detail" in caplog.text  # logged, with its traceback, under the same id
        assert f"[error {error_id}] opening a session failed" in caplog.text
        assert 'avatarchat_errors_total{stage="signaling"} 1' in app[STATE].metrics.render()


async def test_full_server_refuses_with_503_and_keeps_serving() -> None:
    async with running(ServerSettings(max_sessions=2, max_sessions_per_client=9)) as (url, app), aiohttp.ClientSession() as http:
        assert (await post(http, url))[0] == 200
        assert (await post(http, url))[0] == 200
        status, reply = await post(http, url)
        assert status == 503
        assert reply["error"] == "the server is full: 2 of 2 sessions are in use; try again later"
        async with http.get(url + "/healthz") as r:
            assert (r.status, (await r.json())["sessions"]) == (200, 2)
        await StandInPeer.opened[0].close("bye")  # a slot frees up, the next user gets in
        assert (await post(http, url))[0] == 200


async def test_simultaneous_offers_never_exceed_max_sessions() -> None:
    StandInPeer.open_delay = 0.05  # every negotiation overlaps the others
    async with running(ServerSettings(max_sessions=2, max_sessions_per_client=9)) as (url, app), \
            aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(post(http, url) for _ in range(6)))
        assert sorted(status for status, _ in results) == [200, 200, 503, 503, 503, 503]
        assert len(app[STATE].manager) == 2


async def test_config_gives_the_browser_the_ice_servers() -> None:
    settings = ServerSettings.model_validate(
        {"max_sessions": 4, "ice_servers": [{"urls": ["stun:stun.example.org"]},
                                            {"urls": ["turn:t.example.org"], "username": "u", "credential": "c"}]})
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        async with http.get(url + "/api/config") as r:
            body = await r.json()
            assert {k: v for k, v in body.items() if k != "barge_in"} == {
                "max_sessions": 4, "ice_transport_policy": "all", "avatar": None, "language": "en", "ice_servers": [
                    {"urls": ["stun:stun.example.org"]},
                    {"urls": ["turn:t.example.org"], "username": "u", "credential": "c"}]}
    async with running() as (url, _), aiohttp.ClientSession() as http:
        async with http.get(url + "/api/config") as r:
            assert (await r.json())["ice_servers"] == []


async def test_config_gives_the_page_its_barge_in_settings() -> None:
    async with running() as (url, _), aiohttp.ClientSession() as http:
        async with http.get(url + "/api/config") as r:
            assert (await r.json())["barge_in"] == {
                "enabled": True, "client_mute": True, "client_onset_ms": 50, "client_grace_ms": 800,
                "client_echo_ratio": 0.15, "client_min_rms": 0.01}
    settings = ServerSettings.model_validate(
        {"barge_in": {"client_mute": False, "client_grace_ms": 1200}, "echo_guard": True})
    session = SessionSettings.model_validate({"barge_in": {"enabled": False}})
    async with running(settings, session=session) as (url, _), aiohttp.ClientSession() as http:
        async with http.get(url + "/api/config") as r:
            page = (await r.json())["barge_in"]
    # Only what the page uses: server-side knobs such as the echo guard stay on the server.
    # ``enabled`` is the engine's (session.barge_in): where voice may not cut, the page does not mute.
    assert page["enabled"] is False and page["client_mute"] is False and page["client_grace_ms"] == 1200
    assert "echo_guard" not in page and "min_speech_ms" not in page


async def test_static_files_and_unknown_routes(web_root: Path) -> None:
    async with running(web_root=web_root) as (url, _), aiohttp.ClientSession() as http:
        async with http.get(url + "/") as r:
            assert r.status == 200 and r.content_type == "text/html" and "avatar" in await r.text()
        async with http.get(url + "/app.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
        for path in ("/nope.css", "/api/nothing", "/%2e%2e/secret.txt", "/../secret.txt"):
            async with http.get(url + path) as r:
                assert r.status == 404 and r.content_type == "application/json", path
                assert "error" in await r.json()
        async with http.post(url + "/healthz") as r:
            assert r.status == 405 and "not allowed" in (await r.json())["error"]


async def test_every_module_of_the_page_is_served_as_javascript() -> None:
    # Browsers refuse to run an ES module served under another type, and a missing import
    # leaves the whole page dead: every `from "./x.js"` must resolve to a served file.
    from avatarchat.server.app import WEB_ROOT

    modules = sorted(p.name for p in WEB_ROOT.glob("*.js"))
    imported = {m for p in WEB_ROOT.glob("*.js") for m in re.findall(r'from "\./([\w.-]+\.js)"', p.read_text())}
    assert "app.js" in modules and imported and imported <= set(modules), imported - set(modules)
    async with running() as (url, _), aiohttp.ClientSession() as http:
        async with http.get(url + "/") as r:
            assert '<script type="module" src="app.js">' in await r.text()
        for name in modules:
            async with http.get(f"{url}/{name}") as r:
                assert r.status == 200 and r.content_type == "text/javascript", name


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of Prometheus text format 0.0.4; fails on any line that is not valid."""
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*",?)*)\})? (\S+)$')
    out = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* \S", line), line
            continue
        m = sample.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(2) or ""))
        value = float(m.group(3))
        assert not math.isnan(value)
        out[(m.group(1), labels)] = value
    return out


async def test_metrics_are_valid_exposition_text_and_follow_the_calls() -> None:
    metrics = Metrics()
    async with running(metrics=metrics) as (url, _), aiohttp.ClientSession() as http:
        await post(http, url)
        metrics.turn_done({"asr_ms": 120.0, "llm_first_token_ms": 40.0})
        metrics.turn_done({"asr_ms": 9000.0, "bad": float("nan")})
        metrics.error("tts")
        metrics.turn_cut("barge-in", {"first_audio_sent_ms": 700.0})
        metrics.turn_cut('bad"\nreason', {})
        async with http.get(url + "/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples = parse_exposition(await r.text())
    assert samples[("avatarchat_sessions_active", frozenset())] == 1
    assert samples[("avatarchat_sessions_total", frozenset())] == 1
    assert samples[("avatarchat_turns_total", frozenset())] == 2
    assert samples[("avatarchat_errors_total", frozenset({("stage", "tts")}))] == 1
    assert samples[("avatarchat_turns_cut_total", frozenset({("reason", "barge-in")}))] == 1
    assert samples[("avatarchat_turns_cut_total", frozenset({("reason", "bad__reason")}))] == 1
    assert samples[("avatarchat_stage_latency_ms_count", frozenset({("stage", "first_audio_sent")}))] == 1
    for stage, n, total in (("asr", 2, 9120.0), ("llm_first_token", 1, 40.0)):
        label = frozenset({("stage", stage)})
        bounds = [str(int(b)) for b in BUCKETS_MS] + ["+Inf"]
        buckets = [samples[("avatarchat_stage_latency_ms_bucket", label | {("le", b)})] for b in bounds]
        assert buckets == sorted(buckets), "buckets are cumulative"
        assert buckets[-1] == samples[("avatarchat_stage_latency_ms_count", label)] == n
        assert samples[("avatarchat_stage_latency_ms_sum", label)] == total
    assert samples[("avatarchat_stage_latency_ms_bucket", frozenset({("stage", "asr"), ("le", "200")}))] == 1


async def test_idle_sessions_are_closed_and_active_ones_kept() -> None:
    async with running(ServerSettings(idle_timeout_s=0.3)) as (url, app), aiohttp.ClientSession() as http:
        await post(http, url)
        await post(http, url)
        idle, active = StandInPeer.opened
        t0 = time.monotonic()
        while idle.closed_reason is None and time.monotonic() - t0 < 5:
            active.last_activity = time.monotonic()  # the other one stays busy
            await asyncio.sleep(0.03)
        assert idle.closed_reason == "idle" and active.closed_reason is None
        # Measured from the idle peer's own last activity: the second offer may take a while on a loaded machine.
        assert idle.closed_at is not None and idle.closed_at - idle.last_activity >= 0.3
        assert app[STATE].manager.peers == [active]
        assert app[STATE].metrics.sessions_active == 1


async def test_shutdown_closes_every_session_and_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    async with running() as (url, app), aiohttp.ClientSession() as http:
        await post(http, url)
        await post(http, url)
    assert [p.closed_reason for p in StandInPeer.opened] == ["server stopping"] * 2
    await asyncio.sleep(0)
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()


# -- the serve command ------------------------------------------------------------------------


async def test_serve_over_https_with_a_self_signed_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                web_root: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings = ServerSettings(port=free_port(), self_signed=True)
    stop, lines = asyncio.Event(), []

    async def loader() -> str:
        return "pipeline"

    task = asyncio.create_task(serve(settings, loader, ssl_ctx=tls_context(settings), stop=stop, say=lines.append,
                                     peer_factory=StandInPeer.open, web_root=web_root))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                if any(line.startswith("ready") for line in lines):
                    break
                await asyncio.sleep(0.02)
            async with http.get(f"https://127.0.0.1:{settings.port}/healthz", ssl=False) as r:
                assert r.status == 200 and (await r.json())["status"] == "ready"
            async with http.post(f"https://127.0.0.1:{settings.port}/api/offer", json=OFFER, ssl=False) as r:
                assert r.status == 200
    finally:
        stop.set()
        await task
    assert StandInPeer.opened[0].closed_reason == "server stopping"
    assert lines[0].startswith(f"listening on https://127.0.0.1:{settings.port}/") and lines[-1] == "stopped"
    key = tmp_path / "cache" / "avatarchat" / "tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_self_signed_certificate_is_reused_and_bad_pairs_are_one_line_errors(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path / "a")
    before = Path(cert).read_bytes()
    assert self_signed_cert(tmp_path / "a") == (cert, key) and Path(cert).read_bytes() == before
    ssl_context(cert, key)
    other_cert, _ = self_signed_cert(tmp_path / "b")
    with pytest.raises(TLSError) as err:
        ssl_context(other_cert, key)
    assert "\n" not in str(err.value) and "does not match" in str(err.value)
    with pytest.raises(TLSError, match="does not exist"):
        ssl_context(str(tmp_path / "missing.pem"), key)
    with pytest.raises(TLSError, match="not a PEM certificate"):
        ssl_context(key, key)
    with pytest.raises(TLSError, match="not a PEM private key"):
        ssl_context(cert, cert)


def test_flags_override_the_config_server_section() -> None:
    from argparse import Namespace

    from avatarchat.cli.errors import UserError

    base = ServerSettings(host="0.0.0.0", max_sessions=5, self_signed=True)
    args = Namespace(host=None, port=9000, max_sessions=1, self_signed=False, cert="c.pem", key="k.pem")
    s = settings_from_args(base, args)
    assert (s.host, s.port, s.max_sessions, s.self_signed, s.certfile) == ("0.0.0.0", 9000, 1, False, "c.pem")
    with pytest.raises(UserError, match="--cert and --key go together"):
        settings_from_args(base, Namespace(host=None, port=None, max_sessions=None, self_signed=False,
                                           cert="c.pem", key=None))
    with pytest.raises(UserError, match="--max-sessions"):
        settings_from_args(base, Namespace(host=None, port=None, max_sessions=0, self_signed=False,
                                           cert=None, key=None))


def test_serve_exits_2_with_one_line_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code = main(["serve", "--port", str(s.getsockname()[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("avatarchat: error: cannot listen on 127.0.0.1:")


@pytest.mark.slow
def test_serve_exits_2_when_the_pipeline_fails_to_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Light handlers (no local LLM) so the failing avatar stage is reached in a second or two.
    config = {"vad": {"handler": "silero"}, "asr": {"handler": "whisper"},
              "llm": {"handler": "openai_compatible"}, "tts": {"handler": "espeak"},
              "avatar": {"handler": "portrait", "avatar": "/nonexistent"}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    t0 = time.monotonic()
    code = main(["serve", "--config", str(path), "--port", str(free_port())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if "error" in line.lower()]
    assert errors == [err[-1]] and err[-1].startswith("avatarchat: error: avatar handler 'portrait' failed to load")
    assert "/nonexistent" in err[-1]
    assert time.monotonic() - t0 < 60


async def test_stopping_while_the_models_load_stops_cleanly() -> None:
    never = asyncio.Event()
    stop, lines = asyncio.Event(), []

    async def loader() -> str:
        await never.wait()  # stands for a model that takes long to load
        return "pipeline"

    settings = ServerSettings(port=free_port())
    task = asyncio.create_task(serve(settings, loader, stop=stop, say=lines.append, peer_factory=StandInPeer.open))
    while not lines:
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{settings.port}/healthz") as r:
            assert r.status == 503
    stop.set()
    await asyncio.wait_for(task, 5)
    assert lines[-2:] == ["stopping while the models load …", "stopped"]
