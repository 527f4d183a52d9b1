"""A token bucket per session for data-channel messages (``server.message_rate``).

A client may send ``burst`` messages at once and ``per_s`` a second after that. Messages
beyond that are dropped unread; the client is told once per run of dropped messages (one
``error`` for a flood, not one per message), and told again only after a message got
through. Time comes from an injectable clock, so the tests run in virtual time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class TokenBucket:
    """``burst`` tokens, refilled at ``per_s`` a second; ``take()`` spends one if there is one."""

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs per_s > 0 and burst >= 1")
        self.per_s = per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    @property
    def tokens(self) -> float:
        """Tokens available now (fractional while refilling)."""
        now = self._clock()
        # max(): a clock that steps back must not take tokens away.
        self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._at) * self.per_s)
        self._at = now
        return self._tokens

    def take(self) -> bool:
        """Spend one token: True if there was one (the message may go on), else False."""
        if self.tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Admit(Enum):
    """What to do with one incoming message."""

    PASS = "pass"  # handle it
    REFUSE = "refuse"  # drop it and send one error: the first message of a run of excess
    DROP = "drop"  # drop it silently: the client was already told


class MessageRate:
    """The per-session gate: a token bucket, and whether the current excess was reported."""

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.bucket = TokenBucket(per_s, burst, clock)
        self._told = False
        #: Messages dropped since the session began.
        self.dropped = 0

    def admit(self) -> Admit:
        if self.bucket.take():
            self._told = False
            return Admit.PASS
        self.dropped += 1
        if self._told:
            return Admit.DROP
        self._told = True
        return Admit.REFUSE

    def message(self) -> str:
        """The error text for a refused run (safe to show)."""
        b = self.bucket
        return f"too many messages: the limit is {b.per_s:g} a second (bursts of {b.burst}); the excess was dropped"
