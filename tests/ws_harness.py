"""What the WebSocket tests share: the real app (``create_app`` behind ``GuardedRunner``, as
``serve`` runs it) on 127.0.0.1 over the module's real pipeline, and a client of either
transport speaking the documented protocol: WebRTC (``tests.rtc_client``, offering through
``POST /api/offer``) or the WebSocket (``tests.ws_client``, ``GET /api/ws``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.app import STATE, create_app
from avatarchat.server.httpguard import GuardedRunner
from avatarchat.server.metrics import Metrics
from avatarchat.server.settings import ServerSettings
from tests.rtc_client import RtcTestClient
from tests.ws_client import WsTestClient

TRANSPORTS = ("webrtc", "ws")


class App:
    """A running app: ``url`` (``http://127.0.0.1:PORT``), its state, and clients of either
    transport, all closed when the ``running`` block ends."""

    def __init__(self, url: str, app: web.Application) -> None:
        self.url = url
        self.app = app
        self.clients: list[Any] = []

    @property
    def manager(self) -> Any:
        return self.app[STATE].manager

    @property
    def metrics(self) -> Metrics:
        return self.app[STATE].metrics

    async def client(self, transport: str, **kw: Any) -> Any:
        """A connected client of ``transport`` (``webrtc`` or ``ws``)."""
        if transport == "ws":
            ws = WsTestClient(mic=kw.pop("mic", True))
            self.clients.append(ws)
            await ws.connect(self.url, **kw)
            return ws
        rtc = RtcTestClient()
        self.clients.append(rtc)
        await rtc.connect(self.offer_fn)
        return rtc

    async def offer_fn(self, sdp: str, type_: str) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + "/api/offer", json={"sdp": sdp, "type": type_}) as r:
                body = await r.json()
                assert r.status == 200, body
                return str(body["sdp"])

    async def close_clients(self) -> None:
        for c in self.clients:
            await c.close()
        self.clients.clear()


@asynccontextmanager
async def running(pipeline: Pipeline, settings: ServerSettings | None = None) -> AsyncIterator[App]:
    """The real app over ``pipeline`` on 127.0.0.1 (a free port), ready; stopped after."""

    async def loader() -> Pipeline:
        return pipeline

    settings = settings or ServerSettings()
    app = create_app(loader, settings)
    runner = GuardedRunner(app, settings.http)
    await runner.setup()
    served: App | None = None
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await app[STATE].wait_loaded()
        served = App(f"http://127.0.0.1:{runner.addresses[0][1]}", app)
        yield served
    finally:
        if served is not None:
            await served.close_clients()
        await runner.cleanup()
