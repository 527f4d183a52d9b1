"""The peer's side of turn-taking: cutting off the avatar's reply and keeping what was heard.

``PeerFloor`` is the ``Floor`` that ``engine.turntaking.TurnTaking`` acts on for one WebRTC
peer. A cut (voice barge-in, the interrupt button, a typed message, a newer question) does,
per reply turn, all at once on the loop:

1. notes how far the user heard it (``Playout.played_seconds``) before anything stops;
2. cancels the turn in the engine (LLM generation, queued TTS, avatar rendering), if its
   engine part is still running;
3. drops its playout (the next audio frame is a 10 ms fade, then silence; the next video
   frame is idle) and lets the avatar close its mouth from the frame on screen;
4. remembers in the LLM history only the words heard, marked ``[interrupted]``; if none
   were and the user went on talking, the question is asked again with the next one;
5. sends ``{"type": "reply", "final": true, "interrupted": true, "text": <heard>}`` if the
   client was shown any of the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from avatarchat.engine.events import Event, ReplyAudio, ReplyText
from avatarchat.engine.heard import SpokenChunk, heard_text
from avatarchat.engine.session import Session
from avatarchat.server import protocol
from avatarchat.server.tracks import Playout

log = logging.getLogger(__name__)

#: Cuts by which the user went on talking (or typing): a question whose reply they heard
#: nothing of is asked again as part of the next one. Not the interrupt button's.
CONTINUED = frozenset({"barge-in", "superseded", "text"})


class PeerFloor:
    """A peer's reply as turn-taking sees it. Owns nothing but its per-turn records
    (the spoken chunks of replies in flight), which ``forget`` drops once a reply ends.

    ``on_cut(turn, reason)`` is called for each turn a cut ends; ``reason`` is None when
    every word had been heard already, so nothing was cut off."""

    def __init__(self, session: Session, playout: Playout, handlers: list[Any],
                 send: Callable[[dict[str, Any]], None], on_cut: Callable[[int, str | None], None]) -> None:
        self._session = session
        self._playout = playout
        self._avatar = next((h for h in handlers if h.stage == "avatar"), None)
        self._llm = next((h for h in handlers if h.stage == "llm"), None)
        self._send = send
        self._on_cut = on_cut
        self._spoken: dict[int, list[SpokenChunk]] = {}
        self._shown: set[int] = set()  # turns whose reply text the client was sent

    # -- what the peer tells it --------------------------------------------------------

    def note(self, event: Event) -> None:
        """Record a reply event on its way to the client (call for ReplyText and ReplyAudio)."""
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
        return self._playout.playing

    def replies(self) -> list[int]:
        return sorted(set(self._session.open_turns) | set(self._playout.turns))

    def duck(self, volume: float) -> None:
        self._playout.duck(volume)

    def restore(self) -> None:
        self._playout.restore()

    def cut(self, before: int | None, reason: str) -> list[int]:
        def older(t: int) -> bool:
            return before is None or t < before

        turns = [t for t in self.replies() if older(t)]
        for turn in turns:
            self._cut_one(turn, reason)
        return turns

    def dismiss(self, turn: int, reason: str) -> None:
        self._session.cancel_turn(turn, reason)

    # -- one turn ------------------------------------------------------------------------

    def _cut_one(self, turn: int, reason: str) -> None:
        on_screen = self._playout.playing == turn
        heard_s = self._playout.played_seconds(turn)  # before stop: what reached the user
        running = self._session.cancel_turn(turn, reason)  # False when its engine part had ended
        self._playout.stop(turn)
        spoken = self._spoken.get(turn, [])
        if not running and spoken and heard_s >= max(c.offset + c.duration for c in spoken) - 0.02:
            # Every word was already heard (only the closing frames were left): not cut.
            self.forget(turn)
            self._on_cut(turn, None)
            return
        if on_screen and self._avatar is not None and hasattr(self._avatar, "halt"):
            ctx = self._session.context("avatar")
            if ctx is not None:
                self._avatar.halt(ctx, turn, heard_s)
        heard = heard_text(spoken, heard_s)
        remembered = False
        if self._llm is not None and hasattr(self._llm, "record_cut"):
            ctx = self._session.context("llm")
            if ctx is not None:
                remembered = self._llm.record_cut(ctx, turn, heard, continued=reason in CONTINUED)
        if turn in self._shown:
            self._send(protocol.reply(turn, heard, final=True, interrupted=True))
        log.info("cut turn %s (%s) after %.2f s heard: %r%s", turn, reason, heard_s, heard,
                 "" if remembered else " (not in LLM history)")
        self.forget(turn)
        self._on_cut(turn, reason)
