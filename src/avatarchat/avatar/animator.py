"""Idle life plus speech: the face of one session at any instant of a reply.

``Animator`` keeps the idle motion of a session and the mouth of the reply being spoken.
``begin(origin)`` starts a reply whose time 0 is ``origin`` on the session clock;
``speak(chunk)`` schedules a ``ReplyAudio``'s mouth on the reply clock (its ``offset``);
``params_at(t)`` gives the ``FaceParams`` at reply time ``t``. Blinks, breathing and head
motion keep running while speaking (the head a little livelier); the mouth fades in over
``FADE_IN_S`` at the reply's start and closes back to idle over ``CLOSE_S`` after the last
chunk (``finish``) or on ``stop``. Everything is continuous in ``t``.

Phoneme timings are cleaned before blending: word-boundary spaces and stress marks are
timed entries in hibari's output but no sound of their own, so their time goes to their
neighbours instead of briefly closing the mouth; punctuation stays (a real pause). A
stress mark instead lifts the brows a little over the vowel it stresses.

A chunk without timings (a network voice that sends audio only) gets its mouth from its
audio: the MFCC vowel classifier of ``avatar.audio_visemes`` by default.

Not thread-safe: call it from one thread (the event loop). Its calls are cheap (well under
a millisecond for a frame batch); rendering is what goes to an executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avatarchat.avatar.audio_visemes import AudioMouth, AudioVisemeModel
from avatarchat.avatar.idle import IdleMotion, smoothstep
from avatarchat.avatar.lipsync import CHANNELS, MouthCurves, curves_from_audio, curves_from_phonemes
from avatarchat.avatar.params import FaceParams
from avatarchat.avatar.visemes import SHAPES, viseme_of
from avatarchat.engine.events import PhonemeTiming, ReplyAudio

FADE_IN_S = 0.06
CLOSE_S = 0.18
#: Gaps left by dropped spaces/stress marks shorter than this are closed by the neighbours.
_BRIDGE_S = 0.1
_STRESS = frozenset("ˈˌ")
_BROW_LIFT = 0.15
#: How far around a frame batch phonemes can still shape it (coarticulation reach).
_REACH_S = 0.5
#: Lips shut for a bilabial ease in and out over this long (seconds).
_CLOSE_EASE_S = 0.04
_CLOSED = np.array([getattr(SHAPES["PP"], c) for c in CHANNELS], np.float32)


@dataclass(frozen=True)
class _AudioSpan:
    """A chunk without phoneme timings under ``audio_mouth="loudness"``: its mouth follows
    its loudness."""

    start: float
    samples: np.ndarray
    sample_rate: int

    @property
    def end(self) -> float:
        return self.start + len(self.samples) / self.sample_rate


def clean_phonemes(phonemes: Sequence[PhonemeTiming], shift: float = 0.0,
                   duration: float | None = None) -> tuple[list[PhonemeTiming], list[float]]:
    """Sounding phonemes shifted by ``shift`` seconds, and the centres of stressed vowels.

    Spaces and lone stress marks are dropped; a gap shorter than ``_BRIDGE_S`` is closed by
    its neighbours meeting halfway, a longer one (a pause) is filled with silence, and so
    are the chunk's silent lead and tail when ``duration`` (its length) is given.
    """
    kept: list[PhonemeTiming] = []
    stressed: list[float] = []
    pending_stress: float | None = None  # start of a lone stress mark waiting for its vowel
    for p in phonemes:
        if p.phoneme in _STRESS:
            pending_stress = p.start if pending_stress is None else pending_stress
            continue
        if not p.phoneme.strip():
            continue
        start = p.start
        if pending_stress is not None:
            # misaki puts the mark before the vowel: the mark's time is the vowel's onset.
            start, pending_stress = min(start, pending_stress), None
            stressed.append((start + p.end) / 2 + shift)
        elif p.phoneme[0] in _STRESS:  # espeak attaches the mark to its vowel
            stressed.append((start + p.end) / 2 + shift)
        kept.append(PhonemeTiming(p.phoneme, start + shift, p.end + shift))
    if duration is not None and kept:
        # Blending normalises the weights, so a stretch with no phoneme at all would show
        # its nearest neighbour's shape: silence must be an explicit phoneme.
        if kept[0].start - shift > 0.02:
            kept.insert(0, PhonemeTiming("_", shift, kept[0].start))
        if shift + duration - kept[-1].end > 0.02:
            kept.append(PhonemeTiming("_", kept[-1].end, shift + duration))
    out: list[PhonemeTiming] = kept[:1]
    for b in kept[1:]:
        a = out[-1]
        gap = b.start - a.end
        if 0.0 < gap < _BRIDGE_S:
            mid = (a.end + b.start) / 2
            out[-1] = PhonemeTiming(a.phoneme, a.start, mid)
            b = PhonemeTiming(b.phoneme, mid, b.end)
        elif gap >= _BRIDGE_S:
            out.append(PhonemeTiming("_", a.end, b.start))
        out.append(b)
    return out, stressed


class Animator:
    """The face of one session: its idle motion and the mouth of the reply being spoken.

    ``anticipation``: lips lead the sound by this much (seconds). ``timing_lead``: how far
    the TTS audio runs ahead of its phoneme timings (hibari: ~50 ms), subtracted from them.
    ``audio_mouth``: what shapes the mouth of a chunk without timings: ``"mfcc"`` (the
    vowel classifier of ``avatar.audio_visemes``, its audio read ``anticipation`` early) or
    ``"loudness"`` (``lipsync.curves_from_audio``: loudness and spectral brightness only).
    ``audio_model``: the classifier's templates (default: the shipped ones).
    """

    def __init__(self, seed: int = 0, anticipation: float = 0.05, timing_lead: float = 0.05,
                 audio_mouth: str = "mfcc", audio_model: AudioVisemeModel | None = None) -> None:
        if audio_mouth not in ("mfcc", "loudness"):
            raise ValueError(f"audio_mouth must be 'mfcc' or 'loudness', not {audio_mouth!r}")
        self.idle = IdleMotion(seed)
        self.anticipation = anticipation
        self.timing_lead = timing_lead
        self.audio_mouth = audio_mouth
        self.audio_model = audio_model
        self.origin = 0.0
        self._phonemes: list[PhonemeTiming] = []
        self._stressed: list[float] = []
        self._audio: list[_AudioSpan] = []
        self._heard = AudioMouth(anticipation, audio_model)
        self._start: float | None = None  # reply time the mouth starts fading in
        self._close: float | None = None  # reply time the mouth starts closing
        self.speech_end = 0.0

    # -- the reply ---------------------------------------------------------------------

    def begin(self, origin: float) -> None:
        """A new reply whose time 0 is ``origin`` on the session clock; forgets the last."""
        self.origin = origin
        self._phonemes, self._stressed, self._audio = [], [], []
        self._heard = AudioMouth(self.anticipation, self.audio_model)
        self._start, self._close = None, None
        self.speech_end = 0.0

    def speak(self, chunk: ReplyAudio) -> None:
        """Schedule the mouth for ``chunk`` (placed at its ``offset`` on the reply clock)."""
        if self._start is None:
            self._start = chunk.offset
        if chunk.phonemes:
            kept, stressed = clean_phonemes(chunk.phonemes, chunk.offset - self.timing_lead, chunk.duration)
            self._phonemes.extend(kept)
            self._stressed.extend(stressed)
        elif self.audio_mouth == "mfcc":
            self._heard.add(chunk.offset, chunk.samples, chunk.sample_rate)
        else:
            self._audio.append(_AudioSpan(chunk.offset, chunk.samples, chunk.sample_rate))
        self.speech_end = max(self.speech_end, chunk.offset + chunk.duration)
        self._close = None  # more speech: a pending close is called off

    def settled(self, chunk: ReplyAudio) -> float:
        """Reply time before which the mouth is final once ``chunk`` is spoken: its end; for
        a chunk whose mouth is read from its audio ahead of each frame (no timings,
        ``audio_mouth="mfcc"``), its end less that reach (``anticipation`` + 36 ms), since the
        next piece of a streamed clause changes the frames after. Those frames are made
        when the next chunk comes, or the reply ends (``finish``)."""
        end = chunk.offset + chunk.duration
        if chunk.phonemes or self.audio_mouth != "mfcc":
            return end
        return max(end - self._heard.reach, chunk.offset)

    def finish(self) -> float:
        """No more chunks: the mouth closes after the last one. Returns when it is closed."""
        return self.stop(self.speech_end)

    def stop(self, t: float) -> float:
        """Close the mouth from reply time ``t`` (cancel). Returns when it is closed."""
        if self._close is None or t < self._close:
            self._close = t
        return self._close + CLOSE_S

    def stop_at(self, t: float, t_session: float) -> float:
        """Close the mouth from reply time ``t``, the frame on screen at session time
        ``t_session`` (a reply cut off while it plays). The reply clock is re-anchored there,
        so the idle frames that follow go on from the frame the user saw, not from wherever
        the renderer had got to. Returns the reply time the mouth is closed."""
        self.origin = t_session - t
        self._close = t
        return t + CLOSE_S

    @property
    def speaking(self) -> bool:
        return self._start is not None

    # -- sampling -------------------------------------------------------------------------

    def envelope(self, times: np.ndarray) -> np.ndarray:
        """How much of the speech mouth shows at each reply time (0 idle … 1 speaking)."""
        if self._start is None:
            return np.zeros(len(times))
        g = np.array([smoothstep((t - self._start) / FADE_IN_S) for t in times])
        if self._close is not None:
            g *= np.array([1.0 - smoothstep((t - self._close) / CLOSE_S) for t in times])
        return g

    def mouth(self, times: np.ndarray) -> MouthCurves:
        """The speech mouth at reply ``times`` (before the envelope)."""
        times = np.asarray(times, np.float64)
        if len(times) == 0:
            return MouthCurves(times, np.zeros((0, len(CHANNELS)), np.float32), ())
        lo, hi = times.min() - _REACH_S, times.max() + _REACH_S
        near = [p for p in self._phonemes if p.end >= lo and p.start <= hi]
        curves = curves_from_phonemes(near, times, self.anticipation)
        values, visemes = curves.values.copy(), list(curves.visemes)
        closure = self._closure(near, times)
        values += closure[:, None] * (_CLOSED - values)
        for span in self._audio:
            inside = (times >= span.start) & (times < span.end)
            if inside.any():
                audio = curves_from_audio(span.samples, span.sample_rate, times[inside], span.start)
                values[inside] = audio.values
                for i, v in zip(np.flatnonzero(inside), audio.visemes):
                    visemes[i] = v
        inside = self._heard.covers(times)
        if inside.any():
            heard = self._heard.curves(times[inside])
            values[inside] = heard.values
            for i, v in zip(np.flatnonzero(inside), heard.visemes):
                visemes[i] = v
        return MouthCurves(times, values, tuple(visemes))

    def motion(self, times: np.ndarray) -> MouthCurves:
        """What the face's mouth does at ``times``: ``mouth`` times the envelope."""
        curves = self.mouth(times)
        g = self.envelope(curves.times)
        return MouthCurves(curves.times, (curves.values * g[:, None]).astype(np.float32), curves.visemes)

    def params(self, times: Sequence[float] | np.ndarray) -> list[FaceParams]:
        """``FaceParams`` at each reply time: idle on the session clock plus the mouth."""
        times = np.asarray(times, np.float64)
        curves = self.motion(times)
        g = self.envelope(times)
        out = []
        for t, row, speaking in zip(times, curves.values, g):
            face = self.idle.at(self.origin + t, speaking=float(speaking))
            mouth = dict(zip(CHANNELS, map(float, row)))
            brows = face.brows + speaking * self._brow_lift(t)
            out.append(face.with_(**mouth, brows=brows))
        return out

    def params_at(self, t: float) -> FaceParams:
        return self.params([t])[0]

    def idle_params(self, t_session: float) -> FaceParams:
        """The face at session time ``t_session`` when no reply frames are being shown: the
        idle face, plus a reply's closing mouth if one is still closing."""
        t = t_session - self.origin
        if self._start is None or (self._close is not None and t >= self._close + CLOSE_S):
            # Once the mouth has closed, the reply adds nothing (its envelope is 0): the
            # idle face alone, without sampling the reply's curves. A client-drawn face asks
            # for ~90 idle rows a second per session, forever after its first reply.
            return self.idle.at(t_session)
        return self.params_at(t)

    def _closure(self, phonemes: Sequence[PhonemeTiming], times: np.ndarray) -> np.ndarray:
        """0..1 per time: how far a bilabial (p, b, m) forces the lips shut. Dominance
        blending alone leaves them ~30 % open between two open vowels, which reads as
        mumbling; real lips always meet for a bilabial, so its middle is held shut."""
        c = np.zeros(len(times))
        for p in phonemes:
            if viseme_of(p.phoneme) != "PP":
                continue
            centre = (p.start + p.end) / 2 - self.anticipation
            hold = max(p.end - p.start, 0.02) / 4
            d = np.maximum(np.abs(times - centre) - hold, 0.0) / _CLOSE_EASE_S
            c = np.maximum(c, 1.0 - np.clip(d, 0.0, 1.0) ** 2 * (3.0 - 2.0 * np.clip(d, 0.0, 1.0)))
        return c

    def _brow_lift(self, t: float) -> float:
        if not self._stressed:
            return 0.0
        c = np.asarray(self._stressed) - self.anticipation
        return float(_BROW_LIFT * np.exp(-0.5 * ((t - c) / 0.08) ** 2).max())
