"""The page asks Chromium for the reply voice's jitter buffer (web/rtcmedia.js): the
receiver's ``jitterBufferTarget`` is the page's default, or what ``?jbt=`` says (``off``:
left unset), in real headless Chromium against a real ``avatarchat serve``; and getStats
figures the bench reads for it (concealment, the buffer's target delay) reach
``avatarchat.stats()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser import CONNECTED, ServeProcess, close_pages, open_page, wait_for

pytestmark = pytest.mark.slow

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

#: The page's own reading of a query string, through its module (served by the server).
PARSE = """async () => {
  const m = await import("./rtcmedia.js");
  return {
    default: m.DEFAULT_JITTER_TARGET_MS,
    values: ["?jbt=40", "?jbt=0", "?jbt=off", "?jbt=-5", "?jbt=abc", "?jbt=99999", "?raw=1"].map(
      (q) => m.jitterTargetFrom(q)),
  };
}"""


def stats_when(page: Any, ready: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
    """``avatarchat.stats()`` once ``ready`` says so. Polled from here: ``wait_for`` with an
    async predicate passed at once (its Promise is truthy), before any audio had come."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = page.evaluate("avatarchat.stats()")
        if ready(stats):
            return stats
        assert time.monotonic() < deadline, f"not ready after {timeout_s} s: {stats}"
        page.wait_for_timeout(100)


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: these tests are synchronous (playwright's sync API)."""


def test_the_query_string_sets_or_unsets_the_target(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url)
    try:
        got = page.evaluate(PARSE)
    finally:
        page.context.close()
    d = got["default"]
    assert got["values"] == [40, 0, None, d, d, d, d]


@pytest.mark.parametrize("query", ["", "jbt=40", "jbt=off"])
def test_the_reply_voices_receiver_gets_the_target(quiet_browser: Any, server: ServeProcess, query: str) -> None:
    page = open_page(quiet_browser, server.url + (f"?{query}" if query else ""))
    try:
        if not page.evaluate("'jitterBufferTarget' in RTCRtpReceiver.prototype"):
            pytest.skip("this Chromium has no RTCRtpReceiver.jitterBufferTarget")
        default = page.evaluate(PARSE)["default"]
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        audio = stats_when(page, lambda s: s["audio"] is not None, 10)["audio"]
        expected = {"": default, "jbt=40": 40, "jbt=off": None}[query]
        assert audio["jitterBufferTarget"] == expected, audio
        for key in ("concealedSamples", "silentConcealedSamples", "concealmentEvents", "totalSamplesReceived"):
            assert isinstance(audio[key], int | float), (key, audio)
        # Chromium reports the buffer's target delay; asked for 40 ms, it aims at 40 or more.
        audio = stats_when(page, lambda s: s["audio"]["jitterBufferEmittedCount"] > 4800, 10)["audio"]
        if query == "jbt=40" and audio["jitterBufferTargetDelay"] is not None:
            target_ms = 1000 * audio["jitterBufferTargetDelay"] / audio["jitterBufferEmittedCount"]
            assert target_ms >= 30, audio
    finally:
        close_pages(server, page)
