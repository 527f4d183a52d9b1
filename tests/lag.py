"""Event-loop lag assertions that hold on a shared, noisy machine.

The engine promises the loop never stalls more than 20 ms because of its own work. Other
processes on the same cores add scheduling delay that no code here causes, so a test
first measures the idle loop's lag (the noise floor) and allows twice that where it is
above 20 ms. The figures are printed, so a noisy run shows in the log.
"""

from __future__ import annotations

import asyncio

from avatarchat.engine.loop_probe import LoopLagProbe

MAX_LOOP_LAG_S = 0.020


async def idle_lag(seconds: float = 0.3) -> float:
    """The loop lag of this machine with nothing to do (seconds)."""
    async with LoopLagProbe() as probe:
        await asyncio.sleep(seconds)
    return probe.max_lag


def assert_responsive(max_lag: float, idle: float, what: str) -> None:
    """The loop stalled less than 20 ms, or than twice its idle noise floor."""
    budget = max(MAX_LOOP_LAG_S, 2 * idle)
    print(f"{what}: max loop lag {max_lag * 1000:.1f} ms (idle {idle * 1000:.1f} ms, budget {budget * 1000:.0f} ms)")
    assert max_lag < budget, f"{what}: the event loop stalled {max_lag * 1000:.0f} ms"
