"""A raw HTTP/1.1 client for the fuzz suite: sends exact bytes (bad framing, non-UTF-8
paths, duplicated headers), which aiohttp's own client would refuse or normalise."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    """What came back: ``status`` 0 when the server closed without a response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(port: int, request: bytes, timeout: float = 10.0) -> Reply | None:
    """Send ``request`` on a fresh connection and read until the server closes it.

    Returns None if the server neither answered nor closed within ``timeout``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(request)
            await writer.drain()
        try:
            data = await asyncio.wait_for(_read_response(reader), timeout)
        except TimeoutError:
            return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse(data)


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One response: headers, then Content-Length bytes (or up to EOF without one)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except (ConnectionError, asyncio.LimitOverrunError):
            return b""
        if not head.split(b" ", 2)[1].startswith(b"1"):
            break  # 100 Continue and other interim answers come before the real one
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    try:
        if b"content-length" in fields:
            body = await reader.readexactly(int(fields[b"content-length"]))
        elif fields.get(b"transfer-encoding") == b"chunked":
            body = await _chunked(reader)
        else:
            body = await reader.read()
    except asyncio.IncompleteReadError as exc:
        body = exc.partial
    except ConnectionError:
        body = b""
    return head + body


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        body += (await reader.readexactly(size + 2))[:size]
        if size == 0:
            return body


def parse(data: bytes) -> Reply:
    if not data:
        return Reply(0, {}, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, body)
