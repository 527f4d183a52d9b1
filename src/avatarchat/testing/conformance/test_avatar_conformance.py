"""Conformance of every registered avatar handler, with its real renderer and real speech.

An avatar handler turns a reply's ``ReplyAudio`` chunks into ``AvatarFrame``s on the reply
clock (index from 0 per turn, ``pts`` in seconds of that clock, increasing) and passes the
audio on. After the turn's ``ReplyEnd`` it renders the mouth closing back to rest, then
passes the ``ReplyEnd`` on, last. Cancelling a turn stops its rendering; a failing render
ends only its own turn.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest

from avatarchat.engine.events import (
    AvatarFrame,
    AvatarMotion,
    ErrorEvent,
    Event,
    ReplyAudio,
    ReplyEnd,
    TurnCancelled,
)
from avatarchat.engine.handler import Handler, SessionInfo
from avatarchat.engine.loop_probe import LoopLagProbe
from avatarchat.engine.session import Session
from avatarchat.testing.conformance import (
    CoreSpy,
    OutputSpy,
    drain,
    of_turn,
    read_until,
    summary,
    until_ended,
    wait_for_zero,
)
from avatarchat.testing.conformance.factories import Factories, core_of, factory_for
from avatarchat.testing.conformance.fixtures import Speech
from avatarchat.testing.lag import assert_responsive, idle_lag

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

#: How soon a cancelled turn's render call must have returned.
STOP_WITHIN_S = 0.5
#: Mouth channels (AvatarMotion) count as at rest below this.
REST = 0.1
#: Longest closing tail accepted after the last audio sample (seconds).
MAX_CLOSE_S = 0.5


def session_for(avatar: Handler[Any]) -> Session:
    return Session([avatar], SessionInfo("conformance"))


def chunks(turn: int, speech: Sequence[Speech]) -> list[ReplyAudio]:
    """``speech`` as a TTS stage sends one reply: contiguous chunks from offset 0."""
    out, offset = [], 0.0
    for s in speech:
        out.append(ReplyAudio(turn, s.samples, s.sample_rate, offset, s.text, s.phonemes))
        offset += s.duration
    return out


def audio_end(speech: Sequence[Speech]) -> float:
    return sum(s.duration for s in speech)


def frames(events: list[Event]) -> list[AvatarFrame]:
    return [e for e in events if isinstance(e, AvatarFrame)]


def assert_frames(fs: list[AvatarFrame], turn: int, covered: float, speech_end: float) -> None:
    """Frames of one turn: indexed 0, 1, 2… with pts increasing from 0, covering the reply
    clock at least up to ``covered`` and never past ``speech_end`` plus a closing tail."""
    assert fs, f"turn {turn} has no frames"
    assert [f.index for f in fs] == list(range(len(fs))), f"turn {turn} frame indices: {[f.index for f in fs]}"
    pts = [f.pts for f in fs]
    assert pts[0] == 0.0 and all(a < b for a, b in zip(pts, pts[1:])), f"turn {turn} pts do not increase from 0"
    assert covered <= pts[-1] < speech_end + MAX_CLOSE_S, (
        f"turn {turn}: last frame at {pts[-1]:.3f} s, expected {covered:.3f} to {speech_end + MAX_CLOSE_S:.3f} s "
        "(missing frames, no closing tail, or another turn's frames)"
    )
    assert all(f.image.ndim == 3 and f.image.shape[2] == 3 for f in fs)


def assert_animated(events: list[Event], turn: int, sent: list[ReplyAudio], end: ReplyEnd) -> None:
    """``events`` (of ``turn``) are a whole animated reply: every chunk passed on in order;
    frames (``assert_frames``) that cover the audio plus a closing tail; the very ReplyEnd
    that was sent, last."""
    passed = [e for e in events if isinstance(e, ReplyAudio)]
    assert len(passed) == len(sent) and all(x is y for x, y in zip(passed, sent)), "the audio was not passed on intact"
    speech_end = sum(c.duration for c in sent)
    assert_frames(frames(events), turn, speech_end, speech_end)
    assert events[-1] is end, f"turn {turn} did not end with its ReplyEnd: {summary(events[-3:])}"
    assert [e for e in events if isinstance(e, ReplyEnd | TurnCancelled | ErrorEvent)] == [end]


async def animate(session: Session, speech: Sequence[Speech]) -> list[Event]:
    """A whole reply on ``session``, checked; returns its events."""
    turn = session.new_turn()
    sent = chunks(turn, speech)
    for c in sent:
        session.push(c)
    end = ReplyEnd(turn)
    session.push(end)
    events = of_turn(await until_ended(session, turn), turn)
    assert_animated(events, turn, sent, end)
    return events


async def test_cancel_mid_stream_stops_rendering(avatar_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch,
                                                 avatarchat_factories: Factories, speech: list[Speech]) -> None:
    """Cancelled right after its first frame, a turn emits TurnCancelled and nothing more;
    no render of it starts afterwards (beyond the one already handed to the executor) and
    the one running returns within 0.5 s; the next turn is animated in full."""
    spy = OutputSpy(avatar_handler, monkeypatch)
    core = CoreSpy(*core_of(avatar_handler, avatarchat_factories), monkeypatch)
    async with session_for(avatar_handler) as session:
        turn = session.new_turn()
        for c in chunks(turn, speech):
            session.push(c)
        session.push(ReplyEnd(turn))
        seen = await read_until(session, lambda evs: isinstance(evs[-1], AvatarFrame) and evs[-1].turn == turn)
        t_cancel = time.monotonic()
        assert session.cancel_turn(turn)
        took = await wait_for_zero(core.active, STOP_WITHIN_S)
        assert took <= STOP_WITHIN_S, f"rendering still ran {STOP_WITHIN_S} s after cancel_turn"
        after = of_turn(await drain(session), turn)
        assert after == [TurnCancelled(turn, "interrupted")], f"after cancel_turn: {summary(after)}"
        assert not spy.after(turn, t_cancel), f"the handler yielded after cancel: {summary(spy.after(turn, t_cancel))}"
        assert core.started_after(t_cancel) <= 1, f"{core.started_after(t_cancel)} render calls started after cancel"
        rendered = frames(spy.events(turn))
        assert rendered[-1].pts < audio_end(speech) / 2, "most of the reply was rendered despite the cancel"
        assert frames(of_turn(seen, turn))
        await animate(session, speech[:1])


async def test_reply_end_closes_the_mouth_then_passes_on(avatar_handler: Handler[Any], speech: list[Speech]) -> None:
    """Before ReplyEnd the frames cover only the audio; after it come the closing frames
    (pts at or past the audio's end, the mouth back at rest), then the ReplyEnd, last."""
    reply = speech[:2]
    async with session_for(avatar_handler) as session:
        turn = session.new_turn()
        sent = chunks(turn, reply)
        for c in sent:
            session.push(c)
        # Everything the audio alone makes: read until the output goes quiet.
        events = await read_until(session, lambda evs: bool(frames(of_turn(evs, turn))))
        while more := await drain(session, 0.3):
            events += more
        before = frames(of_turn(events, turn))
        speech_end = audio_end(reply)
        assert before and before[-1].pts < speech_end, f"frames before ReplyEnd reach {before[-1].pts:.3f} s"
        assert before[-1].pts >= speech_end - 0.1, f"the audio's frames stop at {before[-1].pts:.3f} s of {speech_end:.3f}"
        n = len(events)
        end = ReplyEnd(turn)
        session.push(end)
        events += await until_ended(session, turn)
    tail = of_turn(events[n:], turn)
    closing = frames(tail)
    assert closing and all(f.pts >= speech_end for f in closing), f"closing frames: {[f.pts for f in closing]}"
    assert tail[-1] is end, f"ReplyEnd is not last: {summary(tail[-3:])}"
    motions = [e for e in tail if isinstance(e, AvatarMotion)]
    if motions:  # the handler shows its mouth curves: the last one must be at rest
        last = motions[-1].values[-1]
        assert max(abs(v) for v in last) < REST, f"mouth not at rest at the end: {dict(zip(motions[-1].channels, last))}"
    assert_animated(of_turn(events, turn), turn, sent, end)


async def test_interleaved_turns_keep_their_own_frames(avatar_handler: Handler[Any], speech: list[Speech]) -> None:
    """Chunks of two replies interleaved in the input (A1, B1, A2, end B, end A): each
    turn's frames are indexed from 0 with increasing pts and lie on that turn's own clock
    (the turns differ in length, so a frame of one labelled the other shows), every chunk
    passes on, and each turn ends with its own ReplyEnd, last.

    One face shows one reply: a handler may hand the face to the newer reply, so A must
    have frames for its first chunk (handled before B began) but need not animate the rest;
    the newer reply, B, is animated in full.
    """
    long_reply, short_reply = speech[1:], speech[:1]
    async with session_for(avatar_handler) as session:
        a, b = session.new_turn(), session.new_turn()
        sent_a, sent_b = chunks(a, long_reply), chunks(b, short_reply)
        end_a, end_b = ReplyEnd(a), ReplyEnd(b)
        for event in (sent_a[0], sent_b[0], sent_a[1], end_b, end_a):
            session.push(event)
        events = await until_ended(session, a, b, timeout=60)
    assert_animated(of_turn(events, b), b, sent_b, end_b)
    events_a = of_turn(events, a)
    passed = [e for e in events_a if isinstance(e, ReplyAudio)]
    assert len(passed) == 2 and all(x is y for x, y in zip(passed, sent_a)), "A's audio was not passed on intact"
    # Frames sit on the frame grid: the last one of a chunk starts up to a frame before its end.
    assert_frames(frames(events_a), a, sent_a[0].duration - 0.1, audio_end(long_reply))
    assert events_a[-1] is end_a, f"turn {a} did not end with its ReplyEnd: {summary(events_a[-3:])}"


async def test_slow_consumer_gets_every_event_in_order(avatar_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch,
                                                       speech: list[Speech]) -> None:
    """A consumer that takes 20–50 ms per event gets every chunk passed on and every event
    the handler made, once each and in order; the event loop stays responsive."""
    spy = OutputSpy(avatar_handler, monkeypatch)
    pace = random.Random(0)

    async def slow(_: Event) -> None:
        await asyncio.sleep(pace.uniform(0.020, 0.050))

    idle = await idle_lag()
    async with session_for(avatar_handler) as session, LoopLagProbe() as probe:
        turn = session.new_turn()
        sent = chunks(turn, speech[:1])
        for c in sent:
            session.push(c)
        end = ReplyEnd(turn)
        session.push(end)
        events = of_turn(await until_ended(session, turn, timeout=60, per_event=slow), turn)
    made = [e for e in events if not isinstance(e, ReplyAudio)]
    yielded = spy.events(turn)
    assert len(made) == len(yielded) and all(x is y for x, y in zip(made, yielded)), (
        f"the consumer got {summary(made)}\nthe handler yielded {summary(yielded)}"
    )
    assert_animated(events, turn, sent, end)
    assert_responsive(probe.lags, idle, f"{avatar_handler.name}, {len(events)} events to a slow consumer")


async def test_error_mid_stream_ends_only_its_turn(avatar_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch,
                                                   avatarchat_factories: Factories, speech: list[Speech]) -> None:
    """A render failing on a later batch gives exactly one ErrorEvent naming the avatar
    stage and a TurnCancelled(reason="error"), nothing more of that turn (nothing more is
    rendered), and the next turn on the same session is animated in full."""
    # Test double: a real renderer does not fail on demand, so its blocking core is
    # wrapped to raise once, on a later call (the factory says which).
    fail_at = factory_for(avatar_handler.stage, avatar_handler.name, avatarchat_factories).fail_at
    core = CoreSpy(*core_of(avatar_handler, avatarchat_factories), monkeypatch, fail_at=fail_at)
    spy = OutputSpy(avatar_handler, monkeypatch)
    async with session_for(avatar_handler) as session:
        turn = session.new_turn()
        for c in chunks(turn, speech):
            session.push(c)
        session.push(ReplyEnd(turn))
        events = of_turn(await until_ended(session, turn), turn)
        t_end = time.monotonic()
        calls = core.calls
        events += of_turn(await drain(session), turn)

        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and errors[0].stage == "avatar", f"got {summary(events)}"
        assert "injected" in errors[0].message
        assert frames(spy.events(turn)), "the failure came before any frame: not mid-stream"
        i = events.index(errors[0])
        assert events[i + 1:] == [TurnCancelled(turn, "error")], f"after the error: {summary(events[i + 1:])}"
        assert not any(isinstance(e, ReplyEnd) for e in events)
        assert not spy.after(turn, t_end), f"the handler yielded after the error: {summary(spy.after(turn, t_end))}"
        assert core.calls == calls == fail_at, "rendering went on after the error"

        await animate(session, speech[:1])
