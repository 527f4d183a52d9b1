"""Virtual time for engine tests: a ``Clock`` that moves only when the test says so.

``FakeClock`` implements ``avatarchat.engine.clock.Clock``. Nothing happens on it until the
test calls ``await clock.advance(seconds)``: the clock then jumps from one due timer or
sleeper to the next, in time order, and after each lets the event loop run what that woke
(``settle``), so the engine sees exactly the instants a real clock would give it, in
milliseconds of real time.

The promise of ``settle``: the loop runs until it has nothing left to do now, as far as
``asyncio`` can tell (callbacks and tasks that are ready). Work handed to another thread
(``run_in_executor``) is not waited for: fakes meant for virtual time do their work on the
loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

#: Loop turns ``settle`` lets pass with nothing ready before it calls the loop idle.
_IDLE_TURNS = 3
#: A bound on the loop turns of one ``settle``: engine work that keeps waking itself without
#: the clock moving is a bug, and the test should hear of it rather than hang.
_MAX_TURNS = 10_000


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    fn: Callable[[], None] | None = field(compare=False)
    waiter: asyncio.Future[None] | None = field(compare=False, default=None)
    cancelled: bool = field(compare=False, default=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Seconds that pass only when ``advance`` is called; timers run in time order.

    ``now()`` starts at ``start`` (not 0, so a test catches code that takes 0 for "never").
    ``call_at(when, fn)`` runs ``fn`` once the clock reads ``when``: from ``advance`` if
    ``when`` is ahead, on the loop's next turn if it is not (as ``RealClock`` does).
    ``sleep_until(when)`` returns once ``advance`` has reached ``when``. Two timers due at the
    same instant run in the order they were set. Not thread-safe: the event loop only.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.start = start
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    # -- the Clock protocol ---------------------------------------------------------------

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, fn: Callable[[], None]) -> _Timer | asyncio.Handle:
        if when <= self._now:
            return asyncio.get_running_loop().call_soon(fn)
        timer = _Timer(when, next(self._seq), fn)
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = _Timer(when, next(self._seq), None, waiter)
        heapq.heappush(self._timers, timer)
        try:
            await waiter
        finally:
            timer.cancelled = True  # a cancelled sleeper leaves nothing to wake

    # -- the test's side ------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Seconds since the clock was made."""
        return self._now - self.start

    def next_due(self) -> float | None:
        """When the next live timer or sleeper is due, if any."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].when if self._timers else None

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead, stopping at each due timer or sleeper on the way:
        the clock reads its time, it runs (or wakes), and the loop settles before the next.
        Ends at exactly ``now() + seconds``, with the loop settled."""
        if seconds < 0:
            raise ValueError(f"time does not go back ({seconds} s)")
        await self.advance_to(self._now + seconds)

    async def advance_to(self, when: float) -> None:
        """``advance`` to the absolute time ``when`` (no-op if it is not ahead)."""
        await self.settle()
        while (due := self.next_due()) is not None and due <= when:
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.when)
            timer.cancelled = True
            if timer.waiter is not None:
                if not timer.waiter.done():
                    timer.waiter.set_result(None)
            elif timer.fn is not None:
                timer.fn()
            await self.settle()
        self._now = max(self._now, when)
        await self.settle()

    async def run_until_idle(self, limit: float = 60.0) -> float:
        """Advance from timer to timer until none is left, at most ``limit`` seconds ahead;
        returns the seconds advanced. For a pipeline whose every wait is on this clock."""
        start = self._now
        while (due := self.next_due()) is not None and due - start <= limit:
            await self.advance_to(due)
        return self._now - start

    @staticmethod
    async def settle() -> None:
        """Let the event loop run until nothing on it is ready (see the module docstring)."""
        loop = asyncio.get_running_loop()
        idle = 0
        for _ in range(_MAX_TURNS):
            ready = _ready_count(loop)
            await asyncio.sleep(0)
            idle = idle + 1 if ready == 0 else 0
            if idle >= _IDLE_TURNS:
                return
        raise RuntimeError(f"the event loop was still busy after {_MAX_TURNS} turns with the clock stopped")


def _ready_count(loop: asyncio.AbstractEventLoop) -> int:
    # asyncio has no public "is anything ready?"; the stock loops keep their ready
    # callbacks in ``_ready``. A loop without it (uvloop) is taken as idle after
    # _IDLE_TURNS turns, which covers a handful of queue hand-offs only.
    ready = getattr(loop, "_ready", None)
    return len(ready) if ready is not None else 0
