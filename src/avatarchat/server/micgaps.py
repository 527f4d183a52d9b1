"""The microphone under Opus DTX: ask for it, and put the silence it leaves out back in.

A browser sends its microphone as 50 Opus packets a second, also while the user says
nothing, and receiving them (SRTP, aiortc's RTP handling, its decoder thread, the hop back
to the loop, the resampler) was most of what an idle session cost. The answer can ask the
browser to stop: ``usedtx=1`` on the Opus format line (RFC 7587) makes Chromium's encoder
send nothing while its own voice detector hears no voice, but a comfort-noise packet
every 200-400 ms (measured: 4-6 packets a second between questions, 50 while speaking).

The engine counts time in samples: the VAD ends a turn after so many samples of silence.
With DTX those samples never come, and a turn would end seconds late. ``MicGaps`` puts
them back, from two sources:

* the RTP timestamps: a frame that comes after a gap is preceded by the silence the gap
  held (DTX, or a lost packet), so the stream keeps the sender's timeline;
* the wall clock: when no frame has come for a frame's time plus ``HOLD_S``, after
  ``QUIET_FRAMES`` quiet ones (a browser sends ~380 ms of them before its DTX starts), the
  silence is taken as DTX and given to the engine as it passes, frame by frame, so a turn
  ends on time. After fewer quiet frames the wait is ``STALL_S``: a network that stalls
  mid-word or in a short pause is not silence, and silence put into a pause lengthens it.
  ``FILL_S`` after the last loud frame the wall clock stops: an idle session wakes for
  nothing, and the timestamps of the sparse DTX packets keep its stream in time.
* not for a stall of our own: a wake-up that comes ``LATE_S`` after it was due (the event
  loop was busy, and frames may be on their way from aiortc's decoder thread) gives them
  ``GRACE_S`` to come first.

Silence given from the wall clock that the next frame's timestamp says was not owed (the
frame was only late) is not taken back: the stream then runs that much ahead of the RTP
timeline, and the next gap is shorter by it. The audio itself is never held back or cut.
"""

from __future__ import annotations

import math

import numpy as np

#: A frame's samples at 48 kHz (Opus's RTP clock; the browser sends 20 ms frames).
FRAME = 960
RATE = 48_000
#: A frame whose every sample is below this (-34 dBFS) is quiet (speech peaks far above).
QUIET_PEAK = 0.02
#: Quiet frames in a row after which a missing frame is taken as DTX (Chromium sends
#: 15-19 of them, 300-380 ms, after the speech before it stops).
QUIET_FRAMES = 10
#: After quiet frames: silence is given once a frame is this late.
HOLD_S = 0.01
#: After a loud frame, or fewer quiet ones.
STALL_S = 0.15
#: A wake-up this late was our own stall ...
LATE_S = 0.05
#: ... and frames get this long to arrive before silence is given for them.
GRACE_S = 0.03
#: The wall clock gives silence for this long after the last loud frame, then waits for
#: frames (longer than any hangover of the default end-of-turn rules).
FILL_S = 5.0
#: A timestamp jump this large is a new origin (a restarted sender), not a silence: a
#: client silent this long is closed anyway (``PeerSession.disconnect_timeout_s``).
MAX_GAP_S = 10.0
_WRAP = 1 << 32


class MicGaps:
    """One microphone's stream, gaps filled. ``frame()`` for each received frame,
    ``wake_at()`` for when to call ``fill()`` if no frame comes first. Times are the caller's
    monotonic clock, in seconds; samples are mono float32 at ``RATE``."""

    def __init__(self) -> None:
        self._ts: int | None = None  # unwrapped RTP timestamp just past the newest frame
        self._raw = 0  # its raw 32-bit value
        self._offset = 0  # stream position = unwrapped timestamp + offset
        self._delivered = 0  # samples given to the engine so far (frames and silence)
        self._arrived = 0.0  # when the newest frame came
        self._quiet = 0  # quiet frames in a row, up to the newest
        self._loud_at = -math.inf  # when the last frame that was not quiet came
        self._not_before = -math.inf  # no silence from the clock before this (a stall's grace)
        #: Silence given so far, from timestamps and from the wall clock (samples).
        self.filled_from_timestamps = 0
        self.filled_from_clock = 0

    def frame(self, timestamp: int, samples: np.ndarray, now: float) -> np.ndarray:
        """A received frame (``timestamp``: its RTP timestamp): the silence owed before it,
        if any, and the frame, as one array."""
        n = len(samples)
        if self._ts is None:
            start, self._offset = timestamp, self._delivered - timestamp
        else:
            step = (timestamp - self._raw + _WRAP // 2) % _WRAP - _WRAP // 2
            start = self._ts + step
            if abs(step) > MAX_GAP_S * RATE:
                self._ts, self._offset = start, self._delivered - start  # a new origin: no silence
        owed = start + self._offset - self._delivered
        if self._ts is None or start + n > self._ts:
            self._ts, self._raw = start + n, (timestamp + n) % _WRAP
        self._delivered += max(owed, 0) + n
        self._arrived, self._not_before = now, -math.inf
        if float(np.abs(samples).max(initial=0.0)) < QUIET_PEAK:
            self._quiet += 1
        else:
            self._quiet, self._loud_at = 0, now
        if owed <= 0:
            return samples
        self.filled_from_timestamps += owed
        return np.concatenate([np.zeros(owed, np.float32), np.asarray(samples, np.float32)])

    def _due(self) -> int:
        """Whole frames from the newest frame's end to the end of the next frame of silence."""
        assert self._ts is not None
        return -(-(self._delivered + FRAME - (self._ts + self._offset)) // FRAME)

    def wake_at(self) -> float | None:
        """When the next frame of silence is owed if no frame comes first; None: nothing
        is owed from the clock (no frame yet, or ``FILL_S`` after the last loud one)."""
        if self._ts is None:
            return None
        hold = HOLD_S if self._quiet >= QUIET_FRAMES else STALL_S
        at = self._arrived + hold + self._due() * FRAME / RATE
        return max(at, self._not_before) if at - self._loud_at <= FILL_S else None

    def fill(self, now: float) -> np.ndarray | None:
        """The silence owed by ``now``, whole frames, or None."""
        due = self.wake_at()
        if due is not None and now - due > LATE_S:
            self._not_before = now + GRACE_S  # our own stall: frames may be on their way
            return None
        frames = 0
        while (at := self.wake_at()) is not None and at <= now and frames < 1000:
            self._delivered += FRAME
            frames += 1
        if not frames:
            return None
        self.filled_from_clock += frames * FRAME
        return np.zeros(frames * FRAME, np.float32)


def ask_for_mic_dtx(sdp: str) -> str:
    """``sdp`` (our answer) with ``usedtx=1`` on the audio m-line's Opus payload types: the
    answer's format parameters are what we want to receive, and so what the browser sends."""
    sections: list[list[str]] = [[]]
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    for section in sections:
        if section and section[0].startswith("m=audio "):
            _add_usedtx(section)
    return "\r\n".join(line for section in sections for line in section)


def _add_usedtx(section: list[str]) -> None:
    opus = [line[len("a=rtpmap:"):].split(" ", 1)[0] for line in section
            if line.startswith("a=rtpmap:") and line.split(" ", 1)[-1].lower().startswith("opus/")]
    for pt in opus:
        fmtp = f"a=fmtp:{pt} "
        at = next((i for i, line in enumerate(section) if line.startswith(fmtp)), None)
        if at is None:
            rtpmap = next(i for i, line in enumerate(section) if line.startswith(f"a=rtpmap:{pt} "))
            section.insert(rtpmap + 1, fmtp + "usedtx=1")
        elif "usedtx=" not in section[at]:
            section[at] += ";usedtx=1"
