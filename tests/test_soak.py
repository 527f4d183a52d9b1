"""A long session: one real aiortc client, the real pipeline (the embedded default,
greedy, replies cut at 16 tokens), 100 typed turns, every third interrupted as soon as its
first reply text arrives, every fifth left to play out to its end. After a 10-turn warm-up
the process must hold steady to the end: resident memory (after ``malloc_trim``) grows less
than 5 %, and the asyncio tasks, OS threads and open file descriptors do not grow in number
(the least of five readings over a second at each point: transients excluded).

Both ends run in this process, so the figures cover the client too: a leak on either side
fails. Each figure is taken at a quiet point (the reply cut, the avatar listening, a
garbage collection), the same way at the warm-up mark and at the end.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psutil
import pytest

from avatarchat.engine.config import load_config
from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.settings import ServerSettings
from tests.fuzz.configs import short_config
from tests.peer_harness import Server
from tests.rtc_client import RtcTestClient

TURNS = 100
WARM_UP = 10
MAX_RSS_GROWTH = 0.05
SAMPLES = 5
# glibc keeps freed memory for reuse; handing it back before each reading makes RSS the
# memory in use, so allocator caching is not read as growth (and a leak cannot hide in it).
_LIBC = ctypes.CDLL("libc.so.6")
QUESTIONS = ["Say hello.", "What is the capital of France?", "Name a colour.", "What is two plus two?",
             "Tell me a fact about cats.", "What day comes after Monday?", "Name a fruit."]


@dataclass(frozen=True)
class Figures:
    rss: int
    tasks: int
    threads: int
    fds: int


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    config = load_config(short_config(tmp_path_factory.mktemp("config")))
    return asyncio.run(Pipeline.load(config, progress=lambda _: None))


@pytest.fixture
async def server(pipeline: Pipeline) -> AsyncIterator[Server]:
    srv = Server(pipeline, ServerSettings())
    yield srv
    await srv.shutdown()


async def quiet(client: RtcTestClient) -> Figures:
    """Cut any reply, wait until the avatar listens, collect garbage, then measure."""
    client.send({"type": "interrupt"})

    def listening() -> bool:
        states = [m["state"] for m in client.messages if m["type"] == "state"]
        return bool(states) and states[-1] == "listening"

    await asyncio.sleep(0.2)  # the interrupt's round trip
    await client._until(listening, 30)
    samples = []
    for _ in range(SAMPLES):
        await asyncio.sleep(0.2)
        gc.collect()
        _LIBC.malloc_trim(0)
        samples.append(Figures(rss=psutil.Process().memory_info().rss, tasks=len(asyncio.all_tasks()),
                               threads=len(os.listdir("/proc/self/task")), fds=len(os.listdir("/proc/self/fd"))))
    # The least of each over a second: short-lived tasks and threads (an SCTP flush, an RTCP
    # report, an executor job) come and go every few ms; what stays is what could leak.
    return Figures(*(min(getattr(f, k) for f in samples) for k in ("rss", "tasks", "threads", "fds")))


async def one_turn(client: RtcTestClient, i: int) -> dict[str, object]:
    """Type question ``i``; interrupt it after its first reply text (every third), or let it
    play to its metrics (every fifth), or move on at its final text. Returns its final reply."""
    # The test client records all it receives, for other tests' assertions; the soak measures
    # the server and the connection, so it drops those recordings.
    client.audio_chunks.clear()
    client.video_times.clear()
    mark = len(client.messages)
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


async def test_a_hundred_turns_hold_memory_tasks_threads_and_fds_steady(server: Server) -> None:
    client = await server.client()
    t0 = time.monotonic()
    try:
        finals = [await one_turn(client, i) for i in range(WARM_UP)]
        warm = await quiet(client)
        t_warm = time.monotonic()
        trajectory = []
        for i in range(WARM_UP, TURNS):
            finals.append(await one_turn(client, i))
            if i % 10 == 9:
                _LIBC.malloc_trim(0)
                trajectory.append(psutil.Process().memory_info().rss // 2**20)
        end = await quiet(client)
        errors = client.of_type("error")
        assert client.pc.connectionState == "connected" and not server.peers[0].closed
    finally:
        await client.close()
    growth = (end.rss - warm.rss) / warm.rss
    print(f"\nsoak: {TURNS} turns in {time.monotonic() - t0:.0f} s ({time.monotonic() - t_warm:.0f} s after warm-up); "
          f"RSS {warm.rss / 2**20:.0f} -> {end.rss / 2**20:.0f} MiB ({growth:+.1%}); "
          f"tasks {warm.tasks} -> {end.tasks}; threads {warm.threads} -> {end.threads}; fds {warm.fds} -> {end.fds}; "
          f"RSS every 10 turns after the warm-up (MiB): {trajectory}")
    assert len(finals) == TURNS and not errors, errors[:5]
    assert sum(1 for f in finals if f.get("interrupted")) >= 1, "no reply was cut by an interrupt"
    assert growth < MAX_RSS_GROWTH, f"RSS grew {growth:.1%} after the warm-up"
    assert end.tasks <= warm.tasks, (warm, end)
    assert end.threads <= warm.threads, (warm, end, sorted(t.name for t in threading.enumerate()))
    assert end.fds <= warm.fds, (warm, end)
