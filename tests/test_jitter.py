"""The mic's receive buffer (server/jitter.py) on a real aiortc receiver."""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from avatarchat.server.jitter import _ATTRIBUTE, set_audio_prefetch


def _released_after(buffer: object, packets: int = 8) -> int | None:
    """How many 20 ms Opus packets had arrived when the first one came out of ``buffer``."""
    for n in range(packets):
        packet = RtpPacket(payload_type=111, sequence_number=1000 + n, timestamp=960 * n, payload=b"\x00")
        packet._data = packet.payload  # type: ignore[attr-defined]  # what the receiver depayloads
        _, frame = buffer.add(packet)  # type: ignore[attr-defined]
        if frame is not None:
            assert frame.timestamp == 0
            return n + 1
    return None


async def test_the_mic_buffer_releases_each_packet_once_the_next_one_is_in() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        assert _released_after(getattr(receiver, _ATTRIBUTE)) == 5  # aiortc's own: 80 ms late
        fresh = pc.addTransceiver("audio", direction="recvonly").receiver
        assert set_audio_prefetch(fresh, 1)
        assert _released_after(getattr(fresh, _ATTRIBUTE)) == 2  # one packet behind: 20 ms
        # Once packets went through, the buffer holds state: it is not swapped any more.
        assert not set_audio_prefetch(receiver, 1)
        assert not set_audio_prefetch(object(), 1)  # not aiortc's layout: left alone
    finally:
        await pc.close()
