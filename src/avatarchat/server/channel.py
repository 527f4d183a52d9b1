"""Client messages of any transport, and one peer's ``events`` data channel.

``MessageGate`` is the one way in for client messages, over WebRTC's data channel and the
WebSocket's text frames alike: every client message, whatever its bytes, gets its effect
(``on_message`` with a typed, validated message) or one ``error`` message, except that a
run of messages over ``server.message_rate`` gets one ``error`` in all and is dropped
unread; nothing it does raises into the transport.

``EventsChannel`` is the data channel's side: what the server sends before the client's
channel opens is kept (the newest ``MAX_PENDING_MESSAGES``) and sent on opening; its
messages go through a ``MessageGate``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCDataChannel

from avatarchat.server import protocol
from avatarchat.server.errors import client_message, log_error
from avatarchat.server.ratelimit import Admit, MessageRate
from avatarchat.server.settings import ServerSettings

#: Messages kept for a data channel that is not open yet; older ones are dropped.
MAX_PENDING_MESSAGES = 64
#: How long ``farewell`` gives its message to leave before the connection goes.
FAREWELL_S = 0.5

ClientMessage = protocol.TextMessage | protocol.InterruptMessage | protocol.PingMessage


class MessageGate:
    """The rate limit, the strict parser and the dispatch of one session's client messages.

    ``on_message`` is called on the loop for each valid message; what it raises is logged
    under an error id and the client told the id. ``send`` takes the server's replies
    (``error`` messages). ``clock`` times the rate limit (tests pass a virtual one).
    """

    def __init__(self, settings: ServerSettings, on_message: Callable[[ClientMessage], None],
                 send: Callable[[dict[str, Any]], None], logger: logging.Logger | logging.LoggerAdapter[Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_message = on_message
        self._send = send
        self._log = logger
        self._rate = MessageRate(settings.message_rate.per_s, settings.message_rate.burst, clock)

    @property
    def dropped(self) -> int:
        """Messages dropped over the rate limit so far."""
        return self._rate.dropped

    def admitted(self) -> bool:
        """Spend one message of the rate limit: False (and the client told once per run)
        when the message is to be dropped unread."""
        admit = self._rate.admit()
        if admit is Admit.REFUSE:
            self._log.info("client messages over the rate limit: dropping them")
            self._send(protocol.error(self._rate.message()))
        return admit is Admit.PASS

    def receive(self, raw: str | bytes) -> None:
        """One message from the client. Never raises."""
        if not self.admitted():
            return
        try:
            message = protocol.parse_client_message(raw)
        except protocol.ProtocolError as exc:
            self._send(protocol.error(str(exc)))
            return
        try:
            self._on_message(message)
        except Exception:
            error_id = log_error(self._log, "handling a %s message failed", message.type)
            self._send(protocol.error(client_message(f"the {message.type} message failed", error_id)))

    def refuse(self, text: str) -> None:
        """A message the transport dropped before parsing (too big, the wrong kind): one
        ``error`` saying ``text``, within the rate limit like any other message."""
        if self.admitted():
            self._send(protocol.error(text))


class EventsChannel:
    """See the module docstring. ``on_message`` is called on the loop for each valid
    message (``MessageGate``)."""

    LABEL = "events"

    def __init__(self, settings: ServerSettings, on_message: Callable[[ClientMessage], None],
                 on_open: Callable[[], None], logger: logging.Logger | logging.LoggerAdapter[Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_open = on_open
        self._log = logger
        self._gate = MessageGate(settings, on_message, self.send, logger, clock)
        self._channel: RTCDataChannel | None = None
        self._pending: list[str] = []

    @property
    def dropped(self) -> int:
        """Messages dropped over the rate limit so far."""
        return self._gate.dropped

    def attach(self, channel: RTCDataChannel) -> bool:
        """Use ``channel`` if it is the first one labelled ``events``; False if ignored."""
        if channel.label != self.LABEL or self._channel is not None:
            self._log.info("ignoring data channel %r", channel.label[:40])
            return False
        self._channel = channel
        channel.on("message", self.receive)
        if channel.readyState == "open":
            self._opened()
        else:
            channel.on("open", self._opened)
        return True

    def _opened(self) -> None:
        self._on_open()
        pending, self._pending = self._pending, []
        for text in pending:
            self._send_text(text)

    # -- to the client ---------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        text = protocol.encode_or_skip(message, self._log)
        if text is not None:
            self._send_text(text)

    def _send_text(self, text: str) -> None:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            # Kept until the client's channel opens; a client that never opens one
            # only loses the oldest messages.
            self._pending = (self._pending + [text])[-MAX_PENDING_MESSAGES:]
            return
        try:
            channel.send(text)
        except Exception as exc:  # a channel closing under us: the peer is closing too
            self._log.debug("send failed: %s", exc)

    async def farewell(self, text: str) -> None:
        """Send one last ``error`` if the channel is open, and give it a moment to leave."""
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        self.send(protocol.error(text))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FAREWELL_S
        # Bounded: aiortc hands the message to SCTP in a task of its own; an ABORT sent
        # before that would drop it.
        while channel.bufferedAmount and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)

    # -- from the client -------------------------------------------------------------

    def receive(self, raw: str | bytes) -> None:
        """One message from the client. Never raises."""
        self._gate.receive(raw)

    def oversize(self, stream_id: int, size: int) -> None:
        """A message too big for the protocol was dropped in SCTP reassembly (``SctpGuard``)."""
        channel = self._channel
        if channel is None or channel.id != stream_id:
            return  # another channel: nobody listens there
        self._gate.refuse(f"message of {size}+ bytes is too big (limit {protocol.MAX_MESSAGE_BYTES})")
