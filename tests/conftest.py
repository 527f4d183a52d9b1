"""Shared fixtures. Every async test fails if it leaves an asyncio task running.

The browser tests share ``pw`` (playwright's sync API), ``server`` (a real ``avatarchat
serve`` with the embedded default at temperature 0, one per module) and ``quiet_browser``
(Chromium with a silent microphone). Modules with a ``server`` of their own
(tests/peer_harness.py's) override it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from avatarchat.audio.io import write_wav
from avatarchat.cli.serve import limit_malloc_arenas
from tests.browser import FAKE_MIC_RATE, ServeProcess, launch_chromium, require_chromium
from tests.configs import greedy_default


def pytest_configure(config: pytest.Config) -> None:
    # The test process allocates as `avatarchat serve` does, from before its first thread
    # (glibc's arena cap only binds arenas made after it): tests/test_soak.py measures it.
    limit_malloc_arenas()


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    # Give cancelled tasks one loop turn to finish unwinding.
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    for t in leaked:
        t.cancel()
    assert not leaked, f"test leaked asyncio tasks: {[t.get_name() for t in leaked]}"


@pytest.fixture(scope="module")
def pw() -> Iterator[Any]:
    require_chromium()
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")
    with playwright_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """``avatarchat serve`` with the embedded default (barge-in on), for the browser tests;
    greedy decoding, so that a question gets the same reply, of the same length, every run."""
    require_chromium()
    with ServeProcess(config=greedy_default(tmp_path_factory.mktemp("config"))) as s:
        yield s


@pytest.fixture(scope="module")
def quiet_browser(pw: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium with a silent microphone (Chromium's default fake device beeps)."""
    wav = tmp_path_factory.mktemp("mic") / "silence.wav"
    write_wav(wav, np.zeros(FAKE_MIC_RATE, np.float32), FAKE_MIC_RATE)
    browser = launch_chromium(pw, fake_audio=wav, loop=True)
    yield browser
    browser.close()
