"""Client mode over WebRTC in real headless Firefox ESR against a real `avatarchat serve` (real
models, ``server.avatar_mode: client``), driven through Marionette as in test_firefox.py.

Headless Firefox here has no WebGL (no GPU and no display: "Exhausted GL driver options"), so
the page cannot draw the avatar: asked for video, a server set to ``client`` answers with the
face's parameters all the same, and the page says it cannot show the avatar, plays the voice,
and still runs the face's clock and rows (drawn nowhere), which is what this test measures.
Firefox has no ``estimatedPlayoutTimestamp`` (nor does Chromium against aiortc's RTCP); the
page's clock reads the voice receiver's synchronization sources (RTP timestamp and playout
time of the last frame played), which Firefox has, and falls back to the server's wall clock
less the measured path (jitter buffer, round trip) until the first packet plays. The
lip-sync figures are measured as in test_client_avatar_browser.py (WebRTC) and printed, not
asserted: Firefox reports its played packets in bursts (up to ~280 ms apart here) and their
audio levels put the audible onset 100-400 ms after the rows' jaw rise on some replies, so
the figures are not yet a sound measure in Firefox.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from avatarchat.bench.harness import ServeProcess
from tests.browser import AUDIBLE, wait_sessions
from tests.configs import greedy_default
from tests.test_client_avatar_browser import HELPERS, QUESTIONS, QUIET, RTC_ONSET, SHOTS, summary
from tests.test_firefox import Firefox, assert_not_blank, require_firefox

pytestmark = pytest.mark.slow

CONNECTED = "() => avatarchat.state().connection === 'connected'"


#: What the page says when the server leaves drawing to it and it cannot draw.
NONE_LABEL = "avatar: not shown (this browser cannot draw it)"


@pytest.fixture(scope="module")
def firefox_and_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Firefox, ServeProcess]]:
    """Firefox and the server (greedy decoding, ``avatar_mode: client``), side by side; both stopped."""
    require_firefox()
    path = greedy_default(tmp_path_factory.mktemp("config"))
    config = yaml.safe_load(path.read_text())
    config.setdefault("server", {})["avatar_mode"] = "client"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    firefox = Firefox().start()
    try:
        with ServeProcess(config=path) as server:
            firefox.connect()
            try:
                yield firefox, server
            finally:
                print(f"\n--- Firefox {firefox.version} log (tail)\n{firefox.log_tail()}"
                      f"\n--- server log (tail)\n{server.log_tail()}")
    finally:
        firefox.close()


def poll(firefox: Firefox, expression: str, arg: Any, timeout: float) -> Any:
    """``expression(arg)`` in the page, polled until truthy (Firefox.wait_for takes no argument)."""
    deadline = time.monotonic() + timeout
    while True:
        value = firefox.call(expression, arg)
        if value:
            return value
        assert time.monotonic() < deadline, f"not true within {timeout:.0f} s: {expression}\n" \
                                            f"{firefox.js('return avatarchat.avatar()')}"
        time.sleep(0.1)


def ask(firefox: Firefox, question: str) -> float:
    since = float(firefox.call("() => avatarchat.now()"))
    firefox.type("#text", question)
    firefox.click("#send")
    return since


def test_firefox_in_client_mode_keeps_the_face_in_step_with_the_voice(
        firefox_and_server: tuple[Firefox, ServeProcess]) -> None:
    firefox, server = firefox_and_server
    firefox.open(server.url + "?raw=1")  # no ?avatar: the page chooses
    firefox.click("#start")
    firefox.wait_for(CONNECTED, 30)
    firefox.js(HELPERS)
    avatar = firefox.wait_for("() => avatarchat.avatar().shown && avatarchat.avatar()", 20)
    # No WebGL here: the page asked for video, the server answered client mode, and the page
    # says it cannot show the avatar (label and banner); the voice plays all the same.
    assert avatar["asked"] == "video" and avatar["mode"] == "client" and avatar["label"] == NONE_LABEL, avatar
    assert "WebGL" in avatar["why"], avatar
    state = firefox.js("return avatarchat.state()")
    assert state["avatar"] == "client" and "cannot" in (state["banner"] or ""), state
    assert firefox.call("() => document.querySelector('#avatar-mode').textContent") == NONE_LABEL
    assert firefox.call("() => document.querySelector('#avatar-gl').hidden")
    clock = firefox.wait_for("() => avatarchat.avatar().rtpOrigin !== null && avatarchat.avatar().clock", 20)

    rows = []
    for question in QUESTIONS[:3]:
        since = ask(firefox, question)
        rows.append(poll(firefox, RTC_ONSET, [since, AUDIBLE], 60))
        firefox.wait_for(QUIET, 60)
        opened = firefox.call(f"() => Math.max(...avatarchat.faceFrames({since}).drawn)")
        assert opened > 0.2, f"the face's jaw never opened past 0.2 ({opened})"
    assert firefox.call("() => avatarchat.frames().count") == 0  # no video from the server
    played = [1000 * r["error"] for r in rows]
    jaw = [1000 * (r["media"] - r["jawRise"]) for r in rows if r["jawRise"] is not None]
    shot = firefox.screenshot(SHOTS / "client_avatar_firefox.png")
    print(f"\nclient mode in Firefox {firefox.version} (clock {clock!r}), face (drawn nowhere) minus voice "
          f"played: {summary(played)}: {[round(e) for e in played]}; audible onset minus the rows' jaw "
          f"rise: {[round(x) for x in jaw]} ms; page: {shot}")
    # Not asserted in Firefox (see the module's docstring): its synchronization sources come
    # in bursts up to ~280 ms apart, and the audible onset it reports lands 100-400 ms after
    # where the rows' jaw opens on some replies (Chromium: within ~30 ms), so neither
    # figure is a sound measure there yet. What is asserted: the face's clock runs on the
    # voice's RTP timestamps and keeps real time.
    assert len(played) == len(rows) and len(jaw) >= 1
    h0 = firefox.call("() => [avatarchat.now(), avatarchat.avatar().heard]")
    time.sleep(2.0)
    h1 = firefox.call("() => [avatarchat.now(), avatarchat.avatar().heard]")
    rate = (h1[1] - h0[1]) / ((h1[0] - h0[0]) / 1000)
    assert 0.8 < rate < 1.2, (h0, h1)
    assert_not_blank(shot)

    firefox.click("#stop")
    firefox.wait_for("() => avatarchat.state().connection === 'idle'", 5)
    wait_sessions(server, 0)
    assert firefox.page_errors(server.url) == []
