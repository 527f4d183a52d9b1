"""The real aiohttp app of `avatarchat serve` on 127.0.0.1, for the fuzz tests, and the
checks that follow each category: ``/healthz`` answers and a fresh session opens."""

from __future__ import annotations

import asyncio

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from avatarchat.server.app import STATE, create_app
from avatarchat.server.httpguard import GuardedRunner, GuardedSite
from avatarchat.server.settings import ServerSettings


def fuzz_settings(**changes: Any) -> ServerSettings:
    """Room for every case: many slots (a 503 'full' would read as a 5xx), short connect and
    body timeouts (a case that never completes its body or ICE frees its slot quickly)."""
    base: dict[str, Any] = {"max_sessions": 64, "max_video_sessions": 64, "max_sessions_per_client": 64,
                            "connect_timeout_s": 2.0, "http": {"body_timeout_s": 1.0, "header_timeout_s": 2.0}}
    return ServerSettings.model_validate(base | changes)


@asynccontextmanager
async def running(pipeline: Any, settings: ServerSettings, peer_factory: Callable[..., Awaitable[Any]] | None,
                  web_root: Path | None = None) -> AsyncIterator[tuple[int, web.Application]]:
    """The app with ``pipeline`` loaded, on a free port of 127.0.0.1; yields (port, app)."""

    async def loader() -> Any:
        return pipeline

    before = asyncio.all_tasks()
    app = create_app(loader, settings, peer_factory=peer_factory, web_root=web_root)
    # What `avatarchat serve` listens through: read deadlines, the connection cap, JSON for
    # requests aiohttp's parser refuses.
    runner = GuardedRunner(app, settings.http)
    await runner.setup()
    try:
        await GuardedSite(runner, "127.0.0.1", 0).start()
        await app[STATE].wait_loaded()
        yield runner.addresses[0][1], app
    finally:
        await runner.cleanup()
        await settle(before)


async def settle(before: set[asyncio.Task[Any]], timeout: float = 5.0) -> None:
    """Wait (bounded) until the tasks started since ``before`` are done: aiohttp's
    connection handlers finish unwinding a few loop turns after ``runner.cleanup``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]:
            return
        await asyncio.sleep(0.02)


async def post_offer(port: int, sdp: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{port}/api/offer", json={"sdp": sdp, "type": "offer"}) as r:
        return r.status, await r.json(content_type=None)


async def assert_healthy(port: int) -> None:
    """``GET /healthz`` says ready."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        body = await r.json()
        assert (r.status, body["status"]) == (200, "ready"), body
