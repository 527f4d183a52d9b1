"""SctpGuard on a real aiortc RTCSctpTransport, fed DATA chunks in any order.

Loopback (tests/test_peer_hardening.py) delivers fragments in order; here the chunks are
handed to the transport's own receive path directly, out of order, with stragglers, so the
guard's bookkeeping (dropping a message part-way, stepping the stream past it, the receive
window) is checked where a real network would put it. The transport is real and never
started; only its delivery to the channels is replaced by a recorder, on this one object.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCSctpTransport
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    WEBRTC_BINARY,
    WEBRTC_DCEP,
    WEBRTC_STRING,
    DataChunk,
)

from avatarchat.server.sctpguard import SctpGuard

LIMIT = 4096
FRAG = 1000


class Rig:
    def __init__(self) -> None:
        dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
        self.sctp = RTCSctpTransport(dtls)
        self.sctp._last_received_tsn = 99  # as after the association's INIT: the next TSN is 100
        self.delivered: list[tuple[int, int, bytes]] = []
        self.refused: list[tuple[int, int]] = []
        self.rwnd0 = self.sctp._advertised_rwnd
        self.tsn = 100

        async def record(stream_id: int, pp_id: int, data: bytes) -> None:
            self.delivered.append((stream_id, pp_id, data))

        self.sctp._receive = record  # the recorder stands where the channels would be
        self.guard = SctpGuard(self.sctp, LIMIT, lambda sid, size: self.refused.append((sid, size)))

    def message(self, seq: int, size: int, *, stream: int = 1, ordered: bool = True,
                pp_id: int = WEBRTC_STRING, fill: bytes = b"x") -> list[DataChunk]:
        """The chunks of one message, with consecutive TSNs, in order."""
        data = (fill * size)[:size]
        parts = [data[i:i + FRAG] for i in range(0, len(data), FRAG)] or [b""]
        chunks = []
        for i, part in enumerate(parts):
            flags = (SCTP_DATA_FIRST_FRAG if i == 0 else 0) | (SCTP_DATA_LAST_FRAG if i == len(parts) - 1 else 0)
            chunk = DataChunk(flags | (0 if ordered else SCTP_DATA_UNORDERED))
            chunk.tsn, chunk.stream_id, chunk.stream_seq, chunk.protocol = self.tsn, stream, seq, pp_id
            chunk.user_data = part
            self.tsn += 1
            chunks.append(chunk)
        return chunks

    async def feed(self, chunks: list[DataChunk]) -> None:
        for chunk in chunks:
            await self.sctp._receive_data_chunk(chunk)

    def sizes(self) -> list[int]:
        return [len(d) for _, _, d in self.delivered]


def test_the_answer_advertises_the_limit() -> None:
    assert Rig().sctp.getCapabilities().maxMessageSize == LIMIT


async def test_an_oversized_message_is_dropped_in_flight_and_the_stream_goes_on() -> None:
    rig = Rig()
    a, big, c, d = rig.message(0, 3000), rig.message(1, 9000), rig.message(2, 500), rig.message(3, 2500)
    await rig.feed(a)
    # The big one's fragments out of order, the next messages arriving before its end.
    await rig.feed([big[1], big[0], big[3], big[2], big[4]])  # 5,000 bytes buffered: over the limit
    assert rig.refused == [(1, 5000)]
    assert rig.sctp._inbound_streams[1].reassembly == []  # not kept while the rest arrives
    await rig.feed(c + d[:1])
    assert rig.sizes() == [3000], "c waits behind the unfinished big one (ordered)"
    await rig.feed(big[5:8] + [big[8]] + d[1:])
    assert rig.sizes() == [3000, 500, 2500] and rig.refused == [(1, 5000)]
    assert rig.sctp._advertised_rwnd == rig.rwnd0  # every dropped byte given back


async def test_a_dropped_message_ending_before_the_ones_before_it_are_done() -> None:
    rig = Rig()
    a, big, c = rig.message(0, 2000), rig.message(1, 6000), rig.message(2, 100)
    await rig.feed([a[1]] + big + c)  # a's first fragment late: the big one ends while it waits
    assert rig.delivered == [] and len(rig.refused) == 1
    await rig.feed([a[0]])
    assert rig.sizes() == [2000, 100]
    assert rig.sctp._advertised_rwnd == rig.rwnd0


async def test_unordered_oversized_message_is_dropped_once_and_the_next_one_delivered() -> None:
    rig = Rig()
    big, small = rig.message(0, 20000, ordered=False), rig.message(0, 1500, ordered=False)
    await rig.feed(big + small)
    assert rig.sizes() == [1500] and len(rig.refused) == 1
    assert rig.sctp._advertised_rwnd == rig.rwnd0


async def test_many_partial_messages_over_many_streams_are_shed() -> None:
    rig = Rig()
    for stream in range(1, 40):  # each under the limit, 39 x 3,000 bytes buffered in all
        await rig.feed(rig.message(0, 4000, stream=stream)[:3])
    assert 1024 * 1024 - rig.sctp._advertised_rwnd <= 64 * 1024
    assert rig.refused  # the partial messages were dropped and their senders told


@pytest.mark.parametrize("payload", [b"\xff\xfe\xfd", b'{"type":"text","text":"\xc3("}'])
async def test_a_text_message_that_is_not_utf8_arrives_as_binary(payload: bytes) -> None:
    rig = Rig()
    chunk = rig.message(0, len(payload), fill=payload)
    await rig.feed(chunk)
    assert rig.delivered == [(1, WEBRTC_BINARY, payload)]


async def test_an_oversized_single_chunk_never_reaches_a_channel() -> None:
    rig = Rig()
    chunk = rig.message(0, 1)[0]
    chunk.user_data = b"y" * 9000  # one DATA chunk bigger than the limit, unfragmented
    await rig.feed([chunk])
    assert rig.delivered == [] and rig.refused == [(1, 9000)]


async def test_a_malformed_control_message_does_not_raise_out_of_the_transport() -> None:
    rig = Rig()
    delivered_by_aiortc: list[Any] = []
    rig.guard._deliver = rig.sctp._data_channel_receive  # aiortc's own DCEP handling this time
    rig.sctp.on("datachannel", delivered_by_aiortc.append)
    open_bad_label = bytes([3, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]) + b"\xff\xfe"
    await rig.feed(rig.message(0, len(open_bad_label), pp_id=WEBRTC_DCEP, fill=open_bad_label))
    ack_for_nothing = bytes([2])
    await rig.feed(rig.message(1, 1, stream=7, pp_id=WEBRTC_DCEP, fill=ack_for_nothing))
    assert delivered_by_aiortc == []
