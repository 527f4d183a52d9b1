"""A reply started at the pause, before the end of the turn is decided (LiveKit calls it
preemptive generation).

When the pause's transcript comes (``UserTranscript(final=False, speech_end=...)``), the
user has most often finished: ``Speculator`` then starts a *hidden* turn S on those words,
and the LLM, the voice and the avatar work on it while the VAD waits out the hangover. What
S makes is held inside the session (``Speculations``), never shown to a transport:

- the user's turn T ends at that same pause with those same words: S is *adopted*. T's
  final transcript comes out at once, then everything S made so far, relabelled as turn T,
  then the rest of S as it comes; T's transcript is not answered a second time. The user
  hears the answer the moment the turn is decided, not an LLM and a TTS later;
- the user goes on (voice after the pause, a new pause, another end, a cancel): S is
  cancelled (``Session.cancel_turn``, with ``SPECULATION_DROPPED``): nothing of it was heard
  or shown, and the LLM forgets the exchange (``ChatLLM`` on that reason).

The turn ids of hidden turns never leave the session: adopted, S is T outside (events out,
``ReplyInterrupted`` and ``cancel_turn`` in). The cost is CPU for the speculations dropped;
the session counts them (``Speculator.used`` / ``dropped``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Protocol

from avatarchat.engine.clock import SAME_INSTANT_S
from avatarchat.engine.endofturn import looks_unfinished
from avatarchat.engine.events import (
    Event,
    ReplyEnd,
    SpeechEnded,
    SpeechOngoing,
    SpeechStarted,
    TimingMark,
    TurnCancelled,
    UserTranscript,
)

log = logging.getLogger(__name__)

#: The reason of a hidden turn's ``TurnCancelled``: the user went on, nothing was heard.
SPECULATION_DROPPED = "speculation dropped"
#: How many user turns' outcomes a speculator remembers (for their metrics, sent once played).
_KEEP_OUTCOMES = 32


@dataclass
class Speculations:
    """The session's book of hidden turns: what is held, and which turn is which outside.

    ``outward(event)`` says what of an event leaving the last stage comes out of the session
    now. Owned by the session; on the event loop only.
    """

    #: Hidden turn -> the user turn it answers, while not adopted.
    hidden: dict[int, int] = field(default_factory=dict)
    held: dict[int, list[Event]] = field(default_factory=dict)
    #: Adopted speculations whose events are still on their way out (relabelled), -> user turn.
    alias: dict[int, int] = field(default_factory=dict)
    #: User turns whose final transcript the stages only pass on, with the copy of it put out
    #: at adoption; until the pipeline's own leaves the last stage.
    answered: dict[int, UserTranscript] = field(default_factory=dict)
    #: Recent adoptions, user turn -> speculation: what the stages call a reply that a cut or
    #: a cancel may still concern while it plays (bounded).
    pairs: dict[int, int] = field(default_factory=dict)

    def start(self, spec: int, turn: int) -> None:
        self.hidden[spec] = turn
        self.held[spec] = []

    def inner(self, turn: int) -> int:
        """The turn the stages work on for ``turn`` (its adopted speculation, or itself)."""
        return self.pairs.get(turn, turn)

    def outer(self, turn: int) -> int:
        """The turn the outside knows ``turn`` by (an adopted speculation is its user turn)."""
        if turn in self.alias:
            return self.alias[turn]
        return next((t for t, s in self.pairs.items() if s == turn), turn)

    def drop(self, spec: int) -> None:
        self.hidden.pop(spec, None)
        self.held.pop(spec, None)

    def adopt(self, spec: int, final: UserTranscript, at: float) -> list[Event]:
        """Make ``spec`` the reply of ``final``'s turn; returns what comes out now: the final
        transcript, a ``speculation_adopted`` mark, and what ``spec`` made so far."""
        turn = self.hidden.pop(spec)
        self.alias[spec] = turn
        self.pairs[turn] = spec
        while len(self.pairs) > _KEEP_OUTCOMES:
            del self.pairs[next(iter(self.pairs))]
        early = dataclasses.replace(final)  # a copy: the pipeline's own is dropped at the exit
        self.answered[turn] = early
        out: list[Event] = [early, TimingMark(turn, "speculation_adopted", at=at)]
        for event in self.held.pop(spec, []):
            out += self.outward(event)
        return out

    def outward(self, event: Event) -> list[Event]:
        """What of ``event`` (out of the last stage, not of a cancelled turn) comes out."""
        turn = event.turn
        if turn in self.hidden:
            if not isinstance(event, TurnCancelled):
                self.held[turn].append(event)
            return []
        outer = self.alias.get(turn)
        if outer is not None:
            if isinstance(event, UserTranscript):
                return []  # the words the speculation was started on: the user's own came out
            if isinstance(event, ReplyEnd | TurnCancelled):
                del self.alias[turn]  # its last event
            return [dataclasses.replace(event, turn=outer)]
        early = self.answered.get(turn)
        if early is not None and isinstance(event, UserTranscript) and event.final and event is not early:
            del self.answered[turn]  # the pipeline's own copy: it has passed every stage
            return []
        return [event]

    def forget(self, spec: int, turn: int) -> None:
        """The adopted ``spec`` of ``turn`` was cancelled with it: nothing more comes out."""
        self.alias.pop(spec, None)
        self.answered.pop(turn, None)


class SpeculationHost(Protocol):
    """What the speculator asks of its session."""

    def speculate(self, turn: int, text: str) -> int:
        """Start a hidden turn answering ``text`` for ``turn``; returns its id."""

    def adopt(self, spec: int, final: UserTranscript) -> None:
        """Make the hidden turn ``spec`` the reply of ``final``'s turn."""

    def cancel_turn(self, turn: int, reason: str = "interrupted") -> bool:
        """Cancel a turn (a hidden one silently)."""


@dataclass
class _Active:
    turn: int
    spec: int
    speech_end: float
    text: str


class Speculator:
    """Decides when a session speculates, adopts, and drops; see the module docstring.

    Fed on the control lane (``Session.listen`` with ``WATCHES``). One speculation at a
    time: a new pause drops the old one. Not for words that dangle ("... and the"): such a
    pause waits ``unfinished_ms``, and the user mostly goes on.
    """

    WATCHES: tuple[type[Event], ...] = (UserTranscript, SpeechOngoing, SpeechEnded, SpeechStarted, TurnCancelled)

    def __init__(self, host: SpeculationHost, *, language: str = "en") -> None:
        self.host = host
        self.language = language
        self._active: _Active | None = None
        #: The newest voice heard: (turn, captured until), so a late transcript is not used.
        self._voiced: tuple[int, float] | None = None
        self.started = 0
        self.used = 0
        self.dropped = 0
        #: User turn -> (adopted 0/1, speculations dropped), for the recent turns.
        self._outcomes: dict[int, tuple[int, int]] = {}

    def outcome(self, turn: int) -> tuple[int, int]:
        """(1 if ``turn``'s reply was a speculation it adopted, else 0; how many of its
        speculations were dropped) for one of the last ``_KEEP_OUTCOMES`` user turns."""
        return self._outcomes.get(turn, (0, 0))

    def _count(self, turn: int, used: int = 0, dropped: int = 0) -> None:
        u, d = self._outcomes.pop(turn, (0, 0))
        self._outcomes[turn] = (u + used, d + dropped)
        while len(self._outcomes) > _KEEP_OUTCOMES:
            del self._outcomes[next(iter(self._outcomes))]

    def on_event(self, event: Event) -> None:
        a = self._active
        if isinstance(event, SpeechOngoing):
            self._voiced = (event.turn, event.voiced_until)
        if isinstance(event, UserTranscript):
            if not event.final and event.speech_end is not None:
                self._pause(event, event.speech_end)
            elif event.final and a is not None and event.turn == a.turn:
                if event.text.strip() == a.text:
                    self._active = None
                    self.used += 1
                    self._count(a.turn, used=1)
                    self.host.adopt(a.spec, event)
                else:
                    self._drop("other words")
        elif a is None:
            return
        elif isinstance(event, TurnCancelled):
            if event.turn == a.spec:
                self._active = None  # cancelled elsewhere (an error, the interrupt button)
            elif event.turn == a.turn:
                self._drop(event.reason)
        elif isinstance(event, SpeechStarted):
            self._drop("a new turn")
        elif event.turn != a.turn:
            return
        elif isinstance(event, SpeechOngoing) and event.voiced_until > a.speech_end + SAME_INSTANT_S:
            self._drop("the user went on")
        elif isinstance(event, SpeechEnded) and abs(event.speech_end - a.speech_end) > SAME_INSTANT_S:
            self._drop("a later end")

    def _pause(self, event: UserTranscript, speech_end: float) -> None:
        if self._active is not None:
            self._drop("a new pause")
        text = event.text.strip()
        if not text or looks_unfinished(text, self.language) is True:
            return
        if self._voiced is not None and self._voiced[0] == event.turn and self._voiced[1] > speech_end + SAME_INSTANT_S:
            return  # a transcript that came after the user went on: its pause is over
        spec = self.host.speculate(event.turn, text)
        self.started += 1
        self._active = _Active(event.turn, spec, speech_end, text)

    def _drop(self, why: str) -> None:
        a, self._active = self._active, None
        if a is None:
            return
        self.dropped += 1
        self._count(a.turn, dropped=1)
        log.debug("speculation %s for turn %s dropped: %s", a.spec, a.turn, why)
        self.host.cancel_turn(a.spec, SPECULATION_DROPPED)
