"""TTS handler ``openai``: any server of OpenAI's ``/v1/audio/speech`` (OpenAI, Kokoro-FastAPI,
vLLM, LocalAI…), streamed.

Each clause is one ``POST {base_url}/audio/speech`` through the official ``openai`` client
(``with_streaming_response``), with ``response_format: pcm``: raw 16-bit little-endian mono
samples at 24 kHz, no header (OpenAI's text-to-speech guide, "Supported output formats"), so
audio is played as it arrives, with no decoder. A server whose ``pcm`` has another rate is
resampled (``pcm_rate``). The API gives no timings: pieces carry no phonemes, and the avatar's
mouth follows the audio.

A clause never hangs: connecting is bounded by ``connect_timeout_s``, the first audio by
``first_audio_timeout_s``, each later silence of the stream by ``timeout_s``. A failure
raises ``ServiceError`` out of the turn (the engine shows the voice's fallback line); the
next clause or turn tries again. Cancelling the turn closes the HTTP response, which is how
the server learns to stop.

OpenAI's published prices (2025; see https://openai.com/api/pricing): ``tts-1`` $15 per
million characters, ``gpt-4o-mini-tts`` about $0.015 a minute of audio; a short reply costs
a fraction of a cent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from avatarchat.audio.resample import Resampler
from avatarchat.engine.handler import HandlerLoadError, register
from avatarchat.handlers.services.openai_audio import ClientPerLoop, OpenAIAudioOptions, ServiceError, explain
from avatarchat.handlers.tts.base import StreamingTTS, Synthesis, TTSOptions

log = logging.getLogger(__name__)

RATE = 24_000
#: The first two pieces are short: the stage plays a piece once the next one has come (so
#: that it knows a clause's last piece), so the voice starts after two of them.
_FIRST_PIECES_S = (0.05, 0.05)
#: Later pieces gather more: fewer, larger ReplyAudio events for the avatar and the transport.
_PIECE_S = 0.4
_READ_BYTES = 4096


class OpenAISpeechOptions(TTSOptions, OpenAIAudioOptions):
    #: ``tts-1`` (fast), ``tts-1-hd``, ``gpt-4o-mini-tts`` (takes ``instructions``); a local
    #: server's own name (Kokoro-FastAPI: ``kokoro``).
    model: str = "gpt-4o-mini-tts"
    #: OpenAI: alloy, ash, ballad, coral, echo, fable, onyx, nova, sage, shimmer, verse,
    #: marin, cedar. Kokoro-FastAPI: its voice names (``af_heart``…).
    voice: str = "alloy"
    #: How to speak (``gpt-4o-mini-tts`` only); "" sends none.
    instructions: str = Field(default="", max_length=2000)
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    #: The rate of the server's ``pcm`` (OpenAI: 24000); other rates are resampled to 24 kHz.
    pcm_rate: int = Field(default=RATE, ge=8000, le=48000)
    #: From sending a clause to its first audio (connecting included).
    first_audio_timeout_s: float = Field(default=10.0, gt=0.0)
    #: The longest silence of a stream once its audio has begun.
    timeout_s: float = Field(default=10.0, gt=0.0)


@register
class OpenAISpeechTTS(StreamingTTS[OpenAISpeechOptions]):
    """``tts: openai``: each clause streamed from ``/audio/speech`` as 24 kHz pieces (two of
    50 ms, then 0.4 s each), without phoneme timings."""

    name = "openai"
    Options = OpenAISpeechOptions
    sample_rate: ClassVar[int] = RATE

    def __init__(self, options: OpenAISpeechOptions) -> None:
        super().__init__(options)
        self._clients: ClientPerLoop | None = None

    def models(self) -> list[Any]:
        return []

    def load(self) -> None:
        """Build the client; with ``check``, synthesize "Hi." once (a few characters of
        billing) so that a wrong key, model, voice or URL stops start-up with one line."""
        self._clients = ClientPerLoop(self.options, self.options.timeout_s)
        if self.options.check:
            self._check()

    def _check(self) -> None:
        assert self._clients is not None
        openai = self._clients.openai
        client = self._clients.sync()
        try:
            with client.audio.speech.with_streaming_response.create(**self._request("Hi.")) as response:
                for chunk in response.iter_bytes(_READ_BYTES):
                    if chunk:
                        break  # audio came: key, model and voice are good
                else:
                    raise HandlerLoadError(f"the speech server at {self.options.base_url} sent no audio for a test clause")
        except openai.OpenAIError as exc:
            raise HandlerLoadError(self._explain(exc)) from None
        finally:
            client.close()

    def _request(self, text: str) -> dict[str, Any]:
        o = self.options
        request: dict[str, Any] = {"model": o.model, "voice": o.voice, "input": text, "response_format": "pcm"}
        if o.speed != 1.0:
            request["speed"] = o.speed
        if o.instructions:
            request["instructions"] = o.instructions
        return request

    def _explain(self, exc: BaseException) -> str:
        assert self._clients is not None
        return explain(self._clients.openai, exc, "the speech server", self.options.base_url, self.options.model,
                       f" and voice {self.options.voice!r}")

    async def synthesize_stream(self, text: str, first: bool) -> AsyncGenerator[Synthesis, None]:
        """``text`` as pieces of 24 kHz float32 audio as the server streams it (no phonemes).
        Closing the generator closes the HTTP response. Failures raise ``ServiceError``."""
        if self._clients is None:
            raise RuntimeError("the openai TTS is not loaded")
        o = self.options
        client = await self._clients.for_this_loop()
        pcm = _Pcm(o.pcm_rate)
        try:
            async with asyncio.timeout(o.first_audio_timeout_s) as first_audio:
                async with (client.audio.speech.with_streaming_response.create(**self._request(text)) as response,
                            aclosing(response.iter_bytes(_READ_BYTES)) as chunks):
                    wants = [*_FIRST_PIECES_S]
                    while True:
                        if pcm.seconds >= (wants[0] if wants else _PIECE_S):
                            first_audio.reschedule(None)  # audio came: later reads have timeout_s
                            yield (pcm.take(), ())
                            wants = wants[1:]
                        chunk = await self._next(chunks, None if first_audio.when() is not None else o.timeout_s)
                        if chunk is None:
                            break
                        pcm.feed(chunk)
            rest = pcm.take(flush=True)
            if len(rest):
                yield (rest, ())
        except TimeoutError:
            if not pcm.started:
                raise ServiceError(f"the speech server at {o.base_url} sent no audio within "
                                   f"{o.first_audio_timeout_s:g} s") from None
            raise ServiceError(f"the speech server at {o.base_url} went silent mid-clause "
                               f"(over {o.timeout_s:g} s)") from None
        except self._clients.openai.OpenAIError as exc:
            raise ServiceError(self._explain(exc)) from exc

    async def _next(self, chunks: AsyncIterator[bytes], timeout_s: float | None) -> bytes | None:
        """The next bytes of the stream (None at its end); a cut stream is a ``ServiceError``."""
        try:
            async with asyncio.timeout(timeout_s):
                return await anext(chunks, None)
        except (TimeoutError, self._clients.openai.OpenAIError):  # type: ignore[union-attr]
            raise
        except Exception as exc:  # httpx's transport errors: the stream was cut
            raise ServiceError(f"the audio stream from {self.options.base_url} broke off "
                               f"({type(exc).__name__})") from exc


class _Pcm:
    """16-bit little-endian bytes in, float32 samples at 24 kHz out (an odd byte waits for
    its pair; another server rate is resampled as a stream)."""

    def __init__(self, rate: int) -> None:
        self._odd = b""
        self._parts: list[np.ndarray] = []
        self._n = 0
        self.started = False
        self._resampler = None if rate == RATE else Resampler(rate, RATE)

    @property
    def seconds(self) -> float:
        return self._n / RATE

    def feed(self, data: bytes) -> None:
        data = self._odd + data
        whole = len(data) // 2 * 2
        self._odd = data[whole:]
        if not whole:
            return
        samples = np.frombuffer(data[:whole], "<i2").astype(np.float32) / 32768.0
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        self._parts.append(samples)
        self._n += len(samples)

    def take(self, flush: bool = False) -> np.ndarray:
        if flush and self._resampler is not None:
            self._parts.append(self._resampler.flush())
        out = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        self._parts, self._n = [], 0
        self.started = self.started or len(out) > 0
        return out
