"""The web page in real headless Chromium against a real `avatarchat serve` (real models).

One server for the module; Chromium's fake microphone plays the sample question (or
silence, for the typed tests) from the moment the page opens the capture.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatarchat.audio.io import load_audio, write_wav
from tests.browser import (
    FAKE_MIC_RATE,
    SAMPLES,
    ServeProcess,
    launch_chromium,
    open_page,
    padded_question_wav,
    require_chromium,
    wait_for,
)

pytestmark = pytest.mark.slow

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

CONNECTED = "() => avatarchat.state().connection === 'connected'"
REPLY_DONE = "() => document.querySelector('#log .msg.avatar[data-final]')"
METRICS_SHOWN = "() => document.querySelectorAll('#metrics [data-key]').length > 0"


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: these tests are synchronous, and playwright's sync
    API keeps its own event loop running in this thread, where pytest-asyncio cannot run one."""


@pytest.fixture(scope="module")
def pw() -> Iterator[Any]:
    require_chromium()
    with playwright_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    require_chromium()
    with ServeProcess() as s:
        yield s


@pytest.fixture(scope="module")
def voice_browser(pw: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium whose microphone says "What is the capital of France?" 3 s after it opens."""
    wav = padded_question_wav(tmp_path_factory.mktemp("mic") / "question.wav")
    browser = launch_chromium(pw, fake_audio=wav)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def quiet_browser(pw: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium with a silent microphone (Chromium's default fake device beeps)."""
    wav = tmp_path_factory.mktemp("mic") / "silence.wav"
    write_wav(wav, np.zeros(FAKE_MIC_RATE, np.float32), FAKE_MIC_RATE)
    browser = launch_chromium(pw, fake_audio=wav, loop=True)
    yield browser
    browser.close()


def close_pages(server: ServeProcess, *pages: Any) -> None:
    """Stop the sessions the way a user would, and wait until the server has let them go."""
    for page in pages:
        if page.evaluate("avatarchat.state().connection") != "idle":
            page.click("#stop")
        page.context.close()
    wait_sessions(server, 0)


def wait_sessions(server: ServeProcess, n: int, timeout: float = 10.0) -> None:
    import json
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(server.url + "healthz", timeout=2) as resp:
            sessions = json.load(resp).get("sessions")
        if sessions == n or time.monotonic() > deadline:
            assert sessions == n, f"the server still holds {sessions} session(s)"
            return
        time.sleep(0.1)


def log_lines(page: Any, kind: str) -> list[str]:
    return [t.strip() for t in page.locator(f"#log .msg.{kind} .body").all_inner_texts()]


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

        # Video: at least 20 decoded frames a second over 3.5 s, and frames rendered.
        s0, t0 = page.evaluate("avatarchat.stats()"), time.monotonic()
        time.sleep(3.5)
        s1, t1 = page.evaluate("avatarchat.stats()"), time.monotonic()
        fps = (s1["video"]["framesDecoded"] - s0["video"]["framesDecoded"]) / (t1 - t0)
        assert fps >= 20, f"decoded {fps:.1f} fps"
        assert s1["rvfc"]["frames"] > s0["rvfc"]["frames"]
        assert (s1["video"]["frameWidth"], s1["video"]["frameHeight"]) == (512, 512)

        # The reply's text streams into the log, its audio arrives and is audible.
        wait_for(page, REPLY_DONE, 40)
        assert log_lines(page, "avatar")[0], "empty reply"
        wait_for(page, "() => avatarchat.segments('remote').length > 0", 20)
        asked = next(m["t"] for m in page.evaluate("avatarchat.messages") if m["msg"]["type"] == "transcript")
        heard = page.evaluate("avatarchat.segments('remote')")
        assert any(s["start"] > asked - 500 and s["peak"] > 0.02 for s in heard), heard
        assert page.evaluate("avatarchat.stats()")["audio"]["totalSamplesReceived"] > s0["audio"]["totalSamplesReceived"]

        # Latency figures of the turn, formatted in ms.
        wait_for(page, METRICS_SHOWN, 40)
        figures = page.locator("#metrics [data-key]").all_inner_texts()
        assert any(re.search(r"\d+(\.\d)? ms", f) for f in figures), figures
        assert page.locator("#metrics [data-key='first_audio_after_speech_end_ms']").count() == 1

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
        wait_for(page, REPLY_DONE, 40)
        assert log_lines(page, "user") == ["What is the capital of Italy?"]
        assert len(log_lines(page, "avatar")) == 1 and log_lines(page, "avatar")[0]
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
            wait_for(page, REPLY_DONE, 60)
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
        wait_for(page, REPLY_DONE, 40)
        assert log_lines(page, "user") == ["What colour is the sky?"]
        assert log_lines(page, "avatar")[0]
        close_pages(server, page)
    finally:
        browser.close()


def barge_in_wav(path: Path, gap_s: float = 4.5) -> Path:
    """The fake mic: 3 s of silence, a spoken request for a long story (hibari TTS), ``gap_s``
    of silence while the avatar starts telling it, then "What is the capital of France?"
    spoken over the reply, then a long silence (Chromium loops the file)."""
    from avatarchat.audio.resample import resample
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

    tts = HibariTTS(HibariOptions())
    tts.load()
    story, _ = tts.synthesize("Tell me a long story about a dragon.")
    story = resample(story, tts.sample_rate, FAKE_MIC_RATE)
    question = load_audio(SAMPLES / "question.wav", FAKE_MIC_RATE)
    silence = lambda s: np.zeros(int(s * FAKE_MIC_RATE), np.float32)  # noqa: E731
    write_wav(path, np.concatenate([silence(3.0), story, silence(gap_s), question, silence(40.0)]), FAKE_MIC_RATE)
    return path


def test_speaking_over_the_reply_cuts_it_and_the_new_question_is_answered(
        pw: Any, server: ServeProcess, tmp_path: Path) -> None:
    # ?raw=1 (open_page's default) plays the file to the server as it is. The echo guard (the
    # avatar's own voice must not barge in) relies on the browser's echo cancellation and is
    # not exercised here: headless Chromium has no acoustic path from speaker to microphone.
    browser = launch_chromium(pw, fake_audio=barge_in_wav(tmp_path / "barge_in.wav"))
    page = open_page(browser, server.url)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        wait_for(page, "() => /dragon/i.test(document.querySelector('#log .msg.user')?.textContent)", 30)
        cut = "() => document.querySelector('#log .msg.avatar.interrupted')"
        wait_for(page, cut, 40)
        wait_for(page, "() => [...document.querySelectorAll('#log .msg.avatar[data-final]')]"
                       ".some((li) => !li.classList.contains('interrupted'))", 60)
        user, avatar = log_lines(page, "user"), log_lines(page, "avatar")
        assert len(user) == 2 and "dragon" in user[0].lower(), user
        assert "capital" in user[1].lower() and "france" in user[1].lower(), user
        items = page.locator("#log .msg.avatar")
        assert "interrupted" in (items.nth(0).get_attribute("class") or "")
        assert "interrupted" not in (items.nth(1).get_attribute("class") or "") and avatar[1], avatar
        after = page.evaluate("getComputedStyle(document.querySelector('#log .msg.avatar.interrupted .body'),"
                              " '::after').content")
        assert "interrupted" in after and "—" in after, after
        turns = [m["msg"] for m in page.evaluate("avatarchat.messages") if m["msg"].get("type") == "reply"]
        first = turns[0]["turn"]
        final = [m for m in turns if m["turn"] == first and m["final"]]
        assert final[-1].get("interrupted") is True
        print(f"\nbarge-in in the browser: first reply cut to {final[-1]['text']!r}; then {avatar[1]!r}")
    finally:
        close_pages(server, page)
        browser.close()
