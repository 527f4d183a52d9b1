"""What the Edge voice needs beside the network: MP3 decoded as it streams, and phonemes
for the words Edge times.

Edge gives a time span per word, not per phoneme. ``word_phonemes`` fills each span with
the phonemes espeak-ng (already a dependency, ~100 languages) says for that word, with
espeak's relative durations stretched onto Edge's span, and a ``" "`` after each word (the
engine's word boundary: ``engine.heard`` counts words by it). espeak's audio is thrown
away; a word costs it about a millisecond.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from avatarchat.engine.events import PhonemeTiming
from avatarchat.engine.handler import HandlerLoadError

if TYPE_CHECKING:
    from av import AudioFrame


class Mp3Stream:
    """Decodes an MP3 byte stream fed in arbitrary pieces to float32 mono at ``rate``."""

    def __init__(self, rate: int) -> None:
        import av

        self._rate = rate
        self._codec = av.CodecContext.create("mp3", "r")

    def feed(self, data: bytes) -> np.ndarray:
        """The samples the bytes so far complete (the parser keeps a partial frame)."""
        out = [self._samples(frame) for packet in self._codec.parse(data) for frame in self._codec.decode(packet)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def close(self) -> np.ndarray:
        """The samples still held (the last frame, the decoder's delay line)."""
        out = [self._samples(frame) for packet in self._codec.parse(b"") for frame in self._codec.decode(packet)]
        out += [self._samples(frame) for frame in self._codec.decode(None)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _samples(self, frame: AudioFrame) -> np.ndarray:
        data = frame.to_ndarray()
        channels = len(frame.layout.channels)
        # Planar formats come as [channels, n], packed ones as [1, n * channels].
        x = data.reshape(channels, -1).mean(axis=0) if frame.format.is_planar \
            else data.reshape(-1, channels).mean(axis=1)
        if data.dtype.kind == "i":  # FFmpeg's fixed-point decoder: s16 or s32
            x = x / float(2 ** (8 * data.dtype.itemsize - 1))
        x = x.astype(np.float32)
        if frame.sample_rate != self._rate:
            from avatarchat.audio.resample import resample

            x = resample(x, frame.sample_rate, self._rate)
        return x


# --- phonemes for Edge's words -------------------------------------------------------------

_LOCK = threading.Lock()


def _candidates(voice: str) -> list[str]:
    """espeak-ng language names for an Edge voice (``zh-CN-XiaoxiaoNeural`` → ``cmn``)."""
    parts = voice.split("-")
    language, region = parts[0].lower(), parts[1].lower() if len(parts) > 1 else ""
    if language == "zh":
        return ["yue"] if region == "hk" else ["cmn"]
    return [f"{language}-{region}", language] if region else [language]


@functools.cache
def _espeak(language: str) -> object | None:
    from avatarchat.handlers.tts.espeak import EspeakOptions, EspeakTTS

    voice = EspeakTTS(EspeakOptions(voice=language))
    try:
        voice.load()
    except HandlerLoadError:
        return None
    return voice


def espeak_voice_for(voice: str) -> str | None:
    """The espeak-ng language that times an Edge voice's words; None if it has none."""
    with _LOCK:
        for name in _candidates(voice):
            if _espeak(name) is not None:
                return name
    return None


@functools.lru_cache(maxsize=4096)
def _shape(language: str, word: str) -> tuple[tuple[str, float], ...]:
    """The phonemes espeak-ng says ``word`` with, each with its share of the word's time."""
    voice = _espeak(language)
    if voice is None:
        return ()
    _, timings = voice.synthesize(word)  # type: ignore[attr-defined]
    sounds = [t for t in timings if t.phoneme.strip() and t.end > t.start]
    total = sum(t.end - t.start for t in sounds)
    if total <= 0:
        return ()
    return tuple((t.phoneme, (t.end - t.start) / total) for t in sounds)


def word_phonemes(language: str, words: Sequence[tuple[str, float, float]]) -> list[PhonemeTiming]:
    """Blocking: phoneme timings for Edge's ``(text, start, end)`` words (seconds), each word's
    span filled with espeak-ng's phonemes for it, then a ``" "``. A word espeak cannot say
    (a symbol) fills its span with one open vowel, so the mouth still moves."""
    out: list[PhonemeTiming] = []
    for text, start, end in words:
        shape = _shape(language, text) or (("ə", 1.0),)
        at = start
        for name, share in shape:
            step = (end - start) * share
            out.append(PhonemeTiming(name, at, at + step))
            at += step
        out.append(PhonemeTiming(" ", end, end))
    return out
