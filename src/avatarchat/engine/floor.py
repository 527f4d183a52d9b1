"""The cut: stopping the avatar's reply when the user takes the floor, keeping what was heard.

``ReplyFloor`` is the ``Floor`` that ``engine.turntaking.TurnTaking`` acts on: a session's
replies as the engine made them and as the ``ReplySink`` plays them. A cut (voice
barge-in, the interrupt button, a typed message, a newer question) does, per reply turn,
all at once on the loop:

1. clears it from the sink, which says how many seconds of it the user heard;
2. puts ``ReplyInterrupted(turn, heard_text, …)`` on the session's control lane: the LLM
   handler keeps only the words heard in its history (marked ``[interrupted]``; if none
   were and the user went on talking, the question is asked again with the next one), the
   avatar handler closes the mouth from the frame on screen, and the transport tells the
   client the words heard if it had shown any of the reply;
3. cancels the turn in the engine (LLM generation, queued TTS, avatar rendering), if its
   engine part is still running; its ``TurnCancelled`` comes out after the
   ``ReplyInterrupted``.

A reply whose every word had been heard (only its closing frames were left) is not cut.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from avatarchat.engine.events import Event, ReplyAudio, ReplyInterrupted, ReplyText
from avatarchat.engine.heard import SpokenChunk, heard_text
from avatarchat.engine.session import Session
from avatarchat.engine.sink import ReplySink

log = logging.getLogger(__name__)

#: Cuts by which the user went on talking (or typing): a question whose reply they heard
#: nothing of is asked again as part of the next one. Not the interrupt button's.
CONTINUED = frozenset({"barge-in", "superseded", "text"})
#: A reply heard to within this much of its end counts as heard whole.
WHOLE_S = 0.02


class ReplyFloor:
    """A session's replies as turn-taking sees them. Owns nothing but its per-turn records
    (the spoken chunks of replies in flight, and which turns' text was shown), which
    ``forget`` drops once a reply ends.

    ``heard_whole(turn)`` is called when a cut finds every word of a reply heard already
    (only its closing frames were left): nothing was cut off, and no ``ReplyInterrupted``
    is made."""

    def __init__(self, session: Session, sink: ReplySink,
                 heard_whole: Callable[[int], None] = lambda turn: None) -> None:
        self._session = session
        self._sink = sink
        self._heard_whole = heard_whole
        self._spoken: dict[int, list[SpokenChunk]] = {}
        self._shown: set[int] = set()

    def note(self, event: Event) -> None:
        """Record a reply event on its way to the sink and the client (ReplyText, ReplyAudio)."""
        if isinstance(event, ReplyAudio):
            self._spoken.setdefault(event.turn, []).append(SpokenChunk.of(event))
        elif isinstance(event, ReplyText):
            self._shown.add(event.turn)

    def forget(self, turn: int) -> None:
        """The reply of ``turn`` ended (played out, or cancelled): its records go."""
        self._spoken.pop(turn, None)
        self._shown.discard(turn)

    # -- the Floor protocol --------------------------------------------------------------

    def playing(self) -> int | None:
        return self._sink.playing

    def replies(self) -> list[int]:
        return sorted(set(self._session.open_turns) | set(self._sink.turns))

    def duck(self, volume: float) -> None:
        self._sink.duck(volume)

    def restore(self) -> None:
        self._sink.restore()

    def cut(self, before: int | None, reason: str) -> list[int]:
        turns = [t for t in self.replies() if before is None or t < before]
        for turn in turns:
            self._cut_one(turn, reason)
        return turns

    def dismiss(self, turn: int, reason: str) -> None:
        self._session.cancel_turn(turn, reason)

    def _cut_one(self, turn: int, reason: str) -> None:
        on_screen = self._sink.playing == turn
        running = self._session.running(turn)  # False when its engine part had ended
        heard_s = self._sink.clear(turn)
        spoken = self._spoken.get(turn, [])
        if not running and spoken and heard_s >= max(c.offset + c.duration for c in spoken) - WHOLE_S:
            self.forget(turn)
            self._heard_whole(turn)
            return
        heard = heard_text(spoken, heard_s)
        self._session.signal(ReplyInterrupted(turn, heard, heard_s, on_screen, reason in CONTINUED, reason,
                                              shown=turn in self._shown))
        self._session.cancel_turn(turn, reason)
        log.info("cut turn %s (%s) after %.2f s heard: %r", turn, reason, heard_s, heard)
        self.forget(turn)
