"""``avatarchat.testing.FakeClock``: virtual time that moves only when the test advances it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from avatarchat.engine.clock import Clock
from avatarchat.testing import FakeClock


def test_it_is_a_clock_and_starts_away_from_zero() -> None:
    clock: Clock = FakeClock()
    assert clock.now() == 1000.0
    assert FakeClock(start=5.0).now() == 5.0


async def test_timers_run_in_time_order_each_at_its_own_time() -> None:
    clock = FakeClock(start=0.0)
    seen: list[tuple[str, float]] = []

    def timer(name: str) -> Callable[[], None]:
        return lambda: seen.append((name, clock.now()))

    for name, when in [("c", 0.3), ("a", 0.1), ("b", 0.2), ("b2", 0.2)]:
        clock.call_at(when, timer(name))
    await clock.advance(0.15)
    assert seen == [("a", 0.1)] and clock.now() == 0.15
    await clock.advance(1.0)
    # Same instant: in the order they were set.
    assert seen == [("a", 0.1), ("b", 0.2), ("b2", 0.2), ("c", 0.3)]
    assert clock.now() == 1.15 and clock.next_due() is None


async def test_a_cancelled_timer_never_runs() -> None:
    clock = FakeClock()
    ran: list[int] = []
    handle = clock.call_at(clock.now() + 0.1, lambda: ran.append(1))
    handle.cancel()
    await clock.advance(1.0)
    assert ran == [] and clock.next_due() is None


async def test_a_timer_already_due_runs_on_the_next_loop_turn_not_inside_call_at() -> None:
    clock = FakeClock()
    ran: list[float] = []
    clock.call_at(clock.now() - 1.0, lambda: ran.append(clock.now()))
    assert ran == []
    await asyncio.sleep(0)
    assert ran == [1000.0]


async def test_sleepers_wake_in_order_and_run_before_later_timers() -> None:
    clock = FakeClock(start=0.0)
    log: list[tuple[str, float]] = []

    async def sleeper(name: str, when: float) -> None:
        await clock.sleep_until(when)
        log.append((name, clock.now()))
        # What a woken task does next happens at its own instant, before later timers.
        clock.call_at(clock.now() + 0.05, lambda: log.append((f"{name}+", clock.now())))

    tasks = [asyncio.create_task(sleeper("x", 0.5)), asyncio.create_task(sleeper("y", 0.2))]
    clock.call_at(0.4, lambda: log.append(("timer", clock.now())))
    await clock.advance(1.0)
    assert log == [("y", 0.2), ("y+", 0.25), ("timer", 0.4), ("x", 0.5), ("x+", 0.55)]
    await asyncio.gather(*tasks)


async def test_sleep_until_the_past_returns_at_once_and_a_cancelled_sleeper_leaves_nothing() -> None:
    clock = FakeClock()
    await clock.sleep_until(clock.now())
    task = asyncio.create_task(clock.sleep_until(clock.now() + 5))
    await clock.settle()
    assert clock.next_due() == 1005.0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.next_due() is None


async def test_a_chain_of_queue_hand_offs_settles_within_one_advance() -> None:
    """Five tasks passing a value along queues, each step woken by the clock: all run within
    the advance, at the instants they asked for."""
    clock = FakeClock(start=0.0)
    queues: list[asyncio.Queue[float]] = [asyncio.Queue() for _ in range(6)]
    times: list[float] = []

    async def stage(i: int) -> None:
        value = await queues[i].get()
        await clock.sleep_until(clock.now() + 0.01)
        times.append(clock.now())
        queues[i + 1].put_nowait(value)

    tasks = [asyncio.create_task(stage(i)) for i in range(5)]
    queues[0].put_nowait(1.0)
    await clock.advance(0.1)
    assert times == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert queues[5].get_nowait() == 1.0
    await asyncio.gather(*tasks)


async def test_run_until_idle_and_time_does_not_go_back() -> None:
    clock = FakeClock(start=0.0)

    def set_another() -> None:
        clock.call_at(3.5, lambda: None)

    clock.call_at(2.0, set_another)
    assert await clock.run_until_idle() == 3.5
    with pytest.raises(ValueError):
        await clock.advance(-1)
    await clock.advance_to(1.0)  # behind: a no-op
    assert clock.now() == 3.5 and clock.elapsed == 3.5


async def test_settle_reports_a_loop_that_never_goes_idle() -> None:
    clock = FakeClock()

    async def spin() -> None:
        while True:
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    try:
        with pytest.raises(RuntimeError, match="still busy"):
            await clock.settle()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
