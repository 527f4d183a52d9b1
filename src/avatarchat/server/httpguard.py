"""What one HTTP connection may hold: read deadlines, a cap on open connections, JSON errors.

aiohttp closes an idle kept-alive connection (``keepalive_timeout``) but has no deadline for
a request's headers or body: a client that sends one header byte a second holds its
connection for ever. ``GuardedRunner`` serves an app through ``GuardedHandler``, aiohttp's
connection protocol with a watchdog: one timer per connection, re-armed as the connection
moves through its phases:

- ``headers``: from the connection (or from the first byte after a kept-alive response), the
  request's headers must arrive whole within ``server.http.header_timeout_s``;
- ``body``: from the headers, the body must be in within ``body_timeout_s``;
- ``handling``: the app is answering; no deadline here (the app bounds its own work);
- ``idle``: after the response, a kept-alive connection may stay silent ``keepalive_timeout_s``.

On HTTPS (``GuardedSite``) the TLS handshake, too, must finish within the header deadline.
A connection past its deadline is closed with one INFO line. Connections beyond
``max_connections`` are closed as soon as they open (one INFO line when the cap is reached
and one when it is left). Requests aiohttp cannot parse (an absurd header, a request line
that is not HTTP) get a 4xx JSON body and an INFO line, never aiohttp's traceback.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from avatarchat.server.errors import client_message, log_error
from avatarchat.server.settings import HttpLimits

log = logging.getLogger(__name__)

_RequestFactory = Callable[..., web.BaseRequest]


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with the phase watchdog described in the module."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._watch_loop: asyncio.AbstractEventLoop = kwargs["loop"]
        self._limits = manager.limits
        self._timer: asyncio.TimerHandle | None = None
        self._phase = "headers"
        self._payload: Any = None
        self._answered = False  # the current request has had its response
        self._peer = "?"
        #: Why the guard closed this connection (None while it has not).
        self.closed_for: str | None = None

    @property
    def phase(self) -> str:
        """``headers``, ``body``, ``handling``, ``idle`` or ``closed``."""
        return self._phase

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._server.admit(self):
            self.closed_for = "over the connection cap"
            self._phase = "closed"
            self.force_close()
            return
        self._arm("headers", self._limits.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._phase = "closed"
        self._server.release(self)
        super().connection_lost(exc)
        if self._answered and self._payload is not None and not self._payload.is_eof():
            # aiohttp drains an unread body after the response ("lingering", up to 10 s) and
            # tells that read nothing when the client goes: end it now, not 10 s later.
            self._payload.feed_eof()

    def data_received(self, data: bytes) -> None:
        if data and self._phase == "idle":
            # The next request on a kept-alive connection: its headers' clock starts now.
            self._arm("headers", self._limits.header_timeout_s)
        super().data_received(data)

    def request_started(self, payload: Any) -> None:
        """Called with the request's body stream once its headers are parsed."""
        self._payload, self._answered = payload, False
        if self._phase != "closed":
            self._arm("body", self._limits.body_timeout_s)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400 and resp.content_type != "application/json":
            # Raised outside the app's middlewares (aiohttp's Expect handling): JSON like the rest.
            resp = web.json_response({"error": " ".join((resp.text or resp.reason).split())[:200]},
                                     status=resp.status, headers={k: v for k, v in resp.headers.items() if k == "Allow"})
        result = await super().finish_response(request, resp, start_time)
        self._answered = True
        if self._phase != "closed":
            self._arm("idle", self._limits.keepalive_timeout_s)
        return result

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (4xx), or an error that escaped the app (5xx):
        a JSON body, one log line, the connection closed after it."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed instead")
        if status >= 500:
            error_id = log_error(log, "a request from %s failed", self._peer)
            body = {"error": client_message("internal server error", error_id)}
        else:
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO  # port scanners, TLS probes
            log.log(level, "refused a malformed request from %s: %s", self._peer, _short(exc, message))
            what = "a request line or header is too long" if isinstance(exc, LineTooLong) else "malformed HTTP request"
            body = {"error": what}
        resp = web.json_response(body, status=status)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | HttpProcessingError | ConnectionError):
            # A body the client broke (corrupt gzip, cut off), found while aiohttp drains it
            # after our 4xx: the client's fault, one line, no traceback.
            log.info("closed a connection from %s: its request body was broken (%s)", self._peer, _short(exc, None))
            return
        super().log_exception(*args, **kw)

    # -- the watchdog -----------------------------------------------------------------------

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self._watch_loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str, seconds: float) -> None:
        self._timer = None
        if phase == "body" and self._payload is not None and self._payload.is_eof():
            self._phase = "handling"  # the body is in: the app's turn, with its own limits
            return
        if phase == "idle":
            log.debug("closed an idle kept-alive connection from %s after %.0f s", self._peer, seconds)
        else:
            log.info("closed a connection from %s: the request's %s did not arrive within %g s",
                     self._peer, phase, seconds)
        self.closed_for = f"{phase} timeout"
        self._phase = "closed"
        self.force_close()


class GuardedServer(web.Server):
    """aiohttp's low-level server making ``GuardedHandler`` connections, at most
    ``limits.max_connections`` open at once."""

    def __init__(self, handler: Any, *, limits: HttpLimits, request_factory: _RequestFactory,
                 **kwargs: Any) -> None:
        super().__init__(handler, request_factory=self._tracking(request_factory), **kwargs)
        self.limits = limits
        self._handler_kwargs = {k: v for k, v in kwargs.items() if k not in ("handler_cancellation", "loop")}
        self._running_loop = asyncio.get_running_loop()
        self._open: set[GuardedHandler] = set()
        self._refused = 0

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, loop=self._running_loop, **self._handler_kwargs)

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet closed."""
        return len(self._open)

    def admit(self, conn: GuardedHandler) -> bool:
        """Count ``conn`` in, or refuse it (False) when the cap is reached."""
        if len(self._open) >= self.limits.max_connections:
            if self._refused == 0:
                log.info("%d HTTP connections are open (server.http.max_connections): closing new ones at once",
                         len(self._open))
            self._refused += 1
            return False
        self._open.add(conn)
        return True

    def release(self, conn: GuardedHandler) -> None:
        self._open.discard(conn)
        if self._refused and len(self._open) < self.limits.max_connections:
            log.info("below the connection cap again (%d connection(s) were refused meanwhile)", self._refused)
            self._refused = 0

    @staticmethod
    def _tracking(factory: _RequestFactory) -> _RequestFactory:
        def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            if isinstance(protocol, GuardedHandler):
                protocol.request_started(payload)
            return factory(message, payload, protocol, writer, task)

        return make


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``GuardedHandler``s under ``limits``.

    Use it like an AppRunner: ``await runner.setup()``, a ``GuardedSite`` (or any site),
    ``cleanup()``."""

    def __init__(self, app: web.Application, limits: HttpLimits, **kwargs: Any) -> None:
        # The watchdog owns every deadline, keep-alive included: aiohttp's own keep-alive
        # timer also runs from the connection's start and would cut the header deadline short.
        kwargs.pop("keepalive_timeout", None)
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("handle_signals", False)
        super().__init__(app, **kwargs)
        self.limits = limits
        self._handler_kwargs = {k: v for k, v in kwargs.items() if k not in ("handle_signals", "shutdown_timeout")}

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the app; its handler and request factory
        return GuardedServer(plain.request_handler, limits=self.limits, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation, **self._handler_kwargs)


class GuardedSite(web.BaseSite):
    """A TCP site like ``web.TCPSite`` whose TLS handshakes must finish within the header
    deadline (asyncio's default is 60 s, and a connection still in its handshake is not yet
    counted against ``max_connections``)."""

    def __init__(self, runner: GuardedRunner, host: str, port: int, *,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self._handshake_s = runner.limits.header_timeout_s

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._ssl_context else 'http'}://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        tls = self._ssl_context
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, backlog=self._backlog, ssl=tls,
            ssl_handshake_timeout=self._handshake_s if tls is not None else None)


def _short(exc: BaseException | None, message: str | None) -> str:
    text = message or (str(exc) if exc is not None else "") or type(exc).__name__
    return repr(" ".join(text.split())[:160])
