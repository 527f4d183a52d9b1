"""The aiohttp application of `avatarchat serve`: signaling, health, metrics and the web page.

Routes (documented for other clients in docs/PROTOCOL.md):

- ``GET /`` and static files of the web client (``avatarchat/web/``)
- ``POST /api/offer``: ``{"sdp", "type": "offer", "avatar"?: "client"|"video"}`` -> ``{"sdp", "type":
  "answer", "session_id", "avatar"}``; 503 when full, 429 when this client address holds
  ``max_sessions_per_client`` already
- ``GET /api/avatar/rig``, ``GET /api/avatar/image.png``: what a page draws the avatar with
- ``GET /api/ws?video=jpeg|motion|params|none``: the WebSocket transport (server/ws.py): the same
  conversation and messages as WebRTC's data channel, with mic and reply audio as binary
  PCM; before the upgrade, the same 503/429 as an offer, and 400 for a bad query
- ``GET /api/config``: ``{"ice_servers": [...], "ice_transport_policy": "all" | "relay",
  "max_sessions": n, "barge_in": {...}, "avatar": {...} | null, "language": "en"}`` for the browser's ICE
  agent (TURN credentials made for this request), its barge-in gate and the page's language
  (the config's ``session.language``)
- ``GET /healthz``: 503 ``{"status": "loading"}`` until the models are loaded, then 200
- ``GET /metrics``: Prometheus text
- ``GET /api/session/<id>/events`` (``serve --cluster`` only): server-sent events of one
  session (``avatarchat.cluster.door``); in that mode the offer is relayed to a node, and
  ``/healthz`` and ``/metrics`` speak for the whole cluster

Who may call what (server/auth.py): on a loopback bind only loopback Host names are served
(DNS rebinding); an API request (``/api/*``, ``/metrics``) whose ``Origin`` is neither the
page's own nor in ``server.allowed_origins`` gets 403; with ``server.auth.secret`` set, the API
needs a token (``Authorization: Bearer``, or ``?token=``), else 401 with ``WWW-Authenticate``.
``POST /api/offer`` takes ``Content-Type: application/json`` only (415), which a cross-site
form or a fetch without a CORS preflight cannot send. Static files and ``/healthz`` are open.

Every error is JSON ``{"error": message}`` with a 4xx for anything the client sent; a failure
inside the server is logged with its traceback under an error id, and the client gets only a
one-line message with that id. A client that goes away mid-request is one INFO line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from avatarchat.engine.handler import SessionSettings
from avatarchat.server import auth, protocol
from avatarchat.server.avatar_http import IMAGE_PATH, RIG_PATH, ClientAvatar, has_avatar, serve_bytes
from avatarchat.server.errors import client_message, log_error
from avatarchat.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from avatarchat.server.metrics import Metrics
from avatarchat.server.peer import OfferError
from avatarchat.server.sessions import (
    ClientLimit,
    PeerFactory,
    ServerFull,
    SessionManager,
    ShuttingDown,
    session_log,
)
from avatarchat.server.settings import AvatarOutput, ServerSettings, avatar_output
from avatarchat.server.turn import ice_servers_for_client

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
PipelineLoader = Callable[[], Awaitable[Any]]
# Types some systems' mimetypes tables lack or get wrong; browsers refuse modules served
# as text/plain.
_TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
          ".json": "application/json", ".svg": "image/svg+xml", ".wasm": "application/wasm"}
_RETRY = {"Retry-After": "5"}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="avatarchat"'}
#: Paths that need a token when auth is on, and a matching Origin always.
_API_PREFIXES = ("/api/", "/metrics")
#: Longest path segment a filesystem takes (longer ones are refused before touching it).
_MAX_NAME_BYTES = 255
_CLAIMS = web.RequestKey("avatarchat_claims", dict)


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
    trusted_proxies: list[auth.Network] | None = None
    session: SessionSettings = field(default_factory=SessionSettings)
    #: The avatar as a page draws it (None: no avatar, or one only the server can render).
    client_avatar: ClientAvatar | None = None
    #: ``serve --cluster``: the front door onto a Ray cluster (avatarchat.cluster.door.ClusterDoor);
    #: its sessions run on the nodes, so the pipeline here stays None.
    cluster: Any = None

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
            if self.cluster is not None:
                self.client_avatar = self.cluster.client_avatar
            else:
                self.client_avatar = await asyncio.get_running_loop().run_in_executor(None, ClientAvatar.loaded,
                                                                                      self.pipeline)
            self.status = "ready"
        except Exception as exc:
            self.load_error, self.status = exc, "failed"


STATE = web.AppKey("avatarchat_state", ServerState)




def create_app(pipeline_loader: PipelineLoader, settings: ServerSettings, *,
               peer_factory: PeerFactory | None = None, web_root: str | Path | None = None,
               metrics: Metrics | None = None, session: SessionSettings | None = None,
               cluster: Any = None) -> web.Application:
    """Build the app. The pipeline loads in the background from app startup; sessions are
    opened by ``peer_factory`` (default ``PeerSession.open``) and all closed at shutdown.
    ``session`` is the config's ``session:`` section (the page is told whether barge-in is on).
    ``cluster``: a ``ClusterDoor`` (``serve --cluster``): offers go to the cluster's nodes, and
    ``pipeline_loader`` is its ``start``.
    ValueError (one line) if ``settings.trusted_proxies`` holds something not an address."""
    if peer_factory is None:
        from avatarchat.server.peer import PeerSession

        peer_factory = PeerSession.open
    metrics = metrics or Metrics()
    state = ServerState(settings, SessionManager(settings, peer_factory, metrics), metrics, pipeline_loader,
                        Path(web_root) if web_root is not None else WEB_ROOT,
                        trusted_proxies=auth.parse_networks(settings.trusted_proxies),
                        session=session or SessionSettings(), cluster=cluster)
    # client_max_size makes aiohttp refuse a longer body even without a Content-Length.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_errors, _access])
    app[STATE] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/config", _config)
    app.router.add_post("/api/offer", _offer)
    app.router.add_get("/api/ws", _websocket)
    app.router.add_get("/" + RIG_PATH, _avatar_rig)
    app.router.add_get("/" + IMAGE_PATH, _avatar_image)
    if cluster is not None:
        app.router.add_get("/api/session/{session_id}/events", _session_events)
    app.router.add_get("/{tail:.*}", _static)
    app.on_startup.append(_start_loading)
    app.on_shutdown.append(_close_sessions)
    app.on_cleanup.append(_stop_loading)
    if cluster is not None:
        app.on_cleanup.append(_close_cluster)
    return app


async def _start_loading(app: web.Application) -> None:
    state = app[STATE]
    state.load_task = asyncio.create_task(state._load(), name="avatarchat-load-pipeline")


async def _close_sessions(app: web.Application) -> None:
    n = await app[STATE].manager.close_all()
    if n:
        log.info("closed %d session(s)", n)


async def _close_cluster(app: web.Application) -> None:
    await app[STATE].cluster.close()


async def _stop_loading(app: web.Application) -> None:
    task = app[STATE].load_task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- handlers ---------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.status == "ready" and state.cluster is not None:
        return web.json_response(state.cluster.health())
    if state.status == "ready":
        body = {"status": "ready", "sessions": len(state.manager), "max_sessions": state.settings.max_sessions}
        return web.json_response(body)
    # Never the load error's text: it can name paths and URLs (the log and `serve` say it).
    return web.json_response({"status": state.status}, status=503, headers=_RETRY)


async def _metrics(request: web.Request) -> web.Response:
    cluster = request.app[STATE].cluster
    text = await cluster.metrics_text() if cluster is not None else request.app[STATE].metrics.render()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _config(request: web.Request) -> web.Response:
    settings = request.app[STATE].settings
    avatar = request.app[STATE].client_avatar
    claims = request.get(_CLAIMS)
    name = claims["sub"] if claims else f"anon-{request.remote or 'unknown'}"
    ice = ice_servers_for_client(settings, name)
    if claims is None and not auth.is_loopback_bind(settings.host):
        # A static TURN password is long-lived: only token holders (or this machine) get it.
        # The per-session REST credentials (server.turn) expire by themselves and stay.
        for server in ice[:len(settings.ice_servers)]:
            server.pop("username", None)
            server.pop("credential", None)
    body = {"ice_servers": ice, "max_sessions": settings.max_sessions,
            "ice_transport_policy": "relay" if settings.turn.relay_only else "all",
            "barge_in": settings.barge_in.client(request.app[STATE].session.barge_in.enabled),
            "avatar": avatar.config(settings) if avatar is not None else None,
            "language": request.app[STATE].session.language}
    if request.app[STATE].cluster is not None:
        body["cluster"] = True  # the page then follows its session's events stream
    return web.json_response(body)


async def _avatar_rig(request: web.Request) -> web.Response:
    avatar = request.app[STATE].client_avatar
    if avatar is None:
        return _error(404, "this server has no avatar a page can draw")
    return serve_bytes(request, avatar.rig, "application/json")


async def _avatar_image(request: web.Request) -> web.Response:
    avatar = request.app[STATE].client_avatar
    if avatar is None:
        return _error(404, "this server has no avatar a page can draw")
    return serve_bytes(request, avatar.image, "image/png")


async def _offer(request: web.Request) -> web.Response:
    """Answer one SDP offer (no trickle ICE: the answer carries every candidate)."""
    state = request.app[STATE]
    wrong_type = _not_json(request)
    if wrong_type:
        return _error(415, wrong_type)
    too_big = _too_big(request, state.settings.max_body_bytes)
    if too_big:
        return _error(413, too_big)
    if state.status != "ready":
        message = "models are still loading" if state.status == "loading" else "the models failed to load"
        return _error(503, message, _RETRY)
    try:
        body = await request.read()
    except (HttpProcessingError, RequestPayloadError):
        # A corrupt compressed body, or one aiohttp cannot decode.
        return _error(400, "the request body cannot be decoded (send plain UTF-8 JSON)")
    offer = _parse_offer(body)
    if isinstance(offer, str):
        return _error(400, offer)
    sdp, type_, asked = offer
    # Only an avatar a page can draw is drawn by one.
    avatar = avatar_output(state.settings.avatar_mode, asked) if state.client_avatar is not None else "video"
    client = auth.client_address(request.remote, request.headers.get("X-Forwarded-For"), state.trusted_proxies or [])
    if state.cluster is not None:
        return await state.cluster.offer(sdp, type_, avatar, client)  # type: ignore[no-any-return]
    try:
        peer, answer = await state.manager.open(state.pipeline, sdp, type_, client=client, avatar=avatar,
                                                video=avatar == "video" and has_avatar(state.pipeline))
    except OfferError as exc:
        return _error(400, _refusal(exc))
    except Exception as exc:
        return _not_opened(state, exc, "opening a session failed")
    session_log(log, peer.id).info("answered an offer from %s, %s", client, _holder(request))
    return web.json_response({"sdp": answer, "type": "answer", "session_id": peer.id, "avatar": avatar})


async def _websocket(request: web.Request) -> web.StreamResponse:
    """One WebSocket session (server/ws.py). Refusals (not ready, full, this client's cap, a
    bad query, not an upgrade) are HTTP answers before the upgrade, as for an offer."""
    from avatarchat.server.ws import WsSession

    state = request.app[STATE]
    if state.cluster is not None:
        return _error(501, "the WebSocket transport is not available on a cluster yet: use WebRTC")
    if not web.WebSocketResponse().can_prepare(request).ok:
        return _error(400, "GET /api/ws is a WebSocket: send a WebSocket handshake (Upgrade: websocket)")
    video = request.query.get("video", "none")
    if video not in protocol.VIDEO_MODES:
        return _error(400, f"video must be one of {', '.join(protocol.VIDEO_MODES)}, not {video[:20]!r}")
    if state.status != "ready":
        message = "models are still loading" if state.status == "loading" else "the models failed to load"
        return _error(503, message, _RETRY)
    if video in ("jpeg", "params"):  # who draws the avatar, as for an offer
        drawn = avatar_output(state.settings.avatar_mode, "client" if video == "params" else "video")
        video = "params" if drawn == "client" and state.client_avatar is not None else "jpeg"
    client = auth.client_address(request.remote, request.headers.get("X-Forwarded-For"), state.trusted_proxies or [])

    async def opener(on_closed: Callable[[Any], None]) -> tuple[WsSession, None]:
        session = await WsSession.open(request, state.pipeline, state.settings, video,  # type: ignore[arg-type]
                                       metrics=state.metrics, on_closed=on_closed)
        return session, None

    try:
        session, _ = await state.manager.open_session(opener, client=client,
                                                      video=video == "jpeg" and has_avatar(state.pipeline))
    except web.HTTPException:
        raise
    except Exception as exc:
        return _not_opened(state, exc, "opening a websocket failed")
    session_log(log, session.id).info("websocket from %s, %s", client, _holder(request))
    await session.serve()
    return session.ws


async def _session_events(request: web.Request) -> web.StreamResponse:
    return await request.app[STATE].cluster.events(request)  # type: ignore[no-any-return]


def _not_opened(state: ServerState, exc: Exception, what: str) -> web.Response:
    """The answer to a session that could not be opened, whatever the transport: full,
    this client's cap, shutting down, or a failure (logged under an error id)."""
    if isinstance(exc, ServerFull):
        return _error(503, str(exc), _RETRY)
    if isinstance(exc, ClientLimit):
        return _error(429, str(exc), _RETRY)
    if isinstance(exc, ShuttingDown):
        return _error(503, str(exc))
    # The session has no id yet: the log line says so rather than leaving it blank.
    error_id = log_error(logging.LoggerAdapter(log, {"session": "(new)"}), what)  # called in the except
    state.metrics.error("signaling")
    return _error(500, client_message("could not start the session", error_id))


def _holder(request: web.Request) -> str:
    """Whose token opened a session, for the log."""
    claims = request.get(_CLAIMS)
    return f"token of {claims['sub'][:64]!r} ({str(claims['jti'])[:8]})" if claims else "no token"


def _not_json(request: web.Request) -> str | None:
    # Required, not merely checked when present: a cross-site form or a fetch without a CORS
    # preflight cannot send application/json, so this is what keeps other sites out.
    if "Content-Type" not in request.headers:
        return "send the offer with Content-Type: application/json"
    if request.content_type != "application/json":
        return f"send the offer as application/json, not {request.content_type[:60]}"
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return f"send the offer as UTF-8 JSON, not {charset[:30]}"
    return None


def _refusal(exc: OfferError) -> str:
    """The 400 message of a refused offer. Our own checks' messages say what is wrong; an
    OfferError that wraps a library's exception (aiortc's text names its internals) gets a
    fixed message, and its text goes to the log under the same error id."""
    if exc.__context__ is None and exc.__cause__ is None:
        return _one_line(exc) or "the offer was refused"
    error_id = log_error(log, "offer refused: %s", _one_line(exc), exc_info=False, level=logging.INFO)
    return client_message("the offer cannot be answered", error_id)


def _too_big(request: web.Request, limit: int) -> str | None:
    # Refuse on the declared length before reading anything.
    length = request.content_length
    if length is not None and length > limit:
        return f"the request body of {length} bytes is too large (limit {limit})"
    return None


def _parse_offer(body: bytes) -> tuple[str, str, AvatarOutput] | str:
    """``(sdp, type, avatar)`` from the request body, or the message of a 400."""
    try:
        data = json.loads(body.decode("utf-8"))
    except RecursionError:
        return "the JSON is nested too deeply"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 'the body is not JSON; send {"sdp": "...", "type": "offer"} in UTF-8'
    except ValueError:
        return "a number in the JSON has too many digits"  # Python's 4,300-digit int limit
    if not isinstance(data, dict):
        return 'the body must be a JSON object {"sdp": "...", "type": "offer"}'
    sdp, type_ = data.get("sdp"), data.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        return '"sdp" is missing or not a non-empty string'
    if not isinstance(type_, str):
        return '"type" is missing or not a string; it must be "offer"'
    if type_ != "offer":
        return f'"type" must be "offer", not {type_[:20]!r}'
    avatar = data.get("avatar", "video")
    if avatar not in ("client", "video"):
        return '"avatar" must be "client" (the page draws it) or "video" (the server renders it)'
    return sdp, type_, "client" if avatar == "client" else "video"


async def _static(request: web.Request) -> web.StreamResponse:
    root = request.app[STATE].web_root.resolve()
    rel = request.match_info["tail"] or "index.html"
    path = _static_path(root, rel)
    if path is None:
        return _error(404, f"not found: {_shown(request.path)}")
    headers = {"Cache-Control": "no-cache"}
    content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    charset = "utf-8" if content_type.startswith("text/") or content_type == "application/json" else None
    # The whole file, always (a few small files): no Range, If-Match or ETag handling, whose
    # 416 and 412 answers aiohttp's FileResponse sends without a JSON body.
    body = await asyncio.to_thread(path.read_bytes)
    return web.Response(body=body, content_type=content_type, charset=charset, headers=headers)


def _static_path(root: Path, rel: str) -> Path | None:
    """The file under ``root`` that ``rel`` names, or None (outside the root, missing, or a
    name no filesystem takes: a NUL byte, a lone surrogate, a segment over 255 bytes)."""
    if "\x00" in rel or any(len(part.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES for part in rel.split("/")):
        return None
    try:
        rel.encode("utf-8")
        path = (root / rel).resolve()
        # resolve() folds "..": anything that lands outside the web root does not exist.
        if path.is_dir():
            path = path / "index.html"
        if not path.is_relative_to(root) or not path.is_file():
            return None
    except (OSError, ValueError):
        return None
    return path


# -- access and errors ------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin and token checks (module docstring), before any handler runs."""
    settings = request.app[STATE].settings
    if auth.is_loopback_bind(settings.host):
        port = _local_port(request)
        # The header itself: aiohttp's request.host falls back to socket.getfqdn(), a DNS lookup.
        host = request.headers.get("Host")
        if port is not None and not auth.loopback_host_ok(host, port, request.scheme, settings.host,
                                                          settings.allowed_origins):
            return _error(403, "this server answers to localhost only (the Host header names another; "
                               "behind a proxy, list its origin in server.allowed_origins)")
    if not request.path.startswith(_API_PREFIXES):
        return await handler(request)
    origin = request.headers.get("Origin")
    if origin is not None and not auth.origin_ok(origin, _served_origin(request), settings.allowed_origins):
        return _error(403, "cross-origin requests are not allowed (server.allowed_origins)")
    secret = settings.auth.secret
    if secret:
        token = auth.bearer_token(request.headers, request.query)
        if token is None:
            return _error(401, "this server needs an access token (Authorization: Bearer, or ?token=)", _CHALLENGE)
        try:
            request[_CLAIMS] = auth.check_token(secret, token)
        except auth.TokenError as exc:
            return _error(401, str(exc), {"WWW-Authenticate": 'Bearer realm="avatarchat", error="invalid_token"'})
    return await handler(request)


def _local_port(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return int(sock[1]) if isinstance(sock, tuple) and len(sock) >= 2 else None


def _served_origin(request: web.Request) -> str:
    """``scheme://Host`` of this request: the origin of the page it serves. Behind a trusted
    proxy that ends TLS, the scheme is the one the proxy says (``X-Forwarded-Proto``)."""
    scheme = request.scheme
    if auth.is_trusted(request.remote, request.app[STATE].trusted_proxies or []):
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if forwarded in ("http", "https"):
            scheme = forwarded
    return f"{scheme}://{request.headers.get('Host', '')}"


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into ``{"error": message}``; never send a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, _http_message(request, exc), {k: v for k, v in exc.headers.items() if k == "Allow"})
    except (ConnectionResetError, RequestPayloadError) as exc:
        # The client went away (or the connection guard closed it) mid-request: not a fault
        # of the server, so no traceback and no error metric; the reply goes nowhere.
        if getattr(request.protocol, "closed_for", None) is None:
            log.info("%s %s: the client went away mid-request (%s)", request.method, _shown(request.path),
                     type(exc).__name__)
        return _error(400, "the request was cut off")
    except Exception:
        error_id = log_error(log, "%s %s failed", request.method, _shown(request.path))
        request.app[STATE].metrics.error("server")
        return _error(500, client_message("internal server error", error_id))


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"not found: {_shown(request.path)}"
    if exc.status == 405:
        return f"{request.method} is not allowed on {_shown(request.path)}"
    if exc.status == 413:
        limit = request.app[STATE].settings.max_body_bytes
        return f"the request body is too large (limit {limit} bytes)"
    return exc.reason


def _shown(path: str) -> str:
    # A path the client chose: cut short, control characters and lone surrogates escaped.
    return path[:200].encode("unicode_escape", "backslashreplace").decode("ascii")[:200]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
