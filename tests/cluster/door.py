"""The client side of the cluster tests: offers through a front door, and a session's event
stream (``GET /api/session/<id>/events``, server-sent events), both over real HTTP.

``Door(url)`` holds one aiohttp client session::

    async with Door(front_door.url) as door:
        client, placed = await door.connect()          # an RtcTestClient, the offer's answer
        events = door.events(placed["session_id"])     # reads the stream in a task
        error = await events.wait(lambda e: e["type"] == "error", timeout=30)
        await events.close(); await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.rtc_client import RtcTestClient


class Refused(Exception):
    """The front door answered an offer with an error status; ``status`` and ``body`` say it."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class Door:
    """Offers and event streams through one front door (``url`` ends with ``/``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Door:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()

    async def offer(self, sdp: str, timeout: float = 60.0) -> dict[str, Any]:
        """POST the offer; the answer's JSON, or ``Refused`` with the status and body."""
        assert self.http is not None
        async with self.http.post(self.url + "api/offer", json={"sdp": sdp, "type": "offer"},
                                  timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise Refused(resp.status, body)
            return dict(body)

    async def connect(self, *, video: bool = True) -> tuple[RtcTestClient, dict[str, Any]]:
        """One aiortc session placed through the door: the client (data channel open) and
        the offer's answer (``session_id``, and the node where the door says it runs).
        The client is closed if connecting fails."""
        placed: dict[str, Any] = {}

        async def offer_fn(sdp: str, type_: str) -> str:
            placed.update(await self.offer(sdp))
            return str(placed["sdp"])

        client = RtcTestClient(video=video)
        try:
            await client.connect(offer_fn, timeout=60.0)
        except BaseException:
            await client.close()
            raise
        return client, placed

    async def get_json(self, path: str) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.get(self.url + path, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.json(content_type=None)

    async def get_text(self, path: str) -> tuple[int, str]:
        assert self.http is not None
        async with self.http.get(self.url + path, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.text()

    def events(self, session_id: str) -> EventStream:
        assert self.http is not None
        return EventStream(self.http, f"{self.url}api/session/{session_id}/events")


class EventStream:
    """A session's server-sent events, read in a task from construction: ``events`` holds
    each ``data:`` payload parsed as JSON, with ``_at`` (monotonic arrival time)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._http = http
        self._task = asyncio.get_running_loop().create_task(self._read(), name="test-sse")

    async def _read(self) -> None:
        try:
            async with self._http.get(self.url, headers={"Accept": "text/event-stream"}) as resp:
                self.status = resp.status
                self._changed.set()
                if resp.status != 200:
                    return
                data: list[str] = []
                async for raw in resp.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        self._add("\n".join(data))
                        data = []
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        finally:
            self.ended.set()
            self._changed.set()

    def _add(self, payload: str) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            event = {"type": "?raw", "raw": payload}
        if not isinstance(event, dict):
            event = {"type": "?raw", "raw": event}
        event["_at"] = time.monotonic()
        self.events.append(event)
        self._changed.set()

    async def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first event that satisfies ``predicate`` (TimeoutError if none in time)."""
        async def run() -> dict[str, Any]:
            while True:
                self._changed.clear()
                found = next((e for e in self.events if predicate(e)), None)
                if found is not None:
                    return found
                if self.ended.is_set():
                    raise AssertionError(f"the event stream ended (HTTP {self.status}) without it: {self.events}")
                await self._changed.wait()

        return await asyncio.wait_for(run(), timeout)

    async def opened(self, timeout: float = 30.0) -> int:
        """The stream's HTTP status, once it answered."""
        async def run() -> int:
            while self.status is None and not self.ended.is_set():
                self._changed.clear()
                await self._changed.wait()
            return self.status or 0

        return await asyncio.wait_for(run(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
