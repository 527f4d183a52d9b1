"""Collecting one turn's output into a result, and the per-stage timings derived from its marks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from avatarchat.engine.events import (
    AvatarFrame,
    ErrorEvent,
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    TimingMark,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.session import Session

#: (name in the report, from mark, to mark): each a stage's share of the latency.
TIMING_SPANS: tuple[tuple[str, str, str], ...] = (
    ("vad_hangover_ms", "speech_end", "vad_end"),
    # The pause heard (one VAD window, plus any whisper call still busy in the lane).
    ("pause_to_asr_ms", "speech_end", "asr_early_start"),
    ("asr_early_ms", "asr_early_start", "asr_early_final"),
    # The pause's words waiting for the LLM: with speculation, a partial transcript's
    # prefill still running; without, the hangover too (the LLM answers the final).
    ("asr_to_llm_ms", "asr_early_final", "llm_start"),
    ("asr_ms", "asr_start", "asr_final"),
    ("llm_first_token_ms", "llm_start", "llm_first_token"),
    ("tts_first_audio_ms", "llm_first_token", "tts_first_audio"),
    ("first_audio_after_asr_ms", "asr_start", "tts_first_audio"),
    ("first_audio_after_speech_end_ms", "speech_end", "tts_first_audio"),
    ("avatar_first_frame_ms", "tts_first_audio", "avatar_first_frame"),
)


@dataclass
class TurnResult:
    """Everything one turn produced, in the order it came out."""

    turn: int
    user_text: str = ""
    reply_text: str = ""
    chunks: list[ReplyAudio] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    cancelled: str | None = None
    events: list[Event] = field(default_factory=list)
    #: The avatar's frames of the reply, in order (empty without an avatar stage).
    frames: list[AvatarFrame] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        return self.chunks[0].sample_rate if self.chunks else 24000

    def audio(self) -> np.ndarray:
        """The reply's samples placed at their offsets on the reply timeline."""
        return place(self.chunks)

    def timings_ms(self) -> dict[str, float]:
        return stage_timings(self.marks)

    def add(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, UserTranscript) and event.final:
            self.user_text = event.text
        elif isinstance(event, ReplyText):
            self.reply_text += event.text
        elif isinstance(event, ReplyEnd) and event.text:
            self.reply_text = event.text
        elif isinstance(event, ReplyAudio):
            self.chunks.append(event)
        elif isinstance(event, AvatarFrame):
            self.frames.append(event)
        elif isinstance(event, TimingMark):
            self.marks.setdefault(event.name, event.at)
        elif isinstance(event, ErrorEvent):
            self.errors.append(event.message)
        elif isinstance(event, TurnCancelled):
            self.cancelled = event.reason


def place(chunks: list[ReplyAudio]) -> np.ndarray:
    """Reply chunks' samples placed at their offsets (silence in any gap), at the first
    chunk's rate; empty without chunks."""
    if not chunks:
        return np.zeros(0, np.float32)
    rate = chunks[0].sample_rate
    end = max(round(c.offset * rate) + len(c.samples) for c in chunks)
    out = np.zeros(end, np.float32)
    for c in chunks:
        start = round(c.offset * rate)
        out[start:start + len(c.samples)] = c.samples
    return out


def stage_timings(marks: dict[str, float]) -> dict[str, float]:
    """Milliseconds between the marks of ``TIMING_SPANS`` that are present."""
    return {
        name: round((marks[b] - marks[a]) * 1000.0, 1)
        for name, a, b in TIMING_SPANS
        if a in marks and b in marks
    }


async def collect_turn(session: Session, turn: int, timeout: float = 120.0) -> TurnResult:
    """Read the session's output until ``turn`` ends (its ReplyEnd or TurnCancelled).

    Events of other turns that come out meanwhile are dropped: use this where one turn runs
    at a time (the CLI, benchmarks, tests).
    """
    result = TurnResult(turn)

    async def run() -> None:
        async for event in session.events():
            if event.turn != turn:
                continue
            result.add(event)
            if isinstance(event, ReplyEnd | TurnCancelled):
                return

    await asyncio.wait_for(run(), timeout)
    return result
