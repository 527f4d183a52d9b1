"""hibari TTS (Kokoro-derived, 24 kHz) with per-phoneme timings read out of its ONNX graph.

hibari's Python API returns audio only. Its graph predicts one duration per input phoneme
id (node output ``/Clip_output_0``: rounded, clipped, just before the length regulator),
so we load the same model with that tensor added as an extra output and run the session
ourselves; hibari's own G2P, vocabulary, sentence splitter and DSP (``hibari.dsp.synth``)
do everything else. One duration unit is two 12.5 ms spectral frames, 25 ms: measured as
sum(durations) * 25 ms == len(audio) / 24 kHz exactly, and checked again on every call.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from avatarchat.engine.events import PhonemeTiming
from avatarchat.engine.handler import HandlerLoadError, HandlerOptions, register
from avatarchat.handlers.tts.base import StreamingTTS, Synthesis, TTSOptions
from avatarchat.models import ModelFile

log = logging.getLogger(__name__)

HIBARI_MODEL = ModelFile(
    name="hibari TTS (Kokoro-derived, int8 ONNX, voice heart)",
    distribution="hibari-tts",
    package="hibari",
    relpath="assets/hibari.onnx",
    sha256="5f70741d4e900f4e85d0037498736cc1b3e1b9a63a13546a5da1e63abf4fccd8",
    licence="Apache-2.0",
    pinned_version="0.2.1",
)

#: The graph tensor with one duration (in units of ``_FRAMES_PER_UNIT`` frames) per input id.
DURATIONS_OUTPUT = "/Clip_output_0"
_FRAMES_PER_UNIT = 2
#: The model pads every sentence with id 0 at both ends; the leading pad gets ~0.35 s of
#: silence. Keeping only its last 4 units (100 ms: the onset of the first phoneme starts
#: ~100 ms before its nominal start) cuts that from first-audio latency and from the gap
#: between clauses.
_LEAD_KEEP_UNITS = 4
#: Fixed noise seed per clause: the same text always gives the same samples.
_SEED = 0


class HibariOptions(TTSOptions):
    # Only "heart" ships inside the wheel; hibari downloads the others on first use.
    voice: Literal["heart"] = "heart"
    speed: float = Field(default=1.0, ge=0.5, le=2.0)
    threads: int = Field(default=1, ge=1, le=64)


@register
class HibariTTS(StreamingTTS[HibariOptions]):
    """English TTS with per-phoneme timings (hibari's misaki/IPA phoneme characters)."""

    name: ClassVar[str] = "hibari"
    Options: ClassVar[type[HandlerOptions]] = HibariOptions
    sample_rate: ClassVar[int] = 24000

    def __init__(self, options: HibariOptions) -> None:
        super().__init__(options)
        self._session: Any = None
        self._g2p: Any = None
        self._vocab: dict[str, int] = {}
        self._split_sentences: Any = None
        self._synth: Any = None
        self._samples_per_unit = 0
        # hibari's G2P keeps state and is not known to be thread-safe; ONNX and DSP are.
        self._g2p_lock = threading.Lock()

    def models(self) -> list[ModelFile]:
        return [HIBARI_MODEL]

    def load(self) -> None:
        path = HIBARI_MODEL.locate()
        try:
            import onnx
            import onnxruntime as ort
            from hibari import dsp
            from hibari.g2p import G2P
            from hibari.tts import Hibari
        except ImportError as exc:
            raise HandlerLoadError(f"hibari TTS needs {exc.name}: {HIBARI_MODEL.install_hint}") from exc
        if dsp.SR != self.sample_rate:
            raise HandlerLoadError(f"hibari {HIBARI_MODEL.installed_version()} makes {dsp.SR} Hz, expected {self.sample_rate}")

        model = onnx.load(str(path))
        if not any(DURATIONS_OUTPUT in node.output for node in model.graph.node):
            raise HandlerLoadError(f"{path} has no {DURATIONS_OUTPUT} node: {HIBARI_MODEL.install_hint}")
        model.graph.output.append(onnx.ValueInfoProto(name=DURATIONS_OUTPUT))
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = self.options.threads
        so.log_severity_level = 3
        # Every sentence is a new input length: ORT's memory patterns (cached per shape) and
        # its arena (grown per new peak) made a long session's memory grow without bound.
        so.enable_mem_pattern = False
        so.enable_cpu_mem_arena = False
        self._session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        with open(path.parent / "vocab.json", encoding="utf-8") as f:
            self._vocab = json.load(f)
        self._g2p = G2P(british=False)
        self._split_sentences = Hibari.split_sentences
        self._synth = dsp.synth
        self._samples_per_unit = _FRAMES_PER_UNIT * dsp.HOP
        self.synthesize("Warm up.")  # first-call costs (G2P lexicons, ORT allocations) at load

    def synthesize(self, text: str) -> Synthesis:
        parts: list[np.ndarray] = []
        timings: list[PhonemeTiming] = []
        clock = 0.0
        for sentence in self._split_sentences(text):
            with self._g2p_lock:
                phonemes = self._g2p(sentence)
            audio, sentence_timings = self._synthesize_phonemes(phonemes)
            timings.extend(PhonemeTiming(t.phoneme, t.start + clock, t.end + clock) for t in sentence_timings)
            parts.append(audio)
            clock += len(audio) / self.sample_rate
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return samples.astype(np.float32, copy=False), tuple(timings)

    def _synthesize_phonemes(self, phonemes: str) -> tuple[np.ndarray, list[PhonemeTiming]]:
        """One sentence of phoneme characters → audio and one timing per character the model knows."""
        chars = [c for c in phonemes if c in self._vocab]
        if not chars:
            return np.zeros(0, np.float32), []
        ids = [0, *(self._vocab[c] for c in chars), 0]
        feeds = {"ids": np.asarray([ids], np.int64), "speed": np.asarray([self.options.speed], np.float32)}
        lh, theta, ln, lr, phi, f0, durations = self._session.run(None, feeds)
        units = np.rint(durations.reshape(-1)).astype(np.int64)
        audio = self._synth(lh[0], theta[0], ln[0], lr[0], phi[0], f0[0], np.random.default_rng(_SEED))
        spu = self._samples_per_unit
        if int(units.sum()) * spu != len(audio):
            # Not seen with hibari 0.2.1; a different graph would need its unit re-measured.
            log.warning("hibari durations (%d units) do not match %d samples", units.sum(), len(audio))
        trim = max(0, int(units[0]) - _LEAD_KEEP_UNITS) * spu
        audio = audio[trim:]
        timings: list[PhonemeTiming] = []
        at = int(units[0]) * spu - trim  # in samples; the pads make no timing but take time
        for char, n in zip(chars, units[1:-1].tolist(), strict=True):
            end = at + n * spu
            timings.append(PhonemeTiming(char, at / self.sample_rate, end / self.sample_rate))
            at = end
        return audio, timings
