"""A TCP fault proxy for tests: put it between an HTTP client and a real server, then break
the connection on command.

It forwards bytes both ways, one HTTP exchange per connection (it adds ``Connection:
close`` to each request, so the server closes after answering and a client never reuses a
connection made before a fault was set). The fault in force when a connection is accepted
applies to that connection's response:

* ``refuse()``: the listener closes, so connecting is refused (``ECONNREFUSED``), as with
  a server that is down; ``restore()`` listens again on the same port;
* ``delay_first_byte(s)``: the response's first byte waits ``s`` seconds;
* ``cut_after(n)``: the connection is cut after ``n`` bytes of the response body;
* ``garbage(body)``: the server's status line and headers go through, its body is replaced
  by ``body`` (non-SSE bytes, invalid JSON chunks…), then the connection closes.

Listens on 127.0.0.1 only; ``close()`` stops the listener and every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """What to do to one connection's response (all off: forward as is)."""

    delay_s: float = 0.0
    cut_after: int | None = None
    garbage: bytes | None = None


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream_port``, with faults on command."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.fault = Fault()
        #: Connections accepted so far (a test can check its client went through the proxy).
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults ------------------------------------------------------------------------

    def clear(self) -> None:
        self.fault = Fault()

    def delay_first_byte(self, seconds: float) -> None:
        self.fault = Fault(delay_s=seconds)

    def cut_after(self, body_bytes: int) -> None:
        self.fault = Fault(cut_after=body_bytes)

    def garbage(self, body: bytes) -> None:
        self.fault = Fault(garbage=body)

    async def refuse(self) -> None:
        """Stop listening: connecting is refused until ``restore``."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def restore(self) -> None:
        """Listen again on the same port, with no fault."""
        self.clear()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.refuse()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- forwarding --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._exchange(reader, writer, self.fault)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # either side went away: the connection ends, which is all a test sees
        except asyncio.CancelledError:
            # ``close`` ends the connection this way; asyncio's stream callback would log a
            # cancelled connection task as an error, so it ends as a closed one instead.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: Fault) -> None:
        head = await reader.readuntil(_HEAD_END)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            up_writer.write(_connection_close(head))
            request = asyncio.create_task(_pipe(reader, up_writer))
            response = asyncio.create_task(self._respond(up_reader, writer, fault))
            try:
                # A client does not half-close: the request side ending means it went away,
                # and the server must hear of it now, not after a delayed response.
                await asyncio.wait({request, response}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (request, response):
                    task.cancel()
                await asyncio.gather(request, response, return_exceptions=True)
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()

    async def _respond(self, up: asyncio.StreamReader, client: asyncio.StreamWriter, fault: Fault) -> None:
        head = await up.readuntil(_HEAD_END)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.garbage is not None:
            client.write(_without_framing(head) + fault.garbage)
            await client.drain()
            return
        client.write(head)
        sent = 0
        while chunk := await up.read(4096):
            if fault.cut_after is not None and sent + len(chunk) >= fault.cut_after:
                client.write(chunk[: fault.cut_after - sent])
                await client.drain()
                client.transport.abort()  # a cut, not a clean end: no FIN handshake, no rest
                return
            sent += len(chunk)
            client.write(chunk)
            await client.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while chunk := await src.read(4096):
        dst.write(chunk)
        await dst.drain()


def _connection_close(head: bytes) -> bytes:
    """A request head with its ``Connection`` header replaced by ``Connection: close``."""
    lines = head[: -len(_HEAD_END)].split(b"\r\n")
    kept = [line for line in lines if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*kept, b"Connection: close"]) + _HEAD_END


def _without_framing(head: bytes) -> bytes:
    """A response head whose body runs to the connection's end (no length, no chunking)."""
    lines = head[: -len(_HEAD_END)].split(b"\r\n")
    drop = (b"transfer-encoding:", b"content-length:", b"connection:")
    kept = [line for line in lines if not line.lower().startswith(drop)]
    return b"\r\n".join([*kept, b"Connection: close"]) + _HEAD_END
