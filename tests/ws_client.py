"""A Python WebSocket client for tests: ``GET /api/ws`` with aiohttp's real client, a
scripted microphone that sends PCM in real time, and everything received kept for
assertions. Its API matches ``tests.rtc_client.RtcTestClient`` where the two transports
share the protocol (``messages``, ``send``, ``speak``, ``wait_message``, ``of_type``,
``loud_times``, ``audio_since``, ``close``), so one test can run over either.

    client = WsTestClient()
    await client.connect(url)              # waits for ``hello``
    client.send({"type": "text", "text": "Say hello."})
    await client.wait_message(lambda m: m["type"] == "metrics")
    await client.close()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from avatarchat.audio.io import load_audio

#: The scripted mic sends this much audio per message.
MIC_CHUNK_S = 0.02


class WsTestClient:
    """One test client. ``messages`` (parsed JSON text frames, each with ``_at``, its
    arrival time), ``audio_chunks`` (``(arrival, float32 samples)`` of the reply PCM),
    ``frames`` (``(arrival, jpeg bytes)``), ``hello`` (the first message)."""

    def __init__(self, *, mic: bool = True) -> None:
        self.messages: list[dict[str, Any]] = []
        self.audio_chunks: list[tuple[float, np.ndarray]] = []
        self.frames: list[tuple[float, bytes]] = []
        self.hello: dict[str, Any] = {}
        self.close_code: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: asyncio.Future[None] | None = None
        self._mic_on = mic
        self._mic = np.zeros(0, np.float32)
        self._closed = asyncio.Event()

    # -- connecting ------------------------------------------------------------------

    async def connect(self, url: str, *, video: str = "none", token: str | None = None,
                      headers: dict[str, str] | None = None, timeout: float = 20.0) -> None:
        """Open ``url``'s ``/api/ws`` (``url`` is ``http://host:port``) and wait for ``hello``.
        A refused upgrade raises ``aiohttp.WSServerHandshakeError`` (its ``status``)."""
        query = {"video": video} | ({"token": token} if token else {})
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._http.ws_connect(url.rstrip("/") + "/api/ws", params=query, headers=headers,
                                                   autoping=True, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except BaseException:
            await self._http.close()
            raise
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read(), name="ws-client-read"))
        if self._mic_on:
            self._tasks.append(loop.create_task(self._play_mic(), name="ws-client-mic"))
        first = await self.wait_message(lambda m: True, timeout)
        assert first["type"] == "hello", first
        self.hello = first

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            now = time.monotonic()
            if msg.type == aiohttp.WSMsgType.TEXT:
                message = json.loads(msg.data)
                message["_at"] = now
                if message.get("type") == "frame":
                    self.frames.append((now, base64.b64decode(message["jpeg"])))
                else:
                    self.messages.append(message)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.audio_chunks.append((now, np.frombuffer(msg.data, "<i2").astype(np.float32) / 32768.0))
            self._notify()
        self.close_code = self._ws.close_code
        self._closed.set()
        self._notify()

    async def _play_mic(self) -> None:
        """Real-time mic: queued speech, then silence, in ``MIC_CHUNK_S`` messages."""
        assert self._ws is not None
        rate = (await self.wait_message(lambda m: m["type"] == "hello"))["sample_rate"]
        n, t0 = round(MIC_CHUNK_S * rate), time.monotonic()
        k = 0
        while not self._ws.closed:
            chunk, self._mic = self._mic[:n], self._mic[n:]
            pcm = np.zeros(n, np.float32)
            pcm[: len(chunk)] = chunk
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.send_bytes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * MIC_CHUNK_S - time.monotonic()))

    # -- sending ---------------------------------------------------------------------

    def speak(self, audio: np.ndarray | str | Path) -> float:
        """Queue speech for the mic (an array at the hello's ``sample_rate``, or any audio
        file); returns its seconds."""
        rate = self.hello["sample_rate"]
        samples = load_audio(audio, rate) if isinstance(audio, str | Path) else np.asarray(audio, np.float32)
        self._mic = np.concatenate([self._mic, samples.reshape(-1)])
        return len(samples) / rate

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a message: a dict as JSON text, a str as text, bytes as a binary frame."""
        assert self._ws is not None
        if isinstance(message, bytes):
            coro = self._ws.send_bytes(message)
        else:
            coro = self._ws.send_str(json.dumps(message) if isinstance(message, dict) else message)
        task = asyncio.get_running_loop().create_task(coro, name="ws-client-send")
        self._tasks.append(task)

    # -- receiving -------------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def until(self, check: Callable[[], Any], timeout: float) -> Any:
        """``check()``'s first truthy result, re-checked on everything received."""
        async def run() -> Any:
            while True:
                result = check()
                if result:
                    return result
                if self._changed is None or self._changed.done():
                    self._changed = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._changed)

        return await asyncio.wait_for(run(), timeout)

    _until = until  # RtcTestClient's name

    async def wait_message(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                           start: int = 0) -> dict[str, Any]:
        """The first message from index ``start`` on that satisfies ``predicate``."""
        return await self.until(lambda: next((m for m in self.messages[start:] if predicate(m)), None), timeout)

    async def wait_closed(self, timeout: float = 20.0) -> None:
        await asyncio.wait_for(self._closed.wait(), timeout)

    def of_type(self, kind: str, turn: int | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind and (turn is None or m.get("turn") == turn)]

    def audio_since(self, since: float, until: float | None = None) -> np.ndarray:
        """Reply samples that arrived in ``[since, until)``."""
        parts = [s for t, s in self.audio_chunks if t >= since and (until is None or t < until)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def loud_times(self, threshold: float = 0.01) -> list[float]:
        """Arrival times of received 20 ms audio frames whose RMS is above ``threshold``."""
        return [t for t, s in self.audio_chunks if len(s) and float(np.sqrt(np.mean(s * s))) > threshold]

    # -- ending ----------------------------------------------------------------------

    async def close(self) -> None:
        """Close the socket and await the client's tasks. Idempotent."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._http is not None:
            await self._http.close()
