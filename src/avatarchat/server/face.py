"""The face for a client that draws the avatar itself: parameters, not video.

In client mode (``server.avatar_mode``, the offer's ``avatar: client``, or a WebSocket's
``video=params``) the server renders nothing. ``FaceSender`` sends, a little ahead of time,
the face's parameters for every frame index ``k`` of the connection's media clock (frame k
shows at media time ``k / fps``, the same clock as the reply audio's RTP timestamps): a
reply's poses where a reply is on the playout schedule, the idle face (blinks, breathing,
the listening look, a cut reply's closing mouth) elsewhere. Rows already sent are
recomputed on every tick and sent again when they changed (a reply that starts, slips on an
underrun, or is cut; the listening look switching on), so the page only ever keeps the
latest row per frame and a cut closes the mouth at the media time the audio stops.

A reply's poses due within ``LEAD_S`` are sent as soon as they reach the playout (one tick
at the next turn of the loop, not at the next ``TICK_S``), and the playout starts a reply's
sound with the next audio frame (``Playout.client_draws``): with nothing rendered here, the
first audio need not wait for the face, and the face's rows still reach the page before
the voice they go with (the voice has a jitter buffer to cross, the rows do not).

Cost: a tick every ``TICK_S`` computes ``LEAD_S * fps`` idle poses (~0.05 ms each) and
sends one small message at most: well under 1 % of a core per idle session, where a
rendered, VP8-encoded video costs a third of one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from avatarchat.engine.conversation import Conversation
from avatarchat.server import protocol
from avatarchat.server.tracks import MediaClock, Playout

log = logging.getLogger(__name__)

#: How far ahead of the media clock rows are sent. The page plays the audio ~40-120 ms after
#: it is sent (network, jitter buffer), so rows are there long before they are shown, and a
#: change (a cut) sent at once reaches the page before the media time it concerns.
LEAD_S = 0.24
#: How often the rows are brought up to date.
TICK_S = 0.08
#: Rows are rounded to this many decimals (no visible difference; small, stable messages).
DECIMALS = 3


class FaceSender:
    """Sends one connection's face rows (``clock`` once, then ``face`` messages) until
    cancelled. ``send`` takes a protocol message; ``wall`` is the server's Unix clock."""

    def __init__(self, conversation: Conversation, playout: Playout, media: MediaClock, fps: int,
                 send: Callable[[dict[str, Any]], None], wall: Callable[[], float] = time.time) -> None:
        self.conversation = conversation
        self.playout = playout
        self.media = media
        self.fps = fps
        self.send = send
        self.wall = wall
        self._sent: dict[int, tuple[float, ...]] = {}
        self._running = False
        self._poke: asyncio.Handle | None = None
        self._since: float | None = None  # media time of rows due before now, still to send

    async def run(self) -> None:
        now = self.media.now()
        self.send(protocol.media_clock(self.wall() - now, self.fps, self.conversation.pose_names))
        self._running = True
        self.playout.client_draws(self._frames_arrived)
        try:
            while True:
                self.tick()
                await self.media.sleep_until(self.media.now() + TICK_S)
        finally:
            self._running = False
            self.playout.client_draws(None)
            if self._poke is not None:
                self._poke.cancel()

    def _frames_arrived(self, t: float) -> None:
        """A reply's poses from media time ``t`` on reached the playout: those due before
        the next tick go out at the loop's next turn (one tick for a burst of them)."""
        if self._running and t < self.media.now():
            # A reply that starts in the past of media time (its burst): its rows from then.
            self._since = t if self._since is None else min(self._since, t)
        if self._poke is None and self._running and t <= self.media.now() + LEAD_S:
            self._poke = asyncio.get_running_loop().call_soon(self._poked)

    def _poked(self) -> None:
        self._poke = None
        if self._running:
            self.tick()

    def tick(self) -> None:
        """Bring the rows of ``[now, now + LEAD_S]`` up to date on the client."""
        now = self.media.now()
        self.playout.show(now)  # what is on screen now: tells the listener of a reply's first frame
        since, self._since = self._since, None
        first = math.floor((now if since is None else min(now, since)) * self.fps)
        last = math.floor((now + LEAD_S) * self.fps)
        for k in [k for k in self._sent if k < first]:
            del self._sent[k]
        run: list[tuple[float, ...]] = []
        run_start = first
        for k in range(first, last + 1):
            row = self.row(k)
            if row is None or self._sent.get(k) == row:
                self._flush(run_start, run)
                run_start, run = k + 1, []
                continue
            self._sent[k] = row
            run.append(row)
        self._flush(run_start, run)

    def row(self, k: int) -> tuple[float, ...] | None:
        t = k / self.fps
        values = self.playout.pose_ahead(t)
        if values is None:
            values = self.conversation.idle_pose(t + self.media.t0)
        if values is None:
            return None
        return tuple(round(v, DECIMALS) if math.isfinite(v) else 0.0 for v in values)

    def _flush(self, k0: int, rows: list[tuple[float, ...]]) -> None:
        if rows:
            self.send(protocol.face(k0, rows))


def face_sender(conversation: Conversation, playout: Playout, media: MediaClock,
                send: Callable[[dict[str, Any]], None]) -> FaceSender | None:
    """The ``FaceSender`` of a connection in client mode; None without an avatar that makes
    poses (nothing to draw)."""
    fps = conversation.fps
    if fps is None or not conversation.pose_names:
        return None
    return FaceSender(conversation, playout, media, fps, send)
