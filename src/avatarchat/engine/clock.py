"""The engine's one clock, injectable so turn-taking, end of turn and barge-in run in
virtual time under test.

Every timing decision of a session (event times, marks, timers, what the VAD dates a
chunk to, how old a partial transcript is) reads the session's ``Clock``
(``SessionInfo.clock``). ``RealClock`` is ``time.monotonic`` plus the running loop's
timers; ``avatarchat.testing.FakeClock`` is advanced by the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


#: Two clock readings of the same captured instant differ by less than this (the VAD dates
#: a pause's ``speech_end`` and what follows from one anchor; floats round on the way).
SAME_INSTANT_S = 0.002


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Seconds on one monotonic timeline, and timers on it."""

    def now(self) -> float:
        """The time now, in seconds (monotonic; only differences mean anything)."""

    def call_at(self, when: float, fn: Callable[[], None]) -> Cancellable:
        """Run ``fn`` on the event loop once the clock reads ``when`` (at once if past)."""

    async def sleep_until(self, when: float) -> None:
        """Return once the clock reads ``when``."""


class RealClock:
    """``time.monotonic`` and the running event loop's timers."""

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, fn: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(max(0.0, when - time.monotonic()), fn)

    async def sleep_until(self, when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


#: The clock of sessions that are not given one.
REAL_CLOCK = RealClock()
