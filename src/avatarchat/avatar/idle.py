"""Life when idle: blinks, breathing, slow head motion and an attentive look while listening.

``IdleMotion(seed).at(t)`` gives the idle face at ``t`` seconds of a session's monotonic
clock. Promises: the same seed gives the same motion; every channel is continuous in ``t``
(no jumps, so consecutive frames differ a little and a frame never freezes); head angles
stay within about ±1.5° when idle (``speaking`` adds at most ~1° more).
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from avatarchat.avatar.params import FaceParams

#: Seconds between blinks, drawn uniformly (people blink every 2–6 s in conversation).
BLINK_INTERVAL = (2.0, 6.0)
BLINK_CLOSE_S = 0.06  # lids close fast …
BLINK_OPEN_S = 0.09  # … and open a little slower: ~150 ms in all
DOUBLE_BLINK_P = 0.15
DOUBLE_BLINK_GAP_S = 0.25
BREATH_HZ = 0.25
HEAD_MAX_DEG = 1.5
#: How long the attentive expression takes to come and go (seconds, smoothstep).
LISTEN_RAMP_S = 0.4
LISTEN_SMILE = 0.2
LISTEN_BROWS = 0.1


def smoothstep(x: float) -> float:
    """0 below 0, 1 above 1, C1-continuous in between."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


class _Sines:
    """A sum of slow sines with seeded frequencies and phases, peak amplitude ≤ ``peak``.

    Incommensurate frequencies never repeat visibly; the amplitudes sum to ``peak``, so the
    sum never exceeds it.
    """

    def __init__(self, rng: np.random.Generator, peak: float, freqs: tuple[float, float], n: int = 3) -> None:
        self.freqs = rng.uniform(*freqs, size=n)
        self.phases = rng.uniform(0.0, 2.0 * math.pi, size=n)
        weights = rng.uniform(0.5, 1.0, size=n)
        self.amps = peak * weights / weights.sum()
        # Plain floats: a client-drawn face asks for ~90 rows a second per session, and
        # numpy's per-call overhead on three numbers was most of an idle row's cost.
        self._terms = tuple(zip(self.amps.tolist(), (2.0 * math.pi * self.freqs).tolist(), self.phases.tolist()))

    def __call__(self, t: float) -> float:
        return sum(a * math.sin(w * t + p) for a, w, p in self._terms)


class IdleMotion:
    """The idle animation of one session. Not thread-safe: use it from one thread (the
    event loop); ``at`` is cheap (microseconds)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._blink_rng = np.random.default_rng(rng.integers(1 << 32))
        self._blinks: list[float] = []  # blink start times, generated lazily in order
        self._next_blink = float(rng.uniform(0.5, 3.0))
        self._breath_hz = BREATH_HZ * float(rng.uniform(0.9, 1.1))
        self._breath_phase = float(rng.uniform(0.0, 2.0 * math.pi))
        # Idle: slow drift (0.05–0.3 Hz). Speaking adds livelier motion (0.3–0.9 Hz).
        self._head = [_Sines(rng, HEAD_MAX_DEG, (0.05, 0.3)) for _ in range(3)]
        self._talk = [_Sines(rng, 1.0, (0.3, 0.9)) for _ in range(3)]
        self._listen_from = 0.0
        self._listen_to = 0.0
        self._listen_t0 = 0.0

    # -- listening -----------------------------------------------------------------------

    def set_listening(self, on: bool, t: float) -> None:
        """Blend the attentive expression in (``on``) or out, starting at ``t``, from
        wherever it is now: a change mid-ramp does not jump."""
        self._listen_from = self.listening_level(t)
        self._listen_to = 1.0 if on else 0.0
        self._listen_t0 = t

    def listening_level(self, t: float) -> float:
        x = smoothstep((t - self._listen_t0) / LISTEN_RAMP_S)
        return self._listen_from + (self._listen_to - self._listen_from) * x

    # -- channels --------------------------------------------------------------------------

    def blink(self, t: float) -> float:
        """Lid closure 0..1 at ``t``: 0 except during a blink."""
        while self._next_blink <= t + 1.0:
            start = self._next_blink
            self._blinks.append(start)
            if self._blink_rng.random() < DOUBLE_BLINK_P:
                self._blinks.append(start + DOUBLE_BLINK_GAP_S)
                start += DOUBLE_BLINK_GAP_S
            self._next_blink = start + float(self._blink_rng.uniform(*BLINK_INTERVAL))
        i = bisect.bisect_right(self._blinks, t)
        # Only the latest two starts can still be in progress (a double blink overlaps).
        return max((_blink_shape(t - s) for s in self._blinks[max(0, i - 2):i]), default=0.0)

    def blink_times(self, until: float) -> list[float]:
        """Blink start times up to ``until`` (for tests and diagnostics)."""
        self.blink(until)
        return [s for s in self._blinks if s <= until]

    def breath(self, t: float) -> float:
        return 0.5 + 0.5 * math.sin(2.0 * math.pi * self._breath_hz * t + self._breath_phase)

    def head(self, t: float, speaking: float = 0.0) -> tuple[float, float, float]:
        """(yaw, pitch, roll) in degrees; ``speaking`` 0..1 scales in the livelier motion."""
        s = min(max(speaking, 0.0), 1.0)
        if s == 0.0:
            yaw, pitch, roll = (h(t) for h in self._head)
        else:
            yaw, pitch, roll = (h(t) + s * k(t) for h, k in zip(self._head, self._talk))
        return yaw, pitch, 0.6 * roll  # tilting reads as stronger than turning

    def at(self, t: float, speaking: float = 0.0) -> FaceParams:
        """The idle face at session time ``t`` (mouth closed; the animator adds speech)."""
        yaw, pitch, roll = self.head(t, speaking)
        listen = self.listening_level(t)
        return FaceParams(
            blink=self.blink(t),
            breath=self.breath(t),
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            smile=LISTEN_SMILE * listen,
            brows=LISTEN_BROWS * listen,
        )


def _blink_shape(dt: float) -> float:
    """One blink ``dt`` seconds after it starts: smooth close, then a slower open."""
    if dt < 0.0 or dt >= BLINK_CLOSE_S + BLINK_OPEN_S:
        return 0.0
    if dt < BLINK_CLOSE_S:
        return smoothstep(dt / BLINK_CLOSE_S)
    return 1.0 - smoothstep((dt - BLINK_CLOSE_S) / BLINK_OPEN_S)
