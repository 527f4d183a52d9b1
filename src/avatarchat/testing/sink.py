"""``FakeSink``: a ``ReplySink`` that plays replies in virtual time, for fast engine tests.

It keeps the promises of ``engine.sink.ReplySink`` on a ``FakeClock`` (any ``Clock`` will
do; a ``FakeClock`` makes the test instant): replies play one at a time in turn order, each
from the moment its first audio arrives (or the one before it finishes), at one second of
audio per second of the clock. A reply whose audio has not arrived yet stalls, as a real
playout underruns, and goes on when more comes. ``clear`` says how many seconds were heard.

What a test reads: ``log`` (what happened, when), ``volume``, ``heard`` (the seconds heard
of each cleared reply), ``frames`` (frames received per turn).
"""

from __future__ import annotations

from dataclasses import dataclass

from avatarchat.engine.clock import Cancellable, Clock
from avatarchat.engine.events import AvatarFrame, AvatarPose, ReplyAudio
from avatarchat.engine.sink import PlaybackListener


@dataclass
class _Reply:
    turn: int
    available: float = 0.0  # seconds of audio received, from offset 0, without a gap
    ended: bool = False
    frames: int = 0
    position: float = 0.0  # seconds played, as of ``mark``
    mark: float | None = None  # clock time of ``position``; None until it starts playing


@dataclass
class SinkRecord:
    """One thing the sink did: ``what`` is started, first_frame, finished, cleared, duck or
    restore; ``turn``, ``position`` (seconds of the reply heard) and ``value`` as they apply."""

    what: str
    at: float
    turn: int | None = None
    position: float | None = None
    value: float | bool | None = None


class FakeSink:
    """See the module docstring. ``clock``: the session's clock. Not thread-safe."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.listener = PlaybackListener()
        self.volume = 1.0
        self.log: list[SinkRecord] = []
        self.heard: dict[int, float] = {}
        self.frames: dict[int, int] = {}
        self._queue: list[_Reply] = []  # the one playing first, then by turn
        self._gone: set[int] = set()  # finished or cleared: later input is ignored
        self._timer: Cancellable | None = None

    # -- the ReplySink protocol -----------------------------------------------------------

    def add_audio(self, chunk: ReplyAudio) -> None:
        reply = self._reply(chunk.turn)
        if reply is None:
            return
        self._advance()
        if chunk.offset <= reply.available + 1e-6:
            reply.available = max(reply.available, chunk.offset + chunk.duration)
        self._play()

    def add_frame(self, frame: AvatarFrame | AvatarPose) -> None:
        reply = self._reply(frame.turn)
        if reply is None:
            return
        reply.frames += 1
        self.frames[frame.turn] = self.frames.get(frame.turn, 0) + 1
        if reply.frames == 1 and reply.mark is not None:
            self._record("first_frame", reply.turn)
            self.listener.first_frame(reply.turn, self.clock.now())

    def end(self, turn: int) -> None:
        reply = self._reply(turn)
        if reply is None:
            return
        reply.ended = True
        self._advance()
        self._play()

    def clear(self, turn: int) -> float:
        self._advance()
        reply = next((r for r in self._queue if r.turn == turn), None)
        self._gone.add(turn)
        if reply is None:
            return 0.0
        self._queue.remove(reply)
        if reply.mark is not None:
            self._stop_timer()
        self.heard[turn] = reply.position
        self._record("cleared", turn, reply.position)
        self.listener.finished(turn, reply.position, True)
        self._play()
        return reply.position

    def duck(self, volume: float) -> None:
        self.volume = volume
        self._record("duck", value=volume)

    def restore(self) -> None:
        self.volume = 1.0
        self._record("restore", value=1.0)

    @property
    def playing(self) -> int | None:
        head = self._queue[0] if self._queue else None
        return head.turn if head is not None and head.mark is not None else None

    @property
    def turns(self) -> list[int]:
        return [r.turn for r in self._queue]

    # -- for tests ------------------------------------------------------------------------

    def position(self, turn: int) -> float | None:
        """Seconds of ``turn``'s reply played so far (None if it is not queued or playing)."""
        self._advance()
        reply = next((r for r in self._queue if r.turn == turn), None)
        return reply.position if reply is not None else None

    def records(self, *what: str) -> list[SinkRecord]:
        """The log entries of those kinds."""
        return [r for r in self.log if r.what in what]

    # -- playing --------------------------------------------------------------------------

    def _reply(self, turn: int) -> _Reply | None:
        """The reply of ``turn``, queued now if new (in turn order); None once it is gone."""
        if turn in self._gone:
            return None
        for r in self._queue:
            if r.turn == turn:
                return r
        reply = _Reply(turn)
        self._queue.append(reply)
        self._queue.sort(key=lambda r: (r.mark is None, r.turn))  # the one playing stays first
        return reply

    def _advance(self) -> None:
        """Bring the playing reply's position up to now (it stalls where its audio ends)."""
        head = self._queue[0] if self._queue else None
        if head is None or head.mark is None:
            return
        now = self.clock.now()
        head.position = min(head.available, head.position + (now - head.mark))
        head.mark = now

    def _play(self) -> None:
        """Start the reply at the head if it can, finish it if it is done, and set the timer
        for the moment its audio runs out."""
        while self._queue:
            head = self._queue[0]
            if head.mark is None:
                if head.available <= 0:
                    if not head.ended:
                        return  # nothing to play yet
                    self._finish(head)  # a reply without audio
                    continue
                head.mark = self.clock.now()
                self._record("started", head.turn, 0.0)
                self.listener.started(head.turn, head.mark)
                if head.frames:
                    self._record("first_frame", head.turn)
                    self.listener.first_frame(head.turn, head.mark)
            if head.position >= head.available - 1e-9:
                if head.ended:
                    self._finish(head)
                    continue
                return  # stalled: waits for more audio
            self._stop_timer()
            self._timer = self.clock.call_at(head.mark + head.available - head.position, self._on_timer)
            return

    def _on_timer(self) -> None:
        self._timer = None
        self._advance()
        self._play()

    def _finish(self, reply: _Reply) -> None:
        self._queue.remove(reply)
        self._gone.add(reply.turn)
        self._stop_timer()
        self._record("finished", reply.turn, reply.position)
        self.listener.finished(reply.turn, reply.position, False)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _record(self, what: str, turn: int | None = None, position: float | None = None,
                value: float | bool | None = None) -> None:
        self.log.append(SinkRecord(what, self.clock.now(), turn, position, value))
