"""The handlers put their model calls in the scheduler's lanes at the promised priorities.

Real handlers (espeak-ng, whisper tiny.en) under a real ``Scheduler`` that also notes each
job's lane and priority as it is submitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest

from avatarchat.engine.events import ReplyAudio, ReplyEnd, ReplyText, SpeechEnded, SpeechPaused, SpeechSoFar
from avatarchat.engine.handler import SessionInfo
from avatarchat.engine.scheduling import Priority, Scheduler, use_scheduler
from avatarchat.engine.session import Session
from avatarchat.handlers.asr.whisper import WhisperHandler, WhisperOptions
from avatarchat.handlers.tts.espeak import EspeakOptions, EspeakTTS

T = TypeVar("T")


class NotingScheduler(Scheduler):
    """A scheduler that keeps (lane, priority) of every job submitted to it."""

    def __init__(self) -> None:
        super().__init__({"vad": 1, "asr": 1, "tts": 1, "render": 1})
        self.noted: list[tuple[str, Priority]] = []

    def submit(self, fn: Callable[..., T], *args: Any, lane: str,
               priority: Priority = Priority.NORMAL) -> asyncio.Future[T]:
        self.noted.append((lane, priority))
        return super().submit(fn, *args, lane=lane, priority=priority)


@pytest.fixture
def noting() -> Iterator[NotingScheduler]:
    with NotingScheduler() as s:
        yield s


async def test_a_replys_first_clause_is_voiced_critical_and_the_rest_normal(noting: NotingScheduler) -> None:
    tts = EspeakTTS(EspeakOptions())
    await asyncio.to_thread(tts.load)
    reply = "Hello there! I am glad you asked. Let us try it."
    with use_scheduler(noting):
        async with Session([tts], SessionInfo("t")) as session:
            turn = session.new_turn()
            session.push(ReplyText(turn, reply))
            session.push(ReplyEnd(turn, reply))
            chunks = 0
            async with asyncio.timeout(60):
                async for ev in session.events():
                    chunks += isinstance(ev, ReplyAudio)
                    if isinstance(ev, ReplyEnd):
                        break
    assert chunks == 3
    assert noting.noted == [("tts", Priority.CRITICAL), ("tts", Priority.NORMAL), ("tts", Priority.NORMAL)]


async def test_partial_transcripts_wait_behind_pause_and_final_ones(noting: NotingScheduler) -> None:
    whisper = WhisperHandler(WhisperOptions())
    await asyncio.to_thread(whisper.load)
    ctx = whisper.create_context(SessionInfo("t"))
    quiet = np.zeros(16_000, np.float32)
    now = ctx.clock.now()
    with use_scheduler(noting):
        for event in (SpeechSoFar(1, quiet, now), SpeechPaused(1, quiet, speech_end=now),
                      SpeechEnded(1, quiet, speech_end=now + 1.0, at=now + 1.5)):
            async for _ in whisper.handle(ctx, event):
                pass
    assert noting.noted == [("asr", Priority.BACKGROUND), ("asr", Priority.CRITICAL), ("asr", Priority.CRITICAL)]
