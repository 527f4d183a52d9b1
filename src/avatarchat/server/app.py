"""The aiohttp application of `avatarchat serve`: signaling, health, metrics and the web page.

Routes (documented for other clients in docs/PROTOCOL.md):

- ``GET /`` and static files of the web client (``avatarchat/web/``)
- ``POST /api/offer``: ``{"sdp", "type": "offer"}`` -> ``{"sdp", "type": "answer", "session_id"}``
- ``GET /api/config``: ``{"ice_servers": [...], "max_sessions": n, "barge_in": {...}}`` for the
  browser's ICE agent and its barge-in gate
- ``GET /healthz``: 503 ``{"status": "loading"}`` until the models are loaded, then 200
- ``GET /metrics``: Prometheus text

Every error is JSON ``{"error": message}``; a failure inside the server is logged with its
traceback and the session id, and the client gets only a one-line message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from avatarchat.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from avatarchat.server.metrics import Metrics
from avatarchat.server.peer import OfferError
from avatarchat.server.sessions import PeerFactory, ServerFull, SessionManager, ShuttingDown
from avatarchat.server.settings import ServerSettings

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
PipelineLoader = Callable[[], Awaitable[Any]]
# Types some systems' mimetypes tables lack or get wrong; browsers refuse modules served
# as text/plain.
_TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
          ".json": "application/json", ".svg": "image/svg+xml", ".wasm": "application/wasm"}
_RETRY = {"Retry-After": "5"}


@dataclass
class ServerState:
    """What the handlers share. ``status`` goes ``loading`` -> ``ready`` or ``failed``."""

    settings: ServerSettings
    manager: SessionManager
    metrics: Metrics
    loader: PipelineLoader
    web_root: Path
    status: str = "loading"
    pipeline: Any = None
    load_error: BaseException | None = None
    load_task: asyncio.Task[None] | None = None

    async def wait_loaded(self) -> Any:
        """The loaded pipeline; raises what the loader raised if loading failed."""
        if self.load_task is None:
            raise RuntimeError("the app has not started")
        await asyncio.shield(self.load_task)
        if self.load_error is not None:
            raise self.load_error
        return self.pipeline

    async def _load(self) -> None:
        # Never raises: the error is kept for `wait_loaded`, so it is never "unretrieved".
        try:
            self.pipeline = await self.loader()
            self.status = "ready"
        except Exception as exc:
            self.load_error, self.status = exc, "failed"


STATE = web.AppKey("avatarchat_state", ServerState)


def create_app(pipeline_loader: PipelineLoader, settings: ServerSettings, *,
               peer_factory: PeerFactory | None = None, web_root: str | Path | None = None,
               metrics: Metrics | None = None) -> web.Application:
    """Build the app. The pipeline loads in the background from app startup; sessions are
    opened by ``peer_factory`` (default ``PeerSession.open``) and all closed at shutdown."""
    if peer_factory is None:
        from avatarchat.server.peer import PeerSession

        peer_factory = PeerSession.open
    metrics = metrics or Metrics()
    state = ServerState(settings, SessionManager(settings, peer_factory, metrics), metrics, pipeline_loader,
                        Path(web_root) if web_root is not None else WEB_ROOT)
    # client_max_size makes aiohttp refuse a longer body even without a Content-Length.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_errors])
    app[STATE] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/config", _config)
    app.router.add_post("/api/offer", _offer)
    app.router.add_get("/{tail:.*}", _static)
    app.on_startup.append(_start_loading)
    app.on_shutdown.append(_close_sessions)
    app.on_cleanup.append(_stop_loading)
    return app


async def _start_loading(app: web.Application) -> None:
    state = app[STATE]
    state.load_task = asyncio.create_task(state._load(), name="avatarchat-load-pipeline")


async def _close_sessions(app: web.Application) -> None:
    n = await app[STATE].manager.close_all()
    if n:
        log.info("closed %d session(s)", n)


async def _stop_loading(app: web.Application) -> None:
    task = app[STATE].load_task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- handlers ---------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.status == "ready":
        body = {"status": "ready", "sessions": len(state.manager), "max_sessions": state.settings.max_sessions}
        return web.json_response(body)
    body = {"status": state.status}
    if state.load_error is not None:
        body["error"] = _one_line(state.load_error)
    return web.json_response(body, status=503, headers=_RETRY)


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[STATE].metrics.render()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _config(request: web.Request) -> web.Response:
    settings = request.app[STATE].settings
    ice = [s.model_dump(exclude_none=True) for s in settings.ice_servers]
    return web.json_response({"ice_servers": ice, "max_sessions": settings.max_sessions,
                              "barge_in": settings.barge_in.client()})


async def _offer(request: web.Request) -> web.Response:
    """Answer one SDP offer (no trickle ICE: the answer carries every candidate)."""
    state = request.app[STATE]
    if state.status != "ready":
        message = "models are still loading" if state.status == "loading" else "the models failed to load"
        return _error(503, message, _RETRY)
    too_big = _too_big(request, state.settings.max_body_bytes)
    if too_big:
        return _error(413, too_big)
    declared = request.headers.get("Content-Type")
    if declared is not None and request.content_type != "application/json":
        return _error(415, f"send the offer as application/json, not {request.content_type}")
    offer = _parse_offer(await request.read())
    if isinstance(offer, str):
        return _error(400, offer)
    try:
        peer, answer = await state.manager.open(state.pipeline, *offer)
    except ServerFull as exc:
        return _error(503, str(exc), _RETRY)
    except ShuttingDown as exc:
        return _error(503, str(exc))
    except OfferError as exc:
        return _error(400, _one_line(exc) or "the offer was refused")
    except Exception:
        # The peer has no id yet: the log line says so rather than leaving it blank.
        log.exception("opening a session failed", extra={"session": "(new)"})
        state.metrics.error("signaling")
        return _error(500, "could not start the session (see the server log)")
    return web.json_response({"sdp": answer, "type": "answer", "session_id": peer.id})


def _too_big(request: web.Request, limit: int) -> str | None:
    # Refuse on the declared length before reading anything.
    length = request.content_length
    if length is not None and length > limit:
        return f"the request body of {length} bytes is too large (limit {limit})"
    return None


def _parse_offer(body: bytes) -> tuple[str, str] | str:
    """``(sdp, type)`` from the request body, or the message of a 400."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 'the body is not JSON; send {"sdp": "...", "type": "offer"}'
    if not isinstance(data, dict):
        return 'the body must be a JSON object {"sdp": "...", "type": "offer"}'
    sdp, type_ = data.get("sdp"), data.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        return '"sdp" is missing or not a non-empty string'
    if not isinstance(type_, str):
        return '"type" is missing or not a string; it must be "offer"'
    if type_ != "offer":
        return f'"type" must be "offer", not {type_[:20]!r}'
    return sdp, type_


async def _static(request: web.Request) -> web.StreamResponse:
    root = request.app[STATE].web_root.resolve()
    rel = request.match_info["tail"] or "index.html"
    path = (root / rel).resolve()
    # resolve() folds "..": anything that lands outside the web root does not exist.
    if path.is_dir():
        path = path / "index.html"
    if not path.is_relative_to(root) or not path.is_file():
        return _error(404, f"not found: {request.path[:200]}")
    headers = {"Cache-Control": "no-cache"}
    if path.suffix in _TYPES:
        headers["Content-Type"] = _TYPES[path.suffix] + ("; charset=utf-8" if path.suffix != ".wasm" else "")
    return web.FileResponse(path, headers=headers)


# -- errors -----------------------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """Turn every error into ``{"error": message}``; never send a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, _http_message(request, exc), {k: v for k, v in exc.headers.items() if k == "Allow"})
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        request.app[STATE].metrics.error("server")
        return _error(500, "internal server error (see the server log)")


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"not found: {request.path[:200]}"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path[:200]}"
    if exc.status == 413:
        limit = request.app[STATE].settings.max_body_bytes
        return f"the request body is too large (limit {limit} bytes)"
    return exc.reason


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
