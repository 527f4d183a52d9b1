"""A scripted user for fast engine tests: ``UserSpeech`` lines, heard by ``ScriptedVAD`` and
``FakeASR`` as a VAD and a speech recogniser would hear them, on the session's clock.

Like livekit's ``FakeUserSpeech``: the test says when the user speaks and what they say;
the VAD's events come out at the instants a VAD would send them, as microphone chunks
arrive (a live microphone sends one every 20 ms; ``run_pipeline_test``'s ``Audio`` and a
test's own loop do the same on a ``FakeClock``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from avatarchat.engine.clock import SAME_INSTANT_S
from avatarchat.engine.events import (
    EndOfTurnGuess,
    EndOfTurnHint,
    Event,
    SpeechEnded,
    SpeechOngoing,
    SpeechPaused,
    SpeechStarted,
    TimingMark,
    TurnCancelled,
    UserAudio,
    UserTranscript,
)
from avatarchat.engine.handler import Handler, HandlerOptions, SessionInfo

#: The rate of the utterances ``ScriptedVAD`` hands on (the VAD's, as silero's).
VAD_RATE = 16_000
_EPS = 1e-9


@dataclass(frozen=True)
class UserSpeech:
    """The scripted user is voiced from ``start`` to ``end`` (seconds after the session
    started) and says ``transcript``. Speech that starts again before the VAD ended the
    turn (a pause to think) continues that turn: its words are added to it."""

    start: float
    end: float
    transcript: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"speech must start at 0 s or later and end after it starts: {self}")


@dataclass
class _Utterance:
    """One turn of the user, as the VAD follows it (times: seconds after the session start)."""

    start: float
    end: float
    words: list[str]
    turn: int | None = None
    reported_until: float = 0.0  # the last SpeechOngoing's voice, or the start report
    paused: bool = False  # SpeechPaused was sent for the current end
    hangover_s: float | None = None  # an EndOfTurnHint's silence for the current end
    done: bool = False
    cancelled: bool = False

    @property
    def text(self) -> str:
        return " ".join(w for w in self.words if w)


@dataclass
class ScriptedVADContext:
    info: SessionInfo
    t0: float
    script: list[UserSpeech]  # not yet begun
    current: _Utterance | None = None
    turns: dict[int, _Utterance] = field(default_factory=dict)


class ScriptedVADOptions(HandlerOptions):
    """The timing of a VAD like ``silero``'s, in milliseconds (``pause_ms`` 0: no pauses)."""

    start_ms: int = 96
    progress_ms: int = 64
    pause_ms: int = 200
    end_ms: int = 500
    min_utterance_ms: int = 200


class ScriptedVAD(Handler[ScriptedVADOptions]):
    """A VAD that hears the script, not the audio: ``UserAudio`` in (any content; each chunk
    is taken to end at its arrival on the session's clock), the events of a VAD out.

    Promises, per utterance (times relative to the session's start, so every session
    replays the script), each event with the first chunk that arrives at or after its time:
    ``SpeechStarted(at=start)`` with a new turn once ``start_ms`` of voice was heard (none
    for shorter speech); a ``SpeechOngoing`` every ``progress_ms`` of voice after that;
    ``SpeechPaused(speech_end=end)`` after ``pause_ms`` of silence; after ``end_ms`` of
    silence (or the silence an ``EndOfTurnHint`` for that pause gives, through the control
    lane), ``TurnCancelled("too short")`` if the voice lasted under ``min_utterance_ms``, else
    ``SpeechEnded(speech_end=end)`` with audio of matching length. Voice that comes back
    before then continues the turn. A turn the session cancels says nothing more.
    """

    name = "scripted"
    stage = "vad"
    Options = ScriptedVADOptions
    accepts = (UserAudio,)
    controls = (EndOfTurnHint,)

    def __init__(self, script: Sequence[UserSpeech], options: ScriptedVADOptions | None = None) -> None:
        super().__init__(options or ScriptedVADOptions())
        self.script = sorted(script, key=lambda s: s.start)
        self._sessions: dict[str, ScriptedVADContext] = {}

    def create_context(self, session: SessionInfo) -> ScriptedVADContext:
        ctx = ScriptedVADContext(session, session.clock.now(), list(self.script))
        self._sessions[session.session_id] = ctx
        return ctx

    def close_context(self, ctx: ScriptedVADContext) -> None:
        self._sessions.pop(ctx.info.session_id, None)

    def heard(self, session_id: str, turn: int) -> str:
        """The words of ``turn`` so far, in that session (for ``FakeASR``)."""
        ctx = self._sessions.get(session_id)
        u = ctx.turns.get(turn) if ctx is not None else None
        return u.text if u is not None else ""

    async def handle(self, ctx: ScriptedVADContext, event: Event) -> AsyncIterator[Event]:
        for out in self._hear(ctx, ctx.info.clock.now() - ctx.t0):
            yield out

    def on_control(self, ctx: ScriptedVADContext, event: Event) -> list[Event]:
        assert isinstance(event, EndOfTurnHint)
        u = ctx.current
        # Only for the silence the transcript was made in: voice since makes it stale.
        if u is None or u.turn != event.turn or u.done or abs(ctx.t0 + u.end - event.speech_end) > SAME_INSTANT_S:
            return []
        u.hangover_s = event.silence_ms / 1000
        return self._hear(ctx, ctx.info.clock.now() - ctx.t0)

    def cancel_turn(self, ctx: ScriptedVADContext, turn: int) -> None:
        if ctx.current is not None and ctx.current.turn == turn:
            ctx.current.cancelled = True

    # -- following the script -------------------------------------------------------------

    def _hear(self, ctx: ScriptedVADContext, r: float) -> list[Event]:
        """Everything due by ``r`` seconds after the session's start."""
        out: list[Event] = []
        while True:
            u = ctx.current
            if u is None or u.done:
                if not ctx.script or ctx.script[0].start > r:
                    return out
                s = ctx.script.pop(0)
                u = ctx.current = _Utterance(s.start, s.end, [s.transcript])
            resumed = ctx.script[0] if ctx.script and ctx.script[0].start <= r else None
            if resumed is not None and u.turn is not None and resumed.start < u.end + self._hangover(u):
                ctx.script.pop(0)  # the voice came back before the turn ended: same turn
                self._voice(ctx, u, resumed.start, out)
                u.end, u.paused, u.hangover_s = resumed.end, False, None
                u.reported_until = max(u.reported_until, resumed.start)
                u.words.append(resumed.transcript)
            out += self._due(ctx, u, r)
            if not u.done:
                return out

    def _hangover(self, u: _Utterance) -> float:
        return u.hangover_s if u.hangover_s is not None else self.options.end_ms / 1000

    def _voice(self, ctx: ScriptedVADContext, u: _Utterance, until: float, out: list[Event]) -> None:
        """SpeechOngoing for the voice of ``u`` up to ``until`` (capped at its end)."""
        step = self.options.progress_ms / 1000
        if u.turn is None or u.cancelled or step <= 0:
            return
        while u.reported_until + step <= min(u.end, until) + _EPS:
            u.reported_until += step
            out.append(SpeechOngoing(u.turn, voiced_until=ctx.t0 + u.reported_until))

    def _due(self, ctx: ScriptedVADContext, u: _Utterance, r: float) -> list[Event]:
        o, t0 = self.options, ctx.t0
        out: list[Event] = []
        if u.turn is None:
            if u.end - u.start < o.start_ms / 1000:
                u.done = r >= u.end  # a click: never a turn
                return out
            if r + _EPS < u.start + o.start_ms / 1000:
                return out
            u.turn = ctx.info.new_turn()
            u.reported_until = u.start + o.start_ms / 1000
            ctx.turns[u.turn] = u
            out += [SpeechStarted(u.turn, at=t0 + u.start), TimingMark(u.turn, "speech_start", at=t0 + u.start)]
        self._voice(ctx, u, r, out)
        if u.cancelled:
            u.done = r >= u.end + self._hangover(u)
            return out
        long_enough = u.end - u.start >= o.min_utterance_ms / 1000
        if o.pause_ms and not u.paused and long_enough and r + _EPS >= u.end + o.pause_ms / 1000:
            u.paused = True
            out.append(SpeechPaused(u.turn, audio=self._audio(u), speech_end=t0 + u.end))
        if r + _EPS >= u.end + self._hangover(u):
            u.done = True
            if not long_enough:
                out.append(TurnCancelled(u.turn, reason="too short"))
            else:
                now = t0 + r
                out += [TimingMark(u.turn, "speech_end", at=t0 + u.end), TimingMark(u.turn, "vad_end", at=now),
                        SpeechEnded(u.turn, audio=self._audio(u), speech_end=t0 + u.end, at=now)]
        return out

    @staticmethod
    def _audio(u: _Utterance) -> np.ndarray:
        return np.zeros(int((u.end - u.start) * VAD_RATE), np.float32)


class FakeASR(Handler[HandlerOptions]):
    """The scripted words, as a recogniser would give them, ``latency_s`` (session clock)
    after the audio came: ``SpeechPaused`` → a partial ``UserTranscript(final=False,
    speech_end=...)`` of the words so far (end of turn judges it); ``SpeechEnded`` → the
    final one, with a ``TimingMark("asr_final")``. A turn the script does not know is "".
    """

    name = "fake"
    stage = "asr"
    accepts = (SpeechPaused, SpeechEnded)

    def __init__(self, vad: ScriptedVAD, latency_s: float = 0.0) -> None:
        super().__init__(HandlerOptions())
        self.vad = vad
        self.latency_s = latency_s

    def create_context(self, session: SessionInfo) -> SessionInfo:
        return session

    async def handle(self, ctx: SessionInfo, event: Event) -> AsyncIterator[Event]:
        if self.latency_s > 0:
            await ctx.clock.sleep_until(ctx.clock.now() + self.latency_s)
        text = self.vad.heard(ctx.session_id, event.turn)
        if isinstance(event, SpeechPaused):
            yield UserTranscript(event.turn, text, final=False, speech_end=event.speech_end)
            yield event  # on to a ``turn`` stage, as a real ASR passes it
            return
        yield TimingMark(event.turn, "asr_final", at=ctx.clock.now())
        yield UserTranscript(event.turn, text, final=True)


class FakeTurnModel(Handler[HandlerOptions]):
    """An audio end-of-turn model (the ``turn`` stage, after the ASR) that hears the script:
    at each ``SpeechPaused`` the ASR passes on it guesses ``guess(words so far)`` (a
    probability that the user has finished), ``latency_s`` (session clock) later, as
    ``EndOfTurnGuess``."""

    name = "fake"
    stage = "turn"
    accepts = (SpeechPaused,)
    forwards = (SpeechPaused,)

    def __init__(self, vad: ScriptedVAD, guess: Callable[[str], float], latency_s: float = 0.0) -> None:
        super().__init__(HandlerOptions())
        self.vad = vad
        self.guess = guess
        self.latency_s = latency_s

    def create_context(self, session: SessionInfo) -> SessionInfo:
        return session

    async def handle(self, ctx: SessionInfo, event: Event) -> AsyncIterator[Event]:
        assert isinstance(event, SpeechPaused)
        if self.latency_s > 0:
            await ctx.clock.sleep_until(ctx.clock.now() + self.latency_s)
        words = self.vad.heard(ctx.session_id, event.turn)
        yield EndOfTurnGuess(event.turn, event.speech_end, self.guess(words))
