"""Bounds on what one peer's data channels can make aiortc buffer, decode or fail on.

aiortc reassembles an SCTP message whole before anyone sees it (a 3 MB message is 3 MB in
memory before a size check can run), decodes text messages with a strict ``bytes.decode``,
and asserts on data-channel control messages; an exception there ends the whole DTLS
transport, so one message could end the sender's connection. ``SctpGuard`` sits on the one
``RTCSctpTransport`` a peer owns (instance attributes set on that object, nothing patched
module-wide) and promises:

* the answer advertises ``a=max-message-size`` of the limit, so a browser refuses to send
  a bigger message at all;
* a bigger message from a client that ignores it is dropped as soon as its fragments add up
  past the limit (not when it is whole): at most about ``limit`` bytes per stream, and
  ``MAX_BUFFERED_BYTES`` over all streams, wait in reassembly; the stream goes on with the
  next message, and ``on_oversize`` is told once per dropped message;
* a text message that is not UTF-8 reaches the channel as binary (the protocol parser then
  answers it with an error), and no data-channel message raises out of the transport.

Written against aiortc 1.16's private reassembly (``InboundStream``): the version is pinned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCSctpTransport
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    WEBRTC_BINARY,
    WEBRTC_STRING,
    RTCSctpCapabilities,
)
from aiortc.utils import uint16_add, uint16_gt

log = logging.getLogger(__name__)

#: Partial messages buffered over all of one association's streams before all are dropped.
MAX_BUFFERED_BYTES = 64 * 1024

#: ``on_oversize(stream_id, size_so_far)``
OversizeCallback = Callable[[int, int], None]


class SctpGuard:
    """Installed on one ``RTCSctpTransport`` (see the module docstring for what it promises)."""

    def __init__(self, sctp: RTCSctpTransport, max_message_bytes: int, on_oversize: OversizeCallback,
                 logger: logging.Logger | logging.LoggerAdapter[Any] = log) -> None:
        self.max_message_bytes = max_message_bytes
        self.dropped = 0
        self._sctp = sctp
        self._on_oversize = on_oversize
        self._log = logger
        self._dropping: dict[int, set[int]] = {}  # stream id -> ordered stream_seq being dropped
        self._finished: dict[int, set[int]] = {}  # stream id -> dropped seqs whose last fragment came
        self._unordered_tail: set[int] = set()  # streams whose dropped unordered message goes on
        self._receive_chunk = sctp._receive_data_chunk
        self._deliver = sctp._receive
        # Per-object attributes on the transport this peer owns: aiortc calls these through
        # ``self``, so the guard sees every DATA chunk and every reassembled message.
        sctp._receive_data_chunk = self._on_data_chunk  # type: ignore[method-assign]
        sctp._receive = self._on_message  # type: ignore[method-assign]
        sctp.getCapabilities = self._capabilities  # type: ignore[method-assign]

    def _capabilities(self) -> RTCSctpCapabilities:
        return RTCSctpCapabilities(maxMessageSize=self.max_message_bytes)

    async def _on_data_chunk(self, chunk: Any) -> None:
        await self._receive_chunk(chunk)  # dedup, SACK bookkeeping, reassembly, delivery
        stream = self._sctp._inbound_streams.get(chunk.stream_id)
        if stream is not None:
            await self._bound(chunk.stream_id, stream)
            if self._buffered() > MAX_BUFFERED_BYTES:
                for sid, other in list(self._sctp._inbound_streams.items()):
                    await self._bound(sid, other, limit=0)

    def _buffered(self) -> int:
        # aiortc's receive window shrinks by what sits in reassembly.
        return max(0, 1024 * 1024 - self._sctp._advertised_rwnd)

    async def _bound(self, sid: int, stream: Any, limit: int | None = None) -> None:
        """Drop partial messages of ``stream`` over ``limit`` bytes, and fragments of messages
        already dropped; then let the stream go on past dropped messages."""
        limit = self.max_message_bytes if limit is None else limit
        dropping = self._dropping.setdefault(sid, set())
        finished = self._finished.setdefault(sid, set())
        sizes: dict[int, int] = {}
        unordered = 0
        for c in stream.reassembly:
            if c.flags & SCTP_DATA_UNORDERED:
                unordered += len(c.user_data)
            else:
                sizes[c.stream_seq] = sizes.get(c.stream_seq, 0) + len(c.user_data)
        for seq, size in sizes.items():
            if size > limit and seq not in dropping:
                dropping.add(seq)
                self._refused(sid, size)
        shed_unordered = unordered > limit
        if shed_unordered and sid not in self._unordered_tail:
            self._refused(sid, unordered)
        keep, freed = [], 0
        for c in stream.reassembly:
            if c.flags & SCTP_DATA_UNORDERED:
                drop = self._drop_unordered(sid, c, shed_unordered)
            else:
                # Behind the stream's next sequence number: a late fragment of a message
                # already skipped; left there, it would block the stream for ever.
                drop = c.stream_seq in dropping or uint16_gt(stream.sequence_number, c.stream_seq)
                if drop and c.flags & SCTP_DATA_LAST_FRAG:
                    finished.add(c.stream_seq)
            if drop:
                freed += len(c.user_data)
            else:
                keep.append(c)
        if freed:
            stream.reassembly = keep
            self._sctp._advertised_rwnd += freed
        await self._skip_finished(sid, stream, dropping, finished)

    def _drop_unordered(self, sid: int, chunk: Any, shed: bool) -> bool:
        """Unordered fragments have no sequence number: a dropped message's later fragments
        are the ones without a first-fragment flag that follow it, up to its last one."""
        if shed:  # chunks come in TSN order: the last one seen says whether the message goes on
            if chunk.flags & SCTP_DATA_LAST_FRAG:
                self._unordered_tail.discard(sid)
            else:
                self._unordered_tail.add(sid)
            return True
        if sid in self._unordered_tail and not chunk.flags & SCTP_DATA_FIRST_FRAG:
            if chunk.flags & SCTP_DATA_LAST_FRAG:
                self._unordered_tail.discard(sid)
            return True
        return False

    async def _skip_finished(self, sid: int, stream: Any, dropping: set[int], finished: set[int]) -> None:
        """Step the stream's sequence number over dropped messages that have ended, and
        deliver the messages that were waiting behind them."""
        skipped = False
        while stream.sequence_number in finished:
            finished.discard(stream.sequence_number)
            dropping.discard(stream.sequence_number)
            stream.sequence_number = uint16_add(stream.sequence_number, 1)
            skipped = True
        if skipped:
            for message in stream.pop_messages():
                self._sctp._advertised_rwnd += len(message[2])
                await self._sctp._receive(*message)
        if not dropping and not finished:
            self._dropping.pop(sid, None)
            self._finished.pop(sid, None)

    def _refused(self, sid: int, size: int) -> None:
        self.dropped += 1
        self._log.info("dropped a data-channel message of %d+ bytes on stream %d (limit %d)",
                       size, sid, self.max_message_bytes)
        try:
            self._on_oversize(sid, size)
        except Exception:
            self._log.exception("on_oversize failed")

    async def _on_message(self, stream_id: int, pp_id: int, data: bytes) -> None:
        """A whole message (reassembled or in one chunk) on its way to its channel."""
        if pp_id in (WEBRTC_STRING, WEBRTC_BINARY) and len(data) > self.max_message_bytes:
            self._refused(stream_id, len(data))  # one big chunk: never fragmented
            return
        if pp_id == WEBRTC_STRING:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                pp_id = WEBRTC_BINARY  # the channel passes bytes; the parser refuses them
        try:
            await self._deliver(stream_id, pp_id, data)
        except Exception as exc:
            # A malformed control message (a bad label, an OPEN for an open stream): aiortc
            # raises before changing any state, so refusing it leaves the association sound.
            self._log.info("refused a malformed data-channel message on stream %d: %s", stream_id,
                           type(exc).__name__)
