"""ASR handler ``openai``: any server of OpenAI's ``/v1/audio/transcriptions`` (OpenAI,
faster-whisper servers, vLLM, LocalAI…).

Each utterance our VAD cuts is uploaded as a 16 kHz 16-bit mono WAV in one
``POST {base_url}/audio/transcriptions`` (multipart ``file`` and ``model``, ``language``,
``response_format: json``, ``temperature: 0``) through the official ``openai`` client; the
``text`` of the answer is the transcript. Like ``asr: whisper``, a pause (``SpeechPaused``)
is transcribed at once, for the end of turn to judge its words, and an utterance that ends
without more speech after the pause reuses that transcript: its transcript is ready when the
VAD's hangover ends. Each pause is a billed call (``early: false``: one call per utterance).
Growing partials while the user speaks (``partials``) cost one call each: off by default.
With ``stream: true`` (``gpt-4o-transcribe`` and ``gpt-4o-mini-transcribe``; not ``whisper-1``)
the server sends the transcript as it decodes (server-sent events ``transcript.text.delta``,
then ``transcript.text.done``): the page shows it growing (non-final transcripts) and the
final one comes with ``done``.

A call never hangs: connecting is bounded by ``connect_timeout_s``, the whole answer (when
streamed: the first event, then each later silence) by ``first_result_timeout_s``. A failure
raises ``ServiceError`` out of the turn (the engine says the ASR fallback line); the next
utterance tries again.

OpenAI's published prices (2025; see https://openai.com/api/pricing): ``gpt-4o-mini-transcribe``
$0.003 a minute of audio, ``gpt-4o-transcribe`` and ``whisper-1`` $0.006.
"""

from __future__ import annotations

import asyncio
import io
import logging
import wave
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.events import Event, SpeechEnded, SpeechPaused, SpeechSoFar, TimingMark, UserTranscript
from avatarchat.engine.handler import Handler, HandlerLoadError, SessionInfo, register
from avatarchat.handlers.asr.chinese import DEFAULT_PROMPT, Simplifier, full_width_marks, is_chinese
from avatarchat.handlers.services.openai_audio import ClientPerLoop, OpenAIAudioOptions, ServiceError, explain

log = logging.getLogger(__name__)

RATE = 16_000
_STALE_PARTIAL_S = 0.3
_MIN_UTTERANCE_S = 0.1  # OpenAI refuses audio shorter than 0.1 s; there are no words in it


class OpenAITranscribeOptions(OpenAIAudioOptions):
    #: ``gpt-4o-mini-transcribe``, ``gpt-4o-transcribe``, ``whisper-1``; a local server's own
    #: name (faster-whisper servers: ``Systran/faster-whisper-small``…).
    model: str = "gpt-4o-mini-transcribe"
    #: ISO-639-1 code sent with each utterance; None: the session's language.
    language: str | None = None
    #: Text the model reads as the speech before the utterance (names, spelling, script).
    #: None: a sentence in simplified Chinese for a Chinese session (Whisper models otherwise
    #: write traditional characters at times), nothing otherwise; "": nothing.
    prompt: str | None = Field(default=None, max_length=1000)
    #: From sending an utterance to its transcript (upload and connecting included).
    first_result_timeout_s: float = Field(default=10.0, gt=0.0)
    #: Transcribe the speech so far while the user talks (a growing transcript on the
    #: page). Each partial is a billed call.
    partials: bool = False
    #: Transcribe at each pause of the VAD (``SpeechPaused``): the end of the turn finds its
    #: transcript ready (one round trip sooner) and judges its words, but every pause the
    #: user makes mid-utterance is one more billed upload of the utterance so far. False:
    #: one call per utterance, at its end.
    early: bool = True
    #: Ask for the transcript as server-sent events while it is decoded (``stream: true``);
    #: OpenAI's ``whisper-1`` and many local servers do not stream.
    stream: bool = False


@dataclass
class TranscribeContext:
    """Per session: its language, and the transcript made at the last pause (turn,
    speech_end, text) for the end of the turn to reuse."""

    language: str
    clock: Clock = REAL_CLOCK
    early: tuple[int, float, str] | None = None


def wav_bytes(audio: np.ndarray, rate: int = RATE) -> bytes:
    """``audio`` (float32 mono) as a 16-bit PCM WAV file in memory."""
    pcm = (np.clip(np.nan_to_num(np.asarray(audio, np.float32).reshape(-1)), -1.0, 1.0) * 32767.0).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


@register
class OpenAITranscribeASR(Handler[OpenAITranscribeOptions]):
    """``asr: openai``: SpeechEnded in, one final UserTranscript out (``asr_start`` and
    ``asr_final`` marks around it); a SpeechPaused gives its early transcript (non-final,
    with the pause's ``speech_end``) and goes on; SpeechSoFar gives a partial if ``partials``."""

    name = "openai"
    stage = "asr"
    Options = OpenAITranscribeOptions
    accepts = (SpeechSoFar, SpeechPaused, SpeechEnded)

    def __init__(self, options: OpenAITranscribeOptions) -> None:
        super().__init__(options)
        self._clients: ClientPerLoop | None = None
        self._simplifier: Simplifier | None = None

    def load(self) -> None:
        """Build the client; with ``check``, list the server's models (free) so that a wrong
        key or URL, or a model the server does not have, stops start-up with one line."""
        o = self.options
        self._clients = ClientPerLoop(o, o.first_result_timeout_s)
        try:
            self._simplifier = Simplifier()  # Chinese in simplified characters, where OpenCC is
        except HandlerLoadError:
            log.info("asr openai: OpenCC is not installed: Chinese transcripts keep the server's script")
        if o.check:
            self._check()

    def _check(self) -> None:
        assert self._clients is not None
        openai, o = self._clients.openai, self.options
        client = self._clients.sync()
        try:
            ids = [m.id for m in client.models.list()]
        except openai.NotFoundError:
            # Some transcription servers have no model list: the first utterance tells.
            log.info("asr openai: %s has no /models list; model %r not checked", o.base_url, o.model)
            return
        except openai.OpenAIError as exc:
            raise HandlerLoadError(self._explain(exc)) from None
        finally:
            client.close()
        if o.model not in ids:
            shown = ", ".join(sorted(ids)[:12]) or "none"
            raise HandlerLoadError(f"the transcription server at {o.base_url} has no model {o.model!r} "
                                   f"(it lists: {shown})")

    def _explain(self, exc: BaseException) -> str:
        assert self._clients is not None
        return explain(self._clients.openai, exc, "the transcription server", self.options.base_url,
                       self.options.model)

    def create_context(self, session: SessionInfo) -> TranscribeContext:
        language = (self.options.language or session.settings.language).split("-")[0].lower()
        return TranscribeContext(language, session.clock)

    async def transcripts(self, audio: np.ndarray, language: str) -> AsyncGenerator[tuple[str, bool], None]:
        """The text of one 16 kHz mono utterance as it comes: ``(text so far, done)``, the
        last with ``done`` (one item unless ``stream``); ``("", True)`` for audio too short
        to hold words. Failures raise ``ServiceError`` naming the server. Closing the
        generator closes the HTTP response."""
        if self._clients is None:
            raise RuntimeError("the openai ASR is not loaded")
        if len(audio) < _MIN_UTTERANCE_S * RATE:
            yield "", True
            return
        o = self.options
        request: dict[str, Any] = {
            "file": ("speech.wav", wav_bytes(audio), "audio/wav"),
            "model": o.model,
            "response_format": "json",
            "temperature": 0.0,
        }
        if language:
            request["language"] = language
        prompt = o.prompt if o.prompt is not None else (DEFAULT_PROMPT if is_chinese(language) else "")
        if prompt:
            request["prompt"] = prompt
        if o.stream:
            request["stream"] = True
        client = await self._clients.for_this_loop()
        finish = self._chinese if is_chinese(language) else str
        events: Any = None
        try:
            # Awaited here, never across a ``yield``: a timeout must cancel this request,
            # not whatever the consumer does meanwhile.
            async with asyncio.timeout(o.first_result_timeout_s):
                result = await client.audio.transcriptions.create(**request)
                if o.stream:
                    events = result
                    event = await anext(events, None)
            if not o.stream:
                yield finish(str(getattr(result, "text", "") or "").strip()), True
                return
            text = ""
            while event is not None:
                if getattr(event, "type", "") == "transcript.text.done":
                    yield finish(str(event.text).strip()), True
                    return
                if getattr(event, "type", "") == "transcript.text.delta" and event.delta:
                    text += event.delta
                    yield finish(text.strip()), False
                async with asyncio.timeout(o.first_result_timeout_s):
                    event = await anext(events, None)
            raise ServiceError(f"the transcription stream from {o.base_url} ended before transcript.text.done")
        except TimeoutError:
            raise ServiceError(f"the transcription server at {o.base_url} gave no transcript within "
                               f"{o.first_result_timeout_s:g} s") from None
        except self._clients.openai.OpenAIError as exc:
            raise ServiceError(self._explain(exc)) from exc
        finally:
            if events is not None:
                await events.close()

    def _chinese(self, text: str) -> str:
        """A Chinese transcript in simplified characters (if OpenCC is installed), its marks
        full-width, as ``asr: whisper`` writes it."""
        return full_width_marks(self._simplifier(text) if self._simplifier is not None else text)

    async def handle(self, ctx: TranscribeContext, event: Event) -> AsyncIterator[Event]:
        heard: list[str] = []
        if isinstance(event, SpeechSoFar):
            # Only the page shows it: one that waited behind a slow call is stale.
            if self.options.partials and ctx.clock.now() - event.voiced_until < _STALE_PARTIAL_S:
                async for out in self._listen(event.turn, event.audio, ctx.language, heard):
                    yield out
                if heard[0]:
                    yield UserTranscript(event.turn, heard[0], final=False)
            return
        if isinstance(event, SpeechPaused):
            if not self.options.early:
                yield event
                return
            # Transcribed while the VAD waits out its hangover: the end of turn judges these
            # words, and the utterance's end reuses them if nothing more is said.
            yield TimingMark(event.turn, "asr_early_start", at=ctx.clock.now())
            async for out in self._listen(event.turn, event.audio, ctx.language, heard):
                yield out
            ctx.early = (event.turn, event.speech_end, heard[0])
            yield TimingMark(event.turn, "asr_early_final", at=ctx.clock.now())
            yield UserTranscript(event.turn, heard[0], final=False, speech_end=event.speech_end)
            yield event  # on to a ``turn`` stage, as whisper does
            return
        assert isinstance(event, SpeechEnded)
        yield TimingMark(event.turn, "asr_start", at=ctx.clock.now())
        early, ctx.early = ctx.early, None
        if early is not None and early[:2] == (event.turn, event.speech_end):
            heard.append(early[2])
        else:
            async for out in self._listen(event.turn, event.audio, ctx.language, heard):
                yield out
        yield TimingMark(event.turn, "asr_final", at=ctx.clock.now())
        yield UserTranscript(event.turn, heard[0], final=True)

    async def _listen(self, turn: int, audio: np.ndarray, language: str, heard: list[str]) -> AsyncIterator[Event]:
        """Transcribe ``audio``: the growing text as non-final transcripts while a stream
        brings it; the whole text is appended to ``heard``."""
        async with aclosing(self.transcripts(audio, language)) as texts:
            async for text, done in texts:
                if done:
                    heard.append(text)
                elif text:
                    yield UserTranscript(turn, text, final=False)

    def cancel_turn(self, ctx: TranscribeContext, turn: int) -> None:
        if ctx.early is not None and ctx.early[0] == turn:
            ctx.early = None
