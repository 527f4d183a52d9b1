"""Helpers for the browser tests: a real `avatarchat serve` subprocess and headless Chromium.

The server and browser plumbing lives in ``avatarchat.bench.harness`` (the e2e benchmark uses the
same code); this module adds what only tests need: skipping when Debian's Chromium is absent
and a fake-microphone WAV made from the sample question.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatarchat.audio.io import load_audio, write_wav
from avatarchat.bench.e2e import FAKE_MIC_RATE
from avatarchat.bench.harness import (
    CHROMIUM,
    ServeProcess,
    chromium_args,
    launch_chromium,
    open_page,
    wait_for,
)

__all__ = [
    "AUDIBLE",
    "CONNECTED",
    "CHROMIUM",
    "ServeProcess",
    "chromium_args",
    "close_pages",
    "launch_chromium",
    "log_lines",
    "open_page",
    "padded_question_wav",
    "require_chromium",
    "wait_for",
    "wait_sessions",
]

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
#: The page's WebRTC connection is up (a JS predicate for ``wait_for``).
CONNECTED = "() => avatarchat.state().connection === 'connected'"
#: RMS above this counts as audible in the page's envelopes (as in bench e2e).
AUDIBLE = 0.01


def require_chromium() -> None:
    """Skip the calling test (or module) when the browser the tests drive is not installed."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: browser tests drive Debian's chromium "
                    "(scripts/test.sh installs it with apt; never `playwright install`)")


def padded_question_wav(path: Path, lead_s: float = 3.0, tail_s: float = 40.0,
                        question: Path = SAMPLES / "question.wav") -> Path:
    """Write ``question`` between ``lead_s`` and ``tail_s`` of silence as a 48 kHz fake mic.

    The lead covers the time from getUserMedia to a connected session (Chromium starts the
    file when the capture opens); the tail keeps the question from being asked twice within a
    test, since Chromium loops the file.
    """
    speech = load_audio(question, FAKE_MIC_RATE)
    silence = lambda s: np.zeros(int(s * FAKE_MIC_RATE), np.float32)  # noqa: E731
    write_wav(path, np.concatenate([silence(lead_s), speech, silence(tail_s)]), FAKE_MIC_RATE)
    return path


def wait_sessions(server: ServeProcess, n: int, timeout: float = 10.0) -> None:
    """Wait until the server's /healthz counts ``n`` sessions; fail with the count if not."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(server.url + "healthz", timeout=2) as resp:
            sessions = json.load(resp).get("sessions")
        if sessions == n or time.monotonic() > deadline:
            assert sessions == n, f"the server still holds {sessions} session(s)"
            return
        time.sleep(0.1)


def close_pages(server: ServeProcess, *pages: Any) -> None:
    """Stop the sessions the way a user would, and wait until the server has let them go."""
    for page in pages:
        if page.evaluate("avatarchat.state().connection") != "idle":
            page.click("#stop")
        page.context.close()
    wait_sessions(server, 0)


def log_lines(page: Any, kind: str) -> list[str]:
    """The chat log's texts of one kind ("user", "avatar"), in order."""
    return [t.strip() for t in page.locator(f"#log .msg.{kind} .body").all_inner_texts()]
