"""Measures how long the event loop stalls: a task that asks to wake every ``interval``
seconds and records how late it woke. A blocking call in a coroutine shows up as lag."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType


class LoopLagProbe:
    """``async with LoopLagProbe() as probe: ...`` then read ``probe.max_lag`` (seconds)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def max_lag(self) -> float:
        return max(self.lags, default=0.0)

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - t0 - self.interval))

    async def __aenter__(self) -> LoopLagProbe:
        self._task = asyncio.create_task(self._run(), name="loop-lag-probe")
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
