"""Structurally mutated SDP offers (tests/fuzz/gen_sdp.py) against the REAL PeerSession
factory with the real pipeline, through the real app's ``POST /api/offer``: never a 5xx,
every 4xx a JSON error, and afterwards no session holds a slot (a refused offer frees it at
once; an answered one that never connects within ``connect_timeout_s``), no task is left
over, ``/healthz`` answers and a fresh client connects and gets a reply.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import aiohttp

from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.app import STATE
from tests.fuzz.client import connect, real_offer
from tests.fuzz.gen_sdp import mutations
from tests.fuzz.server import assert_healthy, fuzz_settings, running, settle

SLOT_SLACK_S = 20.0  # past connect_timeout_s: the bounded wait for the last answered offers


async def post(http: aiohttp.ClientSession, port: int, sdp: str) -> tuple[int, object]:
    body = json.dumps({"sdp": sdp, "type": "offer"})
    async with http.post(f"http://127.0.0.1:{port}/api/offer", data=body,
                         headers={"Content-Type": "application/json"}) as r:
        raw = await r.read()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw[:100]


async def test_mutated_offers_never_crash_or_hold_a_slot(pipeline: Pipeline) -> None:
    base = await real_offer()
    cases = mutations(base, random.Random("sdp"))
    settings = fuzz_settings()
    before = asyncio.all_tasks()
    statuses: dict[int, int] = {}
    failures: list[str] = []
    t0 = time.monotonic()
    async with running(pipeline, settings, None) as (port, app):
        async with aiohttp.ClientSession() as http:
            for label, sdp in cases:
                status, body = await post(http, port, sdp)
                statuses[status] = statuses.get(status, 0) + 1
                if status >= 500:
                    failures.append(f"{label}: {status} {body!r:.120}")
                elif status >= 400 and not (isinstance(body, dict) and isinstance(body.get("error"), str)):
                    failures.append(f"{label}: {status} without a JSON error: {body!r:.120}")
        sent_s = time.monotonic() - t0
        manager = app[STATE].manager
        deadline = time.monotonic() + settings.connect_timeout_s + SLOT_SLACK_S
        while len(manager) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        held = len(manager)
        await assert_healthy(port)
        client = await connect(port)
        try:
            mark = len(client.messages)
            client.send({"type": "text", "text": "Say hello."})
            reply = await client.wait_message(lambda m: m["type"] == "reply" and m["final"], 60, start=mark)
        finally:
            await client.close()
    await settle(before)
    left = [t.get_name() for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    print(f"\nSDP: {len(cases)} offers in {sent_s:.1f} s, statuses {dict(sorted(statuses.items()))}")
    assert not failures, f"{len(failures)} of {len(cases)} offers:\n" + "\n".join(failures[:40])
    assert held == 0, f"{held} session(s) still hold a slot {settings.connect_timeout_s + SLOT_SLACK_S:.0f} s on"
    assert not left, f"tasks left over: {left[:10]}"
    assert reply["text"].strip()
