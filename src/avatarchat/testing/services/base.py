"""What every local protocol server shares: a loopback aiohttp server on its own loop,
a one-way network delay, the faults tests inject, a record of what clients sent, and
real speech to answer with.

The cloud services (DashScope, Qwen-Omni, Edge, OpenAI) cannot be reached from where the
tests run, so each handler is tested against a local server that speaks the service's
documented protocol, driven by the vendor's own client library. Each service's module
here builds the ``aiohttp`` application; ``LocalService`` serves it.

The server runs on an event loop of its own, in a thread: the vendors' clients are
partly synchronous (DashScope's SDK runs websocket-client threads), a test's loop may be
busy awaiting the handler, and a bench runs it beside a whole pipeline.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import web

#: What a test can make the server do (each service's module says how it shows it):
#: ``reject_key``: the service's own "invalid API key" answer; ``drop_mid_stream``: the
#: connection closes after the first piece of a streamed answer; ``slow_first_byte``: the
#: first byte of an answer comes ``slow_first_s`` late; ``server_error``: the service's
#: internal-error answer.
Fault = Literal["reject_key", "drop_mid_stream", "slow_first_byte", "server_error"]

#: The key the local servers accept (any other is rejected, as the service would).
GOOD_KEY = "sk-local-test-key"


@dataclass
class LocalService:
    """An aiohttp application on 127.0.0.1:<free port>, served on its own event loop in a
    thread; ``with LocalService(build) as svc:`` (or ``start()``/``stop()``).

    ``build(svc)`` returns the application; its handlers read ``svc.fault`` and
    ``svc.delay_s``, call ``await svc.arrive(request_or_message)`` for what comes in, and
    send through ``svc.sender(...)`` so every message is delivered ``delay_s`` late.
    """

    build: Callable[[LocalService], web.Application]
    delay_ms: float = 0.0
    fault: Fault | None = None
    slow_first_s: float = 30.0
    #: What clients sent, in order: dicts with at least ``kind`` ("http"/"ws"), ``path``,
    #: ``headers`` and ``body`` (parsed JSON or text); tests pin the request shape from it.
    seen: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def delay_s(self) -> float:
        return self.delay_ms / 1000.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> LocalService:
        ready = threading.Event()
        failed: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._open())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failed.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="local-service", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self

    async def _open(self) -> None:
        self._runner = web.AppRunner(self.build(self), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # loopback only; the port is known before serving
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # Senders still delivering to clients that went away.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def stop(self) -> None:
        """Close every connection and the port, and end the thread. Idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalService:
        return await asyncio.get_running_loop().run_in_executor(None, self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    # --- used by the services' handlers, on the server's loop ----------------------------

    def record(self, kind: str, path: str, headers: Any, body: Any) -> dict[str, Any]:
        """Note what a client sent (``seen``), headers as a plain dict."""
        entry = {"kind": kind, "path": path, "headers": dict(headers or {}), "body": body, "at": time.monotonic()}
        self.seen.append(entry)
        return entry

    async def arrive(self) -> None:
        """Await on a request (or a connection) received: it reached the server ``delay_s``
        after the client sent it. Not for each message read in a loop: there the sleeps add
        up (two messages sent together would arrive ``2 * delay_s`` apart); stamp messages
        as they are read and handle each ``delay_s`` after its stamp."""
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)

    async def first_byte(self) -> None:
        """Await before the first byte of an answer: ``slow_first_s`` under ``slow_first_byte``."""
        if self.fault == "slow_first_byte":
            await asyncio.sleep(self.slow_first_s)

    def sender(self, send: Callable[[Any], Any]) -> DelayedSender:
        """A sender that hands each item to ``send`` (``ws.send_str``, ``ws.send_bytes``,
        ``response.write``: any coroutine function of one argument) ``delay_s`` after it was
        queued, in order: latency, not throughput, like a network."""
        return DelayedSender(send, self.delay_s)


class DelayedSender:
    """Delivers items ``delay_s`` after they were queued, in order (see ``LocalService.sender``)."""

    def __init__(self, send: Callable[[Any], Any], delay_s: float) -> None:
        self._send = send
        self._delay_s = delay_s
        self._queue: asyncio.Queue[tuple[float, Any, Callable[[Any], Any] | None]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    def send(self, item: Any, via: Callable[[Any], Any] | None = None) -> None:
        """Queue ``item`` (sent with ``via`` if given: ``ws.send_bytes`` beside ``send_str``)."""
        if self._error is not None:
            raise ConnectionResetError(f"the client is gone: {self._error}")
        self._queue.put_nowait((time.monotonic() + self._delay_s, item, via))
        if self._task is None or self._task.done():
            # The task ends when the queue is empty: none is left pending (and collected
            # unfinished) after its connection ends.
            self._task = asyncio.get_running_loop().create_task(self._deliver())

    async def _deliver(self) -> None:
        while not self._queue.empty():
            due, item, via = self._queue.get_nowait()
            try:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._error is None:
                    await (via or self._send)(item)
            except Exception as exc:  # noqa: BLE001 - the client went away: drop the rest
                self._error = exc
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until everything queued was delivered (or dropped: the client went away)."""
        await self._queue.join()

    async def close(self) -> None:
        """Stop delivering (what is still queued is dropped)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


# --- real speech to answer with -----------------------------------------------------------


@functools.cache
def _voice(language: str) -> Any:
    if language.startswith("zh"):
        from avatarchat.handlers.tts.mandarin import MandarinOptions, MandarinTTS

        voice: Any = MandarinTTS(MandarinOptions())
    else:
        from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

        voice = HibariTTS(HibariOptions())
    voice.load()
    return voice


_SPEECH_LOCK = threading.Lock()


@functools.lru_cache(maxsize=256)
def speech(text: str, language: str = "en", rate: int = 24000) -> np.ndarray:
    """``text`` said by the embedded voice (hibari; the Mandarin add-on for ``zh``), as
    float32 mono at ``rate``: what a local server answers with, so a test can hear it."""
    from avatarchat.audio.resample import resample

    with _SPEECH_LOCK:  # the first call loads the voice once
        voice = _voice("zh" if language.startswith("zh") else "en")
    samples, _ = voice.synthesize(text)
    out = resample(np.asarray(samples, np.float32), voice.sample_rate, rate)
    out.setflags(write=False)
    return out


_WHISPER_LOCK = threading.Lock()
_whispers: dict[str, Any] = {}


def recognize(audio: np.ndarray, language: str = "en") -> str:
    """What a local server hears in ``audio`` (16 kHz float32): the embedded whisper
    (tiny.en for English, base for other languages), each loaded once per process."""
    from avatarchat.handlers.asr.whisper import WhisperHandler, WhisperOptions

    english = language in ("", "en") or language.startswith("en-")
    model = "tiny.en" if english else "base"
    with _WHISPER_LOCK:
        handler = _whispers.get(model)
        if handler is None:
            handler = WhisperHandler(WhisperOptions(model=model, language="en" if english else language))
            handler.load()
            _whispers[model] = handler
    return str(handler.transcribe(audio, "en" if english else language))


def warm(languages: tuple[str, ...] = ("en",), recognizer: bool = True) -> None:
    """Load the voice (and the recognizer) a server answers with now, not in a client's
    first request (the first turn of a bench would otherwise pay seconds for it)."""
    for language in languages:
        speech("Hello." if language == "en" else "你好。", language)
        if recognizer:
            recognize(np.zeros(16000, np.float32), language)


def pcm16(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] → little-endian signed 16-bit PCM bytes."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes → float32 [-1, 1]."""
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


# --- benches ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceCase:
    """One handler measured by ``avatarchat bench services`` against its local server.

    ``server``: builds the application (``LocalService.build``). ``stage`` and ``handler``:
    what the config names; ``options(svc)``: the handler's options against the running
    server ``svc`` (its URL, the test key). ``measure`` says what the first result is:
    ``first_audio`` (a TTS), ``first_transcript`` (an ASR), ``first_token`` (an LLM),
    ``first_audio_s2s`` (speech to speech).
    """

    name: str
    stage: str
    handler: str
    server: Callable[[LocalService], web.Application]
    options: Callable[[LocalService], dict[str, Any]]
    measure: Literal["first_audio", "first_transcript", "first_token", "first_audio_s2s"]
    language: str = "en"
