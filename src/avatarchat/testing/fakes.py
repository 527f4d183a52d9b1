"""Hand-written fake handlers of the reply side for fast engine tests: scripted,
deterministic, no models (the user side is ``avatarchat.testing.user``).

Each fake reads time only from its session's clock (``SessionInfo.clock``) and does its work
on the event loop, so with a ``FakeClock`` a whole conversation runs in virtual time:

- ``FakeLLM`` streams scripted replies word by word (a real ``ChatLLM``: its history is
  the base class's);
- ``FakeTTS`` speaks each clause as a tone with phoneme timings at a fixed rate.

None of them is registered: a test builds them and hands the instances to
``run_pipeline_test`` or to a ``Session``. They say what they saw (``requests``, ``spoken``)
so a test can assert on it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from avatarchat.engine.events import Event, PhonemeTiming, ReplyAudio, ReplyEnd, ReplyText, TimingMark
from avatarchat.engine.handler import Handler, HandlerOptions, SessionInfo
from avatarchat.handlers.llm.base import ChatContext, ChatLLM, Message
from avatarchat.handlers.tts.text import ClauseSplitter, clean_for_speech


# --- the reply ---------------------------------------------------------------------------------


Replies = Sequence[str] | Callable[[list[Message]], str]


class FakeLLM(ChatLLM[HandlerOptions]):
    """A ``ChatLLM`` whose model is a script: reply ``n`` is ``replies[n]`` (the last one
    again once they run out), or ``replies(messages)``; streamed a word per delta, the first
    ``first_token_s`` and each next ``token_s`` later on the session's clock.

    ``requests`` holds every message list the model was asked with, so a test sees the
    history (a cut reply as the user heard it). ``active_generations()`` counts streams
    running now; a stream stops at once when the engine closes it.
    """

    name = "fake"

    def __init__(self, replies: Replies = ("Hello there. How are you today?",), *,
                 first_token_s: float = 0.1, token_s: float = 0.05) -> None:
        super().__init__(HandlerOptions())
        self.replies = replies
        self.first_token_s = first_token_s
        self.token_s = token_s
        self.requests: list[list[Message]] = []
        self._active = 0

    def active_generations(self) -> int:
        return self._active

    def reply_for(self, messages: list[Message]) -> str:
        if callable(self.replies):
            return self.replies(messages)
        n = min(len(self.requests) - 1, len(self.replies) - 1)
        return self.replies[n]

    async def stream(self, ctx: ChatContext, messages: list[Message]) -> AsyncGenerator[str, None]:
        clock = ctx.session.clock
        self.requests.append([dict(m) for m in messages])
        words = self.reply_for(messages).split(" ")
        self._active += 1
        try:
            wait = self.first_token_s
            for i, word in enumerate(words):
                if wait > 0:
                    await clock.sleep_until(clock.now() + wait)
                wait = self.token_s
                yield word if i == 0 else f" {word}"
        finally:
            self._active -= 1


class FakeTTSOptions(HandlerOptions):
    """How the fake voice speaks: each letter of a word is a phoneme of ``phoneme_ms``,
    words are ``gap_ms`` apart; a clause takes ``synth_ms`` (session clock) to make."""

    phoneme_ms: int = 60
    gap_ms: int = 40
    synth_ms: int = 0


@dataclass
class _Reply:
    splitter: ClauseSplitter = field(default_factory=ClauseSplitter)
    offset: float = 0.0
    spoke: bool = False


@dataclass
class FakeTTSContext:
    info: SessionInfo
    replies: dict[int, _Reply] = field(default_factory=dict)


class FakeTTS(Handler[FakeTTSOptions]):
    """A voice without a model: ``ReplyText`` deltas in, one ``ReplyAudio`` per clause out
    (the text is passed on too), then the ``ReplyEnd``.

    Promises what ``StreamingTTS`` promises (clauses cut by the real ``ClauseSplitter``
    and cleaned by ``clean_for_speech``;
    ``TimingMark("tts_first_audio")`` before the first chunk; ``offset`` contiguous from 0;
    nothing of a cancelled turn), with audio of a known length: a clause of words
    w1..wn lasts ``sum(len(w) * phoneme_ms) + n * gap_ms`` and its phoneme timings say so,
    letter by letter with a space between words, so ``engine.heard`` can tell which words
    a position on the reply's clock has completed. ``spoken`` lists every clause said as
    ``(turn, text)``.
    """

    name = "fake"
    stage = "tts"
    Options = FakeTTSOptions
    accepts = (ReplyText, ReplyEnd)
    forwards = (ReplyText,)
    sample_rate: ClassVar[int] = 16_000

    def __init__(self, options: FakeTTSOptions | None = None) -> None:
        super().__init__(options or FakeTTSOptions())
        self.spoken: list[tuple[int, str]] = []

    def create_context(self, session: SessionInfo) -> FakeTTSContext:
        return FakeTTSContext(session)

    def synthesize(self, text: str) -> tuple[np.ndarray, tuple[PhonemeTiming, ...]]:
        """``text`` as a quiet 220 Hz tone and its letter-by-letter phoneme timings."""
        per, gap = self.options.phoneme_ms / 1000, self.options.gap_ms / 1000
        phonemes: list[PhonemeTiming] = []
        t = 0.0
        for word in text.split():
            for letter in word:
                phonemes.append(PhonemeTiming(letter, t, t + per))
                t += per
            phonemes.append(PhonemeTiming(" ", t, t + gap))
            t += gap
        rate = self.sample_rate
        samples = (0.1 * np.sin(2 * np.pi * 220 * np.arange(round(t * rate)) / rate)).astype(np.float32)
        return samples, tuple(phonemes)

    async def handle(self, ctx: FakeTTSContext, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, ReplyText):
            reply = ctx.replies.setdefault(event.turn, _Reply())
            for clause in reply.splitter.feed(event.text):
                async for out in self._speak(ctx, reply, event.turn, clause):
                    yield out
            return
        assert isinstance(event, ReplyEnd)
        reply = ctx.replies.get(event.turn) or _Reply()
        for clause in reply.splitter.flush():
            async for out in self._speak(ctx, reply, event.turn, clause):
                yield out
        ctx.replies.pop(event.turn, None)
        yield event

    async def _speak(self, ctx: FakeTTSContext, reply: _Reply, turn: int, text: str) -> AsyncIterator[Event]:
        text = clean_for_speech(text)  # as StreamingTTS: no emoji, hashtags or markup said
        if not text:
            return
        clock = ctx.info.clock
        if self.options.synth_ms > 0:
            await clock.sleep_until(clock.now() + self.options.synth_ms / 1000)
        samples, phonemes = self.synthesize(text)
        if not reply.spoke:
            reply.spoke = True
            yield TimingMark(turn, "tts_first_audio", at=clock.now())
        self.spoken.append((turn, text))
        chunk = ReplyAudio(turn, samples, self.sample_rate, reply.offset, text, phonemes)
        reply.offset += chunk.duration
        yield chunk

    def cancel_turn(self, ctx: FakeTTSContext, turn: int) -> None:
        ctx.replies.pop(turn, None)


def speech_seconds(text: str, options: FakeTTSOptions | None = None) -> float:
    """How long ``FakeTTS`` (with ``options``) speaks ``text`` as one clause."""
    o = options or FakeTTSOptions()
    words = text.split()
    return (sum(len(w) for w in words) * o.phoneme_ms + len(words) * o.gap_ms) / 1000


__all__: list[str] = ["FakeLLM", "FakeTTS", "FakeTTSOptions", "speech_seconds"]
