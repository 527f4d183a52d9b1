"""Bad HTTP requests against the real aiohttp app: never a 5xx, every 4xx a JSON
``{"error": ...}``, no error logged by the server's own code, and afterwards ``/healthz``
answers and a fresh session opens.

The app is the real one (``create_app``, every middleware and route) on 127.0.0.1; the
peer factory is a STAND-IN (tests/fuzz/standin.py): the SDP reaching a real PeerSession is
fuzzed in test_fuzz_sdp.py. Requests go out as raw bytes (tests/fuzz/rawhttp.py), 16 at a
time, each on its own connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fuzz.gen_http import HOST, HttpCase, all_cases
from tests.fuzz.rawhttp import Reply, exchange
from tests.fuzz.server import assert_healthy, fuzz_settings, post_offer, running
from tests.fuzz.standin import StandInFactory

CASES = all_cases()
BATCH = 16


def judge(case: HttpCase, reply: Reply | None) -> str | None:
    """Why ``reply`` is wrong for ``case``, or None."""
    if reply is None:
        return "no answer, connection still open after 10 s"
    if reply.status == 0:
        return None if case.may_close else "closed without an answer"
    if reply.status >= 500:
        return f"{reply.status}: {reply.body[:120]!r}"
    if reply.status >= 400 and not case.raw.startswith(b"HEAD "):  # HEAD answers have no body
        try:
            body = reply.json()
        except ValueError:
            return f"{reply.status} without a JSON body: {reply.headers.get('content-type')} {reply.body[:80]!r}"
        if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
            return f"{reply.status} JSON without an error message: {reply.body[:80]!r}"
    return None


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[int, StandInFactory]]:
    root = tmp_path / "web"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>avatar</title>")
    (root / "app.js").write_text("export {};")
    (tmp_path / "secret.txt").write_text("outside the web root")
    factory = StandInFactory()
    async with running("pipeline", fuzz_settings(), factory, web_root=root) as (port, _app):
        yield port, factory
    await factory.close_all()


@pytest.mark.parametrize("group", list(CASES))
async def test_bad_requests_get_a_json_4xx_and_the_server_goes_on(
        group: str, app: tuple[int, StandInFactory], caplog: pytest.LogCaptureFixture) -> None:
    port, factory = app
    host = f"127.0.0.1:{port}".encode()
    cases = CASES[group]
    failures: list[str] = []
    statuses: dict[int, int] = {}
    caplog.set_level(logging.INFO)
    for start in range(0, len(cases), BATCH):
        batch = cases[start:start + BATCH]
        replies = await asyncio.gather(*(exchange(port, c.raw.replace(HOST, host)) for c in batch))
        for case, reply in zip(batch, replies):
            status = -1 if reply is None else reply.status
            statuses[status] = statuses.get(status, 0) + 1
            why = judge(case, reply)
            if why:
                failures.append(f"{case.label}: {why}")
        await factory.close_all()  # a case the stand-in answered must not fill the slots
    print(f"\n{group}: {len(cases)} requests, statuses {dict(sorted(statuses.items()))}")
    ours = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("avatarchat")]
    assert not failures, f"{len(failures)} of {len(cases)} {group} cases:\n" + "\n".join(failures[:40])
    assert not ours, [f"{r.name}: {r.getMessage()}" for r in ours[:10]]
    await assert_healthy(port)
    status, body = await post_offer(port, "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
    assert status == 200 and body["type"] == "answer", body
