"""What the DashScope handlers (``tts: cosyvoice``, ``asr: dashscope``) share: the API key,
the endpoint, errors a user can act on, and one inference task of the official SDK bridged
into asyncio.

DashScope's real-time speech services run over one WebSocket protocol (``run-task`` →
``task-started``, ``continue-task``/binary frames ↔ ``result-generated``/binary frames,
``finish-task`` → ``task-finished``, or ``task-failed``). The official ``dashscope`` SDK
drives it; its 2.0 client (``dashscope.Client(...).audio``) is used because it takes the
key and the URL per object: the 1.x ``tts_v2.SpeechSynthesizer`` reads the key only from
the module global ``dashscope.api_key``, which a server with several configs must not set.

The SDK's sessions are blocking (websocket-client). ``SdkTask`` runs one on a thread of
its own: the thread connects, starts the task and reads every frame, handing each to the
event loop (``call_soon_threadsafe`` onto an ``asyncio.Queue``); what the loop sends goes
through the default executor. Closing the task closes the socket, which ends the thread's
read at once: a cancelled turn never waits for the service.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from avatarchat.engine.handler import HandlerLoadError

#: DashScope's WebSocket inference endpoints (the CosyVoice and Paraformer references).
MAINLAND_URL = "wss://dashscope.aliyuncs.com/api-ws/v1/inference"
INTERNATIONAL_URL = "wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference"
KEY_ENV = "DASHSCOPE_API_KEY"
KEY_HINT = f"set {KEY_ENV} to a key from https://bailian.console.aliyun.com"


class DashScopeError(RuntimeError):
    """A DashScope service failed or refused; the message says what to do (never the key)."""


def api_key(option: str) -> str:
    """The key to use: the option, else ``$DASHSCOPE_API_KEY``; a ``HandlerLoadError``
    naming the variable when neither is set."""
    key = option.strip() or os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise HandlerLoadError(f"no DashScope API key: {KEY_HINT} (or give api_key in the config)")
    return key


def check_url(url: str) -> str:
    """``url`` if it is a WebSocket URL (pydantic validator helper)."""
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"url must start with wss:// (or ws://), got {url!r}")
    return url


@functools.lru_cache(maxsize=8)
def audio_api(key: str, url: str) -> Any:
    """The SDK 2.0 client's ``audio`` resource for ``key`` (one per key and endpoint).

    The client is told an HTTP base URL beside the WebSocket one only so that it does not
    warn about a missing workspace; nothing here uses HTTP."""
    import dashscope

    http = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).split("/api-ws/")[0] + "/api/v1"
    client = dashscope.Client(api_key=key, base_url=http)
    with warnings.catch_warnings():
        # "the 2.0 audio API is a preview": its wire protocol is DashScope's published one,
        # and the SDK version is pinned (requirements/*.lock).
        warnings.simplefilter("ignore", FutureWarning)
        return client.audio


def connector(connect_timeout_s: float) -> Callable[[str, dict[str, str]], Any]:
    """Opens the SDK's socket with ``connect_timeout_s`` on the handshake; the session then
    sets its own read timeout."""

    def connect(url: str, headers: dict[str, str]) -> Any:
        import websocket

        return websocket.create_connection(url, header=headers, timeout=connect_timeout_s)

    return connect


def explain(exc: BaseException, url: str, started: bool = False) -> DashScopeError:
    """``exc`` from the SDK or the socket as one line a user can act on (``started``: the
    task had started, so a socket error is the connection lost mid-stream)."""
    import websocket
    from dashscope.v2 import errors

    if isinstance(exc, DashScopeError):
        return exc
    if isinstance(exc, websocket.WebSocketBadStatusException):
        status = getattr(exc, "status_code", 0)
        if status in (401, 403):
            return DashScopeError(f"DashScope rejected the API key (HTTP {status}): {KEY_HINT}")
        return DashScopeError(f"DashScope at {url} refused the connection (HTTP {status})")
    if isinstance(exc, errors.AuthenticationError | errors.PermissionDeniedError):
        return DashScopeError(f"DashScope rejected the API key ({exc.code or 'InvalidApiKey'}): {KEY_HINT}")
    if isinstance(exc, errors.APIStatusError):
        message = str(getattr(exc, "message", "") or exc).splitlines()[0]
        return DashScopeError(f"DashScope failed the task ({exc.code}): {message}")
    if isinstance(exc, TimeoutError | websocket.WebSocketTimeoutException):
        return DashScopeError(f"DashScope at {url} did not answer in time")
    if isinstance(exc, OSError) and not started:
        return DashScopeError(f"cannot reach {url}: {exc.strerror or exc}")
    if isinstance(exc, OSError | errors.APIConnectionError | websocket.WebSocketConnectionClosedException):
        return DashScopeError(f"the connection to DashScope at {url} broke off mid-stream")
    return DashScopeError(f"DashScope at {url} failed: {type(exc).__name__}: {exc}")


def run_check(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Blocking: run the coroutine ``make()`` (a load-time check) to its end on a loop of
    its own (on a thread of its own if this thread already runs a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(make())
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(make())
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="dashscope-check")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


_END = object()


class SdkTask:
    """One SDK session (a ``SynthesisSession`` or a ``Recognition``) on a thread of its own.

    ``start`` returns once ``task-started`` came (or raises the explained failure);
    ``next()`` gives each frame the service sends (a JSON event dict or audio bytes), None
    after ``task-finished``, and raises the explained failure of a ``task-failed`` or a
    broken connection. ``call`` runs one of the session's sending methods in the default
    executor. ``close`` closes the socket (idempotent, never blocks the loop)."""

    def __init__(self, session: Any, url: str, cancel: str | None = None) -> None:
        self._session = session
        self._url = url
        self._cancel = cancel  # the session's method that tells the service to stop, if any
        self._running = False  # task-started came and task-finished not yet
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._started: asyncio.Future[None] = self._loop.create_future()
        self._closed = threading.Event()
        self._failure: DashScopeError | None = None  # what ended the reading thread
        self._thread = threading.Thread(target=self._run, name="dashscope-task", daemon=True)

    def begin(self) -> None:
        """Connect and start the task in the background (idempotent)."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    async def start(self) -> None:
        self.begin()
        await asyncio.shield(self._started)

    @property
    def usable(self) -> bool:
        """Started (or starting) on this loop, not closed, not failed: a spare may serve."""
        try:
            same_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            same_loop = False
        failed = self._started.done() and self._started.exception() is not None
        return same_loop and not self._closed.is_set() and self._failure is None and not failed

    def _run(self) -> None:
        started = False
        try:
            self._session.start()
            started = self._running = True
            self._post(self._set_started, None)
            for frame in self._session.events():
                self._put(frame)
            self._running = False
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            error = None if self._closed.is_set() else explain(exc, self._url, started)
            self._failure = error
            self._post(self._set_started, error)
            self._put(error if error is not None else _END)
        finally:
            self._session.close()
            # A close that came while the SDK was still connecting found no socket to
            # close: the one it went on to open is closed here.
            inner = getattr(self._session, "_session", None)
            if inner is not None:
                inner.close()

    def _put(self, item: Any) -> None:
        self._post(self._queue.put_nowait, item)

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (from the reading thread)."""
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is gone (a spare outlived it): nobody reads any more
            self._closed.set()

    def _set_started(self, error: BaseException | None) -> None:
        if not self._started.done():
            if error is None:
                self._started.set_result(None)
            else:
                self._started.set_exception(error)

    async def next(self) -> dict[str, Any] | bytes | None:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later read sees the end too
            return None
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)
            raise item
        return item  # type: ignore[no-any-return]

    def poll(self) -> list[dict[str, Any] | bytes]:
        """The frames that came so far, without waiting; raises a failure that came."""
        out: list[dict[str, Any] | bytes] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _END:
                self._queue.put_nowait(item)
                break
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)
                raise item
            out.append(item)
        return out

    async def call(self, method: str, *args: Any) -> None:
        """``session.<method>(*args)`` (a small blocking socket write) in the executor."""
        try:
            await self._loop.run_in_executor(None, functools.partial(getattr(self._session, method), *args))
        except Exception as exc:
            # A write that finds the session closed: the reading thread saw why first.
            raise (self._failure or explain(exc, self._url, started=True)) from exc

    def close(self) -> None:
        """Close the socket: the reading thread ends at once; nothing more comes out."""
        if not self._closed.is_set():
            self._closed.set()
            # websocket-client's close sends a close frame and waits up to 3 s for the
            # answer: never on the loop.
            threading.Thread(target=self._shutdown, name="dashscope-close", daemon=True).start()

    def _shutdown(self) -> None:
        """A running task is told to stop (``finish-task`` with ``directive: cancel`` for a
        synthesis: the service stops work it would bill), then the socket closes."""
        try:
            if self._cancel is not None and self._running:
                getattr(self._session, self._cancel)()
        except Exception:  # noqa: BLE001 - the socket closes anyway
            pass
        finally:
            self._session.close()
