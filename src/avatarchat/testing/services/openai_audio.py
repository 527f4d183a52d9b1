"""A local server of OpenAI's audio API: speech, transcriptions and the model list, over
real HTTP, answering with real speech (the embedded voice) and real transcripts (the
embedded whisper), for tests and benches of the ``openai`` TTS and ASR handlers.

What it implements, as OpenAI's public API reference documents it
(https://platform.openai.com/docs/api-reference, now also at
https://developers.openai.com/api/reference; the ``openai`` Python client, which the tests
drive against it, is generated from the same OpenAPI spec):

- Authentication (reference, "Authentication"): ``Authorization: Bearer <key>`` on every
  request. A missing or wrong key gets ``401`` with the error object
  ``{"error": {"message", "type": "invalid_request_error", "param": null, "code":
  "invalid_api_key"}}`` (guide "Error codes": 401 "Invalid Authentication"/"Incorrect API
  key provided"); the client raises ``AuthenticationError``. Other errors use the same
  object: ``400`` for a bad parameter (``param`` names it), ``404`` ``model_not_found`` for an
  unknown model, ``500`` ``server_error`` ("The server had an error while processing your
  request").
- ``GET /v1/models`` (reference, "Models: List models"): ``{"object": "list", "data":
  [{"id", "object": "model", "created", "owned_by"}]}``.
- ``POST /v1/audio/speech`` (reference, "Audio: Create speech"): a JSON body with ``model``,
  ``input`` (at most 4096 characters), ``voice``, optional ``instructions``,
  ``response_format`` (``mp3`` by default; ``opus``, ``aac``, ``flac``, ``wav``, ``pcm``),
  ``speed`` (0.25 to 4.0), ``stream_format``; the answer's body is the audio file content,
  sent with chunked transfer encoding as it is made. ``pcm`` is raw 24 kHz 16-bit signed
  little-endian samples, no header (guide "Text to speech", "Supported output formats").
  This server makes ``pcm`` and ``wav`` (a streamed WAV header, then the same samples);
  the compressed formats and ``stream_format: sse`` get a 400 saying so.
- ``POST /v1/audio/transcriptions`` (reference, "Audio: Create transcription"):
  ``multipart/form-data`` with ``file`` (the audio file, with its name) and ``model``, optional
  ``language`` (ISO-639-1), ``prompt``, ``response_format`` (``json`` by default: ``{"text":
  ...}``; ``text``: the plain transcript), ``temperature``, ``stream``. With ``stream: true``
  the answer is server-sent events (``text/event-stream``, reference "Audio: Stream Event"):
  ``transcript.text.delta`` events (``{"type", "delta"}``) as the text is decoded, then one
  ``transcript.text.done`` (``{"type", "text", "usage"}``). This server reads WAV files only
  (any rate, mono or stereo, 16-bit) and answers the other formats with a 400; it streams a
  transcript word by word (20 ms apart) after transcribing the whole file, as whisper here
  is not incremental: a streamed first word comes no sooner than the whole text would.

Audio is made at ``pace`` times real time (a server synthesizing as it streams), in pieces
of 0.1 s; each is delivered ``delay_s`` late, as is every answer (``LocalService``). Faults
(``LocalService.fault``): ``reject_key`` answers every request with the 401 above,
``server_error`` with the 500, ``slow_first_byte`` holds the answer's headers
``slow_first_s``, ``drop_mid_stream`` closes the connection after the first piece of speech
(a transcription: before its answer). Each request's ``seen`` entry gets ``outcome``:
``complete``, ``client_closed`` (the client went away mid-answer) or ``dropped`` (the fault).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import wave
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from avatarchat.testing.services.base import warm as base_warm
from avatarchat.testing.services.base import GOOD_KEY, LocalService, ServiceCase, pcm16, recognize, speech

TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
ASR_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
          "marin", "cedar")
RATE = 24_000
PIECE_S = 0.1
#: Transcribes 16 kHz mono float32 audio in an ISO-639-1 language ("" unknown); blocking.
Transcriber = Callable[[np.ndarray, str], str]


def app(svc: LocalService) -> web.Application:
    """The server with its defaults: speech made at 4x real time, transcripts by whisper."""
    return OpenAIAudioServer(svc).application()


def app_with(transcribe: Transcriber | None = None, pace: float = 4.0,
             rate: int = RATE) -> Callable[[LocalService], web.Application]:
    """A server builder with another transcriber, pace (0: as fast as it can) or ``pcm``
    rate (as a server other than OpenAI's may have: Piper's voices are 22050 Hz)."""
    return lambda svc: OpenAIAudioServer(svc, transcribe, pace, rate).application()


#: The default recognizer: the embedded whisper (``base.recognize``).
whisper_transcribe = recognize


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> web.Response:
    """OpenAI's error object."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


class OpenAIAudioServer:
    """The routes, over one ``LocalService`` (its fault, delay and record)."""

    def __init__(self, svc: LocalService, transcribe: Transcriber | None = None, pace: float = 4.0,
                 rate: int = RATE) -> None:
        self.svc = svc
        self.transcribe = transcribe or whisper_transcribe
        self.pace = pace
        self.rate = rate

    def application(self) -> web.Application:
        application = web.Application(client_max_size=25 * 1024 * 1024)  # the API's upload limit
        application.router.add_get("/v1/models", self.models)
        application.router.add_post("/v1/audio/speech", self.create_speech)
        application.router.add_post("/v1/audio/transcriptions", self.create_transcription)
        return application

    def _refused(self, request: web.Request) -> web.Response | None:
        """The answer to a request the key or a fault refuses, else None."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return error(401, "You didn't provide an API key. You need to provide your API key in an "
                              "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        key = auth.removeprefix("Bearer ")
        if key != GOOD_KEY or self.svc.fault == "reject_key":
            shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
            return error(401, f"Incorrect API key provided: {shown}. You can find your API key at "
                              "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        if self.svc.fault == "server_error":
            return error(500, "The server had an error while processing your request. Sorry about that!",
                         type_="server_error")
        return None

    async def _late(self, response: web.StreamResponse) -> web.StreamResponse:
        """A whole answer, delivered ``delay_s`` late."""
        if self.svc.delay_s > 0:
            await asyncio.sleep(self.svc.delay_s)
        return response

    async def models(self, request: web.Request) -> web.StreamResponse:
        await self.svc.arrive()
        entry = self.svc.record("http", request.path, request.headers, None)
        refused = self._refused(request)
        if refused is not None:
            entry["outcome"] = "refused"
            return await self._late(refused)
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
                for m in (*TTS_MODELS, *ASR_MODELS)]
        entry["outcome"] = "complete"
        return await self._late(web.json_response({"object": "list", "data": data}))

    async def create_speech(self, request: web.Request) -> web.StreamResponse:
        await self.svc.arrive()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        entry = self.svc.record("http", request.path, request.headers, body)
        bad = self._refused(request) or self._bad_speech(body)
        if bad is not None:
            entry["outcome"] = "refused"
            return await self._late(bad)
        await self.svc.first_byte()
        language = "zh" if any("\u4e00" <= c <= "\u9fff" for c in body["input"]) else "en"
        loop = asyncio.get_running_loop()
        samples = await loop.run_in_executor(None, speech, body["input"], language, self.rate)
        speed = float(body.get("speed", 1.0))
        if speed != 1.0:  # resampled as a tape would play it: enough for a local server
            idx = np.arange(0, len(samples), speed)
            samples = np.interp(idx, np.arange(len(samples)), samples).astype(np.float32)
        return await self._stream_speech(request, entry, pcm16(samples), body.get("response_format", "mp3"))

    def _bad_speech(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict):
            return error(400, "We could not parse the JSON body of your request.")
        for name in ("model", "input", "voice"):
            if name not in body:
                return error(400, f"Missing required parameter: '{name}'.", param=name)
        if body["model"] not in TTS_MODELS:
            return error(404, f"The model '{body['model']}' does not exist or you do not have access to it.",
                         param="model", code="model_not_found")
        if body["voice"] not in VOICES:
            return error(400, f"Invalid value: '{body['voice']}'. Supported values are: "
                              + ", ".join(f"'{v}'" for v in VOICES) + ".", param="voice", code="invalid_value")
        text = body["input"]
        if not isinstance(text, str) or not text.strip() or len(text) > 4096:
            return error(400, "input must be a string of 1 to 4096 characters.", param="input")
        speed = body.get("speed", 1.0)
        if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            return error(400, "speed must be between 0.25 and 4.0.", param="speed")
        if body.get("response_format", "mp3") not in ("pcm", "wav"):
            return error(400, "this local server makes only 'pcm' and 'wav' speech", param="response_format")
        if body.get("stream_format", "audio") != "audio":
            return error(400, "this local server streams only stream_format 'audio'", param="stream_format")
        return None

    async def _stream_speech(self, request: web.Request, entry: dict[str, Any], pcm: bytes,
                             response_format: str) -> web.StreamResponse:
        """``pcm`` sent in pieces of 0.1 s made at ``pace`` times real time, each delivered
        ``delay_s`` late; notes in ``entry`` how the answer ended and how much was sent."""
        response = web.StreamResponse(headers={"Content-Type": "audio/wav" if response_format == "wav"
                                               else "application/octet-stream"})
        response.enable_chunked_encoding()
        entry["sent_bytes"] = 0
        entry["outcome"] = "complete"

        async def write(data: bytes) -> None:
            try:
                await response.write(data)
            except ConnectionError:
                entry["outcome"] = "client_closed"
                raise
            entry["sent_bytes"] += len(data)

        out = self.svc.sender(write)
        out.send(request, via=response.prepare)
        if response_format == "wav":
            out.send(_streamed_wav_header(self.rate))
        piece = int(PIECE_S * self.rate) * 2
        try:
            for start in range(0, len(pcm), piece):
                if self.pace > 0:
                    await asyncio.sleep(PIECE_S / self.pace)
                if request.transport is None or request.transport.is_closing():
                    entry["outcome"] = "client_closed"
                    return response
                out.send(pcm[start:start + piece])
                if self.svc.fault == "drop_mid_stream":
                    await out.drain()
                    entry["outcome"] = "dropped"
                    request.transport.close()
                    return response
            out.send(None, via=lambda _: response.write_eof())
            await out.drain()
        except ConnectionError:
            entry["outcome"] = "client_closed"
        finally:
            await out.close()
        return response

    async def create_transcription(self, request: web.Request) -> web.StreamResponse:
        await self.svc.arrive()
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("file")
        data = upload.file.read() if isinstance(upload, web.FileField) else b""
        shown: dict[str, Any] = dict(fields)
        if isinstance(upload, web.FileField):
            shown["file"] = {"filename": upload.filename, "content_type": upload.content_type, "bytes": len(data)}
        entry = self.svc.record("http", request.path, request.headers, shown)
        bad = self._refused(request) or self._bad_transcription(fields, upload)
        audio = None
        if bad is None:
            audio = _read_wav(data)
            if audio is None:
                bad = error(400, "this local server reads only 16-bit PCM WAV files", param="file")
        if bad is not None:
            entry["outcome"] = "refused"
            return await self._late(bad)
        await self.svc.first_byte()
        if self.svc.fault == "drop_mid_stream":
            entry["outcome"] = "dropped"
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        assert audio is not None
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(None, self.transcribe, audio, fields.get("language", ""))
        if fields.get("stream", "false") == "true":
            return await self._stream_transcript(request, entry, text)
        entry["outcome"] = "complete"
        if fields.get("response_format", "json") == "text":
            return await self._late(web.Response(text=text + "\n"))
        return await self._late(web.json_response({"text": text}))

    def _bad_transcription(self, fields: dict[str, str], upload: Any) -> web.Response | None:
        if not isinstance(upload, web.FileField):
            return error(400, "Missing required parameter: 'file'.", param="file")
        if "model" not in fields:
            return error(400, "Missing required parameter: 'model'.", param="model")
        if fields["model"] not in ASR_MODELS:
            return error(404, f"The model '{fields['model']}' does not exist or you do not have access to it.",
                         param="model", code="model_not_found")
        if fields.get("response_format", "json") not in ("json", "text"):
            return error(400, "this local server answers only 'json' and 'text'", param="response_format")
        if fields.get("stream", "false") == "true" and fields["model"] == "whisper-1":
            return error(400, "Streaming is not supported for the whisper-1 model.", param="stream")
        return None

    async def _stream_transcript(self, request: web.Request, entry: dict[str, Any], text: str) -> web.StreamResponse:
        """``text`` as ``transcript.text.delta`` events word by word, then ``transcript.text.done``."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        out = self.svc.sender(response.write)
        out.send(request, via=response.prepare)
        entry["outcome"] = "complete"
        try:
            for i, word in enumerate(re.findall(r"\s*\S+", text)):
                if i:
                    await asyncio.sleep(0.02)
                out.send(_event({"type": "transcript.text.delta", "delta": word}))
            usage = {"type": "tokens", "input_tokens": 0, "output_tokens": len(text.split()),
                     "total_tokens": len(text.split())}
            out.send(_event({"type": "transcript.text.done", "text": text, "usage": usage}))
            out.send(None, via=lambda _: response.write_eof())
            await out.drain()
        except ConnectionError:
            entry["outcome"] = "client_closed"
        finally:
            await out.close()
        return response


def _event(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data)}\n\n".encode()


def _streamed_wav_header(rate: int) -> bytes:
    """A WAV header for 16-bit mono at ``rate`` of unknown length (sizes 0xFFFFFFFF, as streamed)."""
    out = io.BytesIO()
    out.write(b"RIFF\xff\xff\xff\xffWAVEfmt ")
    out.write((16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little"))
    out.write(rate.to_bytes(4, "little") + (rate * 2).to_bytes(4, "little"))
    out.write((2).to_bytes(2, "little") + (16).to_bytes(2, "little"))
    out.write(b"data\xff\xff\xff\xff")
    return out.getvalue()


def _read_wav(data: bytes) -> np.ndarray | None:
    """16 kHz mono float32 from a 16-bit PCM WAV file; None if it is not one."""
    from avatarchat.audio.resample import resample

    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                return None
            channels, rate = w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError):
        return None
    samples = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return resample(samples, rate, 16_000) if rate != 16_000 else samples


def bench_cases() -> list[ServiceCase]:
    """``avatarchat bench services``: the ``openai`` TTS and ASR against this server."""
    def url(svc: LocalService) -> str:
        return f"{svc.url}/v1"

    return [
        ServiceCase("openai tts (tts-1)", "tts", "openai", app,
                    lambda svc: {"base_url": url(svc), "api_key": GOOD_KEY, "model": "tts-1", "voice": "alloy"},
                    "first_audio"),
        ServiceCase("openai asr (whisper-1)", "asr", "openai", app,
                    lambda svc: {"base_url": url(svc), "api_key": GOOD_KEY, "model": "whisper-1"},
                    "first_transcript"),
    ]


def warm() -> None:
    """Load the voice and recognizer this server answers with (``local_services``)."""
    base_warm(("en",))
