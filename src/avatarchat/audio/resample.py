"""Sample-rate conversion for mono float32 audio, streaming or whole-array.

A windowed-sinc (Kaiser) interpolator evaluated at each output instant: it works for any
pair of integer rates (48 kHz → 16 kHz, 44.1 kHz → 16 kHz, 8 kHz → 16 kHz…), low-passes
at the lower of the two Nyquist frequencies so downsampling does not alias, and keeps its
state across chunks so a stream cut into chunks gives the same samples as the whole array.

Output sample ``n`` is the signal at input time ``n * src / dst`` (in input samples): the
two timelines share their origin, which is what the VAD relies on to time-stamp audio.
Streaming delays output by ``half_width`` input samples (0.5 ms at 48 kHz), the filter's
look-ahead; ``flush()`` releases them at the end of a stream.
"""

from __future__ import annotations

import math

import numpy as np

_KAISER_BETA = 8.0  # ~80 dB stop band; plenty for speech features and ASR


class Resampler:
    """Stateful converter from ``src_rate`` to ``dst_rate``; feed chunks with ``process``."""

    def __init__(self, src_rate: int, dst_rate: int, zero_crossings: int = 8) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} → {dst_rate}")
        self.src_rate = int(src_rate)
        self.dst_rate = int(dst_rate)
        g = math.gcd(self.src_rate, self.dst_rate)
        # Reduced ratio keeps n * src in int64 range for streams of years.
        self._up, self._down = self.dst_rate // g, self.src_rate // g
        self._cutoff = min(1.0, self.dst_rate / self.src_rate)  # fraction of input Nyquist
        self.half_width = int(math.ceil(zero_crossings / self._cutoff))
        self._offsets = np.arange(-self.half_width + 1, self.half_width + 1)
        # One row of taps per fractional phase k/up; every output instant falls on one.
        self._table = self._taps(np.arange(self._up) / self._up)
        self.reset()

    def _taps(self, frac: np.ndarray) -> np.ndarray:
        tau = frac[:, None] - self._offsets[None, :]  # distance of each tap from the instant
        u = np.clip(tau / self.half_width, -1.0, 1.0)
        taps = np.sinc(self._cutoff * tau) * np.i0(_KAISER_BETA * np.sqrt(1.0 - u * u))
        # Normalising each row gives exact unit DC gain whatever the fractional phase.
        return (taps / taps.sum(axis=1, keepdims=True)).astype(np.float32)

    def reset(self) -> None:
        """Forget the stream: the next sample is input sample 0 again."""
        # Input before the stream's start counts as silence, so the buffer starts with it.
        self._buf = np.zeros(self.half_width, np.float32)
        self._buf_start = -self.half_width  # input index of _buf[0]
        self._n_in = 0
        self._n_out = 0

    @property
    def input_samples(self) -> int:
        """Input samples taken since the start (or the last ``reset``/``flush``)."""
        return self._n_in

    @property
    def passthrough(self) -> bool:
        return self.src_rate == self.dst_rate

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Take the next chunk; return every output sample that is now fully determined."""
        x = np.asarray(samples, np.float32).reshape(-1)
        if self.passthrough:
            self._n_in += len(x)
            self._n_out += len(x)
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        self._n_in += len(x)
        # Output n needs input up to floor(n*src/dst) + half_width.
        ready = self._n_in - self.half_width
        n_end = -(-ready * self._up // self._down) if ready > 0 else 0
        return self._emit(n_end)

    def flush(self) -> np.ndarray:
        """End of stream: return the remaining output (input beyond the end is silence), then reset."""
        if self.passthrough:
            self.reset()
            return np.zeros(0, np.float32)
        self._buf = np.concatenate([self._buf, np.zeros(self.half_width, np.float32)])
        n_end = -(-self._n_in * self._up // self._down)  # ceil(n_in * dst / src)
        out = self._emit(n_end)
        self.reset()
        return out

    def _emit(self, n_end: int) -> np.ndarray:
        if n_end <= self._n_out:
            return np.zeros(0, np.float32)
        if self._up == 1:
            out = self._decimate(n_end)
        else:
            n = np.arange(self._n_out, n_end, dtype=np.int64)
            num = n * self._down
            base = num // self._up  # input index at or before each output instant
            taps = self._table[num - base * self._up]
            idx = base[:, None] + self._offsets[None, :] - self._buf_start
            out = np.einsum("ij,ij->i", self._buf[idx], taps).astype(np.float32, copy=False)
        self._n_out = n_end
        # Drop input no future output can reach.
        keep_from = (n_end * self._down) // self._up - self.half_width + 1
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        return out

    def _decimate(self, n_end: int) -> np.ndarray:
        """``_emit``'s outputs for a whole-number ratio (48 → 16 kHz: the microphone, 50
        times a second per session): one row of taps, so the windows are a strided view of
        the buffer and one matrix-vector product, without gathering a copy of each."""
        buf = np.ascontiguousarray(self._buf, np.float32)
        first = self._n_out * self._down + int(self._offsets[0]) - self._buf_start
        step = buf.strides[0]
        windows = np.lib.stride_tricks.as_strided(
            buf[first:], shape=(n_end - self._n_out, len(self._offsets)), strides=(self._down * step, step),
            writeable=False)
        return np.dot(windows, self._table[0])


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Convert a whole mono array; returns ``ceil(len * dst / src)`` float32 samples."""
    r = Resampler(src_rate, dst_rate)
    if r.passthrough:
        return np.asarray(samples, np.float32).reshape(-1).copy()
    head = r.process(samples)
    return np.concatenate([head, r.flush()])
