"""``avatarchat serve``: talk to the avatar from a browser, over WebRTC.

The server listens at once (``/healthz`` answers ``loading``) and loads the models in the
background; open the printed address when it says ``ready``. Flags override the config's
``server:`` section. Browsers give the microphone only to ``https://`` pages or to
``localhost``: to use it from another machine, listen on ``--host 0.0.0.0`` with
``--self-signed`` (or your own ``--cert``/``--key``). Ctrl-C closes every session and stops.

Off this machine, anyone who can reach the port could use the avatar: on any address other
than loopback ``serve`` refuses to start without ``server.auth.secret`` (then every visitor
needs a link made by ``avatarchat token``), unless ``--no-auth`` says that is intended.

``--cluster ADDRESS`` (a Ray address, ``auto`` for the local one, e.g. ``avatarchat cluster
local``) makes this process a front door: it loads no model, places each session on a node of
the Ray cluster and relays its offer (``avatarchat.cluster``; needs ``avatarchat[cluster]``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from avatarchat.cli.errors import UserError
from avatarchat.cli.progress import say as _say
from avatarchat.config import load_config
from avatarchat.server.settings import ServerSettings

Say = Callable[[str], None]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(session)s] %(message)s"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="talk to the avatar in a browser (WebRTC)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML config (default: the embedded offline stack)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    p.add_argument("--port", type=int, help="port (default 8282)")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--self-signed", action="store_true", help="HTTPS with a generated, cached certificate")
    tls.add_argument("--cert", metavar="PEM", help="HTTPS certificate (with --key)")
    p.add_argument("--key", metavar="PEM", help="HTTPS private key (with --cert)")
    p.add_argument("--max-sessions", type=int, metavar="N", help="sessions at once (default 2)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve a non-loopback address without access tokens (anyone who reaches it may talk)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="be a front door of a Ray cluster (its address, or auto): sessions run on its nodes")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avatarchat.engine.pipeline import Pipeline

    config = load_config(args.config)
    settings = settings_from_args(config.server, args)
    warning = check_access(settings, no_auth=args.no_auth)
    ssl_ctx = tls_context(settings)
    if warning:
        _say(warning)
    _install_log_format()
    limit_malloc_arenas()
    if getattr(args, "cluster", None):
        from avatarchat.cluster.door import ClusterDoor

        door = ClusterDoor(args.cluster, config)
        _say(f"front door of the Ray cluster at {args.cluster}: the sessions run on its nodes")
        asyncio.run(serve(settings, door.start, ssl_ctx=ssl_ctx, session=config.session, cluster=door))
        return 0
    asyncio.run(serve(settings, lambda: Pipeline.load(config, progress=_say), ssl_ctx=ssl_ctx,
                      session=config.session))
    return 0


#: glibc's M_ARENA_MAX (mallopt parameter number), and the arenas the server keeps.
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas at ``MALLOC_ARENAS`` for the life of the process.

    glibc gives each thread that allocates its own arena (up to 8 per core), and keeps freed
    memory in each. A session's frames (768 KiB each) pass through every executor thread, so
    each arena kept frame-sized free blocks and resident memory crept up turn after turn
    while memory in use stayed flat. Pinning the mmap threshold instead (every frame its own
    mmap) held memory as well but cost ~15 % of a core and ~400 ms of voice to voice in
    `bench e2e` (page faults on every frame). Returns False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, MALLOC_ARENAS))


def settings_from_args(base: ServerSettings, args: argparse.Namespace) -> ServerSettings:
    """The config's ``server:`` settings with the command-line flags applied (and validated)."""

    updates: dict[str, Any] = {}
    for flag, setting in (("host", "host"), ("port", "port"), ("max_sessions", "max_sessions")):
        if getattr(args, flag, None) is not None:
            updates[setting] = getattr(args, flag)
    if getattr(args, "self_signed", False):
        updates.update(self_signed=True, certfile=None, keyfile=None)
    cert, key = getattr(args, "cert", None), getattr(args, "key", None)
    if (cert is None) != (key is None):
        raise UserError("--cert and --key go together")
    if cert is not None:
        updates.update(certfile=cert, keyfile=key, self_signed=False)
    try:
        settings = ServerSettings.model_validate({**base.model_dump(), **updates})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "--" + str(err["loc"][0]).replace("_", "-")
        raise UserError(f"{name}: {err['msg']} (got {err.get('input')!r})") from None
    if (settings.certfile is None) != (settings.keyfile is None):
        raise UserError("server.certfile and server.keyfile go together")
    if settings.self_signed and settings.certfile is not None:
        raise UserError("server: use either self_signed or certfile/keyfile, not both")
    return settings


def check_access(settings: ServerSettings, *, no_auth: bool) -> str | None:
    """The bind rule: ``UserError`` (one line) when ``settings`` would serve a non-loopback
    address without access tokens and ``no_auth`` is not given, or when the auth settings
    cannot work; the warning line to print when ``no_auth`` allows it; else None."""
    from avatarchat.server.auth import is_loopback_bind, parse_networks, secret_problem

    try:
        parse_networks(settings.trusted_proxies)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    secret = settings.auth.secret
    if secret:
        problem = secret_problem(secret)
        if problem:
            raise UserError(problem)
        return None
    if is_loopback_bind(settings.host):
        return None
    if not no_auth:
        raise UserError(f"--host {settings.host} is reachable from other machines: set server.auth.secret "
                        "(secret: ${AVATARCHAT_SECRET}; visitors then need a link from `avatarchat token`), "
                        "or pass --no-auth to let anyone who reaches the port talk")
    return (f"warning: --no-auth: anyone who can reach {settings.host}:{settings.port} can use the avatar "
            "(no access tokens)")


def tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The HTTPS context the settings ask for (None for plain HTTP); ``UserError`` if unusable."""
    from avatarchat.server.tls import TLSError, self_signed_cert, ssl_context

    try:
        if settings.self_signed:
            cert, key = self_signed_cert()
            _say(f"HTTPS with the self-signed certificate {cert} (the browser will warn once)")
            return ssl_context(cert, key)
        if settings.certfile is not None and settings.keyfile is not None:
            return ssl_context(settings.certfile, settings.keyfile)
    except TLSError as exc:
        raise UserError(str(exc)) from None
    return None


async def serve(settings: ServerSettings, loader: Callable[[], Any], *, ssl_ctx: ssl.SSLContext | None = None,
                stop: asyncio.Event | None = None, say: Say | None = None, **app_options: Any) -> None:
    """Listen, load the pipeline, serve until ``stop`` is set (SIGINT/SIGTERM by default),
    then close every session. Raises ``UserError`` (one line) if the port is taken or the
    pipeline fails to load; the server is stopped first, so nothing runs half-started."""
    from avatarchat.server.app import STATE, create_app
    from avatarchat.server.auth import is_loopback_bind
    from avatarchat.server.httpguard import GuardedRunner, GuardedSite

    say = say or _say
    listening = asyncio.Event()

    async def load_when_listening() -> Any:
        # Models load once the port is bound: a taken port fails before any model loads,
        # and the progress lines follow the "listening" line.
        await listening.wait()
        return await loader()

    app = create_app(load_when_listening, settings, **app_options)
    runner = GuardedRunner(app, settings.http)
    await runner.setup()
    remove_handlers: Callable[[], None] = lambda: None
    try:
        try:
            await GuardedSite(runner, settings.host, settings.port, ssl_context=ssl_ctx).start()
        except OSError as exc:
            raise UserError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
        url = _url(settings, ssl_ctx is not None)
        say(f"listening on {url}; loading models …")
        for other in _lan_urls(settings, ssl_ctx is not None):
            say(f"  from other machines: {other}")
        listening.set()
        if stop is None:
            stop, remove_handlers = _stop_on_signals()
        if await _wait_loaded(app[STATE], stop):
            say(f"ready: open {url} in a browser (up to {settings.max_sessions} sessions; Ctrl-C stops)")
            if settings.auth.secret:
                say(f"access tokens are on: open {url}?token=TOKEN, with TOKEN from `avatarchat token`")
            if ssl_ctx is None and not is_loopback_bind(settings.host):
                say("note: browsers give the microphone only to https:// pages off localhost; add --self-signed")
            await stop.wait()
            say(f"stopping: closing {len(app[STATE].manager)} session(s) …")
        else:
            say("stopping while the models load …")
    finally:
        remove_handlers()
        await runner.cleanup()
    say("stopped")


async def _wait_loaded(state: Any, stop: asyncio.Event) -> bool:
    """True once loaded; False if stopped first; ``UserError`` if loading failed."""

    loaded = asyncio.ensure_future(state.wait_loaded())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({loaded, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (loaded, stopped):
            fut.cancel()
        await asyncio.gather(loaded, stopped, return_exceptions=True)
    if not loaded.cancelled() and loaded.exception() is not None:
        raise UserError(" ".join(str(loaded.exception()).split()) or "the pipeline failed to load") from None
    return not loaded.cancelled()


def _stop_on_signals() -> tuple[asyncio.Event, Callable[[], None]]:
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    sigs = (signal.SIGINT, signal.SIGTERM)

    def on_signal() -> None:
        stop.set()
        # A second Ctrl-C interrupts at once if closing hangs.
        for s in sigs:
            loop.remove_signal_handler(s)

    for s in sigs:
        loop.add_signal_handler(s, on_signal)

    def remove() -> None:
        for s in sigs:
            loop.remove_signal_handler(s)

    return stop, remove


def _url(settings: ServerSettings, https: bool) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"  # reachable from the other machines of the LAN by this machine's address
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if https else 'http'}://{host}:{settings.port}/"


def _lan_urls(settings: ServerSettings, https: bool) -> list[str]:
    if settings.host not in ("0.0.0.0", "::", ""):
        return []
    import socket

    from avatarchat.server.tls import lan_addresses

    scheme = "https" if https else "http"
    return [f"{scheme}://{ip if ':' not in ip else f'[{ip}]'}:{settings.port}/"
            for ip in lan_addresses(socket.gethostname())]


class _SessionField(logging.Filter):
    """Gives every record a ``session`` (``-`` where none is known) for ``LOG_FORMAT``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session"):
            record.session = "-"
        return True


def _install_log_format() -> None:
    # Session open/close lines are what an operator wants to see, even without -v.
    logging.getLogger("avatarchat.server").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_SessionField())
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
