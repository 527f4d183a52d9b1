"""``openai_compatible`` and a server that drops a kept-alive connection under a request.

llama.cpp's server and Ollama close idle keep-alive connections after a few seconds; a
request that goes out on one as it closes gets no response ("Server disconnected without
sending a response"). Here a small HTTP/1.1 server on 127.0.0.1 does that on purpose: it
answers the first request of each connection with a streamed chat completion and closes
the connection, unanswered, when a second request arrives on it. (A stand-in: the real
servers do it only when the timing lines up, which a test cannot arrange; the client side,
the real ``openai`` package and its HTTP stack, is what is under test.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from avatarchat.engine.events import ErrorEvent, ReplyEnd, ReplyText
from avatarchat.engine.handler import SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.llm.openai_compatible import OpenAICompatibleLLM

pytestmark = pytest.mark.asyncio


def sse_reply(text: str) -> bytes:
    words = text.split(" ")
    chunks = [{"choices": [{"index": 0, "delta": {"content": (" " if i else "") + word}, "finish_reason": None}]}
              for i, word in enumerate(words)]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body = "".join(f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'created': 0, 'model': 'm', **c})}\n\n"
                   for c in chunks) + "data: [DONE]\n\n"
    raw = body.encode()
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {len(raw)}\r\n"
            "Connection: keep-alive\r\n\r\n")
    return head.encode() + raw


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Reads one request (headers and its Content-Length body); False at the connection's end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    await reader.readexactly(length)
    return True


@pytest.fixture
async def dropping_server() -> AsyncIterator[tuple[str, list[str]]]:
    """(base URL, a log of what each request got: "answered" or "dropped")."""
    log: list[str] = []
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            if await read_request(reader):
                writer.write(sse_reply("Paris is the capital."))
                await writer.drain()
                log.append("answered")
            if await read_request(reader):
                log.append("dropped")  # the connection closes with no response
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        server.close()
        for task in handlers:  # the client keeps its last connection open: end its handler
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def reply_of(session: Session, turn: int) -> list[object]:
    events: list[object] = []
    async with asyncio.timeout(20):
        async for event in session.events():
            if getattr(event, "turn", None) != turn:
                continue
            events.append(event)
            if isinstance(event, (ReplyEnd, ErrorEvent)):
                return events
    return events


async def test_a_request_dropped_on_a_kept_alive_connection_is_sent_again(
        dropping_server: tuple[str, list[str]]) -> None:
    url, log = dropping_server
    llm = OpenAICompatibleLLM(OpenAICompatibleLLM.Options(api_url=url, model="m"))
    llm.load()
    async with Session([llm], SessionInfo("t")) as session:
        for question in ("What is the capital of France?", "And of Italy?"):
            events = await reply_of(session, session.say(question))
            assert not [e for e in events if isinstance(e, ErrorEvent)], events
            assert isinstance(events[-1], ReplyEnd) and events[-1].text == "Paris is the capital."
            assert sum(isinstance(e, ReplyText) for e in events) == 4
    # The second request went out on the first one's connection, was dropped there, and was
    # answered on a new connection.
    assert log == ["answered", "dropped", "answered"]
