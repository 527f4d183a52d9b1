"""What a client is told about its turns: engine events → protocol messages
(``server.protocol``), the avatar's state, and each turn's latency metrics.

Apart from ``server.peer`` because it is pure bookkeeping: no connection, no tasks, no
media. The peer feeds it the engine's events and the playout's callbacks, and it calls
``send``; what plays, and when, stays the peer's business.

State messages (``{"type": "state"}``), sent on change only::

    listening ──final transcript──▶ thinking ──first reply audio sent──▶ speaking
        ▲                                                                   │
        └────── playout of the reply finished, or the turn cancelled ───────┘

``speaking`` wins over ``thinking`` (a reply plays while the next turn is thought about).

A turn's messages: ``transcript`` (what the user said or typed), ``reply`` deltas
(``final`` false), then ``reply`` with the whole text and ``final`` true, then, once its
playout has finished, ``metrics`` with the engine's stage timings plus
``first_audio_sent_ms`` / ``first_frame_sent_ms`` (from ``speech_end``, else ``asr_start``,
else the moment the typed text arrived, to the first reply audio / video frame handed to
the encoder), ``decision_to_first_audio_sent_ms`` (from the turn being decided: ``vad_end``)
and, for a spoken turn of a session that speculates, ``speculated`` (1: its reply was made
at the pause, ``engine.speculation``) and ``speculations_dropped``. A cancelled turn (interrupt, barge-in, a newer turn, an error) sends no
more ``reply`` and no ``metrics``, except the one ``reply`` with ``interrupted`` true and the
words heard, when it was cut (from ``ReplyInterrupted``); its end shows as the state
going back to ``listening``. A stage failing on a turn sends ``error`` with the stage in
plain words and an error id ("the language model failed (error id 1a2b3c4d)"), never the
exception; the engine's fallback line then comes as a reply of a new turn. The server's
counters still count a cut, with the stage timings it reached (``TurnMetrics.turn_cut``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from avatarchat.engine.events import (
    NO_TURN,
    ErrorEvent,
    Event,
    ReplyEnd,
    ReplyInterrupted,
    ReplyText,
    TimingMark,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.turn import stage_timings
from avatarchat.server import protocol
from avatarchat.server.errors import client_message

State = Literal["listening", "thinking", "speaking"]

#: The stages in the words a client's error message uses.
STAGE_WORDS = {
    "vad": "listening",
    "asr": "speech recognition",
    "s2s": "the speech model",
    "llm": "the language model",
    "tts": "the voice",
    "avatar": "the avatar",
}

#: Where a turn's ``first_*_sent_ms`` count from: the first of these marks it has.
LATENCY_STARTS = ("speech_end", "asr_start", "text_received")


class TurnMetrics(Protocol):
    """What the reporter tells the server's counters (``server.metrics.Metrics``)."""

    def turn_done(self, timings_ms: dict[str, float]) -> None: ...

    def turn_cut(self, reason: str, timings_ms: dict[str, float]) -> None: ...

    def error(self, stage: str) -> None: ...


@dataclass
class _Turn:
    """What is kept of one turn for its messages and metrics."""

    marks: dict[str, float] = field(default_factory=dict)
    reply: str = ""
    transcribed: bool = False  # its final transcript came out: the avatar is thinking
    ended: bool = False  # ReplyEnd came out
    speaking: bool = False  # its reply audio is being sent


def turn_timings(marks: dict[str, float]) -> dict[str, float]:
    """A turn's ``metrics``: the engine's stage timings plus the two sent-to-encoder latencies."""
    timings = stage_timings(marks)
    start = next((marks[m] for m in LATENCY_STARTS if m in marks), None)
    if start is not None:
        for name in ("first_audio_sent", "first_frame_sent"):
            if name in marks:
                timings[f"{name}_ms"] = round((marks[name] - start) * 1000.0, 1)
    if "vad_end" in marks and "first_audio_sent" in marks:
        # What the user still waits once the turn is decided (~0 for a ready speculation).
        timings["decision_to_first_audio_sent_ms"] = round((marks["first_audio_sent"] - marks["vad_end"]) * 1000.0, 1)
    return timings


class TurnReporter:
    """One peer's per-turn records and the messages they make.

    Owns nothing but those records; a turn's record goes when its playout finishes or the
    turn is cut or cancelled. Everything runs on the event loop; nothing here raises for
    a turn it has no record of (events of a dropped turn may still be on their way).
    """

    def __init__(self, send: Callable[[dict[str, Any]], None], metrics: TurnMetrics | None = None,
                 speculation: Callable[[int], tuple[int, int] | None] | None = None) -> None:
        self._send = send
        self._metrics = metrics
        #: (adopted, dropped) speculations of a turn; None when the session does not speculate.
        self._speculation = speculation
        self._turns: dict[int, _Turn] = {}
        self._state = ""

    # -- from the engine -------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Report one engine event. Media events (audio, frames) are ignored: the peer
        plays them. For ``ReplyEnd`` call this before ``Playout.end``, which may call
        ``finished`` at once (a reply without audio), and the final text must go first."""
        if isinstance(event, TimingMark):
            self._turn(event.turn).marks.setdefault(event.name, event.at)
        elif isinstance(event, UserTranscript):
            self._send(protocol.transcript(event.turn, event.text, event.final))
            if event.final:
                # Older replies in flight were superseded by turn-taking when the ASR produced this.
                self._turn(event.turn).transcribed = True
                self.send_state()
        elif isinstance(event, ReplyText):
            self._turn(event.turn).reply += event.text
            self._send(protocol.reply(event.turn, event.text, final=False))
        elif isinstance(event, ReplyEnd):
            record = self._turn(event.turn)
            record.ended = True
            self._send(protocol.reply(event.turn, event.text or record.reply, final=True, truncated=event.truncated))
        elif isinstance(event, ErrorEvent):
            # What failed and the id the log has it under; never the exception text, which
            # can name a server URL or a path.
            what = f"{STAGE_WORDS.get(event.stage, 'a stage of the pipeline')} failed"
            self._send(protocol.error(client_message(what, event.error_id), None if event.turn == NO_TURN else event.turn))
            if self._metrics is not None:
                self._metrics.error(event.stage)
        elif isinstance(event, ReplyInterrupted):
            # Cut part-way: the client is told the words heard (if it was shown any of it),
            # and the server's counters count the cut.
            if event.shown:
                self._send(protocol.reply(event.turn, event.heard_text, final=True, interrupted=True))
            self.drop(event.turn, event.reason)
        elif isinstance(event, TurnCancelled):
            self.drop(event.turn)

    def text_received(self, turn: int) -> None:
        """A typed message started ``turn``: its latencies count from now."""
        self._turn(turn).marks["text_received"] = time.monotonic()

    def drop(self, turn: int, cut: str | None = None) -> None:
        """``turn`` was cancelled, or its reply ``cut`` off for that reason: no more messages
        or metrics for it; the server's counters still count a cut and the timings it reached."""
        record = self._turns.pop(turn, None)
        if cut is not None and record is not None and self._metrics is not None:
            self._metrics.turn_cut(cut, turn_timings(record.marks))
        self.send_state()

    # -- from the playout (``PlaybackListener`` callbacks, on the loop) ----------------

    def started(self, turn: int, at: float) -> None:
        record = self._turns.get(turn)
        if record is not None:
            record.marks.setdefault("first_audio_sent", at)
            record.speaking = True
        self.send_state()

    def first_frame(self, turn: int, at: float) -> None:
        record = self._turns.get(turn)
        if record is not None:
            record.marks.setdefault("first_frame_sent", at)

    def finished(self, turn: int) -> None:
        record = self._turns.pop(turn, None)
        if record is not None and record.ended:
            timings = turn_timings(record.marks)
            outcome = self._speculation(turn) if self._speculation is not None else None
            extra = {}
            if outcome is not None and "speech_end" in record.marks:
                extra = {"speculated": outcome[0], "speculations_dropped": outcome[1]}
            self._send(protocol.metrics(turn, {**timings, **extra}))
            if self._metrics is not None:
                self._metrics.turn_done(timings)
        self.send_state()

    # -- state -----------------------------------------------------------------------

    def send_state(self, force: bool = False) -> None:
        """Send the state if it changed (``force``: anyway, e.g. to a channel just opened)."""
        turns = self._turns.values()
        value: State
        if any(t.speaking for t in turns):
            value = "speaking"
        elif any(t.transcribed for t in turns):
            value = "thinking"
        else:
            value = "listening"
        if value != self._state or force:
            self._state = value
            self._send(protocol.state(value))

    def _turn(self, turn: int) -> _Turn:
        return self._turns.setdefault(turn, _Turn())
