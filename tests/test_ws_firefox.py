"""The web page over the WebSocket transport in real headless Firefox ESR against a real
`avatarchat serve` (real models), driven through Marionette as in test_firefox.py.

``?transport=ws``: a typed question gets a spoken reply and the avatar's frames are drawn.
Without it, with Firefox told to use proxied ICE only (``media.peerconnection.ice.proxy_only``,
and there is no proxy: no UDP at all, as behind a firewall), WebRTC cannot connect and the
page falls back to the WebSocket and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from avatarchat.bench.harness import ServeProcess
from tests.browser import wait_sessions
from tests.configs import greedy_default
from tests.test_firefox import Firefox, assert_not_blank, log_lines, require_firefox

pytestmark = pytest.mark.slow

CONNECTED = "() => avatarchat.state().connection === 'connected'"
REPLY_DONE = "() => document.querySelector('#log .msg.avatar[data-final]')"
METRICS_SHOWN = "() => document.querySelectorAll('#metrics [data-key]').length > 0"


@pytest.fixture(scope="module")
def firefox_and_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Firefox, ServeProcess]]:
    """Firefox and the server (greedy decoding), started side by side; both stopped."""
    require_firefox()
    firefox = Firefox().start()
    try:
        with ServeProcess(config=greedy_default(tmp_path_factory.mktemp("config"))) as server:
            firefox.connect()
            try:
                yield firefox, server
            finally:
                print(f"\n--- Firefox {firefox.version} log (tail)\n{firefox.log_tail()}"
                      f"\n--- server log (tail)\n{server.log_tail()}")
    finally:
        firefox.close()


def ask(firefox: Firefox, question: str) -> float:
    """Type and send ``question``; returns when the page sent it (its clock)."""
    firefox.type("#text", question)
    firefox.click("#send")
    return float(firefox.call("() => avatarchat.messages.filter((m) => m.msg.type === 'text').at(-1).t"))


def wait_for_voice(firefox: Firefox, after: float) -> None:
    """The reply's voice reached the page (before its volume) after ``after``, audibly."""
    firefox.wait_for(f"() => avatarchat.segments('remote').some((s) => s.start > {after} && s.peak > 0.02)", 30)


def stop(firefox: Firefox, server: ServeProcess) -> None:
    firefox.click("#stop")
    firefox.wait_for("() => avatarchat.state().connection === 'idle'", 5)
    wait_sessions(server, 0)


def test_firefox_over_websocket_speaks_a_typed_reply_and_shows_frames(
        firefox_and_server: tuple[Firefox, ServeProcess], tmp_path: Path) -> None:
    firefox, server = firefox_and_server
    firefox.open(server.url + "?raw=1&transport=ws&avatar=video")  # the server's frames
    firefox.click("#start")
    firefox.wait_for(CONNECTED, 20)
    state = firefox.js("return avatarchat.state()")
    assert state["transport"] == "websocket" and state["mic"] == "on", state
    firefox.wait_for("() => avatarchat.frames().count >= 10", 20)
    assert firefox.call("() => !document.querySelector('#avatar-canvas').hidden"
                        " && document.querySelector('#avatar-video').hidden")

    asked = ask(firefox, "What is the capital of Italy?")
    firefox.wait_for(REPLY_DONE, 60)
    assert log_lines(firefox, "user") == ["What is the capital of Italy?"]
    assert "rome" in log_lines(firefox, "avatar")[0].lower(), log_lines(firefox, "avatar")
    wait_for_voice(firefox, asked)
    stats = firefox.call("() => avatarchat.stats()")
    assert (stats["video"]["frameWidth"], stats["video"]["frameHeight"]) == (512, 512), stats["video"]
    assert stats["mic"]["packetsSent"] > 0, stats["mic"]  # Firefox's (silent) fake mic goes up as PCM
    firefox.wait_for(METRICS_SHOWN, 30)
    assert_not_blank(firefox.screenshot(tmp_path / "firefox_ws.png"))
    stop(firefox, server)
    assert firefox.page_errors(server.url) == []


class FirefoxWithoutUdp(Firefox):
    """test_firefox.py's Firefox whose ICE may only go through a proxy, and there is none:
    it sends no UDP at all. (Marionette cannot set prefs at run time without chrome access,
    so the pref goes into user.js before Firefox starts.)"""

    EXTRA_PREFS = {"media.peerconnection.ice.proxy_only": True}


def test_firefox_without_udp_falls_back_to_websocket_and_says_so(
        firefox_and_server: tuple[Firefox, ServeProcess]) -> None:
    _, server = firefox_and_server
    firefox = FirefoxWithoutUdp().start()
    try:
        firefox.connect()
        firefox.open(server.url + "?raw=1&avatar=video")  # no ?transport: WebRTC first
        firefox.click("#start")
        firefox.wait_for(CONNECTED, 40)
        state = firefox.js("return avatarchat.state()")
        assert state["transport"] == "websocket" and state["fallback"], state
        assert state["status"] == "Connected over WebSocket (UDP seems blocked)", state
        marks = firefox.js("return avatarchat.marks()")
        assert "answered" in marks and marks["fallback"] >= marks["answered"], marks
        said = [line for line in log_lines(firefox, "system") if "switching to WebSocket" in line]
        assert said, log_lines(firefox, "system")
        print(f"\nFirefox: {said[0]!r}, {marks['fallback'] - marks['answered']:.0f} ms after the answer; "
              f"connected over WebSocket {marks['connected'] - marks['fallback']:.0f} ms later")

        asked = ask(firefox, "What is the capital of Spain?")
        firefox.wait_for(REPLY_DONE, 60)
        assert "madrid" in log_lines(firefox, "avatar")[0].lower(), log_lines(firefox, "avatar")
        wait_for_voice(firefox, asked)
        stop(firefox, server)
        assert firefox.page_errors(server.url) == []
    finally:
        print(f"\n--- Firefox (no UDP) log (tail)\n{firefox.log_tail()}")
        firefox.close()
