"""The transport-independent half of one client connection.

A transport (``server.peer`` for WebRTC, ``server.ws`` for the WebSocket) owns the media and
the wire; ``ClientSession`` owns everything else a client is served, so that both behave
the same by construction:

* the engine ``Conversation`` (session, turn-taking, the cut) over the transport's sink;
* the ``TurnReporter``: engine events and playback → protocol messages (state,
  transcripts, replies, metrics, errors), through the transport's ``send``;
* the client's messages, already rate-limited and parsed (``channel.MessageGate``): typed
  text, the interrupt button, pings;
* ``last_activity`` for the idle timer: it moves only on speech the VAD accepts, a
  transcript, or a valid ``text`` or ``interrupt`` message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.conversation import Conversation, ConversationListener
from avatarchat.engine.events import Event, SpeechOngoing, SpeechStarted, UserTranscript
from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.sink import ReplySink
from avatarchat.server import protocol
from avatarchat.server.channel import ClientMessage
from avatarchat.server.reporting import TurnReporter

#: Engine events that count as the user being there (speech the VAD accepted, a transcript):
#: mic noise, pings and refused messages do not.
ACTIVITY = (SpeechStarted, SpeechOngoing, UserTranscript)


class ClientSession:
    """See the module docstring. ``start()``, feed it, ``close()`` (idempotent).
    ``on_event``: the transport's own hook on every engine event, before the reporter."""

    def __init__(self, pipeline: Pipeline, sink: ReplySink, send: Callable[[dict[str, Any]], None], *,
                 session_id: str, logger: logging.Logger | logging.LoggerAdapter[Any],
                 metrics: Any | None = None, clock: Clock = REAL_CLOCK,
                 on_event: Callable[[Event], None] | None = None,
                 avatar_output: Literal["frames", "params"] = "frames") -> None:
        self.id = session_id
        self.log = logger
        self.last_activity = time.monotonic()
        self.report = TurnReporter(send, metrics, self._speculation)
        self._send = send
        report = self.report
        def on_engine_event(event: Event) -> None:
            if on_event is not None:  # the transport's own use first (a WebSocket's motion)
                on_event(event)
            report.on_event(event)

        listener = ConversationListener(event=on_engine_event, started=report.started,
                                        first_frame=report.first_frame, finished=report.finished,
                                        heard_whole=report.drop)
        self.conversation = Conversation(pipeline, sink, listener, session_id=session_id, clock=clock,
                                         avatar_output=avatar_output)
        self.conversation.session.listen(ACTIVITY, self._user_active)
        self._closed = False

    def _speculation(self, turn: int) -> tuple[int, int] | None:
        speculator = self.conversation.session.speculator
        return speculator.outcome(turn) if speculator is not None else None

    async def start(self) -> None:
        await self.conversation.start()

    async def close(self) -> None:
        self._closed = True
        await self.conversation.close()

    def push_mic(self, samples: np.ndarray, sample_rate: int) -> None:
        """Microphone audio (mono float32 in [-1, 1]) into the engine."""
        if not self._closed:
            self.conversation.push_audio(samples, sample_rate)

    def on_message(self, message: ClientMessage) -> None:
        """A valid client message (the gate refused the rest, and logs what this raises)."""
        if self._closed:
            return  # arrived while closing: the engine session may be gone already
        if isinstance(message, protocol.TextMessage):
            self.last_activity = time.monotonic()
            self.report.text_received(self.conversation.say(message.text))
        elif isinstance(message, protocol.InterruptMessage):
            self.last_activity = time.monotonic()
            self.conversation.interrupt("interrupt")
        else:
            self._send({"type": "pong", "t": message.t})

    def _user_active(self, _: Event) -> None:
        self.last_activity = time.monotonic()
