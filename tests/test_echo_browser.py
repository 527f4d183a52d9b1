"""The avatar's own voice leaking into the microphone, against Chromium's own echo canceller
(WebRTC AEC3), through a real audio loop.

A private PulseAudio daemon (its own runtime dir and socket under a tmp dir, nothing
system-wide) has one null sink, the "speaker", and makes its monitor, ``ECHO_DB`` quieter,
the default "microphone": whatever the page plays out, its microphone hears ~15 dB down,
a few tens of ms later. Headless Chromium runs with its real audio stack pointed at that daemon (no
fake capture device, and without playwright's ``--mute-audio``), so the page's getUserMedia
constraints decide, as in a real browser, whether AEC3 removes the echo before the mic track
leaves the page. Against real ``avatarchat serve`` processes (real models):

- echo cancellation off (``?raw=1``): the echo cuts the reply (the loop works; the checks can fail);
- echo cancellation on (the page's defaults): ≥ 5 s of the reply's echo reach the server
  strongly attenuated and do not cut the reply, which plays to its end; nor should they
  make the page mute it (its own barge-in gate, web/bargein.js): xfail, see ``GATE_MUTES``.

Levels are the page's own envelopes (``window.avatarchat``): "heard", the avatar's voice as
played (the incoming voice times the page's playback volume), and "mic", the microphone
track as sent (after the browser's processing).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser import (
    CHROMIUM,
    ServeProcess,
    chromium_args,
    close_pages,
    require_chromium,
    wait_for,
)
from tests.pulse import PulseLoop

pytestmark = pytest.mark.slow

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

#: The echo's level relative to what the page plays (a laptop's speaker a little away from
#: its microphone; the level of tests/test_peer_bargein.py's server-side echo test).
ECHO_DB = -15.0
LONG_QUESTION = "Tell me a long story about a dragon."
#: How much of the reply the microphone must hear.
ECHO_FOR_S = 5.0
#: RMS above this (about -40 dBFS) counts as audible in the page's envelopes.
AUDIBLE = 0.01
#: The echo level is taken over blocks this long (the loop's delay is a few tens of ms).
BLOCK_MS = 250
#: Mic RMS above this (-50 dBFS) while the avatar speaks counts as echo leaking through.
LEAK_RMS = 10 ** (-50 / 20)

CONNECTED = "() => avatarchat.state().connection === 'connected'"
GATE_MUTES = (
    "on busy cores AEC3 lets short bursts of the echo through mid-reply (100-200 ms above "
    "-50 dBFS, peaks up to -22 dBFS after the gain control): too short for the server's "
    "barge-in, but the page's gate (onset 50 ms, echo ratio 0.15) mutes the reply for its "
    "grace time on them: measured here in 2 of 6 runs at load 7-9 on 2 cores, 0 of 4 at 3-4")
# Records the microphone track's settings for the tests (the page keeps its stream to itself).
TRACK_SETTINGS = """
(() => {
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) return;
  const getUserMedia = md.getUserMedia.bind(md);
  window.__micSettings = [];
  md.getUserMedia = async (constraints) => {
    const stream = await getUserMedia(constraints);
    for (const t of stream.getAudioTracks()) window.__micSettings.push(t.getSettings());
    return stream;
  };
})();
"""


# --- the audio loop -----------------------------------------------------------------------


def pgrep(*args: str) -> list[int]:
    out = subprocess.run(["pgrep", *args], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def process_tree(pids: list[int]) -> list[int]:
    out, todo = list(pids), list(pids)
    while todo:
        kids = pgrep("-P", str(todo.pop()))
        out += kids
        todo += kids
    return out


def assert_gone(pids: list[int], what: str, timeout: float = 10.0) -> None:
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"{what} left processes behind: {alive}"


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: these tests are synchronous (playwright's sync API)."""


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseLoop]:
    require_chromium()
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is missing: these tests play the page's audio back into its microphone "
                    "through a private PulseAudio daemon (scripts/test.sh installs it with apt)")
    loop = PulseLoop(tmp_path_factory.mktemp("pulse"), ECHO_DB).start()
    assert loop.proc is not None
    pid = loop.proc.pid
    try:
        yield loop
    finally:
        loop.stop()
        assert_gone([pid], "pulseaudio")
        assert not pgrep("-f", str(loop.root)), "a pulseaudio of this test is still running"


class LoopBrowser:
    """Headless Chromium with a real audio stack on ``pulse``: its output is the speaker, its
    default microphone the speaker's echo."""

    def __init__(self, pw: Any, pulse: PulseLoop) -> None:
        self.marker = f"--avatarchat-echo-test={uuid.uuid4().hex}"  # finds its processes (pgrep -f)
        args = [a for a in chromium_args() if a != "--use-fake-device-for-media-stream"] + [self.marker]
        self.browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args, env={**os.environ, **pulse.env},
            # Playwright mutes headless Chromium: there would be nothing to echo.
            ignore_default_args=["--mute-audio"])

    def close(self) -> None:
        pids = process_tree(pgrep("-f", self.marker))
        self.browser.close()
        assert_gone(pids, "chromium")


@pytest.fixture(scope="module")
def loop_browser(pw: Any, pulse: PulseLoop) -> Iterator[LoopBrowser]:
    browser = LoopBrowser(pw, pulse)
    try:
        yield browser
    finally:
        browser.close()


# --- the page -----------------------------------------------------------------------------


def open_loop_page(browser: LoopBrowser, server: ServeProcess, raw: bool) -> Any:
    """The app in a new context; ``raw``: ``?raw=1``, echo cancellation (and NS, AGC) off."""
    context = browser.browser.new_context(viewport={"width": 1200, "height": 860})
    context.add_init_script(TRACK_SETTINGS)
    page = context.new_page()
    page.goto(server.url + ("?raw=1" if raw else ""))
    page.wait_for_function("() => window.avatarchat !== undefined")
    return page


def tell_a_story(page: Any, echo_cancellation: bool) -> dict[str, Any]:
    """Start the session (checking the mic's processing), ask for a long story by text and
    let it play to its end or its cut; returns the turn, the cut (the `reply` message with
    `interrupted`, its arrival time in ``t``) or None, and whether its playout finished."""
    page.click("#start")
    wait_for(page, CONNECTED, 20)
    settings = page.evaluate("window.__micSettings")
    assert page.evaluate("avatarchat.state().mic") == "on" and settings, settings
    assert settings[-1]["echoCancellation"] is echo_cancellation, settings
    page.fill("#text", LONG_QUESTION)
    page.click("#send")
    turn = wait_for(page, "() => avatarchat.messages.find((m) => m.msg.type === 'transcript')?.msg.turn", 30)
    # The `metrics` message comes when the turn's playout has ended.
    wait_for(page, "(turn) => avatarchat.messages.some((m) => m.msg.turn === turn"
                   " && (m.msg.interrupted || m.msg.type === 'metrics'))", 90, arg=turn)
    cut = page.evaluate(
        "(turn) => { const m = avatarchat.messages.find((m) => m.msg.type === 'reply' && m.msg.turn === turn"
        " && m.msg.interrupted); return m ? {...m.msg, t: m.t} : null; }", turn)
    finished = page.evaluate("(turn) => avatarchat.messages.some((m) => m.msg.type === 'metrics'"
                             " && m.msg.turn === turn)", turn)
    return {"turn": turn, "cut": cut, "finished": finished}


def db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-9))


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x))) if len(x) else 0.0


def echo_levels(page: Any, until: float | None = None) -> dict[str, Any]:
    """The microphone (as sent) against the avatar's voice as played, from the voice's first
    audible sample to ``until`` (page time; default: its last one).

    ``echo_db``: the median over ``BLOCK_MS`` blocks with the voice audible of mic power
    minus voice power (what the loop, and the echo canceller, typically leave); ``mean_db``:
    the same over the whole span (dominated by any burst that leaked through); ``leak_ms``:
    time the mic spent above -50 dBFS, ``leaks``: when (ms from the start), ``peak_dbfs``."""
    played = page.evaluate("avatarchat.envelope('heard')")
    if not played["t"]:  # a page without the volume-aware envelope
        played = page.evaluate("avatarchat.envelope('remote')")
    mic = page.evaluate("avatarchat.envelope('mic')")
    vt, vr = np.asarray(played["t"]), np.asarray(played["rms"])
    mt, mr = np.asarray(mic["t"]), np.asarray(mic["rms"])
    loud = vt[vr > AUDIBLE]
    assert len(loud), "the avatar's voice was never audible in the page"
    start, end = float(loud[0]), float(until if until is not None else loud[-1])
    blocks = []
    for b in np.arange(start, end, BLOCK_MS):
        voice = vr[(vt >= b) & (vt < b + BLOCK_MS)]
        if len(voice) and voice.max() > AUDIBLE:
            echo = power(mr[(mt >= b) & (mt < b + BLOCK_MS)])
            blocks.append(10 * math.log10(max(echo, 1e-18) / power(voice)))
    span = mr[(mt >= start) & (mt <= end + 200)]  # the loop's delay: well under 200 ms
    voice = vr[(vt >= start) & (vt <= end)]
    leaks = mt[(mt >= start) & (mt <= end + 200) & (mr > LEAK_RMS)] - start
    return {"echo_db": float(np.median(blocks)) if blocks else float("nan"), "blocks": len(blocks),
            "mean_db": 10 * math.log10(max(power(span), 1e-18) / power(voice)),
            "voice_dbfs": 10 * math.log10(power(voice)), "peak_dbfs": db(float(span.max(initial=0.0))),
            "leak_ms": 10 * len(leaks), "leaks": sorted({int(x // 100 * 100) for x in leaks}),
            "seconds": (end - start) / 1000}


def describe(levels: dict[str, Any]) -> str:
    return (f"echo {levels['echo_db']:+.1f} dB (median of {levels['blocks']} blocks; mean {levels['mean_db']:+.1f} dB) "
            f"of the voice at {levels['voice_dbfs']:.1f} dBFS over {levels['seconds']:.1f} s; mic peak "
            f"{levels['peak_dbfs']:.1f} dBFS, above -50 dBFS for {levels['leak_ms']} ms (at {levels['leaks']} ms)")


def gate_mutes(page: Any) -> list[dict[str, Any]] | None:
    """The page's barge-in gate muting the avatar because it heard "the user" (None: no gate)."""
    if not page.evaluate("typeof avatarchat.bargeIn === 'function'"):
        return None
    return [e for e in page.evaluate("avatarchat.bargeIn().events") if e["what"] == "mute" and e["reason"] == "voice"]


# --- tests --------------------------------------------------------------------------------


def test_without_echo_cancellation_the_echo_cuts_the_reply(loop_browser: LoopBrowser, server: ServeProcess) -> None:
    """The control: with the mic's processing off (``?raw=1``) the microphone carries the
    avatar's voice at ``ECHO_DB``, and it barges in: the tests below can fail."""
    page = open_loop_page(loop_browser, server, raw=True)
    try:
        story = tell_a_story(page, echo_cancellation=False)
        cut = story["cut"]
        levels = echo_levels(page)  # to the last of the voice, which the cut ends
        mutes = gate_mutes(page)
        print(f"\nno echo cancellation: {describe(levels)}; cut to {cut['text'] if cut else None!r}; "
              f"page mutes at {[(round(m['t']), m.get('over')) for m in mutes or []]} (ms, × threshold)")
        # The loop works, at its level. The mean, not the block median: uncancelled there are no
        # bursts to be robust against, and the echo cuts the reply within ~0.5 s, so the median
        # is of 2-3 blocks, one of them the tail where the voice stops and its echo lingers
        # (median -10.7 dB with the mean at -14.3 dB in a CI run; means -14.3 to -16.3 in 7 runs).
        assert abs(levels["mean_db"] - ECHO_DB) < 4, describe(levels)
        assert cut is not None, "the avatar's echo, uncancelled, did not cut its reply"
    finally:
        close_pages(server, page)


@pytest.fixture(scope="module")
def cancelled_echo(loop_browser: LoopBrowser, server: ServeProcess) -> dict[str, Any]:
    """A long reply played to its end (or cut) into the loop with the page's default
    constraints (echo cancellation on): the story, the levels, the page gate's mutes (None: a
    page without the gate) and its volume changes."""
    page = open_loop_page(loop_browser, server, raw=False)
    try:
        story = tell_a_story(page, echo_cancellation=True)
        cut, mutes = story["cut"], gate_mutes(page)
        levels = echo_levels(page, until=cut["t"] if cut else None)
        volumes = page.evaluate("avatarchat.bargeIn().volumeLog") if mutes is not None else None
        print(f"\necho cancellation: {describe(levels)}; cut to {cut['text'] if cut else None!r}; "
              f"page mutes at {[(round(m['t']), m.get('over')) for m in mutes or []]} (ms, × threshold)")
        return {**story, "levels": levels, "mutes": mutes, "volumes": volumes}
    finally:
        close_pages(server, page)


def test_echo_cancellation_keeps_the_avatars_own_voice_from_cutting_its_reply(
        cancelled_echo: dict[str, Any]) -> None:
    """The issue's requirement: no false barge-in from ≥ 5 s of the avatar's own echo at a
    realistic level, relying on the browser's echo cancellation (the page's defaults)."""
    levels = cancelled_echo["levels"]
    assert cancelled_echo["cut"] is None, f"the avatar's own echo cut its reply: {describe(levels)}"
    assert cancelled_echo["finished"], "the reply did not play to its end"
    assert levels["seconds"] >= ECHO_FOR_S, f"the reply played only {levels['seconds']:.1f} s"
    # Strongly attenuated, not just quieter: uncancelled, it is at ECHO_DB.
    assert levels["echo_db"] < ECHO_DB - 20, describe(levels)


@pytest.mark.xfail(reason=GATE_MUTES, strict=False)
def test_the_echo_does_not_mute_the_avatar_in_the_page(cancelled_echo: dict[str, Any]) -> None:
    """The page's own barge-in gate (web/bargein.js) does not take the echo for the user either
    (a false mute does not cut the reply: the gate fades it back up after its grace time)."""
    if cancelled_echo["mutes"] is None:
        pytest.skip("this page has no barge-in gate (avatarchat.bargeIn)")
    assert cancelled_echo["mutes"] == [], describe(cancelled_echo["levels"])
    assert all(v["volume"] == 1 for v in cancelled_echo["volumes"]), cancelled_echo["volumes"]
