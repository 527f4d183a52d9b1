"""The avatar drawn in the page (client mode, web/avatar/), in real headless Chromium against a
real `avatarchat serve` (real models, ``server.avatar_mode: auto``).

Over WebRTC and over the WebSocket the page asks to draw the avatar itself, the server sends
no video but the face's parameters, and the page draws the portrait with WebGL (SwiftShader
here) and says so. A page without WebGL, and any page of a server set to ``video``, shows the
server's video and says that instead.

Lip-sync is measured in the page, as the face drawn against the voice played, at the onset of
each reply (the first audible moment: a clear event on both timelines):

- over the WebSocket, exactly: the reply player knows the media time of every sample it
  plays (``audio_at`` + samples, web/wsaudio.js) and finds where the voice turns audible (the
  end of the first 512/48000 s window whose RMS reaches 0.01); the page's WebAudio analyser
  on the player's output finds the same onset in page time (RMS >= 0.01 over its window of
  512 samples, read every 10 ms); the error is the media time the first frame drawn after
  that moment shows, less the time since, minus the onset's media time. The face
  aims at the speaker (the context's output timestamp), which plays what the analyser sees
  the output latency later: a negative error of about that is the page doing it right;
- over WebRTC, the voice as the receiver hands it to the speaker: the receiver's
  synchronization source (RTP timestamp, playout time, level of the last frame played) gives
  the reply's first audible frame (level >= 0.01), its playout time and its media time (RTP
  timestamp from the first packet played, media time 0); the error is the media time the
  first frame drawn after it shows minus the media time playing then (the last frame played
  by then, plus the time since: a server that stalls skips ahead in its media timeline, and
  the voice and the face jump with it). The page's clock reads the same receiver, so this checks the
  page's clock, its sampling and the draw loop, not the RTP origin: that is checked against
  the face rows themselves (the media time where the reply's jaw opens, which the WebSocket
  measurement puts within ~40 ms of the audible onset; over WebRTC it varies by about
  ±100 ms per reply, so only its median is bounded, loosely). Chromium's WebAudio tap on the
  received stream (the probe's "remote" envelope) lags the receiver's playout by 5-250 ms on
  this machine, differing from run to run: its figure is printed, not asserted.

The issue's target is ±40 ms. The assertions: the median within ±40 ms and every reply within
±120 ms (a stalled animation frame on a loaded machine is ~50 ms); the figures are printed.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser import (
    AUDIBLE,
    CHROMIUM,
    CONNECTED,
    ServeProcess,
    chromium_args,
    close_pages,
    open_page,
    wait_for,
)
from tests.configs import greedy_default

pytestmark = pytest.mark.slow

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

CLIENT_LABEL = "avatar: drawn in your browser (WebGL)"
VIDEO_LABEL = "avatar: video from the server"
#: Where screenshots of the page in each mode are kept for a person to look at.
SHOTS = Path("/tmp")
#: Short replies: the measurement is at each reply's onset.
QUESTIONS = ("Say hello.", "What is the capital of France?", "What is two plus two?", "Name a colour.")
#: The bounds asserted on the lip-sync error (ms): the issue's target for the median, and a
#: looser one per reply (see the module's docstring).
MEDIAN_BOUND_MS = 40.0
EACH_BOUND_MS = 120.0
#: How far the median audible onset may be from where the face rows' jaw opens (ms).
JAW_RISE_BOUND_MS = 150.0

#: JS helpers put in the page: the first frame drawn after page time t, {t, h: the media
#: time it shows} (null until there is one), and the media time
#: where the face rows' jaw opens (>= 0.05) for the sound at media time m: the start of the
#: open run at m or within 0.3 s after it (5 ms steps, up to 1 s back).
HELPERS = """
window.__shownAt = (t) => {
  const f = avatarchat.faceFrames(t);
  const j = (f?.t ?? []).findIndex((x, i) => f.h[i] !== null);
  return j < 0 ? null : { t: f.t[j], h: f.h[j] };
};
window.__jawRise = (m) => {
  const open = (x) => (avatarchat.faceAt(x)?.[0] ?? 0) >= 0.05;
  let x = m;
  while (!open(x) && x < m + 0.3) x += 0.005;
  if (!open(x)) return null;
  while (open(x - 0.005) && x > m - 1.0) x -= 0.005;
  return x;
};
window.__analysedOnset = (since) => {
  const env = avatarchat.envelope('remote');
  const i = env.t.findIndex((t, j) => t > since && env.rms[j] >= %(audible)f);
  return i < 0 ? null : env.t[i];
};
// The voice receiver's played frames (RTP timestamp, playout time, level), as they change.
window.__played = [];
window.__recorder = setInterval(() => {
  for (const s of avatarchat.syncSources()) {
    const last = window.__played.at(-1);
    if (last && last.rtp === s.rtpTimestamp) continue;
    const wall = s.timestamp > 1e12 ? s.timestamp : performance.timeOrigin + s.timestamp;
    window.__played.push({ rtp: s.rtpTimestamp, t: wall - performance.timeOrigin, level: s.audioLevel ?? 0 });
    if (window.__played.length > 20000) window.__played.splice(0, 10000);
  }
}, 4);
""" % {"audible": AUDIBLE}

#: WebRTC: the reply's first audible frame as played after page time `since`, and what was
#: drawn then; null until a frame has been drawn after it and the analyser has heard it.
RTC_ONSET = """
([since, level]) => {
  const origin = avatarchat.avatar().rtpOrigin;
  const o = window.__played.find((p) => p.t > since && p.level >= level);
  if (!o || origin === null) return null;
  const shown = window.__shownAt(o.t);
  const analysed = window.__analysedOnset(since);
  const shownAnalysed = analysed === null ? null : window.__shownAt(analysed);
  if (shown === null || shownAnalysed === null) return null;
  const mediaOf = (p) => ((p.rtp - origin) >>> 0) / 48000;
  const media = mediaOf(o);
  // The voice playing at page time t: the last frame played by then, and the time since
  // (a server that stalls skips ahead in its media timeline: the voice jumps with it).
  const playing = (t) => {
    const p = window.__played.filter((q) => q.t <= t).at(-1);
    return mediaOf(p) + (t - p.t) / 1000;
  };
  // What the first frame after each moment showed, against the voice playing then.
  return {
    played: o.t, media, jawRise: window.__jawRise(media), analysed,
    error: shown.h - playing(shown.t),
    errorAnalysed: shownAnalysed.h - (shownAnalysed.t - analysed) / 1000 - media,
  };
}
"""

#: WebSocket: the analyser's onset after `since` and what was drawn then; null until then.
WS_ONSET = """
(since) => {
  const analysed = window.__analysedOnset(since);
  const shown = analysed === null ? null : window.__shownAt(analysed);
  return shown === null ? null : { analysed, shownAt: shown.t, shown: shown.h - (shown.t - analysed) / 1000 };
}
"""


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: these tests are synchronous, and playwright's sync
    API keeps its own event loop running in this thread, where pytest-asyncio cannot run one."""


def open_client_page(browser: Any, server: ServeProcess, query: str = "") -> Any:
    """The page, left to choose who draws the avatar (no ``?avatar=``), started and connected."""
    page = open_page(browser, server.url + "?raw=1" + query, raw=False, avatar=None)
    page.click("#start")
    wait_for(page, CONNECTED, 30)
    page.evaluate(HELPERS)
    return page


def ask(page: Any, text: str) -> float:
    """Types ``text`` and sends it; returns the page time just before."""
    since = float(page.evaluate("avatarchat.now()"))
    page.fill("#text", text)
    page.click("#send")
    return since


def wait_talking(page: Any, since: float) -> None:
    """Until the reply plays (the state says so) and its mouth has opened past 0.2 since."""
    wait_for(page, "() => avatarchat.state().conversation === 'speaking'", 60)
    t = float(page.evaluate("avatarchat.now()"))
    wait_for(page, f"() => (avatarchat.faceFrames({max(since, t)})?.drawn ?? []).some((x) => x > 0.2)", 30)


#: The reply's voice has played out in the page (the last 0.5 s of it quiet): over the
#: WebSocket on a busy machine the page plays up to ~1 s behind the server's "listening".
QUIET = (f"() => avatarchat.state().conversation === 'listening'"
         f" && avatarchat.envelope('remote').rms.slice(-50).every((x) => x < {AUDIBLE})")


def wait_listening(page: Any) -> None:
    wait_for(page, QUIET, 60)


def mouth_box(server: ServeProcess, pad: int = 12) -> tuple[int, int, int, int]:
    """The inner lips' rest box in the portrait's pixels (from the rig document), padded."""
    with urllib.request.urlopen(server.url + "api/avatar/rig", timeout=10) as resp:
        rig = json.load(resp)
    rest = np.asarray(rig["rest"], float).reshape(-1, 2)
    pts = rest[rig["mouth"]["upper_inner"] + rig["mouth"]["lower_inner"]]
    x0, y0 = np.floor(pts.min(0)).astype(int) - pad
    x1, y1 = np.ceil(pts.max(0)).astype(int) + pad
    return int(x0), int(y0), int(x1), int(y1)


def canvas_pixels(page: Any, path: Path) -> np.ndarray:
    """The drawn canvas as the page shows it (a screenshot of the element), 512x512 RGB."""
    import cv2

    page.locator("#avatar-gl").screenshot(path=str(path))
    img = cv2.imread(str(path))
    assert img is not None, path
    return cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA).astype(np.float32)


def portrait(server: ServeProcess) -> np.ndarray:
    import cv2

    with urllib.request.urlopen(server.url + "api/avatar/image.png", timeout=10) as resp:
        img = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "the portrait is not a PNG"
    return cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA).astype(np.float32)


def summary(errors: list[float]) -> str:
    a = np.asarray(errors)
    return (f"median {np.median(a):+.0f} ms, p90 |err| {np.percentile(np.abs(a), 90):.0f} ms, "
            f"range {a.min():+.0f}..{a.max():+.0f} ms over {len(a)} replies")


def assert_lip_sync(errors: list[float], what: str) -> None:
    assert abs(statistics.median(errors)) <= MEDIAN_BOUND_MS, f"{what}: {summary(errors)}: {errors}"
    assert max(abs(e) for e in errors) <= EACH_BOUND_MS, f"{what}: {summary(errors)}: {errors}"


def check_client_mode(page: Any, transport: str) -> None:
    """The page draws the avatar, says so, and shows the canvas in the video's place."""
    state = page.evaluate("avatarchat.state()")
    assert state["transport"] == transport and state["avatar"] == "client", state
    wait_for(page, "() => avatarchat.avatar().shown", 20)
    avatar = page.evaluate("avatarchat.avatar()")
    assert avatar["asked"] == "client" and avatar["mode"] == "client" and avatar["label"] == CLIENT_LABEL, avatar
    assert page.locator("#avatar-mode").is_visible() and page.locator("#avatar-mode").inner_text() == CLIENT_LABEL
    assert page.locator("#avatar-gl").is_visible()
    assert not page.locator("#avatar-video").is_visible() and not page.locator("#avatar-canvas").is_visible()
    assert page.locator("#avatar-gl").bounding_box() == page.locator(".video-wrap").bounding_box()
    assert avatar["drawErrors"] == 0 and avatar["rowsReceived"] > 0 and avatar["fps"] == 25, avatar


def test_the_page_draws_the_avatar_over_webrtc_and_the_mouth_moves_with_a_reply(
        quiet_browser: Any, server: ServeProcess) -> None:
    page = open_client_page(quiet_browser, server)
    try:
        check_client_mode(page, "webrtc")
        assert page.evaluate("avatarchat.avatar().clock") == "rtp"
        # No video comes from the server: its video m-line is answered inactive.
        stats = page.evaluate("avatarchat.stats()")
        assert stats["video"] is None or stats["video"]["framesDecoded"] == 0, stats["video"]
        assert page.evaluate("avatarchat.frames().count") == 0

        # At rest the drawn face is the portrait (give or take a blink, the breath, the look).
        time.sleep(1.0)
        rest = canvas_pixels(page, SHOTS / "client_avatar_rest.png")
        assert float(rest.std()) > 15.0, "the canvas looks blank"
        photo = portrait(server)
        assert float(np.abs(rest - photo).mean()) < 12.0, float(np.abs(rest - photo).mean())

        since = ask(page, "Tell me about the moon.")
        opened = f"() => (avatarchat.faceFrames({since})?.drawn ?? []).some((x) => x > 0.2)"
        wait_for(page, opened, 60)
        # The mouth's pixels change while the jaw is open; the background's do not.
        x0, y0, x1, y1 = mouth_box(server)
        changes, background = [], []
        for i in range(12):
            jaw = page.evaluate("avatarchat.faceFrames(avatarchat.now() - 100).drawn.at(-1) ?? -1")
            img = canvas_pixels(page, SHOTS / f"client_avatar_talking_{i}.png")
            changes.append((float(np.abs(img[y0:y1, x0:x1] - rest[y0:y1, x0:x1]).mean()), jaw))
            background.append(float(np.abs(img[:40, -40:] - rest[:40, -40:]).mean()))  # the top right: flag, no labels
            if i == 5:
                page.screenshot(path=str(SHOTS / "client_avatar_webrtc.png"))
        biggest = max(changes)
        assert biggest[0] > 6.0, f"the mouth's pixels barely changed while speaking: {changes}"
        assert max(background) < 2.0, background
        wait_listening(page)
        print(f"\nclient mode over WebRTC: mouth area changed up to {biggest[0]:.1f}/255 (jaw {biggest[1]}); "
              f"rest vs portrait {float(np.abs(rest - photo).mean()):.1f}/255; page: {SHOTS / 'client_avatar_webrtc.png'}")
    finally:
        close_pages(server, page)


def test_between_replies_the_voice_sends_dtx_and_the_face_stays_alive(
        quiet_browser: Any, server: ServeProcess) -> None:
    """Between replies the server sends one DTX packet every 200 ms (server/opus.py), not 50
    silent packets a second: the page's clock of what it hears (read from the packets it
    plays) still runs with the wall clock, the idle face still moves, and the speaker plays
    no more concealment than it did (the decoder is told the gap is DTX, not loss)."""
    page = open_client_page(quiet_browser, server)
    try:
        ask(page, "Hello.")
        wait_for(page, "() => (avatarchat.faceFrames(0)?.drawn ?? []).some((x) => x > 0.2)", 60)
        wait_listening(page)
        time.sleep(1.0)  # the silence settles, then DTX
        probe = "async () => [avatarchat.now(), avatarchat.avatar().heard, (await avatarchat.stats()).audio]"
        t0, h0, a0 = page.evaluate(probe)
        since = float(page.evaluate("avatarchat.now()"))
        time.sleep(4.0)
        t1, h1, a1 = page.evaluate(probe)
        seconds = (t1 - t0) / 1000
        rate = (a1["packetsReceived"] - a0["packetsReceived"]) / seconds
        concealed = (a1["concealedSamples"] - a0["concealedSamples"]) / max(1, a1["totalSamplesReceived"] - a0["totalSamplesReceived"])
        frames = page.evaluate(f"avatarchat.faceFrames({since})")
        print(f"\nbetween replies: {rate:.1f} voice packets/s, heard clock {h1 - h0:.2f} s in {seconds:.2f} s, "
              f"concealed {concealed:.1%} of samples, {len(frames['t'])} frames drawn")
        assert rate < 10, f"{rate:.1f} packets a second between replies (DTX sends 5)"
        assert abs((h1 - h0) - seconds) < 0.35, (h1 - h0, seconds)  # the clock did not stand
        assert len({round(x, 4) for x in frames["h"]}) > 0.8 * len(frames["h"]) > 40  # new rows, frame by frame
        assert concealed < 0.05, f"{concealed:.1%} of the idle voice concealed"
    finally:
        close_pages(server, page)


def test_lip_sync_over_webrtc_measured_in_the_page(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_client_page(quiet_browser, server)
    try:
        wait_for(page, "() => avatarchat.avatar().shown && avatarchat.avatar().rtpOrigin !== null", 20)
        rows = []
        for question in QUESTIONS:
            since = ask(page, question)
            rows.append(wait_for(page, RTC_ONSET, 60, arg=[since, AUDIBLE]))
            wait_listening(page)
        played = [1000 * r["error"] for r in rows]
        analysed = [1000 * r["errorAnalysed"] for r in rows]
        tap_lag = [r["analysed"] - r["played"] for r in rows]
        jaw = [1000 * (r["media"] - r["jawRise"]) for r in rows if r["jawRise"] is not None]
        print(f"\nlip-sync over WebRTC (Chromium), face drawn minus voice played: {summary(played)}: "
              f"{[round(e) for e in played]}; at the analyser's onset: {summary(analysed)} (the WebAudio tap "
              f"lags playout by {[round(x) for x in tap_lag]} ms); audible onset minus the rows' jaw rise: "
              f"{[round(x) for x in jaw]} ms")
        assert_lip_sync(played, "WebRTC")
        # The RTP timeline agrees with the face rows': the reply's jaw opens near its audible
        # onset (a wrong origin or clock rate would show here as a shift; per reply this
        # varies by ±100 ms, the rows' jaw rising with the first phoneme, not its energy).
        assert len(jaw) >= len(rows) - 1 and abs(statistics.median(jaw)) <= JAW_RISE_BOUND_MS, jaw
    finally:
        close_pages(server, page)


def test_the_interrupt_closes_the_mouth_in_the_frame_the_voice_stops(
        quiet_browser: Any, server: ServeProcess) -> None:
    """The interrupt button mutes the voice in the page at once (web/bargein.js); the mouth
    starts closing in the first frame drawn after that and is shut MOUTH_CLOSE_S (0.12 s)
    later, before the server's cut arrives. Measured: the gate's volume, the "heard" level
    (the voice times the element's volume) and the drawn frames' mouth gain and jaw."""
    page = open_client_page(quiet_browser, server)
    try:
        wait_talking(page, ask(page, "Tell me a long story about a cat."))
        clicked = page.evaluate("() => { document.querySelector('#interrupt').click();"
                                " return {t: avatarchat.now(), volume: avatarchat.bargeIn().volume}; }")
        assert clicked["volume"] < 1, clicked
        cut = wait_for(page, "() => avatarchat.messages.find((m) => m.msg.type === 'reply' && m.msg.interrupted)", 20)
        wait_for(page, f"() => avatarchat.now() > {clicked['t'] + 600}", 5)
        frames = page.evaluate(f"avatarchat.faceFrames({clicked['t'] - 200})")
        t, gain, drawn = np.asarray(frames["t"]), np.asarray(frames["gain"]), np.asarray(frames["drawn"])
        before, after = t < clicked["t"], t >= clicked["t"]
        assert gain[before].min() == 1.0 and drawn[before].max() > 0, "the mouth was not open before the click"
        first = np.argmax(after)
        assert gain[first] < 1.0, f"the first frame after the click did not start closing: {gain[first]}"
        shut = t[after & (gain == 0.0)]
        assert shut.size, gain[after]
        interval = float(np.median(np.diff(t)))
        # Shut MOUTH_CLOSE_S after that frame (frame times add up to it: one frame more at most).
        assert shut[0] - t[first] <= 120 + 2 * max(interval, 1000 / 60), (shut[0] - t[first], interval)
        # Shut while the page keeps the voice muted (until the cut reply's rest has drained
        # from the jitter buffer, or the next reply: web/bargein.js's "open").
        gate = page.evaluate("avatarchat.bargeIn()")
        reopened = min([e["t"] for e in gate["events"] if e["what"] == "open" and e["t"] > clicked["t"]],
                       default=float("inf"))
        muted = (t >= shut[0]) & (t < reopened)
        assert muted.any() and drawn[muted].max() == 0.0, "the mouth opened while the voice was muted"
        heard = page.evaluate("avatarchat.envelope('heard')")
        quiet = next(ti for ti, x in zip(heard["t"], heard["rms"], strict=True) if ti >= clicked["t"] and x < AUDIBLE)
        print(f"\ninterrupt in client mode: voice heard silent {quiet - clicked['t']:.0f} ms after the click; the mouth "
              f"started closing in the first frame ({t[first] - clicked['t']:.0f} ms after it), shut "
              f"{shut[0] - clicked['t']:.0f} ms after it (frames every {interval:.0f} ms); the server's cut "
              f"came {cut['t'] - clicked['t']:.0f} ms after it")
        wait_listening(page)
    finally:
        close_pages(server, page)


def test_client_mode_over_websocket_lip_sync_and_interrupt(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_client_page(quiet_browser, server, "&transport=ws")
    try:
        check_client_mode(page, "websocket")
        assert page.evaluate("avatarchat.stats()")["hello"]["video"] == "params"
        # No frames over the socket: the face's parameters instead.
        assert page.evaluate("avatarchat.stats()")["video"]["framesReceived"] == 0
        errors = []
        for question in QUESTIONS:
            since = ask(page, question)
            seen = wait_for(page, WS_ONSET, 60, arg=since)
            onsets = [o for o in page.evaluate("avatarchat.stats()")["onsets"] if o["t"] > since]
            assert onsets, page.evaluate("avatarchat.stats()")
            errors.append(1000 * (seen["shown"] - onsets[0]["m"]))
            wait_listening(page)
        assert page.evaluate("avatarchat.avatar().clock") == "audio"
        print(f"\nlip-sync over the WebSocket (Chromium), face drawn minus voice heard at the analyser's onset: "
              f"{summary(errors)}: {[round(e) for e in errors]}")
        assert_lip_sync(errors, "WebSocket")

        # The interrupt drops the queued voice and the mouth closes with it.
        wait_talking(page, ask(page, "Tell me a long story about a dog."))
        page.screenshot(path=str(SHOTS / "client_avatar_websocket.png"))
        clicked = page.evaluate("() => { document.querySelector('#interrupt').click();"
                                " return {t: avatarchat.now(), gate: avatarchat.bargeIn(), state: avatarchat.state()}; }")
        wait_for(page, f"() => avatarchat.now() > {clicked['t'] + 400}", 5)
        frames = page.evaluate(f"avatarchat.faceFrames({clicked['t']})")
        t, gain = np.asarray(frames["t"]) - clicked["t"], np.asarray(frames["gain"])
        assert gain[0] < 1.0 and t[gain == 0.0].min() <= 120 + 2 * 1000 / 15, (t, gain, clicked)
        wait_listening(page)
    finally:
        close_pages(server, page)


def test_without_webgl_the_page_shows_the_server_video_and_says_so(pw: Any, server: ServeProcess) -> None:
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                 args=[*chromium_args(loop=True), "--disable-webgl"])
    page = None
    try:
        page = open_client_page(browser, server)
        avatar = page.evaluate("avatarchat.avatar()")
        assert avatar["asked"] == "video" and avatar["mode"] == "video", avatar
        assert "WebGL2" in avatar["why"] and avatar["label"] == VIDEO_LABEL, avatar
        wait_for(page, "() => avatarchat.frames().count >= 5", 30)
        assert page.locator("#avatar-video").is_visible() and not page.locator("#avatar-gl").is_visible()
        assert page.locator("#avatar-mode").inner_text() == VIDEO_LABEL
        page.screenshot(path=str(SHOTS / "client_avatar_no_webgl.png"))
    finally:
        if page is not None:
            close_pages(server, page)
        browser.close()


@pytest.fixture(scope="module")
def video_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A server set to render the avatar itself (``server.avatar_mode: video``)."""
    import yaml

    path = greedy_default(tmp_path_factory.mktemp("video"))
    config = yaml.safe_load(path.read_text())
    config.setdefault("server", {})["avatar_mode"] = "video"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with ServeProcess(config=path) as s:
        yield s


def test_a_server_set_to_video_sends_video_and_the_page_says_so(quiet_browser: Any, video_server: ServeProcess) -> None:
    for query in ("", "&transport=ws"):
        page = open_client_page(quiet_browser, video_server, query)
        try:
            avatar = page.evaluate("avatarchat.avatar()")
            assert avatar["asked"] == "video" and avatar["mode"] == "video" and avatar["label"] == VIDEO_LABEL, avatar
            assert page.evaluate("avatarchat.state().avatar") == "video"
            wait_for(page, "() => avatarchat.frames().count >= 5", 30)
            assert not page.locator("#avatar-gl").is_visible()
            if not query:
                page.screenshot(path=str(SHOTS / "client_avatar_video_mode.png"))
        finally:
            close_pages(video_server, page)


#: avatar/face.js driven in virtual time in the page's own JavaScript engine: the face
#: timeline, the mouth's mute envelope and the WebRTC clock (its peer connection a stand-in
#: that plays RTP timestamps as told: engine logic, no network).
FACE_HARNESS = """
async () => {
  const { FaceTimeline, MouthGate, RtcHeardClock, PARAM_NAMES } = await import(new URL("avatar/face.js", location.href).href);
  const row = (jaw, blink = 0) => PARAM_NAMES.map((n) => (n === "jaw" ? jaw : n === "blink" ? blink : 0));
  const out = {};
  const tl = new FaceTimeline(25);
  out.empty = tl.rowAt(1.0);
  tl.add(25, [row(0.0), row(0.4), row(0.8)]);  // frames 25..27: t = 1.00, 1.04, 1.08
  out.between = tl.rowAt(1.02)[0];             // halfway 0 -> 0.4
  out.held = tl.rowAt(5.0)[0];                 // after the last row: the last
  out.before = tl.rowAt(0.5)[0];               // before the first: the first
  tl.add(26, [row(0.1)]);                      // a later row for frame 26 replaces it
  out.replaced = tl.rowAt(1.04)[0];
  out.malformed = tl.add(30, [[1, 2], "x", row(NaN)]);
  out.nanIsZero = tl.rowAt(32 / 25)[0];
  tl.setNames(["blink", "jaw"]);               // a server that sends two values, in its order
  tl.add(40, [[1, 0.3]]);
  out.renamed = [tl.rowAt(1.6)[0], tl.rowAt(1.6)[5]];
  tl.setNames(PARAM_NAMES);
  for (let k = 41; k < 200; k++) tl.add(k, [row(k / 1000)]);
  tl.prune(199 / 25);
  out.kept = tl.rows.size;
  out.afterPrune = tl.rowAt(199 / 25)[0];

  // The mouth closes over 0.12 s from the first frame the voice is muted, at 60 Hz, and
  // reopens when the voice does.
  const gate = new MouthGate();
  const gains = [];
  let t = 0;
  for (; t < 100; t += 1000 / 60) gate.update(t, 1);
  for (let i = 0; i < 12; i++, t += 1000 / 60) gains.push(gate.update(t, 0));
  out.closing = gains;
  out.drawn = gate.apply(Float32Array.from(row(0.6, 1))).slice(0, 6);
  const reopening = [];
  for (let i = 0; i < 10; i++, t += 1000 / 60) reopening.push(gate.update(t, 1));
  out.reopening = reopening;
  // A stalled page (a hidden tab) takes one full step at most.
  out.stalled = new MouthGate().update(0, 1) && (() => { const g = new MouthGate(); g.update(0, 1); return g.update(5000, 0); })();

  // The WebRTC clock: RTP timestamps (48 kHz) played as told, on the wall clock.
  let played = null;
  const pc = { getReceivers: () => [{ track: { kind: "audio" }, getSynchronizationSources: () => (played ? [played] : []) }],
               getStats: async () => new Map() };
  const clock = new RtcHeardClock(pc);
  const wall0 = performance.timeOrigin;
  out.beforeClock = clock.now(1000);
  clock.setMediaZero(wall0 / 1000);            // media 0 at page time 0
  clock.takeStats(wall0 + 900, 0.0, 0);
  clock.takeStats(wall0 + 1000, 0.06 * 960, 960);  // each sample 60 ms in the jitter buffer
  out.path = [clock.source, clock.now(1000)];  // no packet yet: wall clock less the path
  played = { source: 7, rtpTimestamp: 4294967000, timestamp: wall0 + 1100 };  // the first packet
  clock.now(1100);
  played = { source: 7, rtpTimestamp: (4294967000 + 48000) % 4294967296, timestamp: wall0 + 2150 };  // wraps
  out.rtp = [clock.source, clock.now(2160)];   // 1 s of media, 10 ms after it played
  played = { ...played, timestamp: wall0 + 2160 };  // the packet's second 10 ms frame
  out.secondFrame = clock.now(2170);           // still the packet's start + 20 ms
  out.unplayed = clock.now(2600);              // nothing played since 2160: 300 ms on at most
  return out;
}
"""


def test_face_timeline_mouth_gate_and_clock_in_virtual_time(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url, avatar=None)
    try:
        out = page.evaluate(FACE_HARNESS)
    finally:
        page.context.close()
    assert out["empty"] is None
    assert out["between"] == pytest.approx(0.2, abs=1e-6)
    assert out["held"] == pytest.approx(0.8, abs=1e-6) and out["before"] == 0.0
    assert out["replaced"] == pytest.approx(0.1, abs=1e-6)
    assert out["malformed"] == 1 and out["nanIsZero"] == 0.0  # short rows and non-rows skipped
    assert out["renamed"] == pytest.approx([0.3, 1.0], abs=1e-6)
    assert out["kept"] <= 52 and out["afterPrune"] == pytest.approx(0.199, abs=1e-6)
    closing = out["closing"]
    assert closing[0] < 1.0 and closing[0] == pytest.approx(1 - (1000 / 60) / 120, abs=1e-6)
    assert all(a > b for a, b in zip(closing[:7], closing[1:8], strict=True))
    assert closing[7] == 0.0 and closing[6] > 0.0  # shut on the 8th frame: 8 × 16.7 ms ≥ 120 ms
    assert out["drawn"] == pytest.approx([0, 0, 0, 0, 0, 1])  # the mouth shut, the blink kept
    assert out["reopening"][0] > 0.0 and out["reopening"][-1] == 1.0
    assert out["stalled"] == 0.0
    assert out["beforeClock"] is None
    assert out["path"][0] == "path" and out["path"][1] == pytest.approx(1.0 - 0.06, abs=1e-3)
    assert out["rtp"][0] == "rtp" and out["rtp"][1] == pytest.approx(1.01, abs=1e-3)
    assert out["secondFrame"] == pytest.approx(1.02, abs=1e-3)
    assert out["unplayed"] == pytest.approx(1.30, abs=1e-3)
