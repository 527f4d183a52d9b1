"""Hostile HTTP clients against `avatarchat serve`'s front door (server/httpguard.py, server/app.py).

Slow and half-open connections are closed by the server within their deadline, at most
``max_connections`` are held, every malformed request gets a 4xx with a JSON body (never a
500), and a client that vanishes is one INFO line: no ERROR record, no error metric.

The real aiohttp app behind the real ``GuardedRunner`` on 127.0.0.1, with the stand-in peer
factory of test_server_http.py; raw sockets send exactly the bytes under test. The deadlines
are short here (0.4-0.6 s) and every wait is bounded, with generous slack for a busy machine.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from avatarchat.server.app import STATE, create_app
from avatarchat.server.httpguard import GuardedRunner, GuardedSite
from avatarchat.server.metrics import Metrics
from avatarchat.server.settings import HttpLimits, ServerSettings
from avatarchat.server.tls import self_signed_cert, ssl_context
from tests.test_server_http import OFFER, StandInPeer, running

LIMITS = HttpLimits(header_timeout_s=0.5, body_timeout_s=0.5, keepalive_timeout_s=0.6, max_connections=40)
#: How long past its deadline a connection may stay open before the test calls it held (a
#: loaded 2-core CI machine can stall the loop for a second; a missing deadline is forever).
SLACK_S = 8.0


@pytest.fixture(autouse=True)
def log_info(caplog: pytest.LogCaptureFixture) -> None:
    """Capture INFO and up from every logger (aiohttp's included)."""
    caplog.set_level(logging.INFO)


def no_errors(caplog: pytest.LogCaptureFixture, app: Any) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert "avatarchat_errors_total{" not in app[STATE].metrics.render()


@asynccontextmanager
async def guarded(limits: HttpLimits = LIMITS, **settings: Any) -> AsyncIterator[tuple[str, int, Any]]:
    async with running(ServerSettings(http=limits, **settings)) as (url, app):
        yield url, int(url.rsplit(":", 1)[1]), app


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_after(reader: asyncio.StreamReader, t0: float, limit: float) -> float:
    """Seconds from ``t0`` until the server closes the connection (reads and drops what it
    sends); fails if it is still open ``limit`` seconds after ``t0``."""
    try:
        async with asyncio.timeout(max(0.1, t0 + limit - time.monotonic())):
            while await reader.read(65536):
                pass
    except TimeoutError:
        pytest.fail(f"the server held the connection more than {limit:.1f} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` bytes, read the whole response until the server closes: (status, headers, body)."""
    reader, writer = await connect(port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(SLACK_S):
            data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def request(port: int, method: str, path: str | bytes, body: bytes = b"", headers: dict[str, str] | None = None,
            ) -> bytes:
    h = {"Host": f"127.0.0.1:{port}", "Connection": "close", "Content-Length": str(len(body)), **(headers or {})}
    target = path if isinstance(path, bytes) else path.encode()
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in h.items())
    return method.encode() + b" " + target + b" HTTP/1.1\r\n" + lines + b"\r\n" + body


def is_json_4xx(status: int, headers: dict[str, str], body: bytes) -> bool:
    return 400 <= status < 500 and headers.get("content-type", "").startswith("application/json") \
        and isinstance(json.loads(body).get("error"), str)


async def healthy(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
        assert r.status == 200, await r.text()


# -- slow and idle connections -------------------------------------------------------------


async def test_half_sent_headers_are_closed_after_the_header_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async with guarded() as (url, port, app):
        t0 = time.monotonic()  # before the server's clock starts: `held` cannot undercount
        reader, writer = await connect(port)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
        trickle = asyncio.create_task(_trickle(writer, b"a" * 100, 0.05))  # one byte every 50 ms, never done
        try:
            held = await closed_after(reader, t0, LIMITS.header_timeout_s + SLACK_S)
        finally:
            trickle.cancel()
            await asyncio.gather(trickle, return_exceptions=True)
            writer.close()
        assert held >= LIMITS.header_timeout_s * 0.95
        await healthy(url)
        no_errors(caplog, app)
        assert any("headers did not arrive within 0.5 s" in r.getMessage() for r in caplog.records)


async def test_a_silent_connection_is_closed_after_the_header_timeout() -> None:
    async with guarded() as (url, port, app):
        t0 = time.monotonic()
        reader, writer = await connect(port)
        held = await closed_after(reader, t0, LIMITS.header_timeout_s + SLACK_S)
        writer.close()
        assert held >= LIMITS.header_timeout_s * 0.95


async def test_a_one_byte_a_second_body_is_closed_after_the_body_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async with guarded() as (url, port, app):
        body = json.dumps(OFFER).encode()
        t0 = time.monotonic()
        reader, writer = await connect(port)
        writer.write(request(port, "POST", "/api/offer", b"", {"Content-Type": "application/json",
                                                                "Content-Length": str(len(body))}))
        trickle = asyncio.create_task(_trickle(writer, body, 0.1))
        try:
            held = await closed_after(reader, t0, LIMITS.body_timeout_s + SLACK_S)
        finally:
            trickle.cancel()
            await asyncio.gather(trickle, return_exceptions=True)
            writer.close()
        assert held >= LIMITS.body_timeout_s * 0.95
        assert len(app[STATE].manager) == 0
        await healthy(url)
        no_errors(caplog, app)
        # One line for the closed connection: not a second one for the request it cut.
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("avatarchat")]
        assert [m for m in lines if "body did not arrive" in m or "went away" in m] == [
            "closed a connection from 127.0.0.1: the request's body did not arrive within 0.5 s"]


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with guarded() as (url, port, app):
        reader, writer = await connect(port)
        t0 = time.monotonic()  # before the response, so before the server's idle clock starts
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), SLACK_S)
        assert status_line.startswith(b"HTTP/1.1 200")
        held = await closed_after(reader, t0, LIMITS.keepalive_timeout_s + SLACK_S)
        writer.close()
        assert held >= LIMITS.keepalive_timeout_s * 0.95


async def test_a_kept_alive_connection_serves_the_next_request_in_time() -> None:
    # The deadlines close slow clients, not quick ones: two requests on one connection.
    async with guarded() as (url, port, app), aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(url + "/healthz") as r:
                assert r.status == 200
            await asyncio.sleep(LIMITS.keepalive_timeout_s / 4)


async def test_300_connections_are_capped_then_closed_and_the_server_still_answers(
        caplog: pytest.LogCaptureFixture) -> None:
    # A header deadline long enough that all 300 connect before the first admitted one times
    # out: then exactly `max_connections` are admitted and every other one is refused.
    limits = LIMITS.model_copy(update={"header_timeout_s": 3.0})
    async with guarded(limits) as (url, port, app):
        conns, opened = [], []
        for _ in range(300):
            opened.append(time.monotonic())
            conns.append(await connect(port))
        try:
            held = await asyncio.gather(*(closed_after(r, t0, limits.header_timeout_s + 2 * SLACK_S)
                                          for (r, _), t0 in zip(conns, opened, strict=True)))
        finally:
            for _, w in conns:
                w.close()
        admitted = [h for h in held if h >= limits.header_timeout_s * 0.95]
        assert len(admitted) == limits.max_connections  # held to their header deadline, then closed
        assert max(h for h in held if h not in admitted) < limits.header_timeout_s * 0.95  # refused at once
        await healthy(url)
        no_errors(caplog, app)
        cap_lines = [r.getMessage() for r in caplog.records if "connection cap" in r.getMessage()
                     or "max_connections" in r.getMessage()]
        assert len(cap_lines) == 2, cap_lines  # a line when reached and when left, not one per refusal


async def test_a_client_that_vanishes_mid_body_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    limits = HttpLimits(header_timeout_s=5, body_timeout_s=5, keepalive_timeout_s=5, max_connections=40)
    async with guarded(limits) as (url, port, app):
        for _ in range(3):
            reader, writer = await connect(port)
            writer.write(request(port, "POST", "/api/offer", b'{"sdp": "v=0', {
                "Content-Type": "application/json", "Content-Length": "500", "Expect": "100-continue"}))
            # "100 Continue" says the server is in the request, reading its body: now vanish.
            assert await asyncio.wait_for(reader.readline(), SLACK_S) == b"HTTP/1.1 100 Continue\r\n"
            writer.close()
            await writer.wait_closed()
        for _ in range(100):
            if sum("went away" in r.getMessage() for r in caplog.records) == 3:
                break
            await asyncio.sleep(0.05)
        gone = [r for r in caplog.records if "went away" in r.getMessage()]
        assert len(gone) == 3 and all(r.levelno == logging.INFO and r.exc_info is None for r in gone)
        no_errors(caplog, app)
        await healthy(url)


async def test_a_refused_body_left_unsent_does_not_hold_a_task_once_the_client_goes(
        caplog: pytest.LogCaptureFixture) -> None:
    # The 415 is sent without reading the body; aiohttp then drains it for up to 10 s
    # ("lingering"). A client that leaves must end that at once, not 10 s later.
    async with guarded() as (url, port, app):
        before = set(asyncio.all_tasks())
        reader, writer = await connect(port)
        writer.write(request(port, "POST", "/api/offer", b"x" * 10, {"Content-Type": "text/plain",
                                                                      "Content-Length": "5000"}))
        assert (await asyncio.wait_for(reader.readline(), SLACK_S)).startswith(b"HTTP/1.1 415")
        writer.close()
        await writer.wait_closed()
        deadline = time.monotonic() + 5.0  # half aiohttp's lingering time
        while time.monotonic() < deadline and _connection_tasks(before):
            await asyncio.sleep(0.02)
        assert _connection_tasks(before) == []
        no_errors(caplog, app)


def _connection_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    return [repr(t) for t in asyncio.all_tasks() - before if not t.done() and "RequestHandler.start" in repr(t)]


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    for i in range(len(data)):
        writer.write(data[i:i + 1])
        await writer.drain()
        await asyncio.sleep(every_s)


# -- malformed requests -----------------------------------------------------------------------


def _bad_requests(port: int) -> dict[str, bytes]:
    json_ct = {"Content-Type": "application/json"}
    huge_int = b'{"sdp": "v=0", "type": "offer", "n": ' + b"9" * 5000 + b"}"
    nested = b"[" * 5000 + b"]" * 5000  # within the 64 KB body limit, past json's recursion limit
    corrupt_gzip = gzip.compress(json.dumps(OFFER).encode())[:-12] + b"\x00garbage"
    post = lambda body, **h: request(port, "POST", "/api/offer", body, {**json_ct, **h})  # noqa: E731
    get = lambda path, **h: request(port, "GET", path, b"", h)  # noqa: E731
    return {
        "4,300+ digit integer": post(huge_int),
        "nested 5,000 deep": post(nested),
        "nested object field": post(b'{"sdp": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}"),
        "corrupt gzip": post(corrupt_gzip, **{"Content-Encoding": "gzip"}),
        "corrupt deflate": post(b"\x78\x9c not deflate at all", **{"Content-Encoding": "deflate"}),
        "undecodable br": post(b"\xff\xfe garbage", **{"Content-Encoding": "br"}),
        "unknown encoding": post(b"\x00\x01\x02", **{"Content-Encoding": "x-unheard-of"}),
        "invalid UTF-8 JSON": post(b'{"sdp": "v=0 \xff\xfe", "type": "offer"}'),
        "UTF-16 charset": post(json.dumps(OFFER).encode("utf-16"), **{"Content-Type": "application/json; charset=utf-16"}),
        "unknown charset": post(json.dumps(OFFER).encode(), **{"Content-Type": "application/json; charset=x-klingon"}),
        "NUL in a static path": get("/app%00.js"),
        "NUL alone": get("/%00"),
        "300-byte name": get("/" + "a" * 300),
        "400-byte UTF-8 name": get("/" + "%C3%A9" * 200),
        "non-UTF-8 escapes": get("/%ff%fe.js"),
        "raw non-UTF-8 path": request(port, "GET", b"/\xff\xfe.js"),
        "lone surrogate escape": get("/%ED%A0%80.js"),
        "dot segments": get("/..%2f..%2f..%2fetc%2fpasswd"),
        "20 KB header": get("/healthz", **{"X-Big": "x" * 20000}),
        "200 headers": request(port, "GET", "/healthz", b"", {f"X-H{i}": "1" for i in range(200)}),
        "header without colon": f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nnot a header\r\n\r\n".encode(),
        "request line not HTTP": b"HELLO THERE\r\n\r\n",
        "bad HTTP version": f"GET /healthz HTTP/9.9\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
        "negative Content-Length": post(b"{}", **{"Content-Length": "-1"}),
        "text Content-Length": post(b"{}", **{"Content-Length": "abc"}),
        "Content-Length and chunked": post(b"0\r\n\r\n", **{"Transfer-Encoding": "chunked"}),
        "bad chunk size": request(port, "POST", "/api/offer", b"zz\r\n{}\r\n0\r\n\r\n",
                                  {**json_ct, "Transfer-Encoding": "chunked", "Content-Length": ""}),
        "control bytes in a header": get("/healthz", **{"X-Ctl": "a\x01\x7fb"}),
        "unknown Expect": post(json.dumps(OFFER).encode(), Expect="200-ok"),
        "unknown Expect on a static file": get("/", Expect="teapot"),
        "Host with a bad port": request(port, "GET", "/api/config", b"", {"Host": "127.0.0.1:99999999"}),
    }


async def test_every_malformed_request_gets_a_4xx_with_a_json_body(caplog: pytest.LogCaptureFixture) -> None:
    async with guarded() as (url, port, app):
        for name, raw in _bad_requests(port).items():
            if b"Content-Length: \r\n" in raw:
                raw = raw.replace(b"Content-Length: \r\n", b"")
            status, headers, body = await exchange(port, raw)
            assert is_json_4xx(status, headers, body), (name, status, headers, body[:200])
            assert b"Traceback" not in body and b"aiohttp" not in body, name
        assert len(app[STATE].manager) == 0
        await healthy(url)
        no_errors(caplog, app)


async def test_static_files_come_whole_whatever_range_or_precondition_is_asked() -> None:
    async with guarded() as (url, port, app):
        for extra in ({"Range": "bytes=999999-"}, {"Range": "bytes=x-y"}, {"If-Match": '"nope"'},
                      {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}):
            status, headers, body = await exchange(port, request(port, "GET", "/", b"", extra))
            assert status == 200 and headers["content-type"].startswith("text/html") and b"<" in body, extra


async def test_a_good_gzip_body_still_works() -> None:
    async with guarded(max_sessions_per_client=9) as (url, port, app):
        body = gzip.compress(json.dumps(OFFER).encode())
        status, headers, reply = await exchange(port, request(port, "POST", "/api/offer", body, {
            "Content-Type": "application/json", "Content-Encoding": "gzip"}))
        assert status == 200 and json.loads(reply)["type"] == "answer"


# -- errors say what, not how -----------------------------------------------------------------


async def test_a_refused_offer_keeps_the_library_text_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    async with guarded() as (url, port, app), aiohttp.ClientSession() as http:
        async with http.post(url + "/api/offer", json={"sdp": "v=0 library", "type": "offer"}) as r:
            status, error = r.status, (await r.json())["error"]
    assert status == 400 and "aiortc" not in error and "0xdeadbeef" not in error
    error_id = re.fullmatch(r"the offer cannot be answered \(error id ([0-9a-f]{8})\)", error).group(1)
    logged = [r.getMessage() for r in caplog.records if error_id in r.getMessage()]
    assert len(logged) == 1 and "0xdeadbeef" in logged[0]
    no_errors(caplog, app)


async def test_healthz_says_failed_without_the_load_error() -> None:
    async def loader() -> str:
        raise RuntimeError("cannot open /home/ops/models/secret-path.onnx")

    app = create_app(loader, ServerSettings(), peer_factory=StandInPeer.open)
    runner = GuardedRunner(app, LIMITS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        with pytest.raises(RuntimeError):
            await app[STATE].wait_loaded()
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{runner.addresses[0][1]}/healthz") as r:
            assert (r.status, await r.json()) == (503, {"status": "failed"})
    finally:
        await runner.cleanup()


class BrokenMetrics(Metrics):
    """Metrics whose rendering has a bug: stands for any genuine fault inside a handler."""

    def render(self) -> str:
        raise KeyError("internal detail: bucket 'le=+Inf' of /var/lib/avatarchat")


async def test_a_bug_in_a_handler_is_a_500_with_an_error_id_and_the_details_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = BrokenMetrics()
    async with running(ServerSettings(http=LIMITS), metrics=metrics) as (url, app), aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as r:
            status, error = r.status, (await r.json())["error"]
    assert status == 500 and "/var/lib" not in error
    error_id = re.fullmatch(r"internal server error \(error id ([0-9a-f]{8})\)", error).group(1)
    record = next(r for r in caplog.records if error_id in r.getMessage())
    assert record.levelno == logging.ERROR and record.exc_info is not None  # the traceback is in the log


async def test_a_tls_handshake_that_never_comes_is_closed_after_the_header_timeout(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = self_signed_cert(tmp_path / "tls")
    app = create_app(_loaded, ServerSettings(http=LIMITS), peer_factory=StandInPeer.open)
    runner = GuardedRunner(app, LIMITS)
    await runner.setup()
    try:
        await GuardedSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(cert, key)).start()
        port = runner.addresses[0][1]
        t0 = time.monotonic()
        reader, writer = await connect(port)  # plain TCP, no ClientHello
        held = await closed_after(reader, t0, LIMITS.header_timeout_s + SLACK_S)
        writer.close()
        assert held >= LIMITS.header_timeout_s * 0.95
        async with aiohttp.ClientSession() as http, http.get(f"https://127.0.0.1:{port}/healthz", ssl=False) as r:
            assert r.status == 200  # a real TLS client still gets in
        no_errors(caplog, app)
    finally:
        await runner.cleanup()


async def _loaded() -> str:
    return "pipeline"
