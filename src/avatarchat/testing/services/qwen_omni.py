"""A local Qwen-Omni realtime server: the WebSocket protocol of DashScope's
``/api-ws/v1/realtime`` endpoint, answering with real speech from the embedded voice.

What it implements, as the public API reference gives it (Alibaba Cloud Model Studio,
"Qwen-Omni-Realtime": client events https://www.alibabacloud.com/help/en/model-studio/client-events,
server events https://www.alibabacloud.com/help/en/model-studio/server-events; the same
pages at https://docs.qwencloud.com/api-reference/real-time-multimodal/):

* The handshake: ``GET /api-ws/v1/realtime?model=MODEL`` with ``Authorization: Bearer KEY``.
  A key the service does not know is refused before the upgrade with HTTP 401 and a JSON
  body ``{"code": "InvalidApiKey", ...}`` (DashScope's error shape; clients report it as
  "Handshake status 401 Unauthorized").
* Server events, each ``{"event_id", "type", ...}``: ``session.created`` first, with the
  default session; ``session.updated`` after a valid ``session.update`` (an ``error`` with
  ``param`` otherwise: an unknown ``session.voice``, modalities other than ``["text"]`` or
  ``["text", "audio"]``); ``input_audio_buffer.committed`` (``item_id``) and
  ``conversation.item.created`` for a commit, ``input_audio_buffer.cleared`` for a clear;
  ``conversation.item.input_audio_transcription.completed`` (``item_id``,
  ``content_index``, ``transcript``) once the committed audio is transcribed; for a
  ``response.create``: ``response.created``, ``response.output_item.added``,
  ``conversation.item.created``, ``response.content_part.added``, then per clause its
  ``response.audio_transcript.delta`` (words) followed by its ``response.audio.delta``
  (base64 16-bit PCM, 24 kHz mono), then ``response.audio_transcript.done``,
  ``response.audio.done``, ``response.content_part.done``, ``response.output_item.done``
  and ``response.done`` (``status`` completed / cancelled / failed); ``session.finished``
  after ``session.finish``. ``response.cancel`` ends the response in progress with
  ``response.done`` (status ``cancelled``), or is an ``error`` when none is in progress.
* Client events: ``session.update``, ``input_audio_buffer.append`` (base64 PCM, 16 kHz
  mono), ``input_audio_buffer.commit``, ``input_audio_buffer.clear``,
  ``conversation.item.create`` (a user message of ``input_text``), ``response.create``
  (optional ``response.instructions``), ``response.cancel``, ``session.finish``. The reference
  lists no ``conversation.item.truncate``, so none is implemented (an ``error``, as for any
  unknown type).

What it says: ``OmniScript`` decides. The user's words come from ``transcribe`` (a test
passes the embedded whisper, so what the client sent is heard for real) or are the fixed
``heard``; the reply is ``answer(words)``, said by the embedded voice (``base.speech``)
clause by clause at ``pace_s`` per ``piece_s`` of audio (faster than real time, as the
service is).

Faults (``LocalService.fault``): ``reject_key`` the 401 above; ``drop_mid_stream`` the TCP
connection is cut after the first audio delta; ``slow_first_byte`` a response starts
``slow_first_s`` late; ``server_error`` a response ends with an ``error``
(``internal_error``) and ``response.done`` status ``failed``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from avatarchat.testing.services.base import warm as base_warm
from avatarchat.testing.services.base import GOOD_KEY, LocalService, ServiceCase, from_pcm16, pcm16, speech

PATH = "/api-ws/v1/realtime"
#: The voices this server knows (a few of the service's).
VOICES = frozenset({"Cherry", "Chelsie", "Ethan", "Serena"})
OUTPUT_RATE = 24000
INPUT_RATE = 16000


def default_answer(question: str) -> str:
    """The local model's reply to ``question`` (a tiny lookup: enough for a test to tell
    one question's answer from another's)."""
    q = question.lower()
    if "france" in q:
        return "The capital of France is Paris. It is known for the Eiffel Tower, and for its museums."
    if "story" in q:
        return ("Once upon a time there was a small dragon. It lived by a quiet blue lake. "
                "Every morning it swam far across the water, and every evening it came home to sleep.")
    return "I heard you. Here is a short answer."


@dataclass
class OmniScript:
    """What the local model hears and says (see the module docstring)."""

    #: 16 kHz float32 -> text; None: every utterance is heard as ``heard``.
    transcribe: Callable[[np.ndarray], str] | None = None
    heard: str = "What is the capital of France?"
    answer: Callable[[str], str] = default_answer
    #: Seconds of audio per ``response.audio.delta``, and the wait between two.
    piece_s: float = 0.1
    pace_s: float = 0.025
    #: What each response was asked (question, instructions), in order: tests read it.
    asked: list[tuple[str, str | None]] = field(default_factory=list)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def _clauses(text: str) -> list[str]:
    return [c.strip() for c in re.findall(r"[^,.!?;]+[,.!?;]*", text) if c.strip()]


class _Connection:
    """One client's realtime session on the server."""

    def __init__(self, svc: LocalService, script: OmniScript, ws: web.WebSocketResponse,
                 request: web.Request, model: str) -> None:
        self.svc, self.script, self.ws, self.request = svc, script, ws, request
        self.out = svc.sender(ws.send_str)
        self.session: dict[str, Any] = {
            "id": _id("sess"), "object": "realtime.session", "model": model,
            "modalities": ["text", "audio"], "voice": "Cherry", "instructions": "",
            "input_audio_format": "pcm16", "output_audio_format": "pcm24",
            "input_audio_transcription": {"model": "gummy-realtime-v1"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 800},
        }
        self.buffer = bytearray()
        self.last_item: str | None = None
        self.words: dict[str, asyncio.Future[str]] = {}  # user item -> what it said
        self.response: asyncio.Task[None] | None = None

    def send(self, type_: str, **fields: Any) -> None:
        self.out.send(json.dumps({"event_id": _id("event"), "type": type_, **fields}))

    def error(self, code: str, message: str, param: str | None = None, kind: str = "invalid_request_error") -> None:
        self.send("error", error={"type": kind, "code": code, "message": message, "param": param})

    async def serve(self) -> None:
        self.send("session.created", session=self.session)
        inbox: asyncio.Queue[tuple[float, dict[str, Any] | None]] = asyncio.Queue()
        worker = asyncio.get_running_loop().create_task(self._work(inbox))
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    self.error("invalid_json", "the message is not JSON")
                    continue
                self.svc.record("ws", PATH, None, data)
                # Each message reaches the model delay_s after it was sent (latency, not
                # throughput: a burst of appends is not delayed one after another).
                inbox.put_nowait((time.monotonic() + self.svc.delay_s, data))
        finally:
            inbox.put_nowait((0.0, None))
            await asyncio.gather(worker, return_exceptions=True)
            if self.response is not None:
                self.response.cancel()
                await asyncio.gather(self.response, return_exceptions=True)
            await self.out.close()

    async def _work(self, inbox: asyncio.Queue[tuple[float, dict[str, Any] | None]]) -> None:
        while True:
            due, data = await inbox.get()
            if data is None:
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._on(data)

    async def _on(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "session.update":
            self._update(data.get("session") or {})
        elif kind == "input_audio_buffer.append":
            self.buffer += base64.b64decode(data.get("audio", ""))
        elif kind == "input_audio_buffer.commit":
            self._commit()
        elif kind == "input_audio_buffer.clear":
            self.buffer.clear()
            self.send("input_audio_buffer.cleared")
        elif kind == "conversation.item.create":
            self._text_item(data.get("item") or {})
        elif kind == "response.create":
            self._create((data.get("response") or {}).get("instructions"))
        elif kind == "response.cancel":
            if self.response is None or self.response.done():
                self.error("response_not_found", "there is no response in progress to cancel")
            else:
                self.response.cancel()
        elif kind == "session.finish":
            self.send("session.finished")
            await self.out.drain()
            await self.ws.close()
        else:
            self.error("invalid_event", f"unknown event type {kind!r}", "type")

    def _update(self, wanted: dict[str, Any]) -> None:
        voice = wanted.get("voice")
        if voice is not None and voice not in VOICES:
            self.error("invalid_value", f"Voice '{voice}' is not supported.", "session.voice")
            return
        modalities = wanted.get("modalities")
        if modalities is not None and sorted(modalities) not in (["text"], ["audio", "text"]):
            self.error("invalid_value", f"Invalid modalities: {modalities}. Supported combinations are: "
                       "['text'] and ['audio', 'text'].", "session.modalities")
            return
        self.session.update({k: v for k, v in wanted.items() if v is not None or k == "turn_detection"})
        self.send("session.updated", session=self.session)

    def _commit(self) -> None:
        if len(self.buffer) < 2:
            self.error("input_audio_buffer_commit_empty", "the input audio buffer is empty")
            return
        audio, self.buffer = from_pcm16(bytes(self.buffer)), bytearray()
        item = _id("item")
        self.send("input_audio_buffer.committed", previous_item_id=self.last_item, item_id=item)
        self.send("conversation.item.created", previous_item_id=self.last_item, item={
            "id": item, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "user", "content": [{"type": "input_audio", "transcript": None}]})
        self.last_item = item
        loop = asyncio.get_running_loop()
        words: asyncio.Future[str] = loop.create_future()
        self.words[item] = words

        async def transcribe() -> None:
            heard = self.script.heard
            if self.script.transcribe is not None:
                heard = await loop.run_in_executor(None, self.script.transcribe, audio)
            words.set_result(heard)
            self.send("conversation.item.input_audio_transcription.completed", item_id=item,
                      content_index=0, transcript=heard)

        self.words_task = loop.create_task(transcribe())

    def _text_item(self, item: dict[str, Any]) -> None:
        text = " ".join(c.get("text", "") for c in item.get("content") or () if c.get("type") == "input_text")
        item_id = item.get("id") or _id("item")
        self.send("conversation.item.created", previous_item_id=self.last_item, item={
            "id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "user", "content": [{"type": "input_text", "text": text}]})
        self.last_item = item_id
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        done.set_result(text)
        self.words[item_id] = done

    def _create(self, instructions: str | None) -> None:
        if self.response is not None and not self.response.done():
            self.error("conversation_already_has_active_response", "a response is already in progress")
            return
        words = self.words.get(self.last_item or "")
        self.response = asyncio.get_running_loop().create_task(self._respond(words, instructions))

    async def _respond(self, words: asyncio.Future[str] | None, instructions: str | None) -> None:
        rid, item = _id("resp"), _id("item")
        at = {"response_id": rid, "item_id": item, "output_index": 0, "content_index": 0}
        status, said = "completed", ""
        try:
            await self.svc.first_byte()
            question = await words if words is not None else ""
            self.script.asked.append((question, instructions))
            self.send("response.created", response={"id": rid, "object": "realtime.response",
                                                     "status": "in_progress", "output": []})
            self.send("response.output_item.added", response_id=rid, output_index=0,
                      item={"id": item, "type": "message", "role": "assistant", "status": "in_progress", "content": []})
            self.send("conversation.item.created", previous_item_id=self.last_item,
                      item={"id": item, "type": "message", "role": "assistant", "content": []})
            self.send("response.content_part.added", **at, part={"type": "audio", "transcript": ""})
            if self.svc.fault == "server_error":
                status = "failed"
                self.error("internal_error", "Internal server error", kind="server_error")
                return
            for clause in _clauses(self.script.answer(question)):
                for word in clause.split(" "):
                    said += word + " "
                    self.send("response.audio_transcript.delta", **at, delta=word + " ")
                await self._say(clause, at)
            self.send("response.audio_transcript.done", **at, transcript=said.strip())
            self.send("response.audio.done", **at)
            self.send("response.content_part.done", **at, part={"type": "audio", "transcript": said.strip()})
            self.send("response.output_item.done", response_id=rid, output_index=0,
                      item={"id": item, "type": "message", "role": "assistant", "status": "completed"})
        except asyncio.CancelledError:
            status = "cancelled"
            if self.ws.closed:
                raise
        finally:
            if not self.ws.closed:
                self.send("response.done", response={"id": rid, "object": "realtime.response", "status": status,
                                                     "usage": {"output_tokens": len(said.split())}})

    async def _say(self, clause: str, at: dict[str, Any]) -> None:
        audio = await asyncio.get_running_loop().run_in_executor(None, speech, clause, "en", OUTPUT_RATE)
        step = max(1, round(self.script.piece_s * OUTPUT_RATE))
        for i in range(0, len(audio), step):
            self.send("response.audio.delta", **at, delta=base64.b64encode(pcm16(audio[i:i + step])).decode())
            if self.svc.fault == "drop_mid_stream":
                await self.out.drain()
                assert self.request.transport is not None
                self.request.transport.abort()  # the TCP connection is gone, no close frame
                await asyncio.sleep(3600)
            await asyncio.sleep(self.script.pace_s)


def server(script: OmniScript | None = None) -> Callable[[LocalService], web.Application]:
    """``LocalService(server(script))``: the Qwen-Omni realtime endpoint at ``PATH``."""
    the_script = script or OmniScript()

    def build(svc: LocalService) -> web.Application:
        async def realtime(request: web.Request) -> web.StreamResponse:
            model = request.query.get("model", "")
            svc.record("http", request.path_qs, request.headers, None)
            await svc.arrive()
            if svc.fault == "reject_key" or request.headers.get("Authorization") != f"Bearer {GOOD_KEY}":
                return web.json_response({"code": "InvalidApiKey", "message": "Invalid API-key provided.",
                                          "request_id": uuid.uuid4().hex}, status=401)
            if not model:
                return web.json_response({"code": "InvalidParameter", "message": "Model not specified.",
                                          "request_id": uuid.uuid4().hex}, status=400)
            ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
            await ws.prepare(request)
            await _Connection(svc, the_script, ws, request, model).serve()
            return ws

        app = web.Application()
        app.router.add_get(PATH, realtime)
        return app

    return build


def app(svc: LocalService) -> web.Application:
    """The server with the default script (a fixed transcript), for ``LocalService(app)``."""
    return server()(svc)


def bench_cases() -> list[ServiceCase]:
    """``avatarchat bench services``: ``s2s: qwen_omni`` against this server (the end of an
    utterance -> the reply's first audio)."""
    return [
        ServiceCase("qwen_omni s2s (qwen3-omni-flash-realtime)", "s2s", "qwen_omni", app,
                    lambda svc: {"url": f"{svc.ws_url}{PATH}", "api_key": GOOD_KEY}, "first_audio_s2s"),
    ]


def warm() -> None:
    """Load the voice and recognizer this server answers with (``local_services``)."""
    base_warm(("en",))
