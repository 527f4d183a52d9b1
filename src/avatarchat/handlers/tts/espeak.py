"""espeak-ng through its C API (ctypes): ~100 languages, exact phoneme events, 22.05 kHz.

The library from ``espeakng-loader`` is loaded directly and driven synchronously: one
``espeak_Synth`` call returns after the synthesis callback has received all samples and
events of the clause. Phoneme events (``espeakINITIALIZE_PHONEME_EVENTS``) carry the sample
index where each phoneme starts; with ``espeakINITIALIZE_PHONEME_IPA`` their names are IPA,
the same alphabet family as hibari's, so the avatar needs one phoneme→viseme table.

libespeak-ng keeps global state and is not re-entrant: every call, including setting the
voice and rate before each clause, holds one process-wide lock.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from avatarchat.engine.events import PhonemeTiming
from avatarchat.engine.handler import HandlerLoadError, HandlerOptions, register
from avatarchat.handlers.tts.base import StreamingTTS, Synthesis, TTSOptions
from avatarchat.models import ModelFile

ESPEAK_LIBRARY = ModelFile(
    name="espeak-ng (libespeak-ng + data)",
    distribution="espeakng-loader",
    package="espeakng_loader",
    relpath="libespeak-ng.so.1.52.0",
    sha256="b15ce0803b26254e8a0d088c6b9281a2637b2b02613147cc320cfdefaf2c3ccf",
    licence="GPL-3.0-or-later",
    pinned_version="0.2.4",
)

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_INIT_DONT_EXIT = 0x8000  # report a bad data path instead of exit()ing the process
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms, truncated
        ("sample", ctypes.c_int),  # samples from the start of this espeak_Synth call
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),  # (priority byte, language, NUL)*, NUL
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Espeak:
    """The one initialized libespeak-ng of the process; use only while holding ``lock``."""

    lock = threading.Lock()

    def __init__(self, library: str, data: str) -> None:
        lib = ctypes.CDLL(library)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        options = _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), options)
        if rate <= 0:
            raise HandlerLoadError(f"espeak-ng could not initialize with data at {data}: {ESPEAK_LIBRARY.install_hint}")
        self.lib = lib
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        self._phonemes: list[tuple[int, str]] = []  # (start sample, IPA name; "" for a pause)
        # Kept on the instance: ctypes must not garbage-collect a callback C still holds.
        self._callback = _Callback(self._on_synth)
        lib.espeak_SetSynthCallback(self._callback)

    def languages(self) -> list[str]:
        """The language names the voices answer to ("en-us", "de"…)."""
        found: list[str] = []
        voices = self.lib.espeak_ListVoices(None)
        i = 0
        while voices[i]:
            raw = voices[i].contents.languages or b""
            found.extend(part[1:].decode() for part in raw.split(b"\0") if len(part) > 1)
            i += 1
        return found

    def _on_synth(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                self._phonemes.append((event.sample, name))
            i += 1
        return 0  # 0: go on synthesizing

    def synth(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """int16 samples and phoneme starts of ``text``; call with ``lock`` held."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self._chunks, self._phonemes = [], []
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with error {err}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples, self._phonemes


_instance: _Espeak | None = None


def _espeak() -> _Espeak:
    """The process's espeak-ng, initialized on first use (call with ``_Espeak.lock`` held)."""
    global _instance
    if _instance is None:
        library = ESPEAK_LIBRARY.locate()
        try:
            import espeakng_loader
        except ImportError as exc:
            raise HandlerLoadError(f"espeak-ng is not installed: {ESPEAK_LIBRARY.install_hint}") from exc
        _instance = _Espeak(str(library), espeakng_loader.get_data_path())
    return _instance


class EspeakOptions(TTSOptions):
    voice: str = "en-us"
    rate: int = Field(default=175, ge=80, le=450, description="words per minute")
    pitch: int = Field(default=50, ge=0, le=100, description="base pitch, 50 is the voice's normal")


@register
class EspeakTTS(StreamingTTS[EspeakOptions]):
    """Multilingual fallback TTS with exact phoneme timings (IPA; pauses are " ")."""

    name: ClassVar[str] = "espeak"
    Options: ClassVar[type[HandlerOptions]] = EspeakOptions
    sample_rate: ClassVar[int] = 22050

    def models(self) -> list[ModelFile]:
        return [ESPEAK_LIBRARY]

    def load(self) -> None:
        with _Espeak.lock:
            engine = _espeak()
            if engine.sample_rate != self.sample_rate:
                raise HandlerLoadError(f"espeak-ng runs at {engine.sample_rate} Hz, expected {self.sample_rate}")
            if engine.lib.espeak_SetVoiceByName(self.options.voice.encode()) != _EE_OK:
                languages = sorted(set(engine.languages()))
                some = ", ".join(x for x in ("en-us", "en-gb", "de", "fr", "es", "it", "pt", "ru", "zh", "ja") if x in languages)
                raise HandlerLoadError(
                    f"espeak-ng has no voice {self.options.voice!r}; {len(languages)} languages are installed, "
                    f"e.g. {some}"
                )

    def synthesize(self, text: str) -> Synthesis:
        opts = self.options
        with _Espeak.lock:
            pcm, starts = _espeak().synth(text, opts.voice, opts.rate, opts.pitch)
        samples = pcm.astype(np.float32) / 32768.0
        rate = self.sample_rate
        timings = []
        for k, (start, name) in enumerate(starts):
            end = starts[k + 1][0] if k + 1 < len(starts) else len(pcm)
            timings.append(PhonemeTiming(name or " ", start / rate, max(start, end) / rate))
        return samples, tuple(timings)
