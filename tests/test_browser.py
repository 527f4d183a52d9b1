"""The web page in real headless Chromium against a real `avatarchat serve` (real models).

One server for the module; Chromium's fake microphone plays the sample question (or
silence, for the typed tests) from the moment the page opens the capture. Barge-in in the
page is in test_bargein_browser.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    CONNECTED,
    ServeProcess,
    close_pages,
    launch_chromium,
    log_lines,
    open_page,
    padded_question_wav,
    wait_for,
)

pytestmark = pytest.mark.slow

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

REPLY_DONE = "() => document.querySelector('#log .msg.avatar[data-final]')"
METRICS_SHOWN = "() => document.querySelectorAll('#metrics [data-key]').length > 0"


def voice_mutes(page: Any) -> list[dict[str, Any]]:
    """The page's barge-in gate muting the avatar because it heard the user (web/bargein.js)."""
    return [e for e in page.evaluate("avatarchat.bargeIn().events") if e["what"] == "mute" and e["reason"] == "voice"]


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: these tests are synchronous, and playwright's sync
    API keeps its own event loop running in this thread, where pytest-asyncio cannot run one."""


@pytest.fixture(scope="module")
def voice_browser(pw: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium whose microphone says "What is the capital of France?" 3 s after it opens."""
    wav = padded_question_wav(tmp_path_factory.mktemp("mic") / "question.wav")
    browser = launch_chromium(pw, fake_audio=wav)
    yield browser
    browser.close()


def ask_typed(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def test_spoken_question_gets_transcript_reply_video_audio_and_latency(
        voice_browser: Any, server: ServeProcess, tmp_path: Path) -> None:
    page = open_page(voice_browser, server.url)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        assert page.locator("#connection").get_attribute("data-state") == "connected"

        # The question is heard and transcribed.
        wait_for(page, "() => /capital.*france/i.test(document.querySelector('#log .msg.user')?.textContent)", 30)
        user = log_lines(page, "user")
        assert len(user) == 1 and "capital" in user[0].lower() and "france" in user[0].lower(), user
        # The Mute button's level bar rose with the question.
        level = page.evaluate("avatarchat.micLevel()")
        assert level["peak"] > 0.4, level

        # Video keeps flowing: frames decoded and rendered over 3.5 s (the frame rate is a
        # performance figure, `avatarchat bench e2e`; a busy CI machine decodes fewer).
        s0, t0 = page.evaluate("avatarchat.stats()"), time.monotonic()
        time.sleep(3.5)
        s1, t1 = page.evaluate("avatarchat.stats()"), time.monotonic()
        fps = (s1["video"]["framesDecoded"] - s0["video"]["framesDecoded"]) / (t1 - t0)
        assert fps >= 5, f"decoded {fps:.1f} fps"
        assert s1["rvfc"]["frames"] > s0["rvfc"]["frames"]
        assert (s1["video"]["frameWidth"], s1["video"]["frameHeight"]) == (512, 512)
        # The user is silent meanwhile, and the answer asked for DTX on the mic
        # (server.mic_dtx): Chromium sends a few packets a second instead of 50.
        mic_rate = (s1["mic"]["packetsSent"] - s0["mic"]["packetsSent"]) / (t1 - t0)
        assert mic_rate < 15, f"{mic_rate:.1f} mic packets a second while the user is silent"

        # The reply's text streams into the log, its audio arrives and is audible.
        wait_for(page, REPLY_DONE, 90)
        assert log_lines(page, "avatar")[0], "empty reply"
        wait_for(page, "() => avatarchat.segments('remote').length > 0", 20)
        asked = next(m["t"] for m in page.evaluate("avatarchat.messages") if m["msg"]["type"] == "transcript")
        heard = page.evaluate("avatarchat.segments('remote')")
        assert any(s["start"] > asked - 500 and s["peak"] > 0.02 for s in heard), heard
        assert page.evaluate("avatarchat.stats()")["audio"]["totalSamplesReceived"] > s0["audio"]["totalSamplesReceived"]
        # Nobody spoke over the reply: the page never muted it.
        assert voice_mutes(page) == [], voice_mutes(page)

        # Latency figures of the turn, formatted in ms.
        wait_for(page, METRICS_SHOWN, 40)
        figures = page.locator("#metrics [data-key]").all_inner_texts()
        assert any(re.search(r"\d+(\.\d)? ms", f) for f in figures), figures
        assert page.locator("#metrics [data-key='first_audio_after_speech_end_ms']").count() == 1
        # The turn ended on time although the mic went quiet: the server put the silence back
        # (server/micgaps.py; without it the VAD would hear 0.1 s of silence a second).
        metrics = next(m["msg"] for m in page.evaluate("avatarchat.messages") if m["msg"]["type"] == "metrics")
        print(f"\nmic {mic_rate:.1f} packets/s while silent; speech end -> decision {metrics['vad_hangover_ms']} ms")
        assert metrics["vad_hangover_ms"] < 1500, metrics

        # The page as a user sees it: the avatar's video is not blank.
        shot = tmp_path / "spoken.png"
        page.screenshot(path=str(shot))
        assert_not_blank(shot)
        video = tmp_path / "video.png"
        page.locator("#avatar-video").screenshot(path=str(video))
        assert_not_blank(video)
    finally:
        close_pages(server, page)


def assert_not_blank(png: Path) -> None:
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.size > 0, f"{png} is not an image"
    assert float(img.std()) > 15.0, f"{png} looks blank (std {img.std():.1f})"


def test_typed_question_gets_a_reply(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        ask_typed(page, "What is the capital of Italy?")
        wait_for(page, REPLY_DONE, 90)
        assert log_lines(page, "user") == ["What is the capital of Italy?"]
        assert len(log_lines(page, "avatar")) == 1 and log_lines(page, "avatar")[0]
        # A silent microphone under a playing reply never mutes it.
        wait_for(page, "() => avatarchat.state().conversation === 'listening'", 30)
        gate = page.evaluate("avatarchat.bargeIn()")
        assert voice_mutes(page) == [] and gate["volume"] == 1 and gate["mode"] == "open", gate
        assert page.evaluate("avatarchat.micLevel()")["peak"] == 0  # nor moves the mic's level bar
    finally:
        close_pages(server, page)


MUTE_LEAD_S = 6.0


@pytest.fixture(scope="module")
def late_voice_browser(pw: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium whose microphone asks its question 6 s after it opens: time to mute it first."""
    wav = padded_question_wav(tmp_path_factory.mktemp("mic") / "question.wav", lead_s=MUTE_LEAD_S)
    browser = launch_chromium(pw, fake_audio=wav)
    yield browser
    browser.close()


def test_a_muted_microphone_sends_nothing_and_its_level_bar_stays_empty(
        late_voice_browser: Any, server: ServeProcess) -> None:
    page = open_page(late_voice_browser, server.url)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        page.click("#mute")
        assert page.evaluate("avatarchat.state().mic") == "muted"
        assert page.locator("#mute").get_attribute("aria-pressed") == "true"
        opened = page.evaluate("avatarchat.marks()")["micOpen"]  # Chromium starts the file then
        muted_after_s = (page.evaluate("avatarchat.now()") - opened) / 1000
        assert muted_after_s < MUTE_LEAD_S - 0.5, f"muted {muted_after_s:.1f} s after the mic opened: too late to test"
        # Past the question's end (1.6 s of speech after the lead) and the VAD's hangover.
        time.sleep(MUTE_LEAD_S + 3.5 - muted_after_s)
        assert page.evaluate("avatarchat.micLevel()")["peak"] == 0
        assert log_lines(page, "user") == [] and not page.evaluate(
            "avatarchat.messages.filter(m => m.msg.type === 'transcript')")
    finally:
        close_pages(server, page)


def test_interrupt_button_mutes_the_avatar_in_the_page_at_once(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        ask_typed(page, "Tell me a long story about a cat.")
        wait_for(page, "() => avatarchat.state().conversation === 'speaking'"
                       " && avatarchat.envelope('heard').rms.slice(-30).some((x) => x > 0.01)", 40)
        # Clicked and read in one step: the volume drops before any answer from the server.
        volume = page.evaluate("() => { document.querySelector('#interrupt').click();"
                               " return document.querySelector('#avatar-video').volume; }")
        assert volume <= 0.5, volume
        wait_for(page, "() => document.querySelector('#log .msg.avatar.interrupted')", 20)
        wait_for(page, "() => avatarchat.bargeIn().mode === 'open' && avatarchat.bargeIn().volume === 1", 5)
        events = [(e["what"], e["reason"]) for e in page.evaluate("avatarchat.bargeIn().events")]
        assert events[0] == ("mute", "interrupt") and events[1][0] == "hold" and events[-1][0] == "open", events
        assert page.evaluate("document.querySelector('#avatar-video').volume") == 1
    finally:
        close_pages(server, page)


def test_synthetic_label_is_visible(quiet_browser: Any, server: ServeProcess, tmp_path: Path) -> None:
    page = open_page(quiet_browser, server.url)
    try:
        label = page.locator("#synthetic-label")
        assert label.is_visible()
        assert label.inner_text() == "AI-animated likeness — not a real recording"
        box = label.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 10
        shot = tmp_path / "idle.png"
        page.screenshot(path=str(shot), full_page=True)
        assert_not_blank(shot)
    finally:
        page.context.close()


def test_two_pages_keep_their_own_conversations(quiet_browser: Any, server: ServeProcess) -> None:
    questions = ["What is the capital of Spain?", "How many legs does a spider have?"]
    pages = [open_page(quiet_browser, server.url) for _ in questions]
    try:
        for page in pages:
            page.click("#start")
        for page, question in zip(pages, questions, strict=True):
            wait_for(page, CONNECTED, 20)
            ask_typed(page, question)
        replies = []
        for page, question in zip(pages, questions, strict=True):
            wait_for(page, REPLY_DONE, 90)
            assert log_lines(page, "user") == [question]
            replies.append(log_lines(page, "avatar"))
            assert len(replies[-1]) == 1 and replies[-1][0]
        ids = {page.evaluate("avatarchat.state().sessionId") for page in pages}
        assert len(ids) == 2
    finally:
        close_pages(server, *pages)


def test_a_full_server_says_so(quiet_browser: Any) -> None:
    with ServeProcess(extra_args=["--max-sessions", "1"]) as small:
        first = open_page(quiet_browser, small.url)
        second = open_page(quiet_browser, small.url)
        try:
            first.click("#start")
            wait_for(first, CONNECTED, 20)
            second.click("#start")
            wait_for(second, "() => avatarchat.state().connection === 'failed'", 20)
            banner = second.locator("#banner")
            assert banner.is_visible()
            assert "server is full" in banner.inner_text().lower()
            assert first.evaluate("avatarchat.state().connection") == "connected"
        finally:
            first.context.close()
            second.context.close()


def test_denied_microphone_is_explained_and_typing_still_works(pw: Any, server: ServeProcess) -> None:
    # No --use-fake-ui-for-media-stream and no permission granted: Chromium refuses the mic.
    browser = launch_chromium(pw, fake_ui=False)
    try:
        page = open_page(browser, server.url)
        page.click("#start")
        wait_for(page, "() => avatarchat.state().mic === 'denied'", 10)
        banner = page.locator("#banner")
        assert banner.is_visible()
        assert "Microphone access was denied" in banner.inner_text()
        assert "type below" in banner.inner_text()
        wait_for(page, CONNECTED, 20)
        ask_typed(page, "What colour is the sky?")
        wait_for(page, REPLY_DONE, 90)
        assert log_lines(page, "user") == ["What colour is the sky?"]
        assert log_lines(page, "avatar")[0]
        close_pages(server, page)
    finally:
        browser.close()
