"""Server-side echo guard: the avatar's own voice coming back through the user's microphone
must not pass for the user speaking.

Browsers' echo cancellation removes most of the avatar's voice from the mic, but a client
without one (or with a weak one) sends it back, the VAD hears speech with words, and
turn-taking cuts the reply. ``EchoGuard`` (one per peer) removes what it can of that echo
before the mic audio reaches the engine:

* the audio track reports every frame it sends (``played``: the exact samples, after the
  barge-in duck, and when they were handed to the encoder); the last ~1 s is kept;
* each mic chunk (``process``), while something audible was played in the last
  ``ACTIVE_S``, is matched against it: the echo delay is searched in [0, ``max_delay_s``]
  by FFT cross-correlation at 16 kHz over the last ``window_s`` of mic audio, and tracked
  across chunks (a new delay is taken only once two searches agree); at that delay a short
  filter (``2 * TAPS + 1`` taps at 48 kHz: gain plus a fraction of a sample of delay) is
  fitted by least squares over the same window and its echo estimate is subtracted;
* a chunk that is mostly echo (residual energy below ``echo_only`` of the mic's) is
  attenuated further by ``suppress``: what reaches the engine is near silence. When the
  user speaks over the avatar (double talk) the residual keeps their voice and is passed
  as it is, so a genuine barge-in still works.

Nothing played recently: the chunk is returned as it is (the same array), at the cost of
copying it into the mic history. Mic audio at another rate than the played audio is
always passed through (aiortc decodes Opus to 48 kHz, so this does not happen in serving).
Everything runs on the event loop, pure numpy, ~0.1-0.3 ms per 20 ms chunk while active.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: Mic audio is checked while something audible was played at most this long ago (the
#: largest echo delay plus the analysis window).
ACTIVE_S = 0.6
#: Played audio louder than this peak (about -80 dBFS) counts as audible.
AUDIBLE_PEAK = 1e-4
#: The coarse delay search runs at 48 kHz / DECIMATE (4 kHz: speech's strongest band;
#: small FFTs); a direct search at 48 kHz around its peak refines it.
DECIMATE = 12
#: Filter taps each side of the tracked delay (at 48 kHz): a fraction of a sample of delay,
#: and the small phase shifts of the codecs on the way.
TAPS = 2
#: Chunks between two delay searches once a delay is tracked.
SEARCH_EVERY = 5
#: Normalised correlation a search needs to count: below it the mic holds no echo to speak of.
MIN_CORRELATION = 0.2
#: The fit must remove at least this fraction of the window's energy to be applied.
MIN_REMOVED = 0.02
#: A fit removing less than this fraction of the window's energy triggers a delay search.
GOOD_FIT = 0.5
#: A new delay whose fit removes this much more than the tracked one's replaces it at once.
SWITCH_MARGIN = 0.2


class _History:
    """The latest ``size`` (or more) samples of a stream, addressed by absolute index."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._buf = np.zeros(4 * size, np.float32)
        self._fill = 0
        self.end = 0  # absolute index just after the newest sample

    def append(self, x: np.ndarray) -> None:
        if self._fill + len(x) > len(self._buf):
            keep = min(self._fill, self._size)
            self._buf[:keep] = self._buf[self._fill - keep:self._fill]
            self._fill = keep
            if len(x) > len(self._buf) - keep:  # a huge chunk: keep its end only
                x = x[-(len(self._buf) - keep):]
        self._buf[self._fill:self._fill + len(x)] = x
        self._fill += len(x)
        self.end += len(x)

    def get(self, lo: int, hi: int) -> np.ndarray:
        """Samples ``[lo, hi)``; zeros for any part not kept (too old, or not yet there)."""
        out = np.zeros(max(0, hi - lo), np.float32)
        start = self.end - self._fill
        a, b = max(lo, start), min(hi, self.end)
        if a < b:
            out[a - lo:b - lo] = self._buf[a - start:b - start]
        return out


@dataclass
class EchoStats:
    """What the guard did, for logs and tests."""

    chunks: int = 0  # mic chunks seen
    checked: int = 0  # … checked for echo (something was played recently)
    cancelled: int = 0  # … with an echo estimate subtracted
    echo_only: int = 0  # … judged mostly echo and attenuated
    searches: int = 0
    seconds: float = 0.0  # CPU time spent in ``process`` (wall clock, on the loop)

    @property
    def mean_ms(self) -> float:
        return 1000.0 * self.seconds / max(1, self.chunks)


class EchoGuard:
    """Removes the avatar's own voice from one peer's mic audio; see the module docstring.

    ``played`` and ``process`` are called on the event loop (not thread-safe). ``process``
    never raises for audio it cannot check: it returns it untouched.
    """

    def __init__(self, rate: int = 48000, *, max_delay_s: float = 0.4, window_s: float = 0.2,
                 echo_only: float = 0.5, suppress: float = 0.05, fit_s: float = 0.1) -> None:
        self.rate = rate
        self.echo_only = echo_only
        self.suppress = suppress
        self._max_delay = int(max_delay_s * rate)
        self._margin = int(0.03 * rate)  # arrival jitter around the [0, max_delay] range
        self._window = int(window_s * rate) // DECIMATE * DECIMATE
        self._ref = _History(self._window + self._max_delay + 2 * self._margin + rate // 2)
        self._mic = _History(self._window + rate // 10)
        self._ref_start_at = -math.inf  # when the newest played frame was handed over …
        self._ref_frame = 0  # … and its length
        self._loud_at = -math.inf  # when the latest audible frame was
        self._delay: int | None = None  # tracked: played index = mic index + delay
        self._candidate: int | None = None  # a different delay seen once, to be confirmed
        self._since_search = 0
        self._removed = 0.0  # the fraction of the mic's energy the last fit removed
        self._fit_window = int(fit_s * rate)
        self.stats = EchoStats()

    @property
    def delay(self) -> int | None:
        """The tracked offset (played sample index minus mic sample index), if any."""
        return self._delay

    # -- the played side -------------------------------------------------------------

    def played(self, samples: np.ndarray, at: float) -> None:
        """The audio track handed ``samples`` (mono, s16 or float, at ``rate``) to the
        encoder at monotonic time ``at``. Call for every frame, silent ones included; a
        gap between frames (a skipped stretch) is kept as silence."""
        x = np.asarray(samples).reshape(-1)
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32, copy=False)
        expected = self._ref_start_at + self._ref_frame / self.rate
        gap = round((at - expected) * self.rate) if math.isfinite(expected) else 0
        if gap > len(x) // 2:  # more than jitter: frames were skipped
            self._ref.append(np.zeros(min(gap, self._ref._size), np.float32))
        self._ref.append(x)
        self._ref_start_at, self._ref_frame = at, len(x)
        if len(x) and float(np.max(np.abs(x))) > AUDIBLE_PEAK:
            self._loud_at = at

    # -- the mic side ----------------------------------------------------------------

    def process(self, samples: np.ndarray, rate: int, at: float) -> np.ndarray:
        """Mic chunk (mono float32 at ``rate``, arrived at monotonic ``at``) → what the
        engine should hear: the same array when nothing was played recently, else the chunk
        with the avatar's echo removed (and attenuated further when it is mostly echo)."""
        t0 = time.perf_counter()
        self.stats.chunks += 1
        try:
            if rate != self.rate:
                return samples
            x = np.asarray(samples, np.float32).reshape(-1)
            self._mic.append(x)
            if at - self._loud_at > ACTIVE_S or not len(x):
                return samples
            self.stats.checked += 1
            return self._cancel(x, at)
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def _cancel(self, x: np.ndarray, at: float) -> np.ndarray:
        m_end = self._mic.end
        # The played index now, minus the mic's: the echo of what plays now shows in the
        # mic no earlier than now, so the delay is at most this (give or take jitter).
        anchor = self._ref.end - self._ref_frame + round((at - self._ref_start_at) * self.rate) - m_end
        self._since_search += 1
        # A poor fit means double talk, or a delay that moved (a jitter buffer's underrun
        # shifts it by a frame): search at once rather than let the echo through for long.
        if self._delay is None or self._removed < GOOD_FIT or self._since_search >= SEARCH_EVERY:
            self._since_search = 0
            self._track(self._search(m_end, anchor), m_end, len(x))
        if self._delay is None:
            return x
        echo, self._removed = self._fit(m_end, self._delay, len(x))
        if self._removed < MIN_REMOVED:
            return x  # the fit explains nothing: no echo here
        self.stats.cancelled += 1
        residual = x - echo
        if float(residual @ residual) < self.echo_only * float(x @ x):
            self.stats.echo_only += 1
            residual *= self.suppress
        return residual

    def _track(self, found: int | None, m_end: int, n: int) -> None:
        """Smooth the delay: a new value found by a search replaces the tracked one when
        the next search agrees, or at once when it explains the recent mic audio clearly
        better (or none is tracked). Within the filter's reach of the tracked one, it is kept."""
        if found is None:
            return
        if self._delay is None:
            self._delay = found
        elif abs(found - self._delay) <= TAPS:
            self._candidate = None
        elif self._candidate is not None and abs(found - self._candidate) <= TAPS:
            self._delay, self._candidate = found, None
        elif self._fit(m_end, found, n)[1] > max(GOOD_FIT, self._fit(m_end, self._delay, n)[1] + SWITCH_MARGIN):
            self._delay, self._candidate = found, None
        else:
            self._candidate = found

    def _search(self, m_end: int, anchor: int) -> int | None:
        """The delay (played index minus mic index) at which the last window of mic audio
        correlates best with what was played, or None if nothing correlates: a coarse FFT
        search at 48 kHz / DECIMATE, then the best 48 kHz offset around its peak."""
        self.stats.searches += 1
        w = self._window
        m_lo = m_end - w
        r_lo = m_lo + anchor - self._max_delay - self._margin
        r_hi = r_lo + (w + self._max_delay + 2 * self._margin) // DECIMATE * DECIMATE
        mic = _decimate(self._mic.get(m_lo, m_end))
        ref = _decimate(self._ref.get(r_lo, r_hi))
        k = _best_lag(ref, mic)
        if k is None:
            return None
        coarse = r_lo + DECIMATE * k - m_lo
        y = self._mic.get(m_lo, m_end)
        near = self._ref.get(m_lo + coarse - DECIMATE, m_end + coarse + DECIMATE)
        k = _best_lag(near, y, exact=True)
        return None if k is None else coarse - DECIMATE + k

    def _fit(self, m_end: int, delay: int, n: int) -> tuple[np.ndarray, float]:
        """Least-squares filter around ``delay`` over the window; returns its echo estimate
        for the last ``n`` mic samples and the fraction of the window's energy it removes.
        The window is shorter than the search's: the fit follows a changed delay sooner."""
        w = self._fit_window
        y = self._mic.get(m_end - w, m_end)
        ref = self._ref.get(m_end - w + delay - TAPS, m_end + delay + TAPS)
        # Column j: the played samples at mic index + delay - TAPS + j (dot products of
        # shifted slices: cheaper than a strided matrix product).
        cols = [ref[j:j + w] for j in range(2 * TAPS + 1)]
        gram = np.array([[float(a @ c) for c in cols] for a in cols])
        b = np.array([float(c @ y) for c in cols])
        e_y = float(y @ y)
        if e_y <= 1e-12 or float(np.trace(gram)) <= 1e-12:
            return np.zeros(n, np.float32), 0.0
        # A touch of ridge: neighbouring samples of band-limited audio are nearly collinear.
        ridge = np.eye(len(gram)) * (1e-3 * float(np.trace(gram)) / len(gram))
        h = np.linalg.solve(gram + ridge, b)
        removed = float(2 * h @ b - h @ gram @ h) / e_y  # 1 - |y - Xh|² / |y|²
        echo = sum(float(hj) * c[-n:] for hj, c in zip(h, cols))
        return np.asarray(echo, np.float32), removed


def _decimate(x: np.ndarray) -> np.ndarray:
    """Sum of each run of DECIMATE samples (a box low-pass, then every DECIMATE-th sample):
    crude, but both signals get the same one, which is all a correlation peak needs."""
    return x.reshape(-1, DECIMATE).sum(axis=1, dtype=np.float32)


def _best_lag(ref: np.ndarray, mic: np.ndarray, exact: bool = False) -> int | None:
    """The lag k maximising the normalised correlation of ``mic`` with ``ref[k:k+len(mic)]``
    (|correlation|: a path may invert the polarity), or None below ``MIN_CORRELATION``.
    ``exact``: direct dot products (for a few lags); else by FFT."""
    lags = len(ref) - len(mic) + 1
    e_mic = float(mic @ mic)
    if lags < 1 or e_mic <= 1e-9 or float(ref @ ref) <= 1e-9:
        return None
    if exact:
        corr = sliding_window_view(ref, len(mic)) @ mic
    else:
        n = 1 << (len(ref) + len(mic) - 1).bit_length()
        corr = np.fft.irfft(np.fft.rfft(ref, n) * np.conj(np.fft.rfft(mic, n)), n)[:lags]
    energy = np.concatenate([[0.0], np.cumsum(ref.astype(np.float64) ** 2)])
    window_energy = energy[len(mic):] - energy[:lags]
    rho = np.abs(corr) / np.sqrt(np.maximum(window_energy, 1e-12) * e_mic)
    k = int(np.argmax(rho))
    return k if rho[k] >= MIN_CORRELATION else None
