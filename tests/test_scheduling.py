"""engine.scheduling: lanes of blocking work, turn-critical first.

Real worker threads throughout; order and concurrency are pinned with events (a job that
holds its lane until the test lets it go), never with sleeps or wall-clock bounds.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator

import pytest

from avatarchat.engine.scheduling import Priority, Scheduler, current_scheduler, run_model, use_scheduler


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    with Scheduler({"t1": 1, "t2": 2}) as s:
        yield s


class Gate:
    """A job that tells the loop when it started, then holds its worker until opened."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started = asyncio.Event()
        self.release = threading.Event()

    def job(self) -> str:
        self.loop.call_soon_threadsafe(self.started.set)
        assert self.release.wait(30), "the test never opened the gate"
        return "gate"

    def open(self) -> None:
        self.release.set()


def recorder(order: list[str], name: str) -> Callable[[], str]:
    def job() -> str:
        order.append(name)  # one worker runs these: no two appends at once
        return name

    return job


async def test_a_critical_job_queued_later_runs_before_queued_background_ones(scheduler: Scheduler) -> None:
    gate, order = Gate(), list[str]()
    busy = scheduler.submit(gate.job, lane="t1", priority=Priority.BACKGROUND)
    await gate.started.wait()
    jobs = [scheduler.submit(recorder(order, name), lane="t1", priority=p) for name, p in [
        ("idle-1", Priority.BACKGROUND), ("idle-2", Priority.BACKGROUND),
        ("rest", Priority.NORMAL), ("final", Priority.CRITICAL)]]
    assert scheduler.queued("t1") == 4
    gate.open()
    assert await asyncio.gather(busy, *jobs) == ["gate", "idle-1", "idle-2", "rest", "final"]
    assert order == ["final", "rest", "idle-1", "idle-2"]


async def test_jobs_of_one_priority_run_first_come_first_served(scheduler: Scheduler) -> None:
    gate, order = Gate(), list[str]()
    busy = scheduler.submit(gate.job, lane="t1")
    await gate.started.wait()
    names = [f"job-{i}" for i in range(6)]
    jobs = [scheduler.submit(recorder(order, n), lane="t1", priority=Priority.NORMAL) for n in names]
    gate.open()
    await asyncio.gather(busy, *jobs)
    assert order == names


async def test_without_priorities_a_lane_is_plain_fifo() -> None:
    with Scheduler({"t1": 1}, prioritize=False) as fifo:
        gate, order = Gate(), list[str]()
        busy = fifo.submit(gate.job, lane="t1")
        await gate.started.wait()
        jobs = [fifo.submit(recorder(order, "idle"), lane="t1", priority=Priority.BACKGROUND),
                fifo.submit(recorder(order, "final"), lane="t1", priority=Priority.CRITICAL)]
        gate.open()
        await asyncio.gather(busy, *jobs)
    assert order == ["idle", "final"]


async def test_cancelling_the_caller_removes_its_queued_job(scheduler: Scheduler) -> None:
    gate, order = Gate(), list[str]()
    busy = scheduler.submit(gate.job, lane="t1")
    await gate.started.wait()
    with use_scheduler(scheduler):
        waiting = asyncio.create_task(run_model(recorder(order, "cut"), lane="t1", priority=Priority.CRITICAL))
    await asyncio.sleep(0)  # the task submits its job
    assert scheduler.queued("t1") == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert scheduler.queued("t1") == 0
    after = scheduler.submit(recorder(order, "after"), lane="t1", priority=Priority.BACKGROUND)
    gate.open()
    await asyncio.gather(busy, after)
    assert order == ["after"]  # the cancelled job never ran, though it was ahead


async def test_a_job_cancelled_while_running_finishes_and_frees_its_worker(scheduler: Scheduler) -> None:
    gate, order = Gate(), list[str]()
    running = asyncio.ensure_future(scheduler.run(gate.job, lane="t1"))
    await gate.started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert scheduler.running("t1") == 1  # the thread cannot be stopped; its slot stays taken
    nxt = scheduler.submit(recorder(order, "next"), lane="t1")
    gate.open()
    assert await nxt == "next"
    assert order == ["next"]


async def test_an_exception_of_the_job_is_raised_to_the_caller(scheduler: Scheduler) -> None:
    def broken() -> None:
        raise ValueError("model exploded")

    with pytest.raises(ValueError, match="model exploded"):
        await scheduler.run(broken, lane="t1", priority=Priority.CRITICAL)
    assert await scheduler.run(lambda: 42, lane="t1") == 42  # the lane goes on working


async def test_a_lane_never_runs_more_jobs_at_once_than_its_workers(scheduler: Scheduler) -> None:
    loop = asyncio.get_running_loop()
    release = threading.Event()
    lock = threading.Lock()
    active, peak = 0, 0
    started = asyncio.Semaphore(0)

    def job() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        loop.call_soon_threadsafe(started.release)
        assert release.wait(30)
        with lock:
            active -= 1

    jobs = [scheduler.submit(job, lane="t2", priority=Priority(i % 3)) for i in range(6)]
    await started.acquire()
    await started.acquire()
    assert (scheduler.running("t2"), scheduler.queued("t2")) == (2, 4)
    release.set()
    await asyncio.gather(*jobs)
    assert peak == 2


def nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_background_jobs_of_a_wide_lane_run_on_niced_threads(scheduler: Scheduler) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert await scheduler.run(nice, lane="t2", priority=Priority.CRITICAL) == base
    assert await scheduler.run(nice, lane="t2", priority=Priority.BACKGROUND) == min(19, base + 10)
    # A 1-worker lane is never niced: its one worker would make everyone wait on it.
    assert await scheduler.run(nice, lane="t1", priority=Priority.BACKGROUND) == base
    with Scheduler({"t2": 2}, background_nice=0) as plain:
        assert await plain.run(nice, lane="t2", priority=Priority.BACKGROUND) == base


async def test_niced_background_jobs_leave_a_worker_to_the_rest(scheduler: Scheduler) -> None:
    gate = Gate()
    held = scheduler.submit(gate.job, lane="t2", priority=Priority.BACKGROUND)
    await gate.started.wait()
    later = scheduler.submit(lambda: "idle", lane="t2", priority=Priority.BACKGROUND)
    await asyncio.sleep(0)
    assert (scheduler.running("t2"), scheduler.queued("t2")) == (1, 1)  # one worker free, kept
    # The free worker takes a critical job at once, while the niced one is still held.
    assert await scheduler.run(nice, lane="t2", priority=Priority.CRITICAL) == os.getpriority(os.PRIO_PROCESS, 0)
    assert scheduler.queued("t2") == 1
    gate.open()
    assert await asyncio.gather(held, later) == ["gate", "idle"]


async def test_an_unknown_lane_runs_in_the_default_executor(scheduler: Scheduler) -> None:
    assert await scheduler.run(threading.current_thread, lane="elsewhere") is not threading.current_thread()


async def test_use_scheduler_applies_to_its_block_and_the_tasks_made_in_it(scheduler: Scheduler) -> None:
    default = current_scheduler()
    assert default is not scheduler
    with use_scheduler(scheduler):
        chosen = asyncio.create_task(_which())
        assert current_scheduler() is scheduler
    assert await chosen is scheduler
    assert current_scheduler() is default


async def _which() -> Scheduler:
    return current_scheduler()


async def test_closing_cancels_queued_jobs_and_stops_every_thread() -> None:
    s = Scheduler({"closing": 1})
    gate = Gate()
    busy = s.submit(gate.job, lane="closing")
    await gate.started.wait()
    queued = s.submit(lambda: "never", lane="closing", priority=Priority.BACKGROUND)
    assert any(t.name.startswith("lane-closing") for t in threading.enumerate())
    s.close(wait=False)  # queued jobs are dropped at once; the running one goes on
    gate.open()
    assert await busy == "gate"
    await asyncio.to_thread(s.close)  # joins the threads
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert not any(t.name.startswith("lane-closing") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        s.submit(lambda: None, lane="closing")
