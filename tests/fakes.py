"""Hand-written fake handlers for the engine's own tests: scripted, deterministic, no models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import numpy as np

from avatarchat.engine.events import Event, ReplyAudio, ReplyEnd, ReplyText, TimingMark, UserTranscript
from avatarchat.engine.handler import Handler, HandlerOptions, SessionInfo, run_blocking


class FakeLLM(Handler[HandlerOptions]):
    """Replies with ``words`` one delta at a time, ``delay`` seconds apart."""

    name = "fake"
    stage = "llm"
    accepts = (UserTranscript,)

    def __init__(self, words: list[str] | None = None, delay: float = 0.0) -> None:
        super().__init__(HandlerOptions())
        self.words = words or ["Hello", " there", "."]
        self.delay = delay
        self.closed_generators = 0
        self.cancelled_turns: list[int] = []

    def create_context(self, session: SessionInfo) -> dict[str, list[str]]:
        return {"heard": []}

    async def handle(self, ctx: dict[str, list[str]], event: Event) -> AsyncIterator[Event]:
        assert isinstance(event, UserTranscript)
        ctx["heard"].append(event.text)
        try:
            yield TimingMark(event.turn, "llm_first_token")
            for w in self.words:
                await asyncio.sleep(self.delay)
                yield ReplyText(event.turn, w)
            yield ReplyEnd(event.turn, "".join(self.words))
        finally:
            self.closed_generators += 1

    def cancel_turn(self, ctx: object, turn: int) -> None:
        self.cancelled_turns.append(turn)


class FakeTTS(Handler[HandlerOptions]):
    """One 10 ms audio chunk per text delta; raises on the text in ``fail_on``; can block."""

    name = "fake"
    stage = "tts"
    accepts = (ReplyText, ReplyEnd)
    forwards = (ReplyText,)
    rate: ClassVar[int] = 1000

    def __init__(self, fail_on: str | None = None, block_s: float = 0.0) -> None:
        super().__init__(HandlerOptions())
        self.fail_on = fail_on
        self.block_s = block_s

    def _synth(self, text: str) -> np.ndarray:
        time.sleep(self.block_s)  # stands for a blocking model call
        return np.full(10, len(text), np.float32)

    async def handle(self, ctx: object, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, ReplyEnd):
            yield event
            return
        assert isinstance(event, ReplyText)
        if self.fail_on is not None and self.fail_on in event.text:
            raise RuntimeError(f"cannot say {event.text!r}")
        samples = await run_blocking(self._synth, event.text)
        yield ReplyAudio(event.turn, samples, self.rate, 0.0, event.text)
