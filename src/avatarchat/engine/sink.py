"""The reply sink: the small interface between the engine and whatever plays a reply.

Modelled on livekit-agents' ``AudioOutput``. The engine (``engine.conversation``) feeds a
sink the reply of each turn (audio chunks placed at their ``offset`` on the reply's own
timeline, avatar frames at their ``pts`` on the same timeline, then the end), and asks it,
when the user takes the floor, to duck, restore, or ``clear`` a reply and say how much of it
was heard. The sink tells the engine when a reply starts and finishes playing.

A sink plays replies one at a time, in turn order; a reply that arrives while another plays
waits. Every method returns at once and runs on the event loop. Sinks: the WebRTC playout
(``server.tracks.Playout``), the WebSocket transport's, ``talk``'s file sink, and
``avatarchat.testing.FakeSink`` in virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from avatarchat.engine.events import AvatarFrame, AvatarPose, ReplyAudio


def _ignore_start(turn: int, at: float) -> None:
    pass


def _ignore_finish(turn: int, position: float, interrupted: bool) -> None:
    pass


@dataclass
class PlaybackListener:
    """What a sink reports, on the loop, in the engine clock's seconds.

    ``started(turn, at)``: the reply's first sample went out to the user.
    ``first_frame(turn, at)``: its first avatar frame did.
    ``finished(turn, position, interrupted)``: the reply is done: played to its end (after
    ``end``), or cleared part-way (``interrupted``); ``position`` is the seconds of it heard.
    Called once per reply that was added to the sink.
    """

    started: Callable[[int, float], None] = _ignore_start
    first_frame: Callable[[int, float], None] = _ignore_start
    finished: Callable[[int, float, bool], None] = _ignore_finish


class ReplySink(Protocol):
    """What plays replies. ``listener`` is set by the engine before the first reply."""

    listener: PlaybackListener

    def add_audio(self, chunk: ReplyAudio) -> None:
        """Queue ``chunk`` at ``chunk.offset`` on its turn's reply (a new turn is queued)."""

    def add_frame(self, frame: AvatarFrame | AvatarPose) -> None:
        """Queue an avatar frame (an image, or a pose for a client that draws the avatar)
        to show at ``frame.pts`` on its turn's reply."""

    def end(self, turn: int) -> None:
        """Nothing more comes for ``turn``; it finishes once all of it has played."""

    def clear(self, turn: int) -> float:
        """Stop ``turn``'s reply now (queued or playing; later input of it is ignored) and
        return the seconds of it the user heard (0.0 for a reply that never played)."""

    def duck(self, volume: float) -> None:
        """Fade the reply audio to ``volume`` (0..1) within a few tens of milliseconds."""

    def restore(self) -> None:
        """Fade the reply audio back to full volume."""

    @property
    def playing(self) -> int | None:
        """The turn whose reply the user is hearing now, if any."""

    @property
    def turns(self) -> list[int]:
        """Turns with a reply queued or playing, oldest first."""
