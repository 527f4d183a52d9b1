"""Bad data-channel messages (tests/fuzz/gen_channel.py) from a real aiortc client to a
real PeerSession with the real pipeline, through the real app: the connection stays up,
every bad message gets exactly one ``error`` and nothing else, and afterwards a typed
message is answered, ``/healthz`` answers and a fresh client connects.

Each bad message is followed by a ``ping`` carrying its index: the channel is ordered, so
the replies between two pongs are that message's. The fuzz pass runs with a message rate
too high to bite (each message is judged on its content); ``test_a_flood_is_survived``
checks the default rate limit separately.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.app import STATE
from tests.fuzz.client import connect, send_any
from tests.fuzz.gen_channel import Message, messages
from tests.fuzz.server import assert_healthy, fuzz_settings, running
from tests.rtc_client import RtcTestClient

MESSAGES = messages(random.Random("channel"))
CHUNK = 20  # messages in flight before waiting for their pongs
NO_LIMIT = {"per_s": 100_000.0, "burst": 100_000}


def replies_per_message(client: RtcTestClient, sent: list[Message], base: int) -> list[str]:
    """What went wrong for each sent message, from the replies between its ping and the one before."""
    failures = []
    start = base
    for i, msg in enumerate(sent):
        pong = next(j for j in range(start, len(client.messages))
                    if client.messages[j]["type"] == "pong" and client.messages[j].get("t") == i)
        between = client.messages[start:pong]
        errors = [m for m in between if m["type"] == "error"]
        other = [m["type"] for m in between if m["type"] not in ("error", "state")]
        if len(errors) != 1 or other:
            failures.append(f"{msg.label}: {len(errors)} errors, other replies {other}")
        elif not isinstance(errors[0].get("message"), str) or not errors[0]["message"]:
            failures.append(f"{msg.label}: an error without a message: {errors[0]}")
        start = pong + 1
    return failures


async def typed_reply(client: RtcTestClient, text: str = "Say hello.") -> dict[str, Any]:
    mark = len(client.messages)
    client.send({"type": "text", "text": text})
    return await client.wait_message(lambda m: m["type"] == "reply" and m["final"], 90, start=mark)


async def test_bad_messages_get_one_error_each_and_the_session_goes_on(pipeline: Pipeline) -> None:
    async with running(pipeline, fuzz_settings(message_rate=NO_LIMIT), None) as (port, app):
        client = await connect(port)
        try:
            base = len(client.messages)
            for start in range(0, len(MESSAGES), CHUNK):
                for i in range(start, min(start + CHUNK, len(MESSAGES))):
                    send_any(client, MESSAGES[i].kind, MESSAGES[i].payload)
                    client.send({"type": "ping", "t": i})
                last = min(start + CHUNK, len(MESSAGES)) - 1
                await client.wait_message(lambda m: m["type"] == "pong" and m.get("t") == last, 30, start=base)
            failures = replies_per_message(client, MESSAGES, base)
            assert client.pc.connectionState == "connected"
            assert len(app[STATE].manager) == 1, "the session was closed"
            assert not failures, f"{len(failures)} of {len(MESSAGES)} messages:\n" + "\n".join(failures[:40])
            assert (await typed_reply(client))["text"].strip()
            await assert_healthy(port)
            fresh = await connect(port)
            await fresh.close()
        finally:
            await client.close()
    print(f"\ndata channel: {len(MESSAGES)} bad messages, one error each")


async def test_a_flood_is_survived(pipeline: Pipeline) -> None:
    """200 pings at once against the default rate (5/s, burst 20): the excess is refused,
    nothing gets two replies, the session goes on and answers once the bucket refills."""
    settings = fuzz_settings()
    flood = 200
    async with running(pipeline, settings, None) as (port, app):
        client = await connect(port)
        try:
            base = len(client.messages)
            for i in range(flood):
                client.send({"type": "ping", "t": i})
            # Bounded: once a later ping is answered, every reply to the flood is in (in order).
            retries, boundary = 0, None
            while boundary is None and retries < 40:
                await asyncio.sleep(0.5)
                retries += 1
                mark = len(client.messages)
                client.send({"type": "ping", "t": -retries})
                try:
                    pong = await client.wait_message(lambda m: m["type"] == "pong" and m["t"] == -retries, 5, start=mark)
                except TimeoutError:
                    continue
                boundary = client.messages.index(pong)
            assert boundary is not None, "no ping answered after the flood"
            got = client.messages[base:boundary]
            pongs = [m["t"] for m in got if m["type"] == "pong" and m["t"] >= 0]
            errors = [m for m in got if m["type"] == "error"]
            assert settings.message_rate.burst <= len(pongs) < flood, len(pongs)
            assert errors, "the flood was not refused"
            assert len(errors) <= flood - len(pongs) + retries, "a message got more than one reply"
            assert len(set(pongs)) == len(pongs), "a ping answered twice"
            reply = None
            for _ in range(40):  # bounded: until the bucket lets a typed message through
                mark = len(client.messages)
                client.send({"type": "text", "text": "Say hello."})
                first = await client.wait_message(lambda m: m["type"] in ("transcript", "error"), 30, start=mark)
                if first["type"] == "transcript":
                    reply = await client.wait_message(lambda m: m["type"] == "reply" and m["final"], 90, start=mark)
                    break
                await asyncio.sleep(0.5)
            assert reply is not None and reply["text"].strip()
            assert client.pc.connectionState == "connected" and len(app[STATE].manager) == 1
        finally:
            await client.close()
