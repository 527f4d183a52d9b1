"""The streaming TTS stage: reply text deltas in, audio chunks of each clause out.

``StreamingTTS`` does the streaming, cleaning and timekeeping once for every engine; an
engine subclass only loads its model and turns one clean clause into samples and phoneme
timings (``synthesize``, blocking, run in an executor). A voice behind a network service
streams instead: it overrides ``synthesize_stream``, which yields a clause in pieces as
they arrive.
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import aclosing
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import Field

from avatarchat.engine.events import (
    Event,
    PhonemeTiming,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    TimingMark,
)
from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.handler import TTSHandler, HandlerOptions, SessionInfo
from avatarchat.engine.scheduling import Priority, run_model
from avatarchat.handlers.tts.text import (
    ClauseSplitter,
    clean_for_speech,
    count_words,
    ends_with_sentence_end,
    without_dangling_end,
)

Synthesis = tuple[np.ndarray, tuple[PhonemeTiming, ...]]


class TTSOptions(HandlerOptions):
    """Options every streaming TTS has."""

    #: The first clause of a reply is cut after this many words even without punctuation:
    #: the voice starts as soon as it is synthesized, while the LLM writes the rest.
    first_clause_max_words: int = Field(default=8, ge=2, le=30)
    #: A clause of the reply's opening ends at a comma (; : —) once it holds this many
    #: words: 1 says "Yes," "Well," at once. 4 was the rule before issue 16.
    first_clause_min_words: int = Field(default=1, ge=1, le=30)
    #: The opening lasts until this many words were said: after a shorter opener ("Sure!",
    #: "Yes,"), the next clause is cut early too (it must be ready when the opener ends),
    #: and an opener does not count as a whole sentence said (which would make the next
    #: clauses wait for their sentence's end). 1: only the first clause (before issue 16).
    opening_words: int = Field(default=4, ge=1, le=30)
    #: A clause that ends inside a sentence loses the silence after its last sound (keeps
    #: 50 ms), so the seam to the next clause is a comma's pause (~0.1 s), not 0.3-0.5 s.
    trim_clause_pauses: bool = True
    #: The reply's first clause ends at "!" or "?" as it comes ("Sure!"), not one token
    #: later when the next word shows the sentence is over.
    first_clause_at_once: bool = True


TTSOptionsT = TypeVar("TTSOptionsT", bound=TTSOptions)


#: Below this RMS (10 ms windows) the start of a reply is silence to the listener.
_SILENT_RMS = 0.002
_KEEP_BEFORE_S = 0.01


def trim_leading_silence(
    samples: np.ndarray, phonemes: tuple[PhonemeTiming, ...], rate: int
) -> Synthesis:
    """The reply's first chunk without the silence before its first sound (hibari leaves
    50-80 ms), keeping 10 ms: the user would wait for it. Timings move with the audio."""
    window = rate // 100
    n = len(samples) // window * window
    if n == 0:
        return samples, phonemes
    rms = np.sqrt(np.mean(samples[:n].reshape(-1, window) ** 2, axis=1))
    loud = np.flatnonzero(rms >= _SILENT_RMS)
    cut = max(0, int(loud[0]) * window - int(_KEEP_BEFORE_S * rate)) if len(loud) else 0
    if cut == 0:
        return samples, phonemes
    shift = cut / rate
    moved = tuple(PhonemeTiming(p.phoneme, max(0.0, p.start - shift), max(0.0, p.end - shift)) for p in phonemes)
    return samples[cut:], moved


#: Sound kept after the last loud window of a clause cut inside a sentence.
_KEEP_AFTER_S = 0.05


def trim_trailing_silence(
    samples: np.ndarray, phonemes: tuple[PhonemeTiming, ...], rate: int
) -> Synthesis:
    """A clause cut inside a sentence without the silence after its last sound, keeping
    50 ms. Said alone, a clause ends like an utterance: hibari lengthens its last phoneme
    and pads it (0.2-0.35 s of silence), which with the next clause's onset made a seam of
    0.3-0.5 s where the whole sentence pauses 0-0.2 s. Timings are clipped to the audio."""
    window = rate // 100
    n = len(samples) // window
    if n == 0:
        return samples, phonemes
    rms = np.sqrt(np.mean(samples[: n * window].reshape(n, window) ** 2, axis=1))
    loud = np.flatnonzero(rms >= _SILENT_RMS)
    if len(loud) == 0:
        return samples, phonemes
    end = min(len(samples), (int(loud[-1]) + 1) * window + int(_KEEP_AFTER_S * rate))
    if end >= len(samples):
        return samples, phonemes
    limit = end / rate
    kept = tuple(PhonemeTiming(p.phoneme, min(p.start, limit), min(p.end, limit)) for p in phonemes)
    return samples[:end], kept


@dataclass
class _TurnState:
    """What the stage holds for one reply being spoken."""

    splitter: ClauseSplitter = field(default_factory=ClauseSplitter)
    offset: float = 0.0  # seconds of reply audio emitted so far: the next chunk's offset
    spoke: bool = False  # whether a ReplyAudio of this turn went out (for tts_first_audio)
    said_sentence: bool = False  # whether a whole sentence has gone to the voice
    words: int = 0  # words of the clauses gone to the voice (or held)
    #: Clauses of an unfinished sentence after a whole one: said once it ends, or not at
    #: all if the LLM stops at its token cap first.
    held: list[str] = field(default_factory=list)
    cancelled: bool = False
    clock: Clock = REAL_CLOCK  # the session's


@dataclass
class TTSContext:
    """Per-session state: one ``_TurnState`` per reply in progress."""

    session: SessionInfo
    turns: dict[int, _TurnState] = field(default_factory=dict)


class StreamingTTS(TTSHandler[TTSOptionsT]):
    """Speaks ``ReplyText`` deltas clause by clause; passes ``ReplyEnd`` on after the last audio.

    Promises, per turn: a ``TimingMark(turn, "tts_first_audio")`` right before the first
    ``ReplyAudio``; ``ReplyAudio`` chunks in text order, each with the clean clause it
    says, its phoneme timings (seconds from the chunk's first sample) and its ``offset``
    on the reply's timeline, contiguous (each chunk starts where the previous ended);
    then the ``ReplyEnd``. Clauses that clean to nothing (emoji, hashtags) make no audio.
    The first clause is said as soon as it is known; once whole sentences of
    ``opening_words`` words or more have been said (an opener like "Sure!" is not enough),
    later clauses wait for the end of their sentence, so that a reply the LLM cuts at its
    token cap is heard up to its last whole sentence.
    After ``cancel_turn`` nothing more of that turn comes out.
    """

    stage: ClassVar[str] = "tts"
    Options: ClassVar[type[HandlerOptions]] = TTSOptions
    accepts: ClassVar[tuple[type[Event], ...]] = (ReplyText, ReplyEnd)
    # The reply text goes on to the client as it streams; ReplyEnd is passed on after the flush.
    forwards: ClassVar[tuple[type[Event], ...]] = (ReplyText,)
    #: Samples per second of what ``synthesize`` returns.
    sample_rate: ClassVar[int]

    def synthesize(self, text: str) -> Synthesis:
        """Blocking: ``text`` (one clean clause) → (mono float32 samples at ``sample_rate``,
        phoneme timings in seconds from the first sample). Must be safe to call from
        several executor threads at once. A local engine implements this; a network voice
        implements ``synthesize_stream`` instead."""
        raise NotImplementedError(f"{type(self).__name__} implements neither synthesize nor synthesize_stream")

    async def synthesize_stream(self, text: str, first: bool) -> AsyncGenerator[Synthesis, None]:
        """``text`` (one clean clause) → its audio in pieces as they come, each with phoneme
        timings in seconds from that piece's first sample (``()`` if the voice gives none:
        the avatar's mouth then follows the audio). ``first``: the reply's first clause,
        whose audio decides when the user hears the answer.

        Default: one piece, from ``synthesize`` in the model lane (the first clause goes
        ahead of other sessions' later ones). The engine may close the generator at any
        ``await`` when the turn is cancelled: release sockets in ``finally``."""
        priority = Priority.CRITICAL if first else Priority.NORMAL
        yield await run_model(self.synthesize, text, lane="tts", priority=priority)

    @abstractmethod
    def models(self) -> list[Any]:
        """The ``ModelFile``s this engine loads (``[]`` for a network voice)."""

    def _splitter(self) -> ClauseSplitter:
        """A reply's clause splitter, cut by this stage's options."""
        o = self.options
        return ClauseSplitter(first_min_words=o.first_clause_min_words, first_max_words=o.first_clause_max_words,
                              opening_words=o.opening_words, first_marks_at_once=o.first_clause_at_once)

    def create_context(self, session: SessionInfo) -> TTSContext:
        return TTSContext(session)

    async def handle(self, ctx: TTSContext, event: Event) -> AsyncIterator[Event]:
        state: _TurnState | None  # a ReplyEnd may come for a turn that never had text
        if isinstance(event, ReplyText):
            state = ctx.turns.setdefault(event.turn, _TurnState(self._splitter(), clock=ctx.session.clock))
            for clause in state.splitter.feed_clauses(event.text):
                if state.said_sentence and not clause.ends_sentence:
                    # Audio of whole sentences is playing: this clause can wait the few
                    # tokens until its sentence ends, and is never said if it never does.
                    state.held.append(clause.text)
                    continue
                said, state.held = [*state.held, clause.text], []
                for text in said:
                    async for out in self._speak(state, event.turn, text):
                        yield out
                # An opener ("Sure!") is not yet an answer to stop at: the clause after it
                # must not wait for its sentence, or the opener is followed by a gap.
                state.words += count_words(clause.text)  # a Han character is a word
                state.said_sentence = state.said_sentence or (
                    clause.ends_sentence and state.words >= self.options.opening_words)
        elif isinstance(event, ReplyEnd):
            state = ctx.turns.get(event.turn)
            if state is not None:
                clauses = [*state.held, *state.splitter.flush()]
                if event.truncated and clauses and not ends_with_sentence_end(clauses[-1]):
                    # The LLM hit its token cap mid-sentence, and the reply's text is made to
                    # end where the voice does. A half sentence after whole ones sounds broken,
                    # so it is not said. A first sentence (one clause held by the splitter) is
                    # said, less a bracket or colon it was cut after: "... the Ares (Greek:".
                    ending = "" if state.said_sentence else without_dangling_end(clauses[-1])
                    event = _ending_with(event, clauses, ending)
                    clauses = [ending] if ending else []
                for text in clauses:
                    async for out in self._speak(state, event.turn, text):
                        yield out
                ctx.turns.pop(event.turn, None)
                if state.cancelled:
                    return
            yield event

    async def _speak(self, state: _TurnState, turn: int, raw: str) -> AsyncIterator[Event]:
        """Say one clause: a ``ReplyAudio`` per piece the voice yields, contiguous on the
        reply's timeline. Only the clause's last piece carries its text, so what the user
        is said to have heard never runs ahead of the audio (``engine.heard``). Each piece
        waits for the next one (a streamed voice sends them faster than they play) so that
        the last one is known: it loses the clause's trailing pause."""
        text = clean_for_speech(raw)
        if not text or state.cancelled:
            return
        pending: Synthesis | None = None
        # aclosing: a cancelled turn closes the voice's stream (and its socket) at once.
        async with aclosing(self.synthesize_stream(text, first=not state.spoke)) as pieces:
            async for piece in pieces:
                # The turn may have been cancelled while the voice worked; its audio is dropped.
                if state.cancelled:
                    return
                if len(piece[0]) == 0:
                    continue
                if pending is not None:
                    for out in self._emit(state, turn, pending, ""):
                        yield out
                pending = piece
        if state.cancelled or pending is None:
            return
        if self.options.trim_clause_pauses and not ends_with_sentence_end(text):
            # The next clause goes on the same sentence: a comma's pause, not a full stop's.
            pending = trim_trailing_silence(*pending, self.sample_rate)
        for out in self._emit(state, turn, pending, text):
            yield out

    def _emit(self, state: _TurnState, turn: int, piece: Synthesis, text: str) -> list[Event]:
        """The ``ReplyAudio`` of one piece at the turn's offset (the reply's first piece
        without its leading silence, after a ``tts_first_audio`` mark)."""
        out: list[Event] = []
        samples, phonemes = piece
        if not state.spoke:
            samples, phonemes = trim_leading_silence(samples, phonemes, self.sample_rate)
            state.spoke = True
            out.append(TimingMark(turn, "tts_first_audio", at=state.clock.now()))
        chunk = ReplyAudio(turn, samples, self.sample_rate, state.offset, text=text, phonemes=phonemes)
        state.offset += chunk.duration
        out.append(chunk)
        return out

    def cancel_turn(self, ctx: TTSContext, turn: int) -> None:
        state = ctx.turns.pop(turn, None)
        if state is not None:
            state.cancelled = True

    def close_context(self, ctx: TTSContext) -> None:
        for state in ctx.turns.values():
            state.cancelled = True
        ctx.turns.clear()


def _ending_with(end: ReplyEnd, unsaid: list[str], ending: str) -> ReplyEnd:
    """``end`` with the clauses ``unsaid`` that end its text replaced by ``ending``."""
    cut = end.text.rstrip()
    for clause in reversed(unsaid):
        if not cut.endswith(clause):
            return end
        cut = cut[: len(cut) - len(clause)].rstrip()
    return replace(end, text=f"{cut} {ending}".strip())
