"""The microphone's receive buffer.

aiortc gives an audio receiver the buffer it gives video, where a frame may span several
packets, so a frame is released only once a packet of the next one is in, and then only
after four more ("prefetch"): 80 ms of delay on every word the user says before the VAD
hears it. Worse, a single lost packet stalls it until 16 have piled up, and it then stays
14 packets (280 ms) behind for the rest of the session: it releases one frame per packet
that arrives, so a backlog never drains (tests/test_jitter.py shows both).

An Opus packet is a whole frame, so ``InOrderAudio`` releases each packet the moment the
ones before it are out. A missing packet is waited for until ``wait`` newer ones are in
(a packet reordered by the network arrives within a few), then given up. What piled up
meanwhile goes out at once, as one packet: the frames joined as one Opus packet of up to
120 ms (RFC 6716's code 3), since aiortc takes one frame per arriving packet.

aiortc 1.16 (pinned with av in pyproject.toml) has no setting for its buffer, so a peer's
audio receiver gets one of these when its track appears, before any packet. A different
aiortc that lacks the attribute keeps its own, with a warning. ``server.mic_prefetch_packets``
above 0 gives aiortc's own buffer with that prefetch instead (for comparisons).
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

#: aiortc's own choice for audio: 16 packets of room, released after 4 newer ones.
AIORTC_AUDIO_CAPACITY = 16
AIORTC_AUDIO_PREFETCH = 4
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"
_SEQ = 1 << 16
#: Opus packets are at most 120 ms long: six 20 ms frames.
MAX_JOINED_MS = 120


class InOrderAudio:
    """An audio receive buffer with aiortc's ``add(packet) -> (pli, frame)``: each Opus
    packet out as soon as those before it are; a missing one waited for ``wait`` packets."""

    def __init__(self, wait: int = 2, capacity: int = AIORTC_AUDIO_CAPACITY) -> None:
        self.wait = wait
        self.capacity = capacity
        self._next: int | None = None  # the sequence number due out
        self._held: dict[int, RtpPacket] = {}
        #: Packets given up for lost, and those that came after that.
        self.skipped = 0
        self.too_late = 0
        self._late_run = 0  # too late in a row: that many means the sender jumped back

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) % _SEQ
        if ahead >= _SEQ // 2 and self._late_run < self.capacity:
            self.too_late += 1  # its turn has passed (given up for lost, or a duplicate)
            self._late_run += 1
            return False, None
        self._late_run = 0
        if ahead >= self.capacity:  # a jump, either way: the sender's sequence moved on
            self._held.clear()
            self._next = seq
        self._held[seq] = packet
        if self._next not in self._held and len(self._held) > self.wait:
            first = min(self._held, key=lambda s: (s - self._next) % _SEQ)  # type: ignore[operator]
            self.skipped += (first - self._next) % _SEQ
            self._next = first
        run: list[RtpPacket] = []
        while self._next in self._held and (not run or _joins(run, self._held[self._next])):
            run.append(self._held.pop(self._next))
            self._next = (self._next + 1) % _SEQ
        if not run:
            return False, None
        if len(run) == 1:
            return False, JitterFrame(data=run[0]._data, timestamp=run[0].timestamp)  # type: ignore[attr-defined]
        return False, JitterFrame(data=join_opus([p._data for p in run]),  # type: ignore[attr-defined]
                                  timestamp=run[0].timestamp)


def _joins(run: list[RtpPacket], packet: RtpPacket) -> bool:
    """Whether ``packet`` can follow ``run`` in one Opus packet: one frame of the same
    configuration, right after it in time, within 120 ms."""
    data: bytes = packet._data  # type: ignore[attr-defined]
    head: bytes = run[0]._data  # type: ignore[attr-defined]
    if not data or not head or data[0] != head[0] or data[0] & 3:
        return False
    n = frame_samples(data[0])
    return ((len(run) + 1) * n <= MAX_JOINED_MS * 48
            and (packet.timestamp - run[-1].timestamp) % (1 << 32) == n)


def frame_samples(toc: int) -> int:
    """Samples at 48 kHz of one frame of an Opus packet with TOC byte ``toc`` (RFC 6716 3.1)."""
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config % 4]
    if config < 16:  # hybrid: 10, 20 ms
        return (480, 960)[config % 2]
    return (120, 240, 480, 960)[config % 4]  # CELT: 2.5, 5, 10, 20 ms


def join_opus(packets: list[bytes]) -> bytes:
    """Single-frame Opus packets of one configuration, back to back in time, as one code-3
    packet (RFC 6716 3.2.5): the TOC, the frame count (VBR), each frame's size but the last's."""
    frames = [p[1:] for p in packets]
    header = bytearray([packets[0][0] | 3, 0x80 | len(frames)])
    for frame in frames[:-1]:
        size = len(frame)
        if size < 252:
            header.append(size)
        else:  # two bytes: 252..255, then the rest in fours (RFC 6716 3.2.1)
            low = 252 + (size & 3)
            header += bytes([low, (size - low) >> 2])
    return bytes(header) + b"".join(frames)


def set_audio_buffer(receiver: Any, prefetch: int) -> bool:
    """Give an audio ``RTCRtpReceiver`` an ``InOrderAudio`` buffer (``prefetch`` 0), or
    aiortc's own releasing a packet once ``prefetch`` newer ones have arrived (aiortc: 4).
    Returns False where it could not."""
    current = getattr(receiver, _ATTRIBUTE, None)
    if not isinstance(current, JitterBuffer) or getattr(current, "_origin", 0) is not None:
        # Not aiortc 1.16's layout, or packets already went through: leave it alone.
        log.warning("cannot replace the mic's jitter buffer on this aiortc; keeping its own")
        return False
    buffer = InOrderAudio() if prefetch == 0 else JitterBuffer(capacity=AIORTC_AUDIO_CAPACITY, prefetch=prefetch)
    setattr(receiver, _ATTRIBUTE, buffer)
    return True
