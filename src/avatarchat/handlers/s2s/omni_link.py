"""One Qwen-Omni realtime connection, driven by the official ``dashscope`` SDK
(``dashscope.audio.qwen_omni.OmniRealtimeConversation``) and bridged into asyncio.

The SDK is thread-based (websocket-client runs the socket in a thread of its own and calls
back from it): every server event is handed to the event loop with
``loop.call_soon_threadsafe`` onto an ``asyncio.Queue``, and every SDK call that sends
runs in an executor, so the loop never blocks. Nothing global is set: the URL and the key
go to the SDK object, never to ``dashscope.api_key`` or the environment.

``OmniLink.open`` returns a link whose session is configured (``session.updated`` seen),
or raises ``OmniError`` with one line a user can act on (no key, a rejected key, an
unreachable URL, a voice or model the service refused).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dashscope.audio.qwen_omni import MultiModality, OmniRealtimeCallback, OmniRealtimeConversation

log = logging.getLogger(__name__)

KEY_VARIABLE = "DASHSCOPE_API_KEY"
CONSOLE = "https://bailian.console.aliyun.com"


class OmniError(RuntimeError):
    """A Qwen-Omni failure, phrased for the user (one line)."""


@dataclass(frozen=True)
class Closed:
    """The connection closed (put on the link's queue after the last event)."""

    code: int | None
    reason: str
    failure: BaseException | None


class _Conversation(OmniRealtimeConversation):
    """The SDK's conversation, keeping the websocket error it only logs (the handshake's
    HTTP status tells a rejected key from an unreachable server)."""

    failure: BaseException | None = None

    def _on_error(self, ws: Any, error: Any) -> None:
        self.failure = error
        super()._on_error(ws, error)


class _Bridge(OmniRealtimeCallback):
    """SDK callbacks (its thread) -> the link's queue (the event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any] | Closed]) -> None:
        self.loop, self.queue = loop, queue
        self.conversation: _Conversation | None = None
        self.closed = False

    def _put(self, item: dict[str, Any] | Closed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def on_event(self, message: Any) -> None:  # the SDK passes the parsed JSON
        self._put(message if isinstance(message, dict) else json.loads(message))

    def on_close(self, close_status_code: Any, close_msg: Any) -> None:
        self.closed = True
        failure = self.conversation.failure if self.conversation is not None else None
        self._put(Closed(close_status_code, str(close_msg or ""), failure))


def api_key(configured: str) -> str:
    """The key to use: the configured one, else ``$DASHSCOPE_API_KEY``; raises ``OmniError``
    naming the variable when there is none."""
    key = configured or os.environ.get(KEY_VARIABLE, "")
    if not key:
        raise OmniError(f"no DashScope API key: set {KEY_VARIABLE} (a key from {CONSOLE}) or s2s.api_key")
    return key


def closed_error(closed: Closed, url: str) -> OmniError:
    """What a connection that closed (or never opened) means to the user."""
    failure = closed.failure
    status = getattr(failure, "status_code", None)
    if status is not None:
        body = getattr(failure, "resp_body", b"") or b""
        code = ""
        try:
            code = str(json.loads(body).get("code", ""))
        except (ValueError, AttributeError, TypeError):
            pass
        if status in (401, 403):
            return OmniError(f"DashScope rejected the API key (HTTP {status}{' ' + code if code else ''}): "
                             f"set {KEY_VARIABLE} to a key from {CONSOLE}")
        return OmniError(f"DashScope refused the realtime connection to {url}: HTTP {status} {code}".strip())
    if failure is not None:
        return OmniError(f"cannot reach {url}: {failure}")
    return OmniError(f"the Qwen-Omni connection to {url} closed (code {closed.code}{': ' + closed.reason if closed.reason else ''})")


def error_text(event: dict[str, Any]) -> str:
    """An ``error`` event in one line: message, code and the parameter it is about."""
    err = event.get("error") or {}
    param = f" ({err['param']})" if err.get("param") else ""
    return f"{err.get('message') or 'error'} [{err.get('code') or err.get('type') or '?'}]{param}"


@dataclass
class SessionConfig:
    """What ``session.update`` asks for."""

    voice: str
    instructions: str
    transcription_model: str


class OmniLink:
    """An open realtime connection: ``events`` (server events as dicts, then a ``Closed``),
    ``send(fn, *args)`` to call an SDK method in an executor. Owned by one session's
    context; ``close()`` ends its thread."""

    def __init__(self, conversation: _Conversation, bridge: _Bridge, queue: asyncio.Queue[dict[str, Any] | Closed],
                 url: str) -> None:
        self.conversation, self._bridge, self.events, self.url = conversation, bridge, queue, url
        self._pending: set[asyncio.Future[Any]] = set()
        # One thread sends, so messages leave in the order they were handed over (a
        # cancel before the next turn's audio); the service answers in that order too.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen-omni-send")

    @property
    def closed(self) -> bool:
        return self._bridge.closed

    @classmethod
    async def open(cls, url: str, key: str, model: str, config: SessionConfig, timeout_s: float) -> OmniLink:
        """Connect, wait for ``session.created``, configure the session and wait for
        ``session.updated``: all within ``timeout_s``. Raises ``OmniError``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | Closed] = asyncio.Queue()
        bridge = _Bridge(loop, queue)
        conversation = _Conversation(model=model, callback=bridge, url=url, api_key=key)
        bridge.conversation = conversation
        link = cls(conversation, bridge, queue, url)
        try:
            async with asyncio.timeout(timeout_s):
                link._connect()  # not awaited: the socket is up once the server speaks
                await link._expect("session.created")
                await link.call(conversation.update_session, [MultiModality.TEXT, MultiModality.AUDIO],
                                voice=config.voice, enable_input_audio_transcription=True,
                                input_audio_transcription_model=config.transcription_model,
                                enable_turn_detection=False, instructions=config.instructions)
                await link._expect("session.updated")
        except TimeoutError:
            link.close()
            raise OmniError(f"cannot reach {url}: no Qwen-Omni session within {timeout_s:g} s") from None
        except BaseException:
            link.close()
            raise
        return link

    def _connect(self) -> asyncio.Future[None]:
        """The SDK's ``connect()`` in a daemon thread of its own: it polls for the socket for
        up to 5 s, and on a refused handshake it would hold an executor thread (and a
        load's ``asyncio.run``) that long; the server's first event, or the closed
        socket, answers sooner."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if not done.done():
                done.set_exception(exc) if exc is not None else done.set_result(None)

        def run() -> None:
            failure: BaseException | None = None
            try:
                self.conversation.connect()
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                failure = exc
            try:
                loop.call_soon_threadsafe(settle, failure)
            except RuntimeError:  # the loop is gone: the link was given up
                pass

        threading.Thread(target=run, name="qwen-omni-connect", daemon=True).start()
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even if unused
        return done

    async def _expect(self, kind: str) -> dict[str, Any]:
        while True:
            event = await self.events.get()
            if isinstance(event, Closed):
                raise closed_error(event, self.url)
            if event.get("type") == "error":
                raise OmniError(f"Qwen-Omni refused the session: {error_text(event)}")
            if event.get("type") == kind:
                return event

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an SDK call (it sends on the socket) in an executor and wait for it."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._sender, lambda: fn(*args, **kwargs))
        except (ConnectionError, OSError) as exc:
            raise OmniError(f"the Qwen-Omni connection to {self.url} is closed ({exc})") from exc

    def send(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run an SDK call in an executor without waiting (a cancel on the way out, the
        connect); a failure is only logged."""
        try:
            future = asyncio.get_running_loop().run_in_executor(self._sender, fn, *args)
        except RuntimeError:  # the link is closed: nothing more goes out
            return
        self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.debug("qwen_omni: %s", future.exception())

    def close(self) -> None:
        """Close the socket after what was handed over is sent (the threads then end);
        idempotent, returns at once."""
        ws = self.conversation.ws
        try:
            if ws is not None and not self._bridge.closed:
                self._sender.submit(ws.close)
            self._sender.shutdown(wait=False)
        except RuntimeError:  # shut down already
            pass
