"""``server.tracks.Playout`` as the engine's ``ReplySink``, at the WebSocket's rate as well
as WebRTC's 48 kHz. Pure schedule logic: the media clock reads a hand-moved clock (virtual
time), nothing is sent anywhere."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from avatarchat.engine.clock import Cancellable
from avatarchat.engine.events import AvatarFrame, ReplyAudio
from avatarchat.engine.sink import PlaybackListener, ReplySink
from avatarchat.server.tracks import MediaClock, Playout


class HandClock:
    """A clock the test moves by hand (the engine's Clock protocol, timers unused)."""

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def call_at(self, when: float, fn: Callable[[], None]) -> Cancellable:
        raise AssertionError("the playout sets no timers")

    async def sleep_until(self, when: float) -> None:
        self.t = max(self.t, when)


class Heard:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, float, bool]] = []
        self.listener = PlaybackListener(lambda turn, at: self.events.append(("started", turn, at, False)),
                                         lambda turn, at: self.events.append(("frame", turn, at, False)),
                                         lambda turn, pos, cut: self.events.append(("finished", turn, pos, cut)))


def tone(seconds: float, rate: int = 24000, level: float = 0.5) -> np.ndarray:
    return np.full(round(seconds * rate), level, np.float32)


def play(playout: Playout, clock: HandClock, frames: int, start: int = 0) -> list[np.ndarray]:
    """Hand out ``frames`` 20 ms frames from ``start`` as a paced sender would, moving time."""
    out = []
    for n in range(start, start + frames):
        clock.t = playout.clock.t0 + n * 0.02
        out.append(playout.audio_frame(n))
    return out


@pytest.mark.parametrize("rate", [48000, 24000, 16000])
def test_a_reply_plays_at_the_playout_rate_and_finishes_once_with_its_length(rate: int) -> None:
    clock, heard = HandClock(), Heard()
    playout = Playout(MediaClock(clock), rate=rate)
    sink: ReplySink = playout
    sink.listener = heard.listener  # settable after construction
    playout.add_audio(ReplyAudio(3, tone(0.3), 24000, 0.0, "a"))
    playout.end(3)
    assert playout.playing == 3 and playout.turns == [3]
    frames = play(playout, clock, 30)
    assert all(len(f) == rate // 50 for f in frames)
    loud = [n for n, f in enumerate(frames) if f.max() > 16000]
    assert len(loud) == 15 and loud == list(range(loud[0], loud[0] + 15))  # 0.3 s, no gap
    assert [e[0] for e in heard.events] == ["started", "finished"]
    assert heard.events[0][2] == pytest.approx(playout.clock.t0 + loud[0] * 0.02)  # the clock's time
    assert heard.events[1][1:] == (3, pytest.approx(0.3, abs=1 / rate), False)
    assert playout.playing is None and playout.turns == []


def test_clear_returns_what_was_heard_and_finishes_the_reply_as_interrupted() -> None:
    clock, heard = HandClock(), Heard()
    playout = Playout(MediaClock(clock), heard.listener, rate=24000)
    playout.add_audio(ReplyAudio(1, tone(2.0), 24000, 0.0, "a long one"))
    playout.add_audio(ReplyAudio(2, tone(1.0), 24000, 0.0, "queued"))  # waits behind turn 1
    start = playout._queue[0].start // playout.frame  # type: ignore[operator]
    play(playout, clock, 25, start)  # half a second of turn 1
    assert playout.clear(1) == pytest.approx(0.5)
    assert heard.events[-1] == ("finished", 1, pytest.approx(0.5), True)
    assert playout.clear(1) == pytest.approx(0.5)  # again: the same answer, no second callback
    assert playout.clear(2) == 0.0  # never played: nothing heard, still one finished
    assert heard.events[-1] == ("finished", 2, 0.0, True)
    assert [e[0] for e in heard.events].count("finished") == 2
    playout.add_audio(ReplyAudio(1, tone(1.0), 24000, 1.0, "late"))  # later input is ignored
    playout.end(1)
    assert playout.turns == [] and playout.sounding(start + 25)  # the fade-out is still to go
    fade = play(playout, clock, 2, start + 25)
    assert 0 < np.abs(fade[0][:240]).max() <= 16384 and not fade[0][240:].any() and not fade[1].any()
    assert not playout.sounding(start + 27)
    assert [e[0] for e in heard.events].count("finished") == 2


def test_a_reply_without_audio_finishes_at_its_end_and_frames_follow_the_audio() -> None:
    clock, heard = HandClock(), Heard()
    playout = Playout(MediaClock(clock), heard.listener, rate=24000)
    playout.end(5)
    assert heard.events == [("finished", 5, 0.0, False)]
    playout.end(5)
    assert len(heard.events) == 1
    face = np.zeros((4, 4, 3), np.uint8)
    playout.add_audio(ReplyAudio(6, tone(0.2), 24000, 0.0, "hi"))
    playout.add_frame(AvatarFrame(6, face, 0, 0.0))
    first = playout._queue[0].start // playout.frame  # type: ignore[operator]
    assert not playout.sounding(first - 1) and playout.sounding(first)
    assert playout.video_frame(first * 0.02 - 0.01) is None  # before the reply: idle
    play(playout, clock, 1, first)
    assert playout.video_frame(first * 0.02) is face
    assert [e[0] for e in heard.events[1:]] == ["started", "frame"]


def test_a_rate_that_is_not_whole_20_ms_frames_is_refused() -> None:
    with pytest.raises(ValueError, match="20 ms"):
        Playout(MediaClock(HandClock()), rate=11025)
