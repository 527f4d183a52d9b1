"""A local DashScope WebSocket inference server: CosyVoice synthesis and Paraformer
real-time recognition, as the official ``dashscope`` SDK speaks to them.

What it implements, from Alibaba Cloud Model Studio's public API reference:

- The endpoint ``/api-ws/v1/inference`` and its handshake: ``Authorization: Bearer <key>``
  is checked there, and an invalid or missing key fails the handshake with HTTP 401
  ("WebSocket API for Paraformer real-time speech recognition", Request headers:
  https://help.aliyun.com/en/model-studio/websocket-for-paraformer-real-time-service ;
  the same gateway and headers for CosyVoice:
  https://www.alibabacloud.com/help/en/model-studio/cosyvoice-websocket-api).
- The task envelope: client actions ``run-task`` (header ``action``, ``task_id``,
  ``streaming: duplex``; payload ``task_group``, ``task``, ``function``, ``model``,
  ``parameters``, ``input``), ``continue-task``, ``finish-task``; server events
  ``task-started``, ``result-generated``, ``task-finished``, ``task-failed`` (header
  ``error_code``, ``error_message``; the connection is closed after it). Several tasks may
  run one after another on one connection ("task-finished ... close the WebSocket
  connection or reuse it to start a new task"). CosyVoice client and server events:
  https://www.alibabacloud.com/help/en/model-studio/cosyvoice-client-events (doc 3032843),
  https://www.alibabacloud.com/help/en/model-studio/cosyvoice-server-events .
- CosyVoice (``task: tts``, ``function: SpeechSynthesizer``): parameters ``voice``,
  ``format`` (pcm, wav here), ``sample_rate`` (8000…48000), ``volume``, ``rate``, ``pitch``,
  ``word_timestamp_enabled``; text in ``continue-task`` ``input.text``; for each sentence a
  ``result-generated`` of type ``sentence-begin`` (``original_text``), then per audio frame
  one ``sentence-synthesis`` event followed by the frame on the binary channel, then
  ``sentence-end`` with ``sentence.words`` (``text``, ``begin_index``, ``end_index``,
  ``begin_time``, ``end_time`` in ms) and ``usage.characters``; ``finish-task`` with
  ``input.directive: cancel`` stops at once (the SDK's ``cancel``).
- Paraformer real-time (``task: asr``, ``function: recognition``): parameters ``format``
  (pcm here), ``sample_rate``, ``language_hints``; mono PCM16 binary frames in; results
  ``payload.output.sentence`` with ``begin_time``, ``end_time`` (null while the sentence
  goes on), ``text``, ``words`` and ``sentence_end`` (false: intermediate, true: final).
  Client and server events:
  https://www.alibabacloud.com/help/en/model-studio/paraformer-client-events ,
  https://www.alibabacloud.com/help/en/model-studio/paraformer-server-events .

What is not the real service: the voice is the embedded one (hibari; the Mandarin add-on
for ``zh``) whatever ``voice`` names; word times are the sentence's voiced span shared by
the words' lengths; recognition is a callable (the embedded whisper by default) run on the
audio so far every ``partial_s`` of audio, after a ``GAP_S`` pause in what the client sends,
and at ``finish-task``, and a sentence ends only there
(the service also ends one at its own VAD pauses); error codes and messages follow the
reference's names (InvalidParameter, ModelNotFound, InternalError) but their wording is ours.

Faults (``LocalService.fault``): ``reject_key`` fails every handshake with 401;
``slow_first_byte`` holds the first audio frame / first result ``slow_first_s``;
``drop_mid_stream`` drops the TCP connection right after the first audio frame / result;
``server_error`` answers ``run-task`` with ``task-failed`` ``InternalError``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from avatarchat.testing.services.base import warm as base_warm
from avatarchat.testing.services.base import GOOD_KEY, LocalService, ServiceCase, from_pcm16, pcm16, recognize, speech

PATH = "/api-ws/v1/inference"
TTS_MODELS = frozenset({"cosyvoice-v1", "cosyvoice-v2", "cosyvoice-v3-flash", "cosyvoice-v3-plus"})
#: Voices this server knows (a few system voices of the reference's voice list).
VOICES = frozenset({"longxiaochun", "longxiaochun_v2", "longhua_v2", "longwan_v2", "longcheng_v2",
                    "loongstella", "longanyang", "longanhuan"})
ASR_MODELS = frozenset({"paraformer-realtime-v2", "paraformer-realtime-v1", "fun-asr-realtime"})
RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
FRAME_S = 0.1  # audio per binary frame sent

#: Recognition: (16 kHz float32 audio so far, language) -> its text.
Transcribe = Callable[[np.ndarray, str], str]


class TaskFailed(Exception):
    """Ends the task with ``task-failed`` (code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def server(transcribe: Transcribe | None = None, partial_s: float = 0.5,
           pace: float = 0.0) -> Callable[[LocalService], web.Application]:
    """A ``LocalService`` build function; ``transcribe`` recognizes speech (default: the
    embedded whisper), run every ``partial_s`` of new audio and at the end of a task;
    synthesized audio goes out at ``pace`` seconds per second of audio (0: at once; the
    service streams faster than real time)."""
    return functools.partial(app, transcribe=transcribe, partial_s=partial_s, pace=pace)


def app(svc: LocalService, transcribe: Transcribe | None = None, partial_s: float = 0.5,
        pace: float = 0.0) -> web.Application:
    application = web.Application()
    serve = functools.partial(_inference, svc, transcribe or whisper_transcribe, partial_s, pace)
    application.router.add_get(PATH, serve)
    return application


async def _inference(svc: LocalService, transcribe: Transcribe, partial_s: float, pace: float,
                     request: web.Request) -> web.StreamResponse:
    svc.record("ws", request.path, request.headers, None)
    await svc.arrive()
    if svc.fault == "reject_key" or request.headers.get("Authorization") != f"Bearer {GOOD_KEY}":
        body = {"code": "InvalidApiKey", "message": "Invalid API-key provided."}
        raise web.HTTPUnauthorized(text=json.dumps(body), content_type="application/json")
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    conn = _Connection(svc, ws, request, transcribe, partial_s, pace)
    try:
        await conn.serve()
    finally:
        await conn.close()
        svc.record("ws-closed", request.path, {}, {"client_closed": conn.client_closed})
    return ws


class _Connection:
    """One client connection: its messages, each delivered ``delay_s`` after it arrived,
    and the task running on it."""

    def __init__(self, svc: LocalService, ws: web.WebSocketResponse, request: web.Request,
                 transcribe: Transcribe, partial_s: float, pace: float) -> None:
        self.svc, self.ws, self.request = svc, ws, request
        self.transcribe, self.partial_s, self.pace = transcribe, partial_s, pace
        self.out = svc.sender(ws.send_str)
        self.task: _Task | None = None
        self.client_closed = False

    async def serve(self) -> None:
        inbox: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        reader = asyncio.create_task(self._read(inbox))
        try:
            while (item := await inbox.get())[1] is not None:
                due, msg = item
                # Latency, not throughput: each message is late by delay_s from its arrival.
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if not await self._on(msg):
                    return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, inbox: asyncio.Queue[tuple[float, Any]]) -> None:
        async for msg in self.ws:
            inbox.put_nowait((time.monotonic() + self.svc.delay_s, msg))
        self.client_closed = True
        inbox.put_nowait((0.0, None))

    async def _on(self, msg: Any) -> bool:
        """Handle one message; False ends the connection."""
        if msg.type == WSMsgType.BINARY:
            self.svc.record("ws-binary", self.request.path, {}, len(msg.data))
            if isinstance(self.task, _AsrTask):
                self.task.audio(msg.data)
            return True
        if msg.type != WSMsgType.TEXT:
            return True
        try:
            message = json.loads(msg.data)
            header, payload = message["header"], message.get("payload") or {}
            action, task_id = header["action"], header["task_id"]
        except (ValueError, KeyError, TypeError):
            await self.fail("", TaskFailed("InvalidParameter", "the message is not a task command"))
            return False
        self.svc.record("ws-message", self.request.path, {}, message)
        try:
            if action == "run-task":
                await self._run(task_id, payload)
            elif self.task is None or task_id != self.task.task_id:
                raise TaskFailed("InvalidParameter", f"no task {task_id!r} runs on this connection")
            elif action == "continue-task":
                self.task.continue_(payload.get("input") or {})
            elif action == "finish-task":
                self.task.finish(payload.get("input") or {})
            else:
                raise TaskFailed("InvalidParameter", f"unknown action {action!r}")
        except TaskFailed as failure:
            await self.fail(task_id, failure)
            return False
        return True

    async def _run(self, task_id: str, payload: dict[str, Any]) -> None:
        if self.task is not None and not self.task.done:
            raise TaskFailed("InvalidParameter", "a task is already running on this connection")
        if self.svc.fault == "server_error":
            raise TaskFailed("InternalError", "Internal server error!")
        kind = (payload.get("task_group"), payload.get("task"), payload.get("function"))
        if kind == ("audio", "tts", "SpeechSynthesizer"):
            self.task = _TtsTask(self, task_id, payload)
        elif kind == ("audio", "asr", "recognition"):
            self.task = _AsrTask(self, task_id, payload)
        else:
            raise TaskFailed("InvalidParameter", f"unsupported task {'/'.join(map(str, kind))}")
        self.event(task_id, "task-started", {})

    def event(self, task_id: str, name: str, payload: dict[str, Any], **header: Any) -> None:
        self.out.send(json.dumps({"header": {"task_id": task_id, "event": name, "attributes": {}, **header},
                                  "payload": payload}))

    def audio(self, data: bytes) -> None:
        self.out.send(data, via=self.ws.send_bytes)

    async def fail(self, task_id: str, failure: TaskFailed) -> None:
        """``task-failed``, then the connection closes (as the reference says)."""
        self.event(task_id, "task-failed", {}, error_code=failure.code, error_message=str(failure))
        await self.out.drain()

    async def drop(self) -> None:
        """Lose the connection without a close frame (``drop_mid_stream``)."""
        await self.out.drain()
        if self.request.transport is not None:
            self.request.transport.abort()

    async def close(self) -> None:
        if self.task is not None:
            await self.task.stop()
        await self.out.close()


class _Task:
    def __init__(self, conn: _Connection, task_id: str, payload: dict[str, Any]) -> None:
        self.conn, self.task_id = conn, task_id
        self.model = str(payload.get("model") or "")
        self.parameters: dict[str, Any] = payload.get("parameters") or {}
        self.done = False
        self._worker: asyncio.Task[None] | None = None
        self.first_sent = False

    async def first_out(self) -> None:
        """Before the first audio frame / result: the ``slow_first_byte`` fault's wait."""
        if not self.first_sent:
            await self.conn.svc.first_byte()

    async def after_first(self) -> None:
        """After the first audio frame / result: ``drop_mid_stream`` loses the connection."""
        if not self.first_sent:
            self.first_sent = True
            if self.conn.svc.fault == "drop_mid_stream":
                await self.conn.drop()
                raise asyncio.CancelledError

    def finished(self, usage: dict[str, Any]) -> None:
        self.done = True
        self.conn.event(self.task_id, "task-finished", {"output": {}, "usage": usage})

    def failed(self, failure: TaskFailed) -> None:
        self.done = True
        self.conn.event(self.task_id, "task-failed", {}, error_code=failure.code, error_message=str(failure))

    def continue_(self, input_: dict[str, Any]) -> None:
        raise TaskFailed("InvalidParameter", "this task takes no continue-task")

    def finish(self, input_: dict[str, Any]) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)


class _TtsTask(_Task):
    """A CosyVoice synthesis: sentences said in order as their text is complete."""

    def __init__(self, conn: _Connection, task_id: str, payload: dict[str, Any]) -> None:
        super().__init__(conn, task_id, payload)
        p = self.parameters
        if self.model not in TTS_MODELS:
            raise TaskFailed("ModelNotFound", f"Model not found ({self.model})!")
        if p.get("voice") not in VOICES:
            raise TaskFailed("InvalidParameter", f"voice {p.get('voice')!r} does not exist for model {self.model}")
        if p.get("format") not in ("pcm", "wav") or p.get("sample_rate") not in RATES:
            raise TaskFailed("InvalidParameter", "format must be pcm or wav here, at a supported sample_rate")
        hints = p.get("language_hints") or ["en"]
        self.language = str(hints[0])
        self.rate = int(p["sample_rate"])
        self.words = bool(p.get("word_timestamp_enabled"))
        self.text = ""
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self.index = 0
        self.samples_sent = 0
        self.characters = 0
        self._worker = asyncio.create_task(self._say())

    def continue_(self, input_: dict[str, Any]) -> None:
        self.text += str(input_.get("text") or "")
        # A complete sentence is said at once; the rest waits for more text or the finish.
        *whole, self.text = re.split(r"(?<=[.!?。！？])\s*", self.text)
        for sentence in whole:
            if sentence.strip():
                self.sentences.put_nowait(sentence.strip())

    def finish(self, input_: dict[str, Any]) -> None:
        if input_.get("directive") == "cancel":
            if self._worker is not None:
                self._worker.cancel()
            self.finished({"characters": self.characters})
            return
        if self.text.strip():
            self.sentences.put_nowait(self.text.strip())
        self.text = ""
        self.sentences.put_nowait(None)

    async def _say(self) -> None:
        try:
            while (sentence := await self.sentences.get()) is not None:
                await self._sentence(sentence)
            self.finished({"characters": self.characters})
        except TaskFailed as failure:
            self.failed(failure)

    async def _sentence(self, text: str) -> None:
        loop = asyncio.get_running_loop()
        samples = await loop.run_in_executor(None, speech, text, self.language, self.rate)
        begin = self.samples_sent
        words = _word_times(text, samples, self.rate, begin) if self.words else []
        self.characters += len(text)
        sentence = {"index": self.index, "words": []}
        self.conn.event(self.task_id, "result-generated",
                        {"output": {"sentence": sentence, "type": "sentence-begin", "original_text": text}})
        frame = int(FRAME_S * self.rate)
        for start in range(0, len(samples), frame):
            await self.first_out()
            end_ms = (begin + start + frame) * 1000 / self.rate
            now = [w for w in words if (begin + start) * 1000 / self.rate <= w["begin_time"] < end_ms]
            self.conn.event(self.task_id, "result-generated", {"output": {
                "sentence": {"index": self.index, "words": now}, "type": "sentence-synthesis"}})
            self.conn.audio(pcm16(samples[start:start + frame]))
            self.samples_sent += len(samples[start:start + frame])
            await self.after_first()
            await asyncio.sleep(FRAME_S * self.conn.pace)  # a cancel may come in between frames
        self.conn.event(self.task_id, "result-generated", {
            "output": {"sentence": {"index": self.index, "words": words}, "type": "sentence-end",
                       "original_text": text},
            "usage": {"characters": self.characters}})
        self.index += 1


def _word_times(text: str, samples: np.ndarray, rate: int, offset: int) -> list[dict[str, Any]]:
    """Words of ``text`` over the voiced span of ``samples`` in proportion to their length
    (ms from the task's first sample, ``offset`` samples before these)."""
    window = rate // 100
    n = len(samples) // window
    rms = np.sqrt(np.mean(samples[: n * window].reshape(n, window) ** 2, axis=1)) if n else np.zeros(0)
    loud = np.flatnonzero(rms > 0.01)
    first, last = (int(loud[0]) * window, (int(loud[-1]) + 1) * window) if len(loud) else (0, len(samples))
    spans = [(m.start(), m.end()) for m in re.finditer(r"[\w'-]+|[\u3400-\u9fff]", text)]
    total = sum(e - s for s, e in spans) or 1
    out, at = [], float(first)
    for s, e in spans:
        length = (last - first) * (e - s) / total
        out.append({"text": text[s:e], "begin_index": s, "end_index": e,
                    "begin_time": round((offset + at) * 1000 / rate), "end_time": round((offset + at + length) * 1000 / rate)})
        at += length
    return out


class _AsrTask(_Task):
    """A Paraformer real-time recognition: intermediate results as audio comes, the final
    sentence at ``finish-task``."""

    def __init__(self, conn: _Connection, task_id: str, payload: dict[str, Any]) -> None:
        super().__init__(conn, task_id, payload)
        p = self.parameters
        if self.model not in ASR_MODELS:
            raise TaskFailed("ModelNotFound", f"Model not found ({self.model})!")
        if p.get("format") != "pcm" or p.get("sample_rate") != 16000:
            raise TaskFailed("InvalidParameter", "format must be pcm at sample_rate 16000 here")
        hints = p.get("language_hints") or ["zh", "en"]
        self.language = "zh" if hints[0].startswith("zh") else str(hints[0])
        self.buffer = bytearray()
        self.heard = 0  # samples the last result covered
        self.finishing = False
        self._more = asyncio.Event()
        self._worker = asyncio.create_task(self._recognize())

    def audio(self, data: bytes) -> None:
        if not self.finishing and not self.done:
            self.buffer.extend(data)
            self._more.set()

    def finish(self, input_: dict[str, Any]) -> None:
        self.finishing = True
        self._more.set()

    async def _recognize(self) -> None:
        try:
            while True:
                try:
                    await asyncio.wait_for(self._more.wait(), GAP_S)
                    gap = False
                except TimeoutError:
                    gap = True  # the client sent nothing for a moment: a pause
                self._more.clear()
                n = len(self.buffer) // 2
                if self.finishing:
                    if n:
                        await self._result(n, final=True)
                    self.finished({"duration": round(n / 16000)})
                    return
                if n - self.heard >= self.partial_samples or (gap and n > self.heard):
                    await self._result(n, final=False)
        except TaskFailed as failure:
            self.failed(failure)

    @property
    def partial_samples(self) -> int:
        return int(self.conn.partial_s * 16000)

    async def _result(self, n: int, final: bool) -> None:
        audio = from_pcm16(bytes(self.buffer[: 2 * n]))
        text = await asyncio.get_running_loop().run_in_executor(None, self.conn.transcribe, audio, self.language)
        self.heard = n
        if not text and not final:
            return
        await self.first_out()
        end_ms = round(n * 1000 / 16000)
        words = [{"begin_time": w["begin_time"], "end_time": w["end_time"], "text": w["text"], "punctuation": ""}
                 for w in _word_times(text, audio, 16000, 0)]
        self.conn.event(self.task_id, "result-generated", {"output": {"sentence": {
            "begin_time": 0, "end_time": end_ms if final else None, "text": text, "heartbeat": False,
            "sentence_end": final, "words": words}}, "usage": {"duration": round(n / 16000)} if final else None})
        await self.after_first()
        self._more.set()  # audio may have come while it transcribed


#: A result also comes once the client has sent nothing new for this long (the real service
#: answers at its own pauses; without this, speech ending short of ``partial_s`` would be
#: heard only at ``finish-task``).
GAP_S = 0.15


#: The default recognizer: the embedded whisper (tiny.en; base for Chinese).
whisper_transcribe = recognize


def bench_cases() -> list[ServiceCase]:
    """``avatarchat bench services``: CosyVoice's first audio and Paraformer's final
    transcript against this server (its recognizer is the embedded whisper: the figure is
    whisper's time plus the protocol and the network delay)."""
    def tts(svc: LocalService) -> dict[str, Any]:
        return {"url": f"{svc.ws_url}{PATH}", "api_key": GOOD_KEY, "check": False}

    def asr(svc: LocalService) -> dict[str, Any]:
        return {"url": f"{svc.ws_url}{PATH}", "api_key": GOOD_KEY, "check": False}

    return [
        ServiceCase("cosyvoice", "tts", "cosyvoice", server(), tts, "first_audio"),
        # No intermediate results: the bench sends only SpeechEnded, and the final result is
        # then one whisper call on the server, as the embedded whisper's one call beside it.
        ServiceCase("dashscope paraformer", "asr", "dashscope", server(partial_s=1e9), asr, "first_transcript"),
    ]


def warm() -> None:
    """Load the voices and recognizers this server answers with (``local_services``)."""
    base_warm(("en", "zh"))
