"""The mic's receive buffer (server/jitter.py) on real aiortc receivers and real Opus packets."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from avatarchat.server.jitter import _ATTRIBUTE, InOrderAudio, frame_samples, join_opus, set_audio_buffer

FRAME = 960


def _packet(n: int, payload: bytes = b"\x78\x01", origin: int = 1000) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=(origin + n) % 65536, timestamp=FRAME * n, payload=payload)
    packet._data = payload  # type: ignore[attr-defined]  # what the receiver depayloads
    return packet


def _lags(buffer: object, lost: set[int], packets: int = 60) -> list[int | None]:
    """For each arriving packet: how many packets behind it the released frame is (None: none)."""
    out: list[int | None] = []
    for n in range(packets):
        if n in lost:
            continue
        _, frame = buffer.add(_packet(n))  # type: ignore[attr-defined]
        out.append(None if frame is None else n - frame.timestamp // FRAME)
    return out


def _opus_packets(n: int) -> list[bytes]:
    """``n`` real 20 ms Opus packets of a tone, as a browser would send them."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = 48000, "mono", "s16", 32000
    enc.time_base = Fraction(1, 48000)
    t = np.arange(n * FRAME) / 48000
    pcm = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    out: list[bytes] = []
    for i in range(n):
        frame = av.AudioFrame.from_ndarray(pcm[i * FRAME:(i + 1) * FRAME].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * FRAME, Fraction(1, 48000)
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def _decode(packets: list[bytes]) -> np.ndarray:
    dec = av.CodecContext.create("libopus", "r")
    dec.format, dec.layout, dec.sample_rate = "s16", "mono", 48000
    return np.concatenate([f.to_ndarray().reshape(-1) for p in packets for f in dec.decode(av.Packet(p))])


def test_aiortc_holds_a_packet_back_and_falls_behind_for_good_after_one_loss() -> None:
    """Why the buffer is ours: aiortc's (here with prefetch 1) keeps one packet back, and
    after one lost packet it stays 14 packets (280 ms) behind."""
    lags = _lags(JitterBuffer(capacity=16, prefetch=1), lost={10})
    assert set(lags[1:9]) == {1}
    assert lags[-10:] == [14] * 10


def test_each_packet_goes_out_at_once_and_a_loss_costs_two_packets_once() -> None:
    buffer = InOrderAudio(wait=2)
    lags = _lags(buffer, lost={10, 30, 31})
    assert lags[:10] == [0] * 10
    assert lags[10:12] == [None, None] and lags[12] == 2  # waited for 11 two packets, then gave up
    assert set(lags[13:28]) == {0}  # and is not behind after it
    assert lags[-10:] == [0] * 10
    assert buffer.skipped == 3


def test_a_reordered_packet_is_waited_for_and_the_backlog_goes_out_as_one_opus_packet() -> None:
    payloads = _opus_packets(8)
    buffer = InOrderAudio(wait=2)
    out: list[bytes] = []
    for n in (0, 1, 3, 2, 4, 5, 6, 7):  # 2 comes after 3
        _, frame = buffer.add(_packet(n, payloads[n]))
        if frame is not None:
            out.append(frame.data)
    assert len(out) == 7 and out[2] == join_opus(payloads[2:4])
    joined, separate = _decode(out), _decode(payloads)
    assert len(joined) == len(separate) == 8 * FRAME
    assert np.array_equal(joined, separate)  # the same decoder output, sample for sample


def test_a_late_packet_is_dropped_and_the_sequence_wraps_and_may_jump() -> None:
    buffer = InOrderAudio(wait=1)
    assert buffer.add(_packet(0, origin=65534))[1] is not None
    assert buffer.add(_packet(2, origin=65534))[1] is None  # 65535 missing
    assert buffer.add(_packet(3, origin=65534))[1] is not None  # gave up on it (wrapped to 1)
    assert buffer.add(_packet(1, origin=65534))[1] is None and buffer.too_late == 1
    assert buffer.add(_packet(4, origin=65534))[1] is not None
    assert buffer.add(_packet(500, origin=65534))[1] is not None  # a jump: starts over there
    for n in range(17):  # a jump back: taken as late until it keeps coming
        frame = buffer.add(_packet(n, origin=100))[1]
    assert frame is not None


def test_frames_of_other_configurations_or_apart_in_time_are_not_joined() -> None:
    assert frame_samples(0x78) == 960 and frame_samples(0x08) == 960 and frame_samples(0xF8) == 960
    buffer = InOrderAudio(wait=3)
    buffer.add(_packet(0, b"\x78\x01"))
    for n, payload in ((2, b"\x08\x01"), (3, b"\x08\x02")):
        assert buffer.add(_packet(n, payload))[1] is None
    _, frame = buffer.add(_packet(1, b"\x78\x05"))
    assert frame is not None and frame.data == b"\x78\x05"  # 2 and 3 are SILK: not with it
    _, frame = buffer.add(_packet(4, b"\x08\x03"))
    assert frame is not None and frame.data == join_opus([b"\x08\x01", b"\x08\x02", b"\x08\x03"])


async def test_the_buffer_goes_into_a_fresh_receiver_only() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        assert set_audio_buffer(receiver, 0)
        assert isinstance(getattr(receiver, _ATTRIBUTE), InOrderAudio)
        other = pc.addTransceiver("audio", direction="recvonly").receiver
        assert set_audio_buffer(other, 1)
        assert getattr(other, _ATTRIBUTE)._prefetch == 1  # aiortc's own, for comparisons
        other_buffer = getattr(other, _ATTRIBUTE)
        other_buffer.add(_packet(0))
        assert not set_audio_buffer(other, 0)  # packets went through: left alone
        assert not set_audio_buffer(object(), 0)  # not aiortc's layout
    finally:
        await pc.close()
