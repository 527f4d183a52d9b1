"""The soak's client, in a process of its own so that the server's figures are the
server's alone: ``python -m tests.soak_client PORT TURNS WARM_UP``.

A real aiortc client (tests/rtc_client.py) posts its offer to the app on 127.0.0.1:PORT and
types TURNS questions: every third is interrupted as soon as its first reply text arrives,
every fifth plays out to its metrics, the others end at their final text. After WARM_UP
turns and after the last it cuts any reply, waits until the avatar listens, prints
``quiet`` and waits for a line on stdin (the test measures the server meanwhile). At the
end it prints one JSON line: turns answered, replies cut, error messages, connection state.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from tests.fuzz.client import connect
from tests.rtc_client import RtcTestClient

QUESTIONS = ["Say hello.", "What is the capital of France?", "Name a colour.", "What is two plus two?",
             "Tell me a fact about cats.", "What day comes after Monday?", "Name a fruit."]


async def one_turn(client: RtcTestClient, i: int) -> dict[str, Any]:
    """Type question ``i`` and wait for its final reply (see the module docstring). A wait
    that times out first prints what the turn received, for the test's failure output."""
    mark = len(client.messages)
    try:
        return await _one_turn(client, i, mark)
    except TimeoutError:
        seen = [{k: m[k] for k in ("type", "turn", "final", "interrupted", "state", "reason") if k in m}
                for m in client.messages[mark:] if m.get("type") != "face"]
        print(f"soak turn {i} ({QUESTIONS[i % len(QUESTIONS)]!r}) timed out; it received: {seen}",
              file=sys.stderr, flush=True)
        raise


async def _one_turn(client: RtcTestClient, i: int, mark: int) -> dict[str, Any]:
    # The client records all it receives, for other tests' assertions: dropped here, so a
    # long run does not grow by its recordings.
    client.audio_chunks.clear()
    client.video_times.clear()
    client.send({"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]})
    said = await client.wait_message(lambda m: m["type"] == "transcript", 60, start=mark)
    turn = said["turn"]
    if i % 3 == 2:
        await client.wait_message(lambda m: m["type"] == "reply" and m.get("turn") == turn, 90, start=mark)
        client.send({"type": "interrupt"})
    final = await client.wait_message(lambda m: m["type"] == "reply" and m["final"] and m["turn"] == turn, 90, start=mark)
    if i % 5 == 4 and i % 3 != 2:
        await client.wait_message(lambda m: m["type"] == "metrics" and m["turn"] == turn, 90, start=mark)
    return final


async def quiet(client: RtcTestClient) -> None:
    """Cut any reply and wait until the avatar listens; then hand over to the test."""
    client.send({"type": "interrupt"})

    def listening() -> bool:
        states = [m["state"] for m in client.messages if m["type"] == "state"]
        return bool(states) and states[-1] == "listening"

    await asyncio.sleep(0.2)  # the interrupt's round trip
    await client._until(listening, 30)
    print("quiet", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def main(port: int, turns: int, warm_up: int) -> None:
    client = await connect(port)
    try:
        finals = []
        for i in range(turns):
            finals.append(await one_turn(client, i))
            if i + 1 in (warm_up, turns):
                await quiet(client)
        summary = {"answered": sum(1 for f in finals if f["text"].strip() or f.get("interrupted")),
                   "interrupted": sum(1 for f in finals if f.get("interrupted")),
                   "errors": client.of_type("error")[:5], "state": client.pc.connectionState}
    finally:
        await client.close()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*(int(a) for a in sys.argv[1:4])))
