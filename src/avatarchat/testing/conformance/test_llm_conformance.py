"""Conformance of every registered LLM handler, on its real model.

An LLM handler takes a final ``UserTranscript`` and streams the reply as ``ReplyText``
deltas closed by one ``ReplyEnd`` whose text is their concatenation. Cancelling a turn
stops its generation at once; a failing generation ends only its own turn.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from avatarchat.engine.events import ErrorEvent, Event, ReplyEnd, ReplyText, TurnCancelled, UserTranscript
from avatarchat.engine.handler import Handler, SessionInfo
from avatarchat.engine.loop_probe import LoopLagProbe
from avatarchat.engine.session import Session
from avatarchat.handlers.llm.base import ChatLLM, Message
from avatarchat.testing.conformance import (
    InjectedFailure,
    OutputSpy,
    drain,
    of_turn,
    read_until,
    summary,
    until_ended,
    wait_for_zero,
)
from avatarchat.testing.lag import assert_responsive, idle_lag

# Each async case is marked for pytest-asyncio's strict mode (a third party's default);
# the module is not, as one case is sync.
pytestmark = pytest.mark.slow

LONG = "Tell me a long story about a brave little dragon."
SHORT = "What is the capital of France?"
#: How soon a cancelled or failed generation must have stopped (where the handler can tell).
STOP_WITHIN_S = 0.5


def session_for(llm: Handler[Any], name: str = "conformance") -> Session:
    return Session([llm], SessionInfo(name))


def deltas(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, ReplyText)]


def assert_complete_reply(events: list[Event], turn: int) -> ReplyEnd:
    """``events`` (of ``turn`` only) are a whole reply: deltas, then one ReplyEnd, last,
    whose text is exactly their concatenation."""
    assert events and isinstance(events[-1], ReplyEnd), f"turn {turn} did not end with ReplyEnd: {summary(events)}"
    ends = [e for e in events if isinstance(e, ReplyEnd | TurnCancelled | ErrorEvent)]
    assert ends == [events[-1]], f"turn {turn} has more than one end: {summary(events)}"
    parts = deltas(events)
    assert parts and "".join(parts).strip(), f"turn {turn} said nothing: {summary(events)}"
    assert events[-1].text == "".join(parts), "ReplyEnd.text is not the concatenation of the ReplyText deltas"
    return events[-1]


async def ask(session: Session, text: str, timeout: float = 30.0) -> list[Event]:
    """Say ``text`` and return the events of its turn, through its end."""
    turn = session.say(text)
    return of_turn(await until_ended(session, turn, timeout=timeout), turn)


@pytest.mark.asyncio
async def test_cancel_mid_stream_stops_generation(llm_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled right after its first delta, a turn emits TurnCancelled and nothing more,
    its generation stops within 0.5 s, and the next turn is answered in full."""
    spy = OutputSpy(llm_handler, monkeypatch)
    active = getattr(llm_handler, "active_generations", None)
    async with session_for(llm_handler) as session:
        turn = session.say(LONG)
        await read_until(session, lambda evs: isinstance(evs[-1], ReplyText) and evs[-1].turn == turn)
        if active is not None:
            assert active() == 1, "no generation was running when the first delta arrived"
        t_cancel = time.monotonic()
        assert session.cancel_turn(turn)
        if active is not None:
            took = await wait_for_zero(active, STOP_WITHIN_S)
            print(f"{llm_handler.name}: generation stopped {took * 1000:.0f} ms after cancel_turn")
            assert took <= STOP_WITHIN_S, f"the generation still ran {STOP_WITHIN_S} s after cancel_turn"
        after = of_turn(await drain(session), turn)
        assert after == [TurnCancelled(turn, "interrupted")], f"after cancel_turn: {summary(after)}"
        assert not spy.after(turn, t_cancel), f"the handler yielded after cancel: {summary(spy.after(turn, t_cancel))}"

        following = await ask(session, SHORT)
        assert_complete_reply([e for e in following if not isinstance(e, UserTranscript)], following[0].turn)


@pytest.mark.asyncio
async def test_reply_end_text_is_the_concatenated_deltas(llm_handler: Handler[Any]) -> None:
    """A reply streams in several deltas and its ReplyEnd, last, carries their concatenation."""
    async with session_for(llm_handler) as session:
        events = await ask(session, SHORT)
    turn = events[0].turn
    end = assert_complete_reply(events, turn)
    assert len(deltas(events)) >= 2, "the reply came in one piece: it was not streamed"
    print(f"{llm_handler.name}: {end.text!r}")


@pytest.mark.asyncio
async def test_interleaved_turns_are_answered_in_order(llm_handler: Handler[Any]) -> None:
    """Two turns said back to back are both answered, one after the other: each turn's
    events form one contiguous run, in order, ending with its own ReplyEnd."""
    async with session_for(llm_handler) as session:
        a = session.say("What is two plus two?")
        b = session.say("Name a colour.")
        events = [e for e in await until_ended(session, a, b) if e.turn in (a, b)]
    order = [e.turn for e in events]
    n = order.count(a)
    assert order == [a] * n + [b] * (len(order) - n), f"turns interleaved in the output: {summary(events)}"
    assert_complete_reply(events[:n], a)
    assert_complete_reply(events[n:], b)


@pytest.mark.asyncio
async def test_slow_consumer_gets_every_event_in_order(llm_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that takes 20–50 ms per event still gets every event the handler made,
    once each and in order, and the event loop stays responsive meanwhile."""
    spy = OutputSpy(llm_handler, monkeypatch)
    pace = random.Random(0)

    async def slow(_: Event) -> None:
        await asyncio.sleep(pace.uniform(0.020, 0.050))

    idle = await idle_lag()
    async with session_for(llm_handler) as session, LoopLagProbe() as probe:
        turn = session.say(LONG)
        events = of_turn(await until_ended(session, turn, timeout=60, per_event=slow), turn)
    assert isinstance(events[0], UserTranscript) or UserTranscript not in llm_handler.forwards
    made = [e for e in events if not isinstance(e, llm_handler.forwards)]
    # Identity, not equality: a duplicated or re-created event would not be the same object.
    yielded = spy.events(turn)
    assert len(made) == len(yielded) and all(x is y for x, y in zip(made, yielded)), (
        f"the consumer got {summary(made)}\nthe handler yielded {summary(yielded)}"
    )
    assert_complete_reply(made, turn)
    assert_responsive(probe.lags, idle, f"{llm_handler.name}, {len(events)} events to a slow consumer")


@pytest.mark.asyncio
async def test_error_mid_stream_ends_only_its_turn(llm_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A generation that fails after its first delta gives exactly one ErrorEvent naming the
    llm stage and a TurnCancelled(reason="error"), nothing more of that turn, a stopped
    generation, and the next turn on the same session is answered."""
    if not isinstance(llm_handler, ChatLLM):
        pytest.fail(f"llm handler {llm_handler.name!r} is no ChatLLM: its stream cannot be made to fail.")
    real = llm_handler.stream
    failed = False

    # Test double: a real model does not fail on demand, so the real stream is wrapped to
    # raise at its fourth non-blank delta, once the handler has passed words on (a first word
    # split over several tokens is held back while it may be a speaker label, so the count
    # alone does not make it mid-stream), once only: the next turn gets the real stream.
    async def failing(ctx: Any, messages: list[Message]) -> AsyncIterator[str]:
        nonlocal failed
        spoken = 0
        async with aclosing(real(ctx, messages)) as parts:
            async for part in parts:
                spoken += bool(part.strip())
                if spoken >= 4 and not failed and deltas(spy.events()):
                    failed = True
                    raise InjectedFailure("injected: the model failed mid-stream")
                yield part

    monkeypatch.setattr(llm_handler, "stream", failing)
    spy = OutputSpy(llm_handler, monkeypatch)
    active = getattr(llm_handler, "active_generations", None)
    async with session_for(llm_handler) as session:
        turn = session.say(LONG)
        events = of_turn(await until_ended(session, turn), turn)
        t_end = time.monotonic()
        if active is not None:
            took = await wait_for_zero(active, STOP_WITHIN_S)
            assert took <= STOP_WITHIN_S, f"the failed turn's generation still ran {STOP_WITHIN_S} s later"
        events += of_turn(await drain(session), turn)

        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and errors[0].stage == "llm", f"got {summary(events)}"
        assert "injected" in errors[0].message
        # The session may drop deltas it had not handed out yet when the turn died, so
        # "mid-stream" is checked on what the handler yielded.
        assert deltas(spy.events(turn)), "the failure came before any delta: not mid-stream"
        i = events.index(errors[0])
        assert events[i + 1:] == [TurnCancelled(turn, "error")], f"after the error: {summary(events[i + 1:])}"
        assert not any(isinstance(e, ReplyEnd) for e in events)
        assert not spy.after(turn, t_end), f"the handler yielded after the error: {summary(spy.after(turn, t_end))}"

        following = await ask(session, SHORT)
        assert_complete_reply([e for e in following if not isinstance(e, UserTranscript)], following[0].turn)


@pytest.mark.asyncio
async def test_empty_transcript_gives_an_empty_reply_end(llm_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty (or blank) transcript is answered by ReplyEnd("") alone, without asking the model."""
    streams: list[list[Message]] = []
    if isinstance(llm_handler, ChatLLM):
        real = llm_handler.stream

        def counting(ctx: Any, messages: list[Message]) -> AsyncIterator[str]:
            streams.append(messages)
            return real(ctx, messages)

        monkeypatch.setattr(llm_handler, "stream", counting)
    async with session_for(llm_handler) as session:
        for text in ("", "   "):
            turn = session.say(text)
            events = [e for e in of_turn(await until_ended(session, turn), turn) if not isinstance(e, UserTranscript)]
            assert events == [ReplyEnd(turn, "")], f"{text!r} gave {summary(events)}"
    assert not streams, "the model was asked to answer an empty transcript"


def test_serves_sessions_on_successive_event_loops(llm_handler: Handler[Any]) -> None:
    """A loaded handler is a plain object: sessions on a new event loop (a new test, a
    restarted server) use it as well as the first; no executor or client dies with a loop."""

    async def one_turn() -> ReplyEnd:
        async with session_for(llm_handler) as session:
            events = await ask(session, "Say hello.")
        return assert_complete_reply([e for e in events if not isinstance(e, UserTranscript)], events[0].turn)

    for _ in range(2):
        asyncio.run(one_turn())
