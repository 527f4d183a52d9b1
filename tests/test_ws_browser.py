"""The web page over the WebSocket transport (web/wsclient.js, GET /api/ws), in real headless
Chromium against a real `avatarchat serve` (real models).

``?transport=ws`` forces the WebSocket: a typed question gets a spoken reply and the avatar's
JPEG frames are drawn, the fake microphone's spoken question is answered, and the interrupt
button stops the reply's voice. Without it the page starts with WebRTC and falls back to the
WebSocket when ICE cannot connect: here UDP to the only ICE server the page may use (a TURN
relay, ``relay_only``) goes into a black hole, as behind a firewall that drops UDP.
Firefox over the WebSocket is in test_ws_firefox.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.browser import (
    AUDIBLE,
    CONNECTED,
    ServeProcess,
    close_pages,
    launch_chromium,
    log_lines,
    open_page,
    padded_question_wav,
    wait_for,
    wait_sessions,
)
from tests.configs import greedy_default

pytestmark = pytest.mark.slow

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

#: The page's query for the WebSocket only (``raw``: the fake mic as it is).
WS = "?raw=1&transport=ws"
REPLY_DONE = "() => document.querySelector('#log .msg.avatar[data-final]')"
METRICS_SHOWN = "() => document.querySelectorAll('#metrics [data-key]').length > 0"
SPEAKING_AUDIBLY = ("() => avatarchat.state().conversation === 'speaking'"
                    " && avatarchat.envelope('heard').rms.slice(-30).some((x) => x > 0.01)")
#: Where the screenshot of the page mid-reply over the WebSocket is kept for a person to see.
SCREENSHOT = Path("/tmp/ws_page.png")


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: these tests are synchronous, and playwright's sync
    API keeps its own event loop running in this thread, where pytest-asyncio cannot run one."""


def ask_typed(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def asked_at(page: Any) -> float:
    """When the page sent its (first) typed question, in its own clock."""
    return next(m["t"] for m in page.evaluate("avatarchat.messages") if m["msg"]["type"] == "text")


def voiced_after(page: Any, t: float) -> list[dict[str, Any]]:
    """The reply's voice as it reached the page (before the page's volume), after ``t``."""
    return [s for s in page.evaluate("avatarchat.segments('remote')") if s["start"] > t and s["peak"] > 0.02]


def assert_not_blank(png: Path) -> None:
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.size > 0, f"{png} is not an image"
    assert float(img.std()) > 15.0, f"{png} looks blank (std {img.std():.1f})"


def test_forced_websocket_speaks_a_typed_reply_and_shows_frames(
        quiet_browser: Any, server: ServeProcess, tmp_path: Path) -> None:
    page = open_page(quiet_browser, server.url + WS, raw=False)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        state = page.evaluate("avatarchat.state()")
        assert state["transport"] == "websocket" and state["fallback"] is None, state
        assert state["status"] == "Connected over WebSocket (the page's link asks for it)", state
        assert state["sessionId"] and state["dataChannel"] is None, state

        # The avatar's frames, drawn on the canvas in the video's place (same box).
        wait_for(page, "() => avatarchat.frames().count >= 10", 20)  # sync: a promise would be truthy at once
        stats = page.evaluate("avatarchat.stats()")
        assert (stats["video"]["frameWidth"], stats["video"]["frameHeight"]) == (512, 512), (
            stats, page.evaluate("avatarchat.state()"), page.locator("#log").inner_text()[-800:], server.log_tail(3000))
        assert page.locator("#avatar-canvas").is_visible() and not page.locator("#avatar-video").is_visible()
        assert page.locator("#avatar-canvas").bounding_box() == page.locator(".video-wrap").bounding_box()
        canvas = tmp_path / "canvas.png"
        page.locator("#avatar-canvas").screenshot(path=str(canvas))
        assert_not_blank(canvas)

        # A typed question: the reply's text, its voice arriving and audible, mid-reply.
        ask_typed(page, "Tell me about the moon.")
        wait_for(page, SPEAKING_AUDIBLY, 40)
        page.screenshot(path=str(SCREENSHOT))
        assert_not_blank(SCREENSHOT)
        wait_for(page, REPLY_DONE, 60)
        assert log_lines(page, "user") == ["Tell me about the moon."]
        assert len(log_lines(page, "avatar")) == 1 and log_lines(page, "avatar")[0]
        wait_for(page, f"() => avatarchat.segments('remote').some((s) => s.start > {asked_at(page)} && s.peak > 0.02)", 20)
        audio = page.evaluate("avatarchat.stats()")["audio"]
        hello = page.evaluate("avatarchat.stats()")["hello"]
        assert audio["totalSamplesReceived"] > hello["reply_sample_rate"], audio  # over a second of voice
        assert page.evaluate("avatarchat.stats()")["mic"]["packetsSent"] > 0  # the (silent) mic goes up

        # The latency figures, over this transport too.
        wait_for(page, METRICS_SHOWN, 40)
        assert page.locator("#metrics [data-key='first_audio_sent_ms']").count() == 1
        # Nobody spoke over the reply (the mic is silent): the page never muted it.
        events = page.evaluate("avatarchat.bargeIn().events")
        assert not [e for e in events if e["what"] == "mute" and e["reason"] == "voice"], events
    finally:
        close_pages(server, page)


@pytest.fixture(scope="module")
def voice_browser(pw: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium whose microphone says "What is the capital of France?" 3 s after it opens."""
    wav = padded_question_wav(tmp_path_factory.mktemp("mic") / "question.wav")
    browser = launch_chromium(pw, fake_audio=wav)
    yield browser
    browser.close()


def test_a_spoken_question_over_websocket_is_answered(voice_browser: Any, server: ServeProcess) -> None:
    page = open_page(voice_browser, server.url + WS, raw=False)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        assert page.evaluate("avatarchat.state().transport") == "websocket"
        # The mic's PCM (resampled in the page to the hello's rate) is heard and transcribed.
        wait_for(page, "() => /capital.*france/i.test(document.querySelector('#log .msg.user')?.textContent)", 40)
        user = log_lines(page, "user")
        assert len(user) == 1 and "capital" in user[0].lower() and "france" in user[0].lower(), user
        wait_for(page, REPLY_DONE, 60)
        assert "paris" in log_lines(page, "avatar")[0].lower(), log_lines(page, "avatar")
        asked = next(m["t"] for m in page.evaluate("avatarchat.messages") if m["msg"]["type"] == "transcript")
        wait_for(page, f"() => avatarchat.segments('remote').some((s) => s.start > {asked} && s.peak > 0.02)", 20)
        wait_for(page, METRICS_SHOWN, 40)
        assert page.locator("#metrics [data-key='first_audio_after_speech_end_ms']").count() == 1
    finally:
        close_pages(server, page)


def test_the_interrupt_button_stops_the_reply_voice_over_websocket(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url + WS, raw=False)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        ask_typed(page, "Tell me a long story about a cat.")
        wait_for(page, SPEAKING_AUDIBLY, 40)
        # Clicked and read in one step: the page's voice drops before the server answers.
        clicked = page.evaluate("() => { document.querySelector('#interrupt').click();"
                                " return {t: avatarchat.now(), volume: avatarchat.bargeIn().volume}; }")
        assert clicked["volume"] <= 0.5, clicked
        # The server cuts the reply and says what was heard of it.
        cut = wait_for(page, "() => avatarchat.messages.find((m) => m.msg.type === 'reply' && m.msg.interrupted)", 20)
        assert cut["msg"]["final"], cut
        assert page.locator("#log .msg.avatar.interrupted").count() == 1
        wait_for(page, "() => avatarchat.state().conversation === 'listening'", 20)
        # The server sends nothing more once it has cut the reply; the queued voice was dropped.
        before = page.evaluate("avatarchat.stats()")["audio"]
        time.sleep(1.0)
        after = page.evaluate("avatarchat.stats()")["audio"]
        assert after["totalSamplesReceived"] == before["totalSamplesReceived"], (before, after)
        assert after["flushes"] >= 1 and after["leadMs"] == 0, after
        # What the user heard went quiet after the click and stayed quiet.
        heard = page.evaluate("avatarchat.envelope('heard')")
        late = [x for t, x in zip(heard["t"], heard["rms"], strict=True) if t > clicked["t"] + 200]
        assert late and max(late) < AUDIBLE, max(late)
        quiet_from = next(t for t, x in zip(heard["t"], heard["rms"], strict=True) if t >= clicked["t"] and x < AUDIBLE)
        print(f"\ninterrupt over WebSocket: heard silent {quiet_from - clicked['t']:.0f} ms after the click; "
              f"the server's cut message came {cut['t'] - clicked['t']:.0f} ms after it")
        # Nor is anything left to play: the voice as it reaches the page (before the page's
        # volume) is silent once the cut's 10 ms fade-out (server/tracks.py), sent after the
        # cut and queued behind the jitter buffer, is over.
        remote = page.evaluate("avatarchat.envelope('remote')")
        arriving = [x for t, x in zip(remote["t"], remote["rms"], strict=True) if t > cut["t"] + 500]
        assert arriving and max(arriving) < AUDIBLE, max(arriving)
    finally:
        close_pages(server, page)


SECRET = "ws-browser-test-secret-0123456789abcdef-01234567"


def test_the_socket_carries_the_link_token_in_its_query(quiet_browser: Any, tmp_path: Path) -> None:
    """A browser cannot set headers on a WebSocket: the page's token goes in the socket's
    query (and only there, besides the Bearer headers of its other API requests)."""
    from avatarchat.server.auth import make_token

    path = greedy_default(tmp_path, without=("avatar",))
    config = yaml.safe_load(path.read_text())
    config.setdefault("server", {})["auth"] = {"secret": SECRET}
    path.write_text(yaml.safe_dump(config))
    token = make_token(SECRET, "ws-browser-test", 600)
    with ServeProcess(config=path) as server:
        page = quiet_browser.new_context().new_page()
        seen: list[tuple[str, str | None]] = []
        sockets: list[str] = []
        page.on("request", lambda req: seen.append((req.url, req.headers.get("authorization"))))
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(f"{server.url}{WS}&token={token}")
        page.wait_for_function("() => window.avatarchat !== undefined")
        try:
            page.click("#start")
            wait_for(page, CONNECTED, 20)
            assert sockets == [f"ws://127.0.0.1:{server.port}/api/ws?video=jpeg&token={token}"], seen
            assert ("/api/config", f"Bearer {token}") in [(u[u.index("/api"):], a) for u, a in seen if "/api/" in u]
            assert not [u for u, _ in seen if "/api/offer" in u]  # no WebRTC tried
        finally:
            close_pages(server, page)


def test_a_full_server_says_so_over_websocket(quiet_browser: Any) -> None:
    """The server refuses the upgrade with an HTTP 503 the page cannot read: it tells the
    full server apart by /healthz's session count."""
    with ServeProcess(extra_args=["--max-sessions", "1"]) as small:
        first = open_page(quiet_browser, small.url + WS, raw=False)
        second = open_page(quiet_browser, small.url + WS, raw=False)
        try:
            first.click("#start")
            wait_for(first, CONNECTED, 20)
            second.click("#start")
            wait_for(second, "() => avatarchat.state().connection === 'failed'", 20)
            assert "server is full" in (second.evaluate("avatarchat.state().banner") or "").lower()
            assert first.evaluate("avatarchat.state().connection") == "connected"
        finally:
            first.context.close()
            second.context.close()


def test_speaking_over_the_reply_over_websocket_mutes_it_in_the_page_and_the_server_cuts_it(
        pw: Any, server: ServeProcess, tmp_path: Path) -> None:
    """test_bargein_browser.py's scenario and checks, over the WebSocket: a cough over the
    story mutes it in the page for the grace time only; a question mutes it at once, the
    server cuts it, and the question is answered."""
    from tests.test_bargein_browser import barge_in_wav, check_page_barge_in

    browser = launch_chromium(pw, fake_audio=barge_in_wav(tmp_path / "barge_in.wav"))
    page = open_page(browser, server.url + WS, raw=False)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        assert page.evaluate("avatarchat.state().transport") == "websocket"
        wait_for(page, "() => /dragon/i.test(document.querySelector('#log .msg.user')?.textContent)", 30)
        wait_for(page, "() => document.querySelector('#log .msg.avatar.interrupted')", 40)
        wait_for(page, "() => [...document.querySelectorAll('#log .msg.avatar[data-final]')]"
                       ".some((li) => !li.classList.contains('interrupted'))", 60)
        user = log_lines(page, "user")
        assert len(user) == 2 and "dragon" in user[0].lower(), user
        assert "capital" in user[1].lower() and "france" in user[1].lower(), user
        messages = page.evaluate("avatarchat.messages")
        cut_at = next(m["t"] for m in messages if m["msg"].get("interrupted"))
        check_page_barge_in(page, cut_at)
    finally:
        close_pages(server, page)
        browser.close()


# --- the fallback ------------------------------------------------------------------------------


class UdpBlackHole:
    """A UDP port on 127.0.0.1 that takes every datagram and answers none: a firewall that
    drops UDP, in front of a TURN server. Counts what it swallowed."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.swallowed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="udp-black-hole", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                self.sock.recvfrom(65536)
                self.swallowed += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def blocked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, UdpBlackHole]]:
    """A server that tells pages to relay all media through a TURN server whose UDP is
    dropped: ICE cannot connect, everything else (HTTP, WebSocket) works. One session at a
    time: the page's WebSocket must wait until the server drops the abandoned WebRTC
    attempt (its connect timeout), which the page rides out by asking again."""
    hole = UdpBlackHole()
    folder = tmp_path_factory.mktemp("config")
    config = yaml.safe_load(greedy_default(folder).read_text())
    config.setdefault("server", {}).update({
        "ice_servers": [{"urls": [f"turn:127.0.0.1:{hole.port}?transport=udp"],
                         "username": "page", "credential": "unused"}],
        "turn": {"relay_only": True},
        "max_sessions": 1,
        "connect_timeout_s": 15,
    })
    path = folder / "blocked.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        with ServeProcess(config=path) as server:
            yield server, hole
    finally:
        hole.close()


def test_where_udp_passes_the_page_stays_on_webrtc_and_says_so(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url)  # no ?transport: WebRTC first
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        # Past the fallback's deadline (ICE_FALLBACK_MS, 5 s after the answer): still WebRTC.
        wait_for(page, "() => avatarchat.now() - avatarchat.marks().answered > 6000", 20)
        state = page.evaluate("avatarchat.state()")
        assert state["transport"] == "webrtc" and state["fallback"] is None, state
        assert state["dataChannel"] == "open" and state["status"] == "Connected over WebRTC", state
        assert "fallback" not in page.evaluate("avatarchat.marks()")
        assert page.locator("#avatar-video").is_visible() and not page.locator("#avatar-canvas").is_visible()
    finally:
        close_pages(server, page)


def test_the_page_falls_back_to_websocket_when_udp_is_blocked_and_says_so(
        quiet_browser: Any, blocked_server: tuple[ServeProcess, UdpBlackHole]) -> None:
    server, hole = blocked_server
    page = open_page(quiet_browser, server.url)  # no ?transport: WebRTC first
    try:
        page.click("#start")
        wait_for(page, "() => avatarchat.marks().answered !== undefined", 30)
        assert page.evaluate("avatarchat.state().transport") == "webrtc"
        wait_for(page, CONNECTED, 40)
        state = page.evaluate("avatarchat.state()")
        assert state["transport"] == "websocket" and state["fallback"] and state["banner"] is None, state
        assert page.locator("#transport-status").inner_text() == "Connected over WebSocket (UDP seems blocked)"
        said = [line for line in log_lines(page, "system") if "switching to WebSocket" in line]
        assert said, log_lines(page, "system")
        marks = page.evaluate("avatarchat.marks()")
        print(f"\nChromium: {said[0]!r}, {marks['fallback'] - marks['answered']:.0f} ms after the answer; "
              f"connected over WebSocket {marks['connected'] - marks['fallback']:.0f} ms later, "
              f"after {page.evaluate('avatarchat.state().retries')} refusal(s) while the server held the attempt")
        # WebRTC was given up only after its few seconds (ICE_FALLBACK_MS in app.js).
        assert marks["fallback"] - marks["answered"] >= 4900, marks
        assert hole.swallowed > 0, "the page never tried the blocked UDP path"

        ask_typed(page, "What is the capital of Italy?")
        wait_for(page, REPLY_DONE, 60)
        assert log_lines(page, "user") == ["What is the capital of Italy?"]
        assert "rome" in log_lines(page, "avatar")[0].lower(), log_lines(page, "avatar")
        wait_for(page, f"() => avatarchat.segments('remote').some((s) => s.start > {asked_at(page)} && s.peak > 0.02)", 20)
        wait_for(page, "() => avatarchat.frames().count > 0", 10)
        wait_for(page, METRICS_SHOWN, 40)
    finally:
        close_pages(server, page)


def test_transport_webrtc_forbids_the_fallback(
        quiet_browser: Any, blocked_server: tuple[ServeProcess, UdpBlackHole]) -> None:
    server, _ = blocked_server
    page = open_page(quiet_browser, server.url + "?raw=1&transport=webrtc", raw=False)
    try:
        page.click("#start")
        wait_for(page, "() => avatarchat.state().connection === 'failed'", 60)
        state = page.evaluate("avatarchat.state()")
        assert state["transport"] is None and state["fallback"] is None, state
        assert "media port" in (state["banner"] or ""), state
        assert "websocket" not in " ".join(log_lines(page, "system")).lower()
    finally:
        page.context.close()  # a failed page has nothing to stop
        wait_sessions(server, 0, timeout=30)  # the server drops the unconnected peer itself

