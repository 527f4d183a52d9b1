"""Mouth shapes from the audio alone, for a voice that gives no phoneme timings.

The method is uLipSync's (an MFCC vowel classifier), written here in numpy: every analysis
window (32 ms) gets 12 mel-frequency cepstral coefficients (pre-emphasis, Hamming window,
26 mel bands from 100 Hz to 7.6 kHz, log, DCT, c0 dropped: the spectral envelope, which
is what the vowel's formants shape), and they are compared with one template per mouth
class: the five vowels A E I O U, a hiss S (s, sh, f, th: lips stretched, teeth close) and
the other consonants C (t, k, n, r, p…). The templates, and a linear map under which
Euclidean distance separates the classes best (linear discriminant analysis), were learned
offline from the embedded voices' phoneme-timed speech (``avatar.audio_visemes_fit``:
what was used and how well it did is stored beside them in ``data/audio_visemes.json``).

Loudness drives the jaw: a window's level, relative to the reply's own speech level (the
90th percentile of its voiced 10 ms frames so far), opens the mouth from ``gate_db[0]`` to
fully at ``gate_db[1]``; the class probabilities say which shape opens. So a quiet voice
and a loud one move the mouth alike, and silence closes it whatever the classifier says.

Each frame looks at five windows 10 ms apart around its instant (a 72 ms span, about the
frame interval plus a window), averaged: what a frame shows does not depend on how
frames were batched, and the mouth does not flicker between classes. Cost: one FFT per
window, five windows per frame: ``avatarchat bench lipsync`` measured ~2.5 ms of CPU per
second of audio at 25 fps (0.4 ms median per batch of 5 frames) on a loaded 2-core box.

Streamed audio: a frame needs its audio ``lead`` + 36 ms ahead (``AudioMouth.reach``); a
frame made before the next piece has come reads the end of what has (held), which follows
the whole-clause mouth less closely for the last ~86 ms of each piece (bench: jaw
correlation 0.95 with 300 ms pieces, 0.75-0.87 with 100 ms ones, against the whole
clause's, with 50 ms anticipation). So the portrait stage waits for the next piece (or
the reply's end) before making those frames (``Animator.settled``): 0.997-0.999 with
100 ms and 300 ms pieces, English, Chinese and espeak-ng alike (the rest: the speech
level, the loudest piece's so far). What it costs: those frames are rendered when the
next piece arrives instead of with theirs; frames play by their pts, so it shows only
where the next piece comes after the held frames are due on screen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from avatarchat.avatar.lipsync import CHANNELS, MouthCurves
from avatarchat.avatar.visemes import SHAPES

#: Mouth classes and the viseme each one shows.
CLASSES = ("A", "E", "I", "O", "U", "S", "C")
CLASS_VISEME = {"A": "aa", "E": "E", "I": "ih", "O": "oh", "U": "ou", "S": "SS", "C": "nn"}
#: The reference mouth's visemes as classes (for training labels and agreement figures).
VISEME_CLASS = {
    "aa": "A", "E": "E", "ih": "I", "oh": "O", "ou": "U",
    "SS": "S", "CH": "S", "FF": "S", "TH": "S",
    "PP": "C", "DD": "C", "kk": "C", "nn": "C", "RR": "C", "sil": "sil",
}
WINDOW_S = 0.032
HOP_S = 0.01
#: Offsets of the windows a frame averages (seconds), and their weights.
_TAPS = np.array([-0.02, -0.01, 0.0, 0.01, 0.02])
_TAP_W = np.array([0.5, 1.0, 1.0, 1.0, 0.5])
N_MELS = 26
N_MFCC = 12
_FMIN, _FMAX = 100.0, 7600.0
_PRE_EMPHASIS = 0.97
#: Below this a window is no sound at all (dBFS), however quiet the voice.
_FLOOR_DB = -75.0
#: The relative level of no sound at all.
_NONE_DB = -100.0
_SHAPES = np.array([[getattr(SHAPES[CLASS_VISEME[c]], ch) for ch in CHANNELS] for c in CLASSES], np.float32)


# -- features ----------------------------------------------------------------------------------


def window_length(rate: int) -> int:
    return int(round(WINDOW_S * rate))


@lru_cache(maxsize=8)
def _matrices(rate: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(nfft, Hamming window, mel filterbank [bins, mels], DCT-II [mels, coefficients])."""
    n = window_length(rate)
    nfft = 1 << (n - 1).bit_length()
    hz = np.fft.rfftfreq(nfft, 1.0 / rate)
    fmax = min(_FMAX, rate / 2.0)
    mel = 2595.0 * np.log10(1.0 + np.array([_FMIN, fmax]) / 700.0)
    edges = 700.0 * (10 ** (np.linspace(mel[0], mel[1], N_MELS + 2) / 2595.0) - 1.0)
    bank = np.zeros((len(hz), N_MELS))
    for m in range(N_MELS):
        lo, mid, hi = edges[m: m + 3]
        bank[:, m] = np.clip(np.minimum((hz - lo) / (mid - lo), (hi - hz) / (hi - mid)), 0.0, None)
    k = np.arange(N_MELS)
    dct = np.cos(np.pi / N_MELS * (k[:, None] + 0.5) * np.arange(1, N_MFCC + 1)[None, :]) * np.sqrt(2.0 / N_MELS)
    return nfft, np.hamming(n), bank, dct


def features(windows: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """MFCC c1..c12 ``[n, 12]`` and level in dBFS ``[n]`` of ``windows`` ``[n, window_length(rate)]``."""
    nfft, hamming, bank, dct = _matrices(rate)
    x = windows.astype(np.float64)
    level = 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-12)
    emph = np.concatenate([x[:, :1], x[:, 1:] - _PRE_EMPHASIS * x[:, :-1]], axis=1)
    power = np.abs(np.fft.rfft(emph * hamming, nfft, axis=1)) ** 2
    return np.log(power @ bank + 1e-10) @ dct, level


def windows_at(samples: np.ndarray, rate: int, centres: np.ndarray) -> np.ndarray:
    """Windows of ``samples`` centred on ``centres`` (seconds from its first sample);
    zeros where a window reaches outside it."""
    n = window_length(rate)
    starts = np.round(np.asarray(centres) * rate).astype(np.int64) - n // 2
    padded = np.concatenate([np.zeros(n, samples.dtype), samples, np.zeros(n, samples.dtype)])
    idx = np.clip(starts + n, 0, len(padded) - n)[:, None] + np.arange(n)[None, :]
    return padded[idx]


def relative_level(level: np.ndarray, speech: float) -> np.ndarray:
    """Window levels (dBFS) relative to the speech level; no sound at all is ``_NONE_DB``."""
    return np.where(level > _FLOOR_DB, level - speech, _NONE_DB)


def speech_level(samples: np.ndarray, rate: int) -> float | None:
    """The 90th percentile of the voiced 10 ms frames' levels (dBFS), None if none is voiced."""
    hop = int(rate * HOP_S)
    frames = len(samples) // hop
    if frames == 0:
        return None
    x = samples[: frames * hop].astype(np.float64).reshape(frames, hop)
    db = 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-12)
    voiced = db[db > _FLOOR_DB + 15.0]
    return float(np.percentile(voiced, 90)) if len(voiced) else None


# -- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioVisemeModel:
    """Templates in a discriminant space: ``z = ((v - mean) / scale) @ projection`` for a
    frame vector ``v`` (``frame_vectors``), class probabilities
    ``softmax(-|z - template|^2 / (2 temperature))``."""

    mean: np.ndarray
    scale: np.ndarray
    projection: np.ndarray
    templates: np.ndarray  # [len(CLASSES), dims]
    temperature: float
    gate_db: tuple[float, float]  # level relative to the speech level: closed … fully open
    #: Each class's mouth (``CHANNELS``) when fully open: by default its viseme's shape; the
    #: shipped ones were fitted to the phoneme-timed mouth (``audio_visemes_fit``).
    shapes: np.ndarray = field(default_factory=lambda: _SHAPES.astype(np.float64))
    made: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        z = ((vectors - self.mean) / self.scale) @ self.projection
        d2 = ((z[:, None, :] - self.templates[None, :, :]) ** 2).sum(axis=2)
        logit = -d2 / (2.0 * self.temperature)
        p = np.exp(logit - logit.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def gate(self, relative_db: np.ndarray) -> np.ndarray:
        lo, hi = self.gate_db
        return np.clip((relative_db - lo) / (hi - lo), 0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(CLASSES), "n_mfcc": N_MFCC, "n_mels": N_MELS, "window_s": WINDOW_S,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "projection": self.projection.tolist(), "templates": self.templates.tolist(),
                "temperature": self.temperature, "gate_db": list(self.gate_db),
                "channels": list(CHANNELS), "shapes": np.round(self.shapes, 4).tolist(), "made": self.made}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AudioVisemeModel:
        if (tuple(doc["classes"]) != CLASSES or doc["n_mfcc"] != N_MFCC or doc["n_mels"] != N_MELS
                or len(doc["mean"]) != N_MFCC + 1):
            raise ValueError("audio viseme templates were made for other classes or features")
        if tuple(doc.get("channels", CHANNELS)) != CHANNELS:
            raise ValueError("audio viseme shapes were made for other mouth channels")
        arr = {k: np.asarray(doc[k], np.float64) for k in ("mean", "scale", "projection", "templates")}
        shapes = np.asarray(doc["shapes"], np.float64) if "shapes" in doc else _SHAPES.astype(np.float64)
        return cls(arr["mean"], arr["scale"], arr["projection"], arr["templates"], float(doc["temperature"]),
                   (float(doc["gate_db"][0]), float(doc["gate_db"][1])), shapes, dict(doc.get("made", {})))


@lru_cache(maxsize=1)
def default_model() -> AudioVisemeModel:
    """The templates shipped in the package (``avatarchat/data/audio_visemes.json``)."""
    text = resources.files("avatarchat").joinpath("data/audio_visemes.json").read_text(encoding="utf-8")
    return AudioVisemeModel.from_json(json.loads(text))


# -- the mouth -----------------------------------------------------------------------------------


class _Run:
    """Contiguous audio at one rate from ``start`` on the reply clock; appending copies only
    the new samples (the buffer doubles when full), so a reply streamed in many small
    pieces costs time in proportion to its length."""

    def __init__(self, start: float, samples: np.ndarray, rate: int) -> None:
        self.start, self.rate, self.n = start, rate, len(samples)
        self._data = samples.copy()

    @property
    def samples(self) -> np.ndarray:
        return self._data[: self.n]

    @property
    def end(self) -> float:
        return self.start + self.n / self.rate

    def append(self, samples: np.ndarray) -> None:
        if self.n + len(samples) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), self.n + len(samples)), np.float32)
            grown[: self.n] = self.samples
            self._data = grown
        self._data[self.n: self.n + len(samples)] = samples
        self.n += len(samples)


class AudioMouth:
    """The audio of one reply's untimed chunks, and the mouth it makes at any reply time.

    ``add`` places a chunk at its offset on the reply clock (chunks that follow each other
    are joined, so windows reach across their seams); ``curves(times)`` is the mouth at
    those times, ``lead`` seconds of the audio early (lips move before their sound). A
    window reaching past the audio received so far is held at its end, not read as silence:
    the next streamed piece may still be on its way.
    """

    def __init__(self, lead: float = 0.0, model: AudioVisemeModel | None = None) -> None:
        self.lead = lead
        self._model = model
        self._runs: list[_Run] = []
        self.level: float | None = None

    def add(self, start: float, samples: np.ndarray, rate: int) -> None:
        samples = np.asarray(samples, np.float32).reshape(-1)
        if len(samples) == 0:
            return
        level = speech_level(samples, rate)
        if level is not None:
            self.level = level if self.level is None else max(self.level, level)
        last = self._runs[-1] if self._runs else None
        if last is not None and last.rate == rate and abs(last.end - start) < 1.5 / rate:
            last.append(samples)
        else:
            self._runs.append(_Run(start, samples, rate))

    @property
    def model(self) -> AudioVisemeModel:
        # Loaded at first use, not when an animator is made: most replies have timings.
        return self._model or default_model()

    @property
    def end(self) -> float:
        return max((run.end for run in self._runs), default=0.0)

    @property
    def reach(self) -> float:
        """How far past a frame's instant its audio is read (``lead`` + 36 ms): a frame
        closer than this to the end of the audio received may still change with the next piece."""
        return self.lead + float(_TAPS.max()) + WINDOW_S / 2

    def covers(self, times: np.ndarray) -> np.ndarray:
        """Which of ``times`` fall inside the audio added."""
        inside = np.zeros(len(times), bool)
        for run in self._runs:
            inside |= (times >= run.start) & (times < run.end)
        return inside

    def curves(self, times: np.ndarray) -> MouthCurves:
        times = np.asarray(times, np.float64)
        values = np.zeros((len(times), len(CHANNELS)), np.float32)
        visemes = ["sil"] * len(times)
        if not self._runs or len(times) == 0 or self.level is None:
            return MouthCurves(times, values, tuple(visemes))
        model = self.model
        centres = np.minimum(times[:, None] + self.lead + _TAPS[None, :], self.end - WINDOW_S / 2)
        mfcc = np.zeros((len(times), len(_TAPS), N_MFCC))
        rel = np.full((len(times), len(_TAPS)), _NONE_DB)
        weight = np.zeros((len(times), len(_TAPS)))
        for run in self._runs:
            # Every tap is read from the run that holds its centre.
            hit = (centres >= run.start) & (centres < run.end)
            if hit.any():
                rows, cols = np.nonzero(hit)
                taps = windows_at(run.samples, run.rate, centres[rows, cols] - run.start)
                mfcc[rows, cols], level = features(taps, run.rate)
                rel[rows, cols] = relative_level(level, self.level)
                weight[rows, cols] = _TAP_W[cols]
        has = weight.sum(axis=1) > 0
        if not has.any():
            return MouthCurves(times, values, tuple(visemes))
        vec, loud = frame_vectors(mfcc[has], rel[has], weight[has])
        open_ = model.gate(loud)
        mix = model.probabilities(vec)
        values[has] = np.clip(open_[:, None] * (mix @ model.shapes), 0.0, 1.0).astype(np.float32)
        for i, g, p in zip(np.flatnonzero(has), open_, mix):
            if g > 0.15:
                visemes[i] = CLASS_VISEME[CLASSES[int(np.argmax(p))]]
        return MouthCurves(times, values, tuple(visemes))


def frame_vectors(mfcc: np.ndarray, rel: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame's classifier input from its taps: the weighted mean MFCC and mean relative
    level (dB / 10, so it weighs like a coefficient), ``[n, N_MFCC + 1]``; and that level in dB.
    ``mfcc`` ``[n, taps, N_MFCC]``, ``rel`` and ``weight`` ``[n, taps]`` (weight 0: no audio)."""
    w = weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-12)
    loud = np.clip((w * np.maximum(rel, _NONE_DB)).sum(axis=1), _NONE_DB, 20.0)
    return np.concatenate([(w[:, :, None] * mfcc).sum(axis=1), loud[:, None] / 10.0], axis=1), loud
