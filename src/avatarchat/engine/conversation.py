"""A conversation: one engine session, the sink that plays its replies, and turn-taking.

What every transport needs and none should rebuild: the WebRTC peer, the WebSocket
connection, ``avatarchat talk`` and the fake-based tests each make a ``Conversation`` with
their ``ReplySink`` and feed it the user's audio and text. It owns:

* the engine ``Session`` (stages, control lane, cancellation);
* the pump from the session's output to the sink (audio, frames, ends, cancellations);
* turn-taking (``engine.turntaking``): speech that starts while a reply plays ducks it, and
  stops it once it has lasted ``session.barge_in.min_speech_ms`` or has words; a newer
  question supersedes older replies in flight; typed text and ``interrupt`` stop every reply;
* the cut (``engine.floor``): what was heard of a cut reply, as ``ReplyInterrupted`` on the
  control lane for the handlers and out to the transport.

Everything runs on the event loop, on the session's one clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.events import (
    NO_TURN,
    AvatarFrame,
    AvatarPose,
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    TurnCancelled,
    UserAudio,
)
from avatarchat.engine.floor import ReplyFloor
from avatarchat.engine.session import Session
from avatarchat.engine.sink import PlaybackListener, ReplySink
from avatarchat.engine.turntaking import TurnTaking

if TYPE_CHECKING:
    from avatarchat.engine.pipeline import Pipeline

log = logging.getLogger(__name__)


def _nothing(*_: Any) -> None:
    pass


@dataclass
class ConversationListener:
    """What a transport hears from its conversation, on the loop.

    ``event(e)``: every event the engine puts out (transcripts, reply text and audio, marks,
    errors, cancellations, ``ReplyInterrupted``), after the sink got its media.
    ``started(turn, at)`` / ``first_frame(turn, at)``: the sink began playing a reply's
    audio / showing its frames. ``finished(turn)``: a reply played to its end.
    ``heard_whole(turn)``: a cut found the reply heard to its last word (only its closing
    frames were left) and ended it; a reply cut part-way comes as a ``ReplyInterrupted`` event.
    """

    event: Callable[[Event], None] = _nothing
    started: Callable[[int, float], None] = _nothing
    first_frame: Callable[[int, float], None] = _nothing
    finished: Callable[[int], None] = _nothing
    heard_whole: Callable[[int], None] = _nothing


class Conversation:
    """See the module docstring. ``start()`` then feed it; ``close()`` ends everything it
    started (the pump, turn-taking's timer, the session's stages). Not thread-safe."""

    def __init__(self, pipeline: Pipeline, sink: ReplySink, listener: ConversationListener | None = None, *,
                 session_id: str | None = None, clock: Clock = REAL_CLOCK,
                 avatar_output: Literal["frames", "params"] = "frames") -> None:
        self.listener = listener or ConversationListener()
        self.clock = clock
        self.sink = sink
        self.session: Session = pipeline.session(session_id, clock=clock, avatar_output=avatar_output)
        self.floor = ReplyFloor(self.session, sink, lambda turn: self.listener.heard_whole(turn))
        barge = pipeline.config.session.barge_in
        self.turntaking = TurnTaking(self.floor, enabled=barge.enabled, min_speech_s=barge.min_speech_ms / 1000,
                                     duck_volume=barge.duck_volume, clock=clock.now, call_at=clock.call_at)
        self.session.listen(TurnTaking.WATCHES, self.turntaking.on_event)
        sink.listener = PlaybackListener(self._started, self._first_frame, self._finished)
        self._pump_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def id(self) -> str:
        return self.session.info.session_id

    async def start(self) -> None:
        await self.session.start()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name=f"pump-{self.id}")

    async def close(self) -> None:
        """Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.turntaking.close()
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
        for turn in self.sink.turns:
            self.sink.clear(turn)
        await self.session.close()

    # -- input ---------------------------------------------------------------------------

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Microphone audio: mono float32 in [-1, 1]."""
        self.session.push(UserAudio(NO_TURN, samples, sample_rate))

    def say(self, text: str) -> int:
        """A typed message: cuts every reply in flight, then starts a turn; returns its id."""
        self.turntaking.interrupt("text")
        return self.session.say(text)

    def interrupt(self, reason: str = "interrupt") -> list[int]:
        """The interrupt button: cut every reply in flight now; returns the turns cut."""
        return self.turntaking.interrupt(reason)

    # -- for transports --------------------------------------------------------------------

    @property
    def fps(self) -> int | None:
        """The avatar's frame rate; None without an avatar stage."""
        avatar = self.session.avatar
        return avatar.fps if avatar is not None else None

    def idle_frame(self, t: float) -> np.ndarray | None:
        """Blocking: the avatar between replies at clock time ``t`` (None: no avatar)."""
        return self.session.idle_frame(t)

    def idle_pose(self, t: float) -> tuple[float, ...] | None:
        """Cheap: the avatar's parameters between replies at clock time ``t`` (None: no
        avatar, or one that makes no poses)."""
        return self.session.idle_pose(t)

    @property
    def pose_names(self) -> tuple[str, ...]:
        """The names of the avatar's pose values (empty: no poses)."""
        avatar = self.session.avatar
        return avatar.pose_names if avatar is not None else ()

    # -- the pump and the sink's callbacks -------------------------------------------------

    async def _pump(self) -> None:
        async for event in self.session.events():
            try:
                self._route(event)
            except Exception:  # one bad event must not end the conversation
                log.exception("session %s: routing %s failed", self.id, type(event).__name__)

    def _route(self, event: Event) -> None:
        """Media to the sink, then the event to the transport. A ``ReplyEnd`` is told
        before the sink ends the turn, which may finish it at once (a reply without audio):
        its final text goes before its metrics."""
        if isinstance(event, ReplyAudio | ReplyText):
            self.floor.note(event)
        if isinstance(event, ReplyAudio):
            self.sink.add_audio(event)
        elif isinstance(event, AvatarFrame | AvatarPose):
            self.sink.add_frame(event)
        elif isinstance(event, TurnCancelled):
            self.sink.clear(event.turn)
            self.floor.forget(event.turn)
        self.listener.event(event)
        if isinstance(event, ReplyEnd):
            self.sink.end(event.turn)

    def _started(self, turn: int, at: float) -> None:
        self.turntaking.reply_started(turn)
        self.listener.started(turn, at)

    def _first_frame(self, turn: int, at: float) -> None:
        self.listener.first_frame(turn, at)

    def _finished(self, turn: int, position: float, interrupted: bool) -> None:
        # A cleared reply is forgotten by whoever cleared it (the floor's cut reads its
        # spoken chunks after ``clear``, which calls this from inside).
        if not interrupted:
            self.floor.forget(turn)
            self.listener.finished(turn)
