"""The local protocol servers' common base: loopback only, a one-way delay each way, order
kept, the port gone after stop, and real speech to answer with."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import numpy as np
from aiohttp import web

from avatarchat.testing.services.base import LocalService, from_pcm16, pcm16, speech


def _echo_three(svc: LocalService) -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        w = web.WebSocketResponse()
        await w.prepare(request)
        out = svc.sender(w.send_str)
        async for msg in w:
            await svc.arrive()
            svc.record("ws", request.path, request.headers, msg.data)
            for i in range(3):
                out.send(f"{msg.data}-{i}")
            await out.drain()
        return w

    app = web.Application()
    app.router.add_get("/ws", ws)
    return app


async def _round_trip(svc: LocalService) -> tuple[list[str], list[float]]:
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{svc.ws_url}/ws") as w:
        t0 = time.monotonic()
        await w.send_str("hi")
        got, at = [], []
        for _ in range(3):
            got.append(await w.receive_str())
            at.append(time.monotonic() - t0)
        return got, at


async def test_delay_is_latency_each_way_and_keeps_order() -> None:
    async with LocalService(_echo_three, delay_ms=150) as svc:
        got, at = await _round_trip(svc)
        assert got == ["hi-0", "hi-1", "hi-2"]
        # 150 ms in and 150 ms out at least (a lower bound only: a busy machine may be
        # slower, never faster).
        assert at[0] >= 0.29, at
        assert svc.seen[0]["body"] == "hi" and svc.seen[0]["path"] == "/ws"


async def test_binds_loopback_and_frees_the_port_on_stop() -> None:
    svc = LocalService(_echo_three)
    await asyncio.get_running_loop().run_in_executor(None, svc.start)
    port = svc.port
    assert svc.url == f"http://127.0.0.1:{port}"
    await asyncio.get_running_loop().run_in_executor(None, svc.stop)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "still listening after stop"


def test_speech_is_real_audio_and_pcm16_round_trips() -> None:
    audio = speech("Hello there.", rate=16000)
    assert 0.4 < len(audio) / 16000 < 3.0
    assert float(np.abs(audio).max()) > 0.05
    back = from_pcm16(pcm16(audio))
    assert np.max(np.abs(back - audio)) < 1e-3
