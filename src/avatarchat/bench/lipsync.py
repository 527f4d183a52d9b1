"""``avatarchat bench lipsync``: the audio-driven mouth against the phoneme-timed one.

The same speech (English by hibari, Chinese by the Mandarin add-on voice, ``espeak``: the
English by espeak-ng; sentences no fit of the templates used) animates the avatar three
ways: from its phoneme timings (``phonemes``, the reference), and from its audio alone,
as a voice without timings makes the avatar do: the old loudness mouth (``loudness``,
``curves_from_audio``) and the MFCC vowel classifier (``mfcc``, ``avatar.audio_visemes``).
Each runs through the ``Animator`` as the portrait stage drives it (chunks placed on the
reply clock, frames in batches of 5 as each chunk arrives, the closing tail after the
last). The templates were fitted on hibari and espeak-ng only (``audio_visemes_fit``):
the Mandarin voice is one they never heard, as a network voice without timings is.

Reported per language and mouth:

* against the reference, frame by frame: correlation of the jaw, lip stretch and rounding
  curves, the lag of the jaw curve (ms, negative: earlier), the share of frames whose
  mouth class (A E I O U, hiss S, other consonant C, silence; ``VISEME_CLASS``) matches,
  of all speech frames and of the vowel frames, and open/closed agreement;
* the A/V analysis of the avatar tests (tests/test_avatar_video.py): frames rendered by the
  portrait renderer, the open mouth's dark pixels against the log RMS envelope of the
  audio: correlation and cross-correlation lag (ms), with no anticipation (the clocks) and
  with the default 50 ms (lips lead by design);
* cost: thread CPU of ``Animator.mouth`` per batch and per second of audio;
* other templates (``templates``, e.g. an earlier fit's JSON) as ``mfcc@NAME``, beside the
  shipped ones, in the same run;
* ``mfcc`` streamed: the audio in pieces of ``piece_ms`` (as network voices send it), each
  piece's frames made before the next piece exists, but for the last ones whose audio
  reaches into the next piece (``Animator.settled``: held, as the portrait stage holds
  them; ``unheld``: made at once, reading the piece's end); its jaw against the
  whole-clause one, with and without anticipation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarchat.avatar.animator import Animator
from avatarchat.avatar.audio_visemes import VISEME_CLASS, AudioMouth, AudioVisemeModel
from avatarchat.avatar.lipsync import CHANNELS, MouthCurves, curves_from_audio, frame_times
from avatarchat.bench.avatar import SENTENCES
from avatarchat.bench.stats import machine, summarize
from avatarchat.engine.events import PhonemeTiming, ReplyAudio

#: English: bench avatar's sentences and the A/V test's clauses.
EN = SENTENCES + (
    "Hello there, my name is Ava.",
    "I am a big fan of blue skies, warm soup, and good old books.",
    "Who knew that the moon could look so huge?",
)
#: Chinese: the Mandarin A/V test's clauses and a few more.
ZH = (
    "你好，我叫艾娃。",
    "我很喜欢蓝蓝的天空，热乎乎的汤，还有好看的书。",
    "谁知道月亮可以看起来这么大呢？",
    "大象是非常聪明的动物，它们的记忆力很好。",
    "如果你有时间，我们可以一起去图书馆看书。",
    "你想听我讲一个关于星星的故事吗？",
)
MODES = ("phonemes", "loudness", "mfcc")
FPS = 25
BATCH = 5
ANTICIPATION = 0.05
_VOWELS = frozenset("AEIOU")


@dataclass
class Speech:
    """One language's sentences as its voice says them: (samples, timings) per clause."""

    language: str
    voice: str
    rate: int
    lead: float  # how far the voice's timings trail its audio (the portrait's timing_lead)
    clauses: list[tuple[np.ndarray, tuple[PhonemeTiming, ...]]]

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate([s for s, _ in self.clauses])

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.rate


def speak(language: str) -> Speech:
    if language == "en":
        from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

        tts: Any = HibariTTS(HibariOptions())
        texts: Sequence[str] = EN
        voice, lead = "hibari", 0.05
    elif language == "espeak":
        from avatarchat.handlers.tts.espeak import EspeakOptions, EspeakTTS

        tts, texts, voice, lead = EspeakTTS(EspeakOptions()), EN, "espeak-ng en-us", 0.0
    else:
        from avatarchat.handlers.tts.mandarin import MandarinOptions, MandarinTTS

        tts, texts, voice, lead = MandarinTTS(MandarinOptions()), ZH, "mandarin", 0.0
    tts.load()
    clauses = [tts.synthesize(t) for t in texts]
    return Speech(language, voice, tts.sample_rate, lead, [(s, tuple(p)) for s, p in clauses])


def chunks(speech: Speech, timed: bool, piece_s: float | None = None) -> list[ReplyAudio]:
    """The reply as a TTS stage sends it: clauses contiguous on the reply clock, with their
    timings or without; ``piece_s``: each clause cut into pieces that long (streamed)."""
    out, offset = [], 0.0
    for samples, phonemes in speech.clauses:
        step = len(samples) if piece_s is None else max(int(piece_s * speech.rate), 1)
        for a in range(0, len(samples), step):
            piece = samples[a: a + step]
            out.append(ReplyAudio(1, piece, speech.rate, offset, "", phonemes if timed and a == 0 else ()))
            offset += len(piece) / speech.rate
    return out


def animate(speech: Speech, mode: str, anticipation: float, piece_s: float | None = None,
            model: AudioVisemeModel | None = None, hold: bool = True) -> tuple[MouthCurves, list[Any], list[float]]:
    """The reply's mouth (``Animator.motion``) and face parameters, each batch taken when
    the portrait stage would ask for it (after its chunk arrived, before the next; up to
    ``Animator.settled``, or, not ``hold``, to the chunk's end), and the thread CPU of each
    batch's ``Animator.mouth`` (with placing its chunk). ``model``: the classifier's
    templates (default: the shipped ones)."""
    anim = Animator(0, anticipation, speech.lead, audio_mouth="loudness" if mode == "loudness" else "mfcc",
                    audio_model=model)
    anim.begin(0.0)
    parts: list[MouthCurves] = []
    params: list[Any] = []
    costs: list[float] = []
    done = 0
    for chunk in chunks(speech, mode == "phonemes", piece_s):
        c0 = time.thread_time()
        anim.speak(chunk)
        placed = time.thread_time() - c0
        ready = anim.settled(chunk) if hold else chunk.offset + chunk.duration
        todo = frame_times(ready - done / FPS, FPS, done / FPS)
        done += len(todo)
        for k in range(0, len(todo), BATCH):
            batch = todo[k: k + BATCH]
            c0 = time.thread_time()
            anim.mouth(batch)
            costs.append(time.thread_time() - c0 + placed)
            placed = 0.0
            parts.append(anim.motion(batch))
            params += anim.params(batch)
    closed = anim.finish()
    tail = frame_times(closed + 1.0 / FPS - done / FPS, FPS, done / FPS)
    parts.append(anim.motion(tail))
    params += anim.params(tail)
    curves = MouthCurves(np.concatenate([p.times for p in parts]), np.concatenate([p.values for p in parts]),
                         tuple(v for p in parts for v in p.visemes))
    return curves, params, costs


def versus(ref: MouthCurves, got: MouthCurves) -> dict[str, Any]:
    """``got`` against the reference mouth, frame by frame."""
    def corr(a: np.ndarray, b: np.ndarray) -> float | None:
        return round(float(np.corrcoef(a, b)[0, 1]), 3) if a.std() > 0 and b.std() > 0 else None

    rc = np.array([VISEME_CLASS[v] for v in ref.visemes])
    gc = np.array([VISEME_CLASS[v] for v in got.visemes])
    speech = rc != "sil"
    vowel = np.isin(rc, list(_VOWELS))
    jaw_r, jaw_g = ref.channel("jaw"), got.channel("jaw")
    return {
        **{f"{c}_corr": corr(ref.channel(c), got.channel(c)) for c in ("jaw", "stretch", "round")},
        "jaw_lag_ms": round(lag_ms(jaw_g, jaw_r), 1),
        # How much the jaw moves, against the reference (1: as much; less: a mumbling mouth).
        "jaw_std_ratio": round(float(jaw_g.std() / max(jaw_r.std(), 1e-9)), 2),
        "class_agreement_pct": round(100.0 * float(np.mean(rc[speech] == gc[speech])), 1),
        "vowel_agreement_pct": round(100.0 * float(np.mean(rc[vowel] == gc[vowel])), 1),
        "open_closed_agreement_pct": round(100.0 * float(np.mean((jaw_r > 0.15) == (jaw_g > 0.15))), 1),
    }


def lag_ms(x: np.ndarray, ref: np.ndarray, max_frames: int = 6) -> float:
    """Where the cross-correlation of ``x`` with ``ref`` peaks (parabola through the top
    three lags), in ms; negative: ``x`` moves first (the A/V tests use it too)."""
    a = (x - x.mean()) / (x.std() + 1e-9)
    b = (ref - ref.mean()) / (ref.std() + 1e-9)
    lags = np.arange(-max_frames, max_frames + 1)
    c = np.array([np.mean(a[max(L, 0): len(a) + min(L, 0)] * b[max(-L, 0): len(b) + min(-L, 0)])
                  for L in range(-max_frames, max_frames + 1)])
    i = int(np.clip(np.argmax(c), 1, len(lags) - 2))
    c0, c1, c2 = (float(v) for v in c[i - 1: i + 2])
    den = c0 - 2 * c1 + c2
    return (float(lags[i]) + (0.5 * (c0 - c2) / den if den != 0 else 0.0)) * 1000 / FPS


def envelope(audio: np.ndarray, rate: int, n: int) -> np.ndarray:
    """RMS of the audio in a one-frame window centred on each frame instant."""
    hop = rate / FPS
    out = np.zeros(n)
    for k in range(n):
        seg = audio[max(int(k * hop - hop / 2), 0): max(int(k * hop + hop / 2), 0)]
        out[k] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if len(seg) else 0.0
    return out


def mouth_opening(images: Sequence[np.ndarray], asset: Any) -> np.ndarray:
    """How open the rendered mouth looks in each image: dark pixels (the open mouth's
    inside) in a box around the lips and the dropped jaw."""
    import cv2

    lips = asset.points[asset.groups["lips_outer"]]
    (x0, y0), (x1, y1) = lips.min(axis=0), lips.max(axis=0)
    h = y1 - y0
    box = (slice(int(y0 - 0.2 * h), int(y1 + 0.8 * h)), slice(int(x0), int(x1)))
    return np.array([np.count_nonzero(cv2.cvtColor(im[box], cv2.COLOR_RGB2GRAY) < 60) for im in images], float)


class Screen:
    """The portrait renderer, and how open the rendered mouth looks (the A/V tests' measure:
    dark pixels in a box around the lips and the dropped jaw)."""

    def __init__(self) -> None:
        from avatarchat.avatar.asset import load_avatar
        from avatarchat.avatar.render import PortraitRenderer

        self.asset = load_avatar("default")
        self.renderer = PortraitRenderer(self.asset)

    def opening(self, params: Sequence[Any]) -> np.ndarray:
        return mouth_opening([self.renderer.render(p) for p in params], self.asset)

    def av(self, speech: Speech, params: Sequence[Any]) -> dict[str, float]:
        mouth = self.opening(params)
        loud = np.log(envelope(speech.audio, speech.rate, len(mouth)) + 1e-4)
        return {"corr": round(float(np.corrcoef(mouth, loud)[0, 1]), 3), "lag_ms": round(lag_ms(mouth, loud), 1)}


def cost(costs: Sequence[float], audio_s: float) -> dict[str, Any]:
    ms = [c * 1000.0 for c in costs]
    return {"batch_ms": summarize(ms), "ms_per_audio_s": round(sum(ms) / audio_s, 3)}


def bench_language(speech: Speech, screen: Screen | None, piece_ms: float, rounds: int,
                   progress: Any, templates: dict[str, AudioVisemeModel] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"voice": speech.voice, "clauses": len(speech.clauses),
                           "audio_s": round(speech.seconds, 2), "timing_lead_ms": speech.lead * 1000}
    ref0, _, _ = animate(speech, "phonemes", 0.0)
    models: dict[str, AudioVisemeModel | None] = {m: None for m in MODES}
    models.update({f"mfcc@{name}": m for name, m in (templates or {}).items()})
    for mode, model in models.items():
        progress(f"{speech.language}: {mode}")
        row: dict[str, Any] = {}
        kind = mode.split("@")[0]
        curves0, params0, _ = animate(speech, kind, 0.0, model=model)
        curves, params, costs = animate(speech, kind, ANTICIPATION, model=model)
        for _ in range(rounds - 1):
            costs += animate(speech, kind, ANTICIPATION, model=model)[2]
        if mode != "phonemes":
            row["vs_phonemes"] = versus(ref0, curves0)
        if screen is not None:
            row["av_no_anticipation"] = screen.av(speech, params0)
            row[f"av_anticipation_{ANTICIPATION * 1000:.0f}ms"] = screen.av(speech, params)
        row["cost"] = cost(costs, speech.seconds * rounds)
        if kind == "mfcc":
            row["streamed"] = streamed(speech, piece_ms, ref0, curves0, curves, model)
        out[mode] = row
    return out


def streamed(speech: Speech, piece_ms: float, ref0: MouthCurves, whole0: MouthCurves,
             whole: MouthCurves, model: AudioVisemeModel | None = None) -> dict[str, Any]:
    """The classifier's mouth when the audio comes in pieces, against the mouth of whole
    clauses: each piece's frames made before the next piece exists, but for the last
    ``Animator.settled`` holds back (as the portrait stage does), and ``unheld``: all of them
    (no anticipation: 36 ms of look-ahead per frame; 50 ms: 86 ms, read as the piece's end).
    """
    def jaw_corr(a: MouthCurves, b: MouthCurves) -> float:
        return round(float(np.corrcoef(a.channel("jaw"), b.channel("jaw"))[0, 1]), 3)

    pieces0, _, costs = animate(speech, "mfcc", 0.0, piece_ms / 1000.0, model)
    pieces, _, _ = animate(speech, "mfcc", ANTICIPATION, piece_ms / 1000.0, model)
    unheld0, _, _ = animate(speech, "mfcc", 0.0, piece_ms / 1000.0, model, hold=False)
    unheld, _, _ = animate(speech, "mfcc", ANTICIPATION, piece_ms / 1000.0, model, hold=False)
    tag = f"anticipation_{ANTICIPATION * 1000:.0f}ms"
    return {"piece_ms": piece_ms, "vs_phonemes": versus(ref0, pieces0),
            "jaw_corr_vs_whole_no_anticipation": jaw_corr(whole0, pieces0),
            f"jaw_corr_vs_whole_{tag}": jaw_corr(whole, pieces),
            "unheld_jaw_corr_vs_whole_no_anticipation": jaw_corr(whole0, unheld0),
            f"unheld_jaw_corr_vs_whole_{tag}": jaw_corr(whole, unheld),
            "cost": cost(costs, speech.seconds)}


def bench_lipsync(languages: Sequence[str], render: bool, piece_ms: float, rounds: int,
                  progress: Any, templates: dict[str, AudioVisemeModel] | None = None) -> dict[str, Any]:
    from avatarchat import addons
    from avatarchat.handlers.tts.mandarin_files import ADDON

    report: dict[str, Any] = {"benchmark": "lipsync", "fps": FPS, "frames_per_batch": BATCH,
                              "anticipation_ms": ANTICIPATION * 1000, "channels": list(CHANNELS),
                              "languages": {}, "skipped": {}}
    screen = Screen() if render else None
    for language in languages:
        if language == "zh" and addons.state(ADDON) != "verified":
            report["skipped"]["zh"] = "the Mandarin voice is not added (avatarchat models add mandarin-voice)"
            continue
        speech = speak(language)
        progress(f"{language}: {speech.seconds:.1f} s of speech in {len(speech.clauses)} clauses")
        report["languages"][language] = bench_language(speech, screen, piece_ms, rounds, progress, templates)
    report["machine"] = machine()
    return report


def load_templates(specs: Sequence[str]) -> dict[str, AudioVisemeModel]:
    """``NAME=PATH`` pairs (templates JSON as ``audio_visemes_fit`` writes it) by name;
    ValueError with the reason for a bad one."""
    out: dict[str, AudioVisemeModel] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path:
            raise ValueError(f"--templates wants NAME=PATH, not {spec!r}")
        try:
            out[name.strip()] = AudioVisemeModel.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read templates {path}: {exc}") from None
    return out


def mouths(samples: np.ndarray, rate: int, phonemes: Sequence[PhonemeTiming], lead: float, fps: float,
           model: AudioVisemeModel | None = None, anticipation: float = 0.0,
           old: bool = False) -> tuple[MouthCurves, MouthCurves]:
    """The phoneme-timed mouth and an audio-driven one (the classifier with ``model``, or
    ``old``: the loudness one) of one utterance at its frame times, before any envelope
    (what ``audio_visemes_fit`` scores its choices with)."""
    times = frame_times(len(samples) / rate, fps)
    anim = Animator(anticipation=anticipation, timing_lead=lead)
    anim.begin(0.0)
    anim.speak(ReplyAudio(1, samples, rate, 0.0, "", tuple(phonemes)))
    ref = anim.mouth(times)
    if old:
        return ref, curves_from_audio(samples, rate, times)
    heard = AudioMouth(anticipation, model)
    heard.add(0.0, samples, rate)
    return ref, heard.curves(times)
