"""The engine with fake handlers: event order, pass-through, turn cancellation, error
isolation and the event-loop lag guarantee."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import numpy as np
import pytest

from avatarchat.engine.events import (
    ErrorEvent,
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    TimingMark,
    TurnCancelled,
    UserAudio,
    UserTranscript,
)
from avatarchat.engine.handler import Handler, HandlerOptions, SessionInfo, SessionSettings
from avatarchat.engine.loop_probe import LoopLagProbe
from avatarchat.engine.session import Session
from tests.fakes import FakeLLM, FakeTTS
from tests.lag import assert_responsive, idle_lag


async def collect_turn(session: Session, turn: int, timeout: float = 5.0) -> list[Event]:
    """Every output event up to the end of ``turn`` (ReplyEnd or TurnCancelled)."""
    out: list[Event] = []

    async def run() -> None:
        async for ev in session.events():
            out.append(ev)
            if ev.turn == turn and isinstance(ev, ReplyEnd | TurnCancelled):
                return

    await asyncio.wait_for(run(), timeout)
    return out


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


class FailingAfter(Handler[HandlerOptions]):
    """``inner`` (an LLM) that raises after passing on ``n`` of its outputs of a final
    transcript, or on any partial one (``only_partials``): the fault under test."""

    name = "failing"
    stage = "llm"
    accepts = (UserTranscript,)

    def __init__(self, inner: FakeLLM, n: int, only_partials: bool = False) -> None:
        super().__init__(HandlerOptions())
        self.inner, self.n, self.only_partials = inner, n, only_partials

    def create_context(self, session: SessionInfo) -> object:
        return self.inner.create_context(session)

    async def handle(self, ctx: object, event: Event) -> AsyncIterator[Event]:
        assert isinstance(event, UserTranscript)
        if self.only_partials:
            if not event.final:
                raise RuntimeError("partial failed")
            async for out in self.inner.handle(ctx, event):  # type: ignore[arg-type]
                yield out
            return
        outputs = self.inner.handle(ctx, event)  # type: ignore[arg-type]
        async with aclosing(outputs):
            for _ in range(self.n + 1):
                yield await anext(outputs)
            raise RuntimeError("the model went away")


async def test_events_flow_in_order_through_the_stages() -> None:
    async with Session([FakeLLM(), FakeTTS()], SessionInfo("s")) as session:
        turn = session.say("hi")
        events = await collect_turn(session, turn)
    assert kinds(events) == [
        "TimingMark", "ReplyText", "ReplyAudio", "ReplyText", "ReplyAudio", "ReplyText", "ReplyAudio", "ReplyEnd",
    ]
    assert all(e.turn == turn for e in events)
    assert [e.text for e in events if isinstance(e, ReplyAudio)] == ["Hello", " there", "."]


async def test_events_a_stage_does_not_accept_pass_through_unchanged() -> None:
    async with Session([FakeLLM(), FakeTTS()], SessionInfo("s")) as session:
        audio = UserAudio(-1, np.zeros(160, np.float32), 16000)
        session.push(audio)
        first = await asyncio.wait_for(anext(session.events()), 1)
    assert first is audio


async def test_cancel_turn_stops_every_stage_and_nothing_of_it_comes_out() -> None:
    llm = FakeLLM(words=[f"w{i} " for i in range(50)], delay=0.02)
    async with Session([llm, FakeTTS()], SessionInfo("s")) as session:
        turn = session.say("tell me a long story")
        seen: list[Event] = []
        async for ev in session.events():
            seen.append(ev)
            if isinstance(ev, ReplyAudio):
                assert session.cancel_turn(turn)
                break
        after = await collect_turn(session, turn)
        # The dead turn is over: only its TurnCancelled comes out, then silence.
        assert kinds(after) == ["TurnCancelled"]
        assert after[0].reason == "interrupted"  # type: ignore[attr-defined]
        assert llm.closed_generators == 1 and llm.cancelled_turns == [turn]
        assert not session.cancel_turn(turn), "cancelling twice is a no-op"
        # The session keeps working: the next turn is answered in full.
        llm.words, llm.delay = ["ok"], 0.0
        nxt = session.say("again")
        events = await collect_turn(session, nxt)
    assert nxt == turn + 1
    assert kinds(events)[-1] == "ReplyEnd"
    assert not any(isinstance(e, ReplyText) and e.turn == turn for e in events)


async def test_interrupt_cancels_all_open_turns() -> None:
    async with Session([FakeLLM(delay=0.5), FakeTTS()], SessionInfo("s")) as session:
        t1 = session.say("one")
        await asyncio.sleep(0.01)
        assert session.interrupt() == [t1]
        events = await collect_turn(session, t1)
        assert session.open_turns == frozenset()
    assert kinds(events) == ["TurnCancelled"] or kinds(events)[-1] == "TurnCancelled"


async def test_a_failing_handler_ends_only_its_turn_with_an_error(caplog: pytest.LogCaptureFixture) -> None:
    llm = FakeLLM(words=["fine ", "boom ", "never"])
    async with Session([llm, FakeTTS(fail_on="boom")], SessionInfo("s")) as session:
        turn = session.say("hi")
        events = await collect_turn(session, turn)
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and errors[0].stage == "tts" and "boom" in errors[0].message
        assert isinstance(events[-1], TurnCancelled) and events[-1].reason == "error"
        assert not any(isinstance(e, ReplyText) and e.text == "never" for e in events)
        # The log record carries the same id, with the traceback.
        record = next(r for r in caplog.records if errors[0].error_id in r.getMessage())
        assert record.exc_info is not None and "cannot say" in str(record.exc_info[1])
        # The voice failed: the fallback line is shown as a reply of its own, without audio.
        fallback = await collect_turn(session, turn + 1)
        line = SessionInfo("s").settings.voice_fallback_reply
        assert kinds(fallback) == ["ReplyText", "ReplyEnd"] and fallback[-1].text == line  # type: ignore[attr-defined]
        llm.words = ["still ", "here"]
        nxt = session.say("again")
        events = await collect_turn(session, nxt)
    assert [e.text for e in events if isinstance(e, ReplyAudio)] == ["still ", "here"]


async def test_a_failing_llm_is_followed_by_its_fallback_line_spoken_downstream() -> None:
    llm = FakeLLM(words=["The answer ", "is "])
    settings = SessionSettings(fallback_reply="My model is away.")
    async with Session([FailingAfter(llm, 2), FakeTTS()], SessionInfo("s", settings)) as session:
        turn = session.say("hi")
        failed = await collect_turn(session, turn)
        assert kinds(failed)[-2:] == ["ErrorEvent", "TurnCancelled"]
        fallback = await collect_turn(session, turn + 1)
    # What the model had begun is not repeated; the fallback passes the voice, which says it.
    assert [e.text for e in fallback if isinstance(e, ReplyAudio)] == ["My model is away."]
    assert isinstance(fallback[-1], ReplyEnd) and fallback[-1].text == "My model is away."
    assert llm.closed_generators == 1


async def test_an_empty_fallback_line_says_nothing() -> None:
    settings = SessionSettings(fallback_reply="")
    async with Session([FailingAfter(FakeLLM(), 0), FakeTTS()], SessionInfo("s", settings)) as session:
        turn = session.say("hi")
        assert kinds(await collect_turn(session, turn))[-2:] == ["ErrorEvent", "TurnCancelled"]
        nxt = session.say("again")
        events = await collect_turn(session, nxt)
    assert nxt == turn + 1 and [e.turn for e in events] == [nxt] * len(events)


async def test_a_failure_on_a_partial_transcript_does_not_end_the_turn() -> None:
    llm = FailingAfter(FakeLLM(), 0, only_partials=True)
    async with Session([llm, FakeTTS()], SessionInfo("s")) as session:
        turn = session.new_turn()
        session.push(UserTranscript(turn, "what is", final=False))
        session.push(UserTranscript(turn, "what is the time", final=True))
        events = await collect_turn(session, turn)
    assert not any(isinstance(e, ErrorEvent | TurnCancelled) for e in events)
    assert isinstance(events[-1], ReplyEnd) and events[-1].text == "Hello there."


async def test_sessions_do_not_share_state() -> None:
    llm = FakeLLM()
    async with Session([llm, FakeTTS()], SessionInfo("a")) as a, Session([llm, FakeTTS()], SessionInfo("b")) as b:
        ta, tb = a.say("from a"), b.say("from b")
        await collect_turn(a, ta)
        await collect_turn(b, tb)
        assert a._stages[0].ctx["heard"] == ["from a"]
        assert b._stages[0].ctx["heard"] == ["from b"]


async def test_blocking_model_calls_do_not_stall_the_loop() -> None:
    tts = FakeTTS(block_s=0.15)  # each chunk blocks its executor thread for 150 ms
    idle = await idle_lag()
    async with LoopLagProbe() as probe, Session([FakeLLM(), tts], SessionInfo("s")) as session:
        await collect_turn(session, session.say("hi"))
    assert len(probe.lags) > 20
    assert_responsive(probe.lags, idle, "blocking calls in executors")


async def test_the_lag_probe_sees_a_stall() -> None:
    # The negative control: the probe must catch a blocking call made on the loop itself.
    async with LoopLagProbe() as probe:
        await asyncio.sleep(0.02)
        time.sleep(0.1)
        await asyncio.sleep(0.02)
    assert probe.max_lag > 0.08


def test_the_lag_budget_forgives_one_preemption_but_no_repeated_or_long_stall() -> None:
    quiet = [0.001] * 200
    assert_responsive([*quiet, 0.03], 0.0, "one lone preemption")
    with pytest.raises(AssertionError, match="more than once"):
        assert_responsive([*quiet, 0.05, 0.05, 0.05], 0.0, "a stall on every chunk")
    with pytest.raises(AssertionError, match="stalled 100 ms"):
        assert_responsive([*quiet, 0.1], 0.0, "one model call on the loop")


async def test_timing_marks_carry_the_turn() -> None:
    async with Session([FakeLLM(), FakeTTS()], SessionInfo("s")) as session:
        turn = session.say("hi")
        events = await collect_turn(session, turn)
    marks = [e for e in events if isinstance(e, TimingMark)]
    assert [m.name for m in marks] == ["llm_first_token"] and marks[0].turn == turn
