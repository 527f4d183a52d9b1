"""Mouth curves from phoneme timings (or, lacking them, from the audio's loudness; the
vowel classifier for untimed audio is ``avatar.audio_visemes``).

Coarticulation is dominance blending: each phoneme pulls the mouth towards its viseme's
shape with a weight that peaks at the phoneme's centre and falls off over about its own
length, so neighbours blend instead of snapping. Every target is placed ``anticipation``
seconds early, because lips move before the sound they make is heard (40–60 ms).

Curves are sampled at frame times on the reply's audio clock: frame k of a reply shows
the mouth at ``k / fps`` seconds after the reply's first audio sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avatarchat.avatar.visemes import SHAPES, VISEMES, viseme_of
from avatarchat.engine.events import PhonemeTiming

CHANNELS = ("jaw", "stretch", "round", "upper", "press")
_SHAPE_MATRIX = np.array([[getattr(SHAPES[v], c) for c in CHANNELS] for v in VISEMES], np.float32)
# How strongly a viseme holds its shape against its neighbours: closures must close.
_DOMINANCE = {"PP": 3.0, "FF": 2.0, "sil": 0.6, "aa": 1.2, "oh": 1.2, "ou": 1.4}
# Per channel, for the consonants that leave it free: the tongue makes t, d, k, n, s, th,
# so the lips keep the rounding of the vowels around them ("who knew you", "soup"): in
# speech, rounding spreads over such consonants, and it starts several of them early.
_ROUND_FREE = ("DD", "TH", "kk", "nn", "SS")
_CHANNEL_DOMINANCE = np.ones((len(VISEMES), len(CHANNELS)), np.float32)
for _v in _ROUND_FREE:
    _CHANNEL_DOMINANCE[VISEMES.index(_v), CHANNELS.index("round")] = 0.25


@dataclass(frozen=True)
class MouthCurves:
    """Per-frame mouth channels (``CHANNELS``), each an array of length ``frames``, and the
    dominant viseme of every frame."""

    times: np.ndarray
    values: np.ndarray  # [frames, len(CHANNELS)]
    visemes: tuple[str, ...]

    def channel(self, name: str) -> np.ndarray:
        return self.values[:, CHANNELS.index(name)]


def frame_times(duration: float, fps: float, start: float = 0.0) -> np.ndarray:
    """Frame instants covering ``[start, start + duration)`` on the ``k / fps`` grid."""
    first = int(np.ceil(start * fps - 1e-9))
    last = int(np.ceil((start + duration) * fps - 1e-9))
    return np.arange(first, last, dtype=np.float64) / fps


def curves_from_phonemes(phonemes: Sequence[PhonemeTiming], times: np.ndarray,
                         anticipation: float = 0.05) -> MouthCurves:
    """Blend viseme shapes at ``times`` (seconds, same clock as the phoneme timings)."""
    if len(phonemes) == 0 or len(times) == 0:
        return MouthCurves(times, np.zeros((len(times), len(CHANNELS)), np.float32), ("sil",) * len(times))
    vis = [viseme_of(p.phoneme) for p in phonemes]
    idx = np.array([VISEMES.index(v) for v in vis])
    start = np.array([p.start for p in phonemes])
    end = np.array([p.end for p in phonemes])
    centre = (start + end) / 2 - anticipation
    half = np.maximum((end - start) / 2, 0.03)
    dom = np.array([_DOMINANCE.get(v, 1.0) for v in vis])
    # Weight of phoneme j at time i: flat inside its own span, then a smooth fall-off.
    dist = np.maximum(np.abs(times[:, None] - centre[None, :]) - half[None, :] * 0.5, 0.0)
    w = dom[None, :] * np.exp(-0.5 * (dist / (half[None, :] * 0.9 + 0.02)) ** 2)
    # A faint rest pose fills the gaps before, between and after speech.
    rest = 0.02
    free = _CHANNEL_DOMINANCE[idx]  # [phonemes, channels]
    values = np.einsum("ij,jc,jc->ic", w, free, _SHAPE_MATRIX[idx]) / (w @ free + rest)
    dominant = tuple(vis[j] for j in w.argmax(axis=1))
    return MouthCurves(times, values.astype(np.float32), dominant)


def curves_from_audio(samples: np.ndarray, sample_rate: int, times: np.ndarray,
                      offset: float = 0.0) -> MouthCurves:
    """The simplest audio-driven mouth (``Animator(audio_mouth="loudness")``; the default
    for a TTS without timings is ``avatar.audio_visemes``' vowel classifier): loudness
    opens the jaw, a bright spectrum stretches the lips, a dark one rounds them. ``offset``
    is where ``samples`` starts on the clock of ``times``."""
    win = int(0.04 * sample_rate)
    values = np.zeros((len(times), len(CHANNELS)), np.float32)
    for i, t in enumerate(times):
        a = int((t - offset) * sample_rate) - win // 2
        seg = samples[max(a, 0): max(a + win, 0)]
        if len(seg) < win // 4:
            continue
        rms = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)) + 1e-9)
        loud = np.clip((20 * np.log10(rms) + 45) / 30, 0.0, 1.0)  # -45 dBFS closed … -15 open
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        freqs = np.fft.rfftfreq(len(seg), 1 / sample_rate)
        centroid = float((spec * freqs).sum() / (spec.sum() + 1e-9))
        bright = np.clip((centroid - 1200) / 2500, -1.0, 1.0)
        values[i] = (0.8 * loud, loud * max(bright, 0) * 0.6, loud * max(-bright, 0) * 0.8, 0.0, 0.0)
    # Jaw motion has inertia: smooth over about two frames.
    if len(values) > 2:
        kernel = np.array([0.25, 0.5, 0.25], np.float32)
        for c in range(values.shape[1]):
            values[:, c] = np.convolve(np.pad(values[:, c], 1, mode="edge"), kernel, mode="valid")
    return MouthCurves(times, values, tuple("aa" if v[0] > 0.3 else "sil" for v in values))
