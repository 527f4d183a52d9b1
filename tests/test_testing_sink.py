"""``avatarchat.testing.FakeSink``: a reply sink that plays in virtual time."""

from __future__ import annotations

import numpy as np
import pytest

from avatarchat.engine.events import AvatarFrame, ReplyAudio
from avatarchat.engine.sink import PlaybackListener, ReplySink
from avatarchat.testing import FakeClock, FakeSink

RATE = 1000


def chunk(turn: int, offset: float, seconds: float) -> ReplyAudio:
    return ReplyAudio(turn, np.zeros(round(seconds * RATE), np.float32), RATE, offset, "words")


def frame(turn: int, index: int) -> AvatarFrame:
    return AvatarFrame(turn, np.zeros((2, 2, 3), np.uint8), index, index / 25)


def sink_with_log(clock: FakeClock) -> tuple[FakeSink, list[tuple]]:
    sink = FakeSink(clock)
    calls: list[tuple] = []
    sink.listener = PlaybackListener(
        started=lambda turn, at: calls.append(("started", turn, at - clock.start)),
        first_frame=lambda turn, at: calls.append(("first_frame", turn, at - clock.start)),
        finished=lambda turn, pos, cut: calls.append(("finished", turn, round(pos, 6), cut)),
    )
    return sink, calls


async def test_a_reply_plays_from_its_first_audio_to_its_end_in_clock_time() -> None:
    clock = FakeClock()
    sink, calls = sink_with_log(clock)
    typed: ReplySink = sink  # mypy checks the protocol
    typed.add_audio(chunk(1, 0.0, 0.5))
    sink.add_frame(frame(1, 0))
    sink.add_audio(chunk(1, 0.5, 0.5))
    assert sink.playing == 1 and sink.turns == [1]
    await clock.advance(0.4)
    assert sink.position(1) == pytest.approx(0.4)
    sink.end(1)
    await clock.advance(1.0)
    assert calls == [("started", 1, 0.0), ("first_frame", 1, 0.0), ("finished", 1, 1.0, False)]
    assert sink.playing is None and sink.turns == []


async def test_a_reply_stalls_where_its_audio_runs_out_and_goes_on_when_more_comes() -> None:
    clock = FakeClock()
    sink, calls = sink_with_log(clock)
    sink.add_audio(chunk(1, 0.0, 0.3))
    await clock.advance(1.0)
    assert sink.position(1) == pytest.approx(0.3) and sink.playing == 1
    sink.add_audio(chunk(1, 0.3, 0.3))
    sink.end(1)
    await clock.advance(0.2)
    assert sink.position(1) == pytest.approx(0.5)
    await clock.advance(0.2)
    assert calls[-1] == ("finished", 1, 0.6, False)


async def test_replies_play_one_at_a_time_in_turn_order() -> None:
    clock = FakeClock()
    sink, calls = sink_with_log(clock)
    sink.add_audio(chunk(2, 0.0, 0.5))
    sink.add_audio(chunk(3, 0.0, 0.5))
    sink.end(3)
    assert sink.playing == 2 and sink.turns == [2, 3]
    sink.end(2)
    await clock.advance(2.0)
    assert calls == [("started", 2, 0.0), ("finished", 2, 0.5, False), ("started", 3, 0.5), ("finished", 3, 0.5, False)]


async def test_clear_says_what_was_heard_and_ignores_what_comes_later() -> None:
    clock = FakeClock()
    sink, calls = sink_with_log(clock)
    sink.add_audio(chunk(1, 0.0, 1.0))
    sink.add_audio(chunk(2, 0.0, 1.0))
    await clock.advance(0.25)
    assert sink.clear(1) == pytest.approx(0.25)
    assert sink.playing == 2  # the next reply starts at once
    sink.add_audio(chunk(1, 1.0, 1.0))
    assert sink.turns == [2]
    assert sink.clear(2) == 0.0  # started as 1 was cleared; no time has passed since
    assert sink.clear(9) == 0.0  # never added: nothing to report
    assert [c for c in calls if c[0] == "finished"] == [("finished", 1, 0.25, True), ("finished", 2, 0.0, True)]
    assert sink.heard == {1: pytest.approx(0.25), 2: 0.0}


async def test_a_queued_reply_cleared_before_it_played_was_heard_for_zero_seconds() -> None:
    clock = FakeClock()
    sink, calls = sink_with_log(clock)
    sink.add_audio(chunk(1, 0.0, 1.0))
    sink.add_audio(chunk(2, 0.0, 1.0))
    await clock.advance(0.5)
    assert sink.clear(2) == 0.0 and sink.playing == 1
    assert calls[-1] == ("finished", 2, 0.0, True)


async def test_a_reply_without_audio_finishes_when_it_ends() -> None:
    clock = FakeClock()
    sink, calls = sink_with_log(clock)
    sink.end(4)
    assert calls == [("finished", 4, 0.0, False)]


async def test_duck_and_restore_are_logged_with_their_time() -> None:
    clock = FakeClock()
    sink = FakeSink(clock)
    sink.duck(0.2)
    await clock.advance(0.3)
    sink.restore()
    assert sink.volume == 1.0
    assert [(r.what, r.at - clock.start, r.value) for r in sink.records("duck", "restore")] == [
        ("duck", 0.0, 0.2), ("restore", pytest.approx(0.3), 1.0)]
