"""Slots that cannot be squatted: the SessionManager's connect deadline, session time limit,
per-client cap and idle rule, in virtual time.

The manager is the thing under test; its peers here are STAND-INS (``ClockPeer``: an id, a
``connected`` flag, ``last_activity``, ``close``), because what is tested is when the manager
closes them, on a clock the test moves. That real peers set ``connected`` on their first mic
frame and move ``last_activity`` only on accepted speech and valid messages is tested with
real aiortc clients in tests/test_peer_hardening.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from avatarchat.server.metrics import Metrics
from avatarchat.server.sessions import ClientLimit, ServerFull, SessionManager
from avatarchat.server.settings import ServerSettings


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ClockPeer:
    """STAND-IN peer on the test's virtual clock (see the module docstring)."""

    def __init__(self, clock: VirtualClock, on_closed: Callable[..., None]) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.clock = clock
        self.last_activity = clock()
        self.connected = False
        self.closed_reason: str | None = None
        self.closed = asyncio.Event()
        self._on_closed = on_closed

    def active(self) -> None:
        """What the real peer does on accepted speech or a valid text/interrupt message."""
        self.last_activity = self.clock()

    async def close(self, reason: str = "closed") -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self.closed.set()
            self._on_closed(self)


class Harness:
    def __init__(self, settings: ServerSettings) -> None:
        self.clock = VirtualClock()
        self.peers: list[ClockPeer] = []
        self.manager = SessionManager(settings, self.factory, Metrics(), clock=self.clock)

    async def factory(self, pipeline: Any, sdp: str, type_: str, settings: ServerSettings, *,
                      metrics: Any, on_closed: Callable[..., None]) -> tuple[ClockPeer, str]:
        await asyncio.sleep(0)  # negotiations overlap, as real ones do
        if sdp == "refuse":
            raise ValueError("the offer is refused")
        peer = ClockPeer(self.clock, on_closed)
        self.peers.append(peer)
        return peer, "answer"

    async def open(self, client: str = "10.0.0.1", sdp: str = "v=0") -> ClockPeer:
        peer, _ = await self.manager.open("pipeline", sdp, "offer", client=client)
        return peer  # type: ignore[return-value]

    async def advance(self, seconds: float) -> None:
        """Move the clock, let the manager look, and give its closes a few loop turns."""
        self.clock.now += seconds
        self.manager.recheck()
        for _ in range(5):
            await asyncio.sleep(0)

    def open_ones(self) -> list[ClockPeer]:
        return [p for p in self.peers if p.closed_reason is None]


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**settings: Any) -> Harness:
        h = Harness(ServerSettings(**settings))
        made.append(h)
        return h

    yield make
    for h in made:
        await h.manager.close_all()


async def test_half_open_offers_free_their_slots_and_a_real_user_gets_in_within_12_s(harness: Any) -> None:
    h = harness(max_sessions=2)  # 2 slots; connect_timeout_s 10, the default
    squatters = [await h.open("203.0.113.7"), await h.open("198.51.100.9")]
    with pytest.raises(ServerFull):
        await h.open("192.0.2.1")
    await h.advance(9.9)
    assert h.open_ones() == squatters, "not yet: 9.9 s < connect_timeout_s"
    with pytest.raises(ServerFull):
        await h.open("192.0.2.1")
    await h.advance(0.1)
    assert [p.closed_reason for p in squatters] == ["not connected within 10 s"] * 2
    user = await h.open("192.0.2.1")  # 10 s after the squatters, within the 12 s promised
    user.connected = True
    await h.advance(60)
    assert user.closed_reason is None and len(h.manager) == 1


async def test_a_connected_session_has_no_connect_deadline(harness: Any) -> None:
    h = harness(connect_timeout_s=5)
    peer = await h.open()
    await h.advance(4)
    peer.connected = True
    await h.advance(10)
    assert peer.closed_reason is None


async def test_idle_timer_restarts_only_on_activity_the_peer_reports(harness: Any) -> None:
    h = harness(idle_timeout_s=60)
    peer = await h.open()
    peer.connected = True
    for _ in range(3):  # activity every 50 s keeps it
        await h.advance(50)
        peer.active()
    await h.advance(59)
    assert peer.closed_reason is None
    await h.advance(1)  # nothing reported (noise, pings and bad messages report nothing)
    assert peer.closed_reason == "idle"


async def test_max_session_s_ends_even_a_busy_session(harness: Any) -> None:
    h = harness(max_session_s=120, idle_timeout_s=60)
    peer = await h.open()
    peer.connected = True
    for _ in range(11):
        await h.advance(10)
        peer.active()
    assert peer.closed_reason is None
    await h.advance(10)  # 120 s after it opened
    assert peer.closed_reason == "the 120 s session limit was reached"
    assert len(h.manager) == 0


async def test_per_client_cap_counts_connecting_and_live_sessions(harness: Any) -> None:
    h = harness(max_sessions=4, max_sessions_per_client=2)
    first = await h.open("203.0.113.7")
    first.connected = True
    await h.open("203.0.113.7")  # still connecting: it counts too
    with pytest.raises(ClientLimit, match="already holds 2 session"):
        await h.open("203.0.113.7")
    other = await h.open("198.51.100.9")  # another address is not affected
    assert h.manager.held_by("203.0.113.7") == 2 and h.manager.held_by("198.51.100.9") == 1
    await first.close("bye")  # a freed session gives the client its place back
    await h.open("203.0.113.7")
    await h.advance(10)  # the unconnected ones time out and are no longer counted
    assert h.manager.held_by("203.0.113.7") == 0 and h.manager.held_by("198.51.100.9") == 0
    assert other.closed_reason is not None


async def test_a_failed_open_gives_the_client_its_place_back(harness: Any) -> None:
    h = harness(max_sessions_per_client=1)
    for _ in range(3):
        with pytest.raises(ValueError):
            await h.open("203.0.113.7", sdp="refuse")
    assert h.manager.held_by("203.0.113.7") == 0
    await h.open("203.0.113.7")


async def test_simultaneous_offers_from_one_client_never_pass_its_cap(harness: Any) -> None:
    h = harness(max_sessions=8, max_sessions_per_client=2)
    results = await asyncio.gather(*(h.open("203.0.113.7") for _ in range(6)), return_exceptions=True)
    assert sum(isinstance(r, ClockPeer) for r in results) == 2
    assert sum(isinstance(r, ClientLimit) for r in results) == 4
