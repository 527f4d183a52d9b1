"""``avatarchat bench asr``: whisper's word error rate and time per call, per encoder window.

Whisper's encoder is built for a 30 s window; the handler encodes an utterance that fits
``asr.window_s`` in that shorter window (see handlers/asr/whisper.py). This benchmark puts
the two side by side on the same clips: sentences said by hibari and by espeak-ng (a
second, very different voice), each also with white noise at about 20 dB SNR.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from avatarchat.audio.resample import resample
from avatarchat.bench.stats import machine, summarize
from avatarchat.handlers.asr.whisper import RATE, WhisperHandler, WhisperOptions

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Can you tell me a joke about cats?",
    "How far away is the moon from the earth?",
    "Yesterday I went to the park and saw a big dog.",
    "Please tell me about the weather tomorrow in London.",
    "What time is it?",
    "Hello there.",
    "I would like to learn how to cook pasta at home, what should I buy first?",
    "Why is the sky blue?",
    "Tell me something interesting about elephants.",
    "Do you like music?",
    "Who wrote Romeo and Juliet?",
    "Thank you very much, that was helpful.",
    "Could you explain how a rainbow forms after the rain?",
    "Stop.",
    "Wait, I have another question about computers.",
    "Good morning, how are you today?",
)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length): the parts of a word error rate."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def _clips(progress: Any) -> list[tuple[str, str, np.ndarray]]:
    """(voice, sentence, 16 kHz audio) for every sentence, voice and noise condition."""
    from hibari import Hibari

    from avatarchat.handlers.tts.espeak import EspeakOptions, EspeakTTS

    progress("synthesizing the test sentences (hibari, espeak-ng)")
    hibari = Hibari()
    espeak = EspeakTTS(EspeakOptions())
    espeak.load()
    rng = np.random.default_rng(0)
    clips = []
    for sentence in SENTENCES:
        spoken = {
            "hibari": resample(hibari(sentence).astype(np.float32), 24_000, RATE),
            "espeak": resample(espeak.synthesize(sentence)[0], espeak.sample_rate, RATE),
        }
        for voice, audio in spoken.items():
            audio = audio.astype(np.float32)
            clips.append((voice, sentence, audio))
            noise = rng.normal(0.0, float(np.sqrt(np.mean(audio**2))) / 10.0, len(audio))
            clips.append((f"{voice}+noise", sentence, (audio + noise).astype(np.float32)))
    return clips


def bench_asr(windows: list[float], progress: Any) -> dict[str, Any]:
    clips = _clips(progress)
    results: dict[str, Any] = {}
    for window in windows:
        progress(f"whisper tiny.en, {window:g} s window: {len(clips)} clips")
        handler = WhisperHandler(WhisperOptions(window_s=window))
        handler.load()
        handler.transcribe(clips[0][2], "en")  # first-call allocations are not the window's
        errors = total = 0
        times: list[float] = []
        per_voice: dict[str, tuple[int, int]] = {}
        for voice, sentence, audio in clips:
            t0 = time.perf_counter()
            text = handler.transcribe(audio, "en")
            times.append((time.perf_counter() - t0) * 1000)
            e, n = word_errors(sentence, text)
            errors, total = errors + e, total + n
            ve, vn = per_voice.get(voice, (0, 0))
            per_voice[voice] = (ve + e, vn + n)
        results[f"{window:g}s"] = {
            "wer_percent": round(100 * errors / total, 1),
            "wer_percent_by_voice": {v: round(100 * e / n, 1) for v, (e, n) in per_voice.items()},
            "call_ms": summarize(times),
            "full_window_fallbacks": handler.fallbacks,
        }
    return {"benchmark": "asr", "model": "tiny.en", "clips": len(clips), "machine": machine(), "windows": results}

