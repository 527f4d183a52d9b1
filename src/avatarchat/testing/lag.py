"""Event-loop lag assertions that hold on a shared, noisy machine.

The engine promises the loop never stalls more than 20 ms because of its own work. Other
processes on the same cores add scheduling delay that no code here causes, so a test
first measures the loop's lag with nothing to do on it (the noise floor) and allows twice
that where it is above 20 ms. The floor is measured while one executor thread computes,
as the stages' executors do while a test runs: on busy cores that thread's share of the
CPU delays the loop too, without any code blocking it. A short floor still misses the
rare long preemption of a run lasting seconds (a full suite at load 4 on 2 cores saw
21 ms), so when the load average exceeds the cores the budget doubles. One probe in a
run may lag up to twice the budget: a lone preemption (CI saw 20.4 ms against 20 among
212 probes) is the machine's, while code that stalls the loop does so on every chunk,
frame or token it handles, so it shows in more than one probe. Code that blocks the loop
(a chunk rendered on it, a model call) stalls it 100 ms and more, which every budget
catches even once. The figures are printed, so a noisy run shows in the log.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np

from avatarchat.engine.loop_probe import LoopLagProbe

MAX_LOOP_LAG_S = 0.020


async def idle_lag(seconds: float = 0.5) -> float:
    """The loop lag of this machine (seconds) with nothing on the loop and one executor
    thread computing (numpy, which releases the GIL like the models do)."""
    stop = threading.Event()

    def compute() -> None:
        a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
        while not stop.is_set():
            a @ a

    work = asyncio.get_running_loop().run_in_executor(None, compute)
    try:
        async with LoopLagProbe() as probe:
            await asyncio.sleep(seconds)
    finally:
        stop.set()
        await work
    return probe.max_lag


def assert_responsive(lags: list[float], idle: float, what: str) -> None:
    """The loop stalled less than 20 ms, or than twice its noise floor; twice that again
    while other processes keep more threads runnable than there are cores. A single probe
    may reach twice the budget."""
    budget = max(MAX_LOOP_LAG_S, 2 * idle)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        budget *= 2
    second, worst = sorted([0.0, 0.0, *lags])[-2:]
    print(f"{what}: max loop lag {worst * 1000:.1f} ms, next {second * 1000:.1f} ms (idle {idle * 1000:.1f} ms, "
          f"load {load:.1f}, budget {budget * 1000:.0f} ms)")
    assert second < budget, f"{what}: the event loop stalled {second * 1000:.0f} ms more than once"
    assert worst < 2 * budget, f"{what}: the event loop stalled {worst * 1000:.0f} ms"
