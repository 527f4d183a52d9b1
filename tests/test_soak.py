"""A long session: the real app and pipeline (the embedded default, greedy, replies cut at
16 tokens) in this process, one real aiortc client in another (tests/soak_client.py):
100 typed turns, every third interrupted as soon as its first reply text arrives, every
fifth left to play out. After a 10-turn warm-up the server must hold steady to the end:
resident memory (after ``malloc_trim``) grows less than 5 %, and its asyncio tasks, OS
threads and open file descriptors do not grow in number.

Each figure is taken at a quiet point (the reply cut, the avatar listening, a garbage
collection), the same way after the warm-up and at the end, as the least of five readings
over a second: short-lived tasks and threads (an SCTP flush, an RTCP report, an executor
job) come and go every few ms; what stays is what could leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from avatarchat.config import load_config
from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.app import STATE
from avatarchat.server.settings import ServerSettings
from tests.fuzz.configs import short_config
from tests.fuzz.server import running

TURNS = 100
WARM_UP = 10
MAX_RSS_GROWTH = 0.05
SAMPLES = 5
ROOT = Path(__file__).resolve().parents[1]
# glibc keeps freed memory for reuse; handing it back before each reading makes RSS the
# memory in use, so allocator caching is not read as growth (and a leak cannot hide in it).
_LIBC = ctypes.CDLL("libc.so.6")


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


#: asyncio's default executor (a ThreadPoolExecutor named "asyncio") never has more workers.
EXECUTOR_CAP = min(32, (os.cpu_count() or 1) + 4)


def executor_workers() -> int:
    return sum(t.name.startswith("asyncio_") for t in threading.enumerate())


async def fill_executor() -> None:
    """Start every worker the default executor may have: it adds them on demand, under load
    more of them, and a worker started after the warm-up brings its own malloc arena, which
    read as growth (RSS +4-5 % under stress-ng while tasks, threads and fds held)."""
    loop = asyncio.get_running_loop()
    barrier = threading.Barrier(EXECUTOR_CAP)

    def meet() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)

    await asyncio.gather(*(loop.run_in_executor(None, meet) for _ in range(EXECUTOR_CAP)))


async def measure() -> Figures:
    samples = []
    for _ in range(SAMPLES):
        await asyncio.sleep(0.2)
        gc.collect()
        _LIBC.malloc_trim(0)
        # The default executor's workers are a bounded pool that grows on demand (to
        # EXECUTOR_CAP): counted apart, so a worker started late is not read as a leak.
        threads = len(os.listdir("/proc/self/task")) - executor_workers()
        samples.append(Figures(rss=psutil.Process().memory_info().rss, tasks=len(asyncio.all_tasks()),
                               threads=threads, fds=len(os.listdir("/proc/self/fd"))))
    return Figures(*(min(getattr(f, k) for f in samples) for k in ("rss", "tasks", "threads", "fds")))


async def next_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 600)
    assert line, f"the soak client ended early (exit {await proc.wait()})"
    return line.decode().strip()


async def test_a_hundred_turns_hold_memory_tasks_threads_and_fds_steady(pipeline: Pipeline) -> None:
    t0 = time.monotonic()
    async with running(pipeline, ServerSettings(), None) as (port, app):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.soak_client", str(port), str(TURNS), str(WARM_UP), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert proc.stdin is not None
        try:
            assert await next_line(proc) == "quiet"
            await fill_executor()
            warm, t_warm = await measure(), time.monotonic()
            warm_names = sorted(t.name for t in threading.enumerate())
            proc.stdin.write(b"go\n")
            assert await next_line(proc) == "quiet"
            end = await measure()
            names = (warm_names, sorted(t.name for t in threading.enumerate()))
            peers = app[STATE].manager.peers
            alive = len(peers) == 1 and not peers[0].closed
            proc.stdin.write(b"go\n")
            summary = json.loads(await next_line(proc))
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    growth = (end.rss - warm.rss) / warm.rss
    print(f"\nsoak: {TURNS} turns in {time.monotonic() - t0:.0f} s ({time.monotonic() - t_warm:.0f} s after warm-up); "
          f"server RSS {warm.rss / 2**20:.0f} -> {end.rss / 2**20:.0f} MiB ({growth:+.1%}); tasks {warm.tasks} -> "
          f"{end.tasks}; threads {warm.threads} -> {end.threads}; fds {warm.fds} -> {end.fds}; client: {summary}")
    assert summary["answered"] == TURNS and not summary["errors"] and summary["state"] == "connected", summary
    assert alive, "the session was closed"
    assert summary["interrupted"] >= 1, "no reply was cut by an interrupt"
    grew = [f"RSS {growth:+.1%} (limit {MAX_RSS_GROWTH:.0%})"] if growth >= MAX_RSS_GROWTH else []
    grew += [f"{k} {getattr(warm, k)} -> {getattr(end, k)}" for k in ("tasks", "threads", "fds")
             if getattr(end, k) > getattr(warm, k)]
    if end.threads > warm.threads:
        grew.append(f"Python threads after the warm-up {names[0]}, at the end {names[1]}")
    assert not grew, "the server grew after the warm-up: " + "; ".join(grew)
    assert executor_workers() <= EXECUTOR_CAP
