"""``turn: smart_turn``: Smart Turn v3.2, an audio end-of-turn model, at every pause.

At each ``SpeechPaused`` it scores the utterance so far (its last ``max_audio_s``, at most
the model's 8 s window) and emits ``EndOfTurnGuess(turn, speech_end, complete=p)``: the
model's probability that the speaker has finished, from how the speech sounds (pitch, pace,
a trailing word), in any of its 23 languages. The threshold is not the handler's: the
engine's ``session.end_of_turn.audio_threshold`` weighs ``p`` with the transcript's words.

The model is the ONNX file that ``pipecat-ai`` ships in its wheel (BSD-2-Clause, by Daily,
Smart Turn's authors). Only the file is used, verified by sha256: pipecat is installed
``--no-deps`` and never imported. One onnxruntime session (1 intra-op thread by default:
~65 ms a decision on this 2-core machine) is shared by every conversation; ``run`` is
thread-safe. Calls go to the scheduler's ``turn`` lane at ``CRITICAL`` priority, since the
guess decides how soon a finished question is answered.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from avatarchat.engine.events import EndOfTurnGuess, Event, SpeechPaused
from avatarchat.engine.handler import Handler, HandlerLoadError, HandlerOptions, register
from avatarchat.engine.scheduling import Priority, run_model
from avatarchat.handlers.turn.features import RATE, WINDOW_S, features
from avatarchat.models import ModelFile

log = logging.getLogger(__name__)

SMART_TURN_MODEL = ModelFile(
    name="Smart Turn v3.2 (ONNX, CPU)",
    distribution="pipecat-ai",
    package="pipecat",
    relpath="audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
    sha256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
    licence="BSD-2-Clause",
    pinned_version="1.14.0",
)
INPUT_NAME = "input_features"
OUTPUT_NAME = "logits"


class SmartTurnOptions(HandlerOptions):
    threads: int = Field(1, ge=1, le=16, description="onnxruntime intra-op threads (1: ~65 ms a decision)")
    max_audio_s: float = Field(
        8.0, ge=1.0, le=float(WINDOW_S),
        description="seconds of the utterance (its end) the model hears; its window is 8 s",
    )


class SmartTurnModel:
    """The ONNX session: 16 kHz audio in, P(the speaker finished) out. Thread-safe."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise HandlerLoadError("Smart Turn needs onnxruntime: pip install onnxruntime") from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a bad file
            raise HandlerLoadError(f"onnxruntime could not load {path}: {exc}") from exc
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise HandlerLoadError(f"{path} is not Smart Turn v3 (inputs {list(inputs)}, outputs {outputs}): "
                                   f"{install_hint()}")

    def complete(self, audio: np.ndarray, seconds: float = WINDOW_S) -> float:
        """P(finished) for an utterance that ends at the pause (16 kHz mono float32).

        The graph ends in a sigmoid: its ``logits`` output is already a probability."""
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: features(audio, seconds)})
        return float(np.asarray(out).reshape(-1)[0])


def install_hint(model: ModelFile = SMART_TURN_MODEL) -> str:
    """pipecat-ai declares dozens of dependencies none of which this file needs."""
    return f"pip install --no-deps {model.distribution}=={model.pinned_version}"


def load_model(threads: int = 1, model: ModelFile = SMART_TURN_MODEL) -> SmartTurnModel:
    """The verified Smart Turn model, or ``HandlerLoadError`` saying what to install."""
    if model.path() is None:
        raise HandlerLoadError(
            f"{model.name} is not installed: it ships in the {model.distribution} wheel. "
            f"Run scripts/install.sh, or {install_hint(model)}"
        )
    try:
        path = model.locate()
    except HandlerLoadError as exc:  # its hint lacks --no-deps, which this wheel needs
        raise HandlerLoadError(f"{exc} (with --no-deps: {install_hint(model)} --force-reinstall)") from None
    return SmartTurnModel(path, threads)


@register
class SmartTurnHandler(Handler[SmartTurnOptions]):
    """``turn: smart_turn``: SpeechPaused in (from the ASR); EndOfTurnGuess out.

    A pause with no usable audio (empty, or not finite: never from the VAD) gets no guess:
    end of turn, which waits for one, then leaves that pause to the VAD's own ``end_ms``."""

    name: ClassVar[str] = "smart_turn"
    stage: ClassVar[str] = "turn"
    Options: ClassVar[type[HandlerOptions]] = SmartTurnOptions
    accepts = (SpeechPaused,)
    forwards = (SpeechPaused,)  # (nothing after this stage uses it; passed on as any event is)

    def __init__(self, options: SmartTurnOptions) -> None:
        super().__init__(options)
        self._model: SmartTurnModel | None = None

    def models(self) -> list[ModelFile]:
        return [SMART_TURN_MODEL]

    def load(self) -> None:
        self._model = load_model(self.options.threads)
        self._model.complete(np.zeros(RATE, np.float32))  # first-run allocations at load

    async def handle(self, ctx: Any, event: Event) -> AsyncIterator[Event]:
        assert isinstance(event, SpeechPaused)
        if self._model is None:
            raise RuntimeError("smart_turn: load() was not called")
        audio = np.asarray(event.audio, np.float32).reshape(-1)
        if audio.size == 0 or not np.isfinite(audio).all():
            log.warning("smart_turn: pause of turn %s has no usable audio; no guess", event.turn)
            return
        p = await run_model(self._model.complete, audio, self.options.max_audio_s,
                            lane="turn", priority=Priority.CRITICAL)
        yield EndOfTurnGuess(event.turn, event.speech_end, complete=p)
