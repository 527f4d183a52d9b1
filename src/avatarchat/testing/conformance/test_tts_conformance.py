"""Conformance of every registered TTS handler, on its real voice.

A TTS handler speaks ``ReplyText`` deltas as ``ReplyAudio`` chunks, each with the clean text
it says and its ``offset`` on the reply's own clock (0 at the reply's first sample,
contiguous), and passes the turn's ``ReplyEnd`` on after its last audio. The reply text is
forwarded to the client as it streams. Cancelling a turn stops its synthesis; a failing
synthesis ends only its own turn.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from avatarchat.engine.events import ErrorEvent, Event, ReplyAudio, ReplyEnd, ReplyText, TurnCancelled
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
from avatarchat.testing.lag import assert_responsive, idle_lag

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

LONG = " ".join(f"This is sentence number {n} of a long reply." for n in ("one", "two", "three", "four", "five", "six"))
TWO = "The sky is blue today. The grass is green."
#: How soon a cancelled turn's synthesis call must have returned.
STOP_WITHIN_S = 0.5


def session_for(tts: Handler[Any]) -> Session:
    return Session([tts], SessionInfo("conformance"))


def pieces(text: str, size: int = 5) -> Iterator[str]:
    """``text`` in LLM-like deltas of ``size`` characters."""
    return (text[i:i + size] for i in range(0, len(text), size))


def push_reply(session: Session, turn: int, text: str) -> ReplyEnd:
    """Feed ``text`` as deltas then its ReplyEnd, as the LLM stage would; returns the ReplyEnd."""
    for piece in pieces(text):
        session.push(ReplyText(turn, piece))
    end = ReplyEnd(turn, text)
    session.push(end)
    return end


def audio(events: list[Event]) -> list[ReplyAudio]:
    return [e for e in events if isinstance(e, ReplyAudio)]


def assert_spoken(events: list[Event], turn: int, text: str, end: ReplyEnd) -> None:
    """``events`` (of ``turn``) speak exactly ``text``, on a contiguous clock from 0, then end
    with the very ReplyEnd that was sent."""
    chunks = audio(events)
    assert chunks, f"turn {turn} made no audio: {summary(events)}"
    # A streamed clause comes in pieces; only its last carries its text.
    assert " ".join(c.text for c in chunks if c.text) == text, f"turn {turn} said {[c.text for c in chunks]}"
    assert chunks[-1].text, f"turn {turn}: its last audio carries no text"
    clock = 0.0
    clause: list[ReplyAudio] = []
    for c in chunks:
        assert c.offset == pytest.approx(clock, abs=1e-6), f"turn {turn}: chunk {c.text!r} at {c.offset}, expected {clock}"
        clock += c.duration
        clause.append(c)
        if c.text:
            samples = np.concatenate([p.samples for p in clause])
            assert len(samples) > 0.1 * c.sample_rate and float(abs(samples).max()) > 0.01, f"clause {c.text!r} is silent"
            clause = []
    assert events[-1] is end, f"turn {turn} did not end with its ReplyEnd: {summary(events)}"
    assert [e for e in events if isinstance(e, ReplyEnd | TurnCancelled | ErrorEvent)] == [end]


async def speak(session: Session, text: str) -> None:
    """A whole reply on ``session``, checked."""
    turn = session.new_turn()
    end = push_reply(session, turn, text)
    assert_spoken(of_turn(await until_ended(session, turn), turn), turn, text, end)


async def test_cancel_mid_stream_stops_synthesis(tts_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch,
                                                 avatarchat_factories: Factories) -> None:
    """Cancelled right after its first audio, a turn emits TurnCancelled and nothing more;
    no synthesis of it starts afterwards (beyond the one already handed to the executor)
    and the one running returns within 0.5 s; the next turn is spoken in full."""
    spy = OutputSpy(tts_handler, monkeypatch)
    core = CoreSpy(*core_of(tts_handler, avatarchat_factories), monkeypatch)
    async with session_for(tts_handler) as session:
        turn = session.new_turn()
        push_reply(session, turn, LONG)
        await read_until(session, lambda evs: isinstance(evs[-1], ReplyAudio) and evs[-1].turn == turn)
        t_cancel = time.monotonic()
        assert session.cancel_turn(turn)
        took = await wait_for_zero(core.active, STOP_WITHIN_S)
        assert took <= STOP_WITHIN_S, f"synthesis still ran {STOP_WITHIN_S} s after cancel_turn"
        after = of_turn(await drain(session), turn)
        assert after == [TurnCancelled(turn, "interrupted")], f"after cancel_turn: {summary(after)}"
        assert not spy.after(turn, t_cancel), f"the handler yielded after cancel: {summary(spy.after(turn, t_cancel))}"
        # The call the stage had already submitted may start just after the cancel; no other.
        assert core.started_after(t_cancel) <= 1, f"{core.started_after(t_cancel)} synthesis calls started after cancel"
        assert core.calls < 6, "the whole reply was synthesized despite the cancel"
        await speak(session, TWO)


async def test_reply_end_flushes_the_unfinished_tail(tts_handler: Handler[Any]) -> None:
    """Text without final punctuation is held until ReplyEnd, then spoken before it; the
    ReplyEnd comes last."""
    text = "It is sunny today. See you soon"  # the tail has no punctuation: only ReplyEnd ends it
    async with session_for(tts_handler) as session:
        turn = session.new_turn()
        for piece in pieces(text):
            session.push(ReplyText(turn, piece))
        # Until the first clause's last piece (a streamed voice sends it in several).
        events = await read_until(session, lambda evs: any(c.text for c in audio(of_turn(evs, turn))))
        events += await drain(session, 0.3)
        held = audio(of_turn(events, turn))
        assert [c.text for c in held if c.text] == ["It is sunny today."], f"before ReplyEnd: {[c.text for c in held]}"
        end = ReplyEnd(turn, text)
        session.push(end)
        events += await until_ended(session, turn)
    assert_spoken(of_turn(events, turn), turn, text, end)


async def test_interleaved_turns_keep_their_own_text_and_clock(tts_handler: Handler[Any]) -> None:
    """Deltas of two replies interleaved in the input: each turn's audio says exactly its
    own text, its offsets start at 0 and run contiguously, and each ends with its ReplyEnd."""
    first, second = "Hello there, my good friend. How are you today?", TWO
    async with session_for(tts_handler) as session:
        a, b = session.new_turn(), session.new_turn()
        for x, y in zip(pieces(first, 6), pieces(second, 6), strict=False):
            session.push(ReplyText(a, x))
            session.push(ReplyText(b, y))
        for rest in list(pieces(first, 6))[len(list(pieces(second, 6))):]:
            session.push(ReplyText(a, rest))
        end_a, end_b = ReplyEnd(a, first), ReplyEnd(b, second)
        session.push(end_a)
        session.push(end_b)
        events = await until_ended(session, a, b)
    assert_spoken(of_turn(events, a), a, first, end_a)
    assert_spoken(of_turn(events, b), b, second, end_b)


async def test_slow_consumer_gets_every_event_in_order(tts_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that takes 20–50 ms per event gets every forwarded delta and every event
    the handler made, once each and in order; the event loop stays responsive."""
    spy = OutputSpy(tts_handler, monkeypatch)
    pace = random.Random(0)

    async def slow(_: Event) -> None:
        await asyncio.sleep(pace.uniform(0.020, 0.050))

    idle = await idle_lag()
    async with session_for(tts_handler) as session, LoopLagProbe() as probe:
        turn = session.new_turn()
        sent = [ReplyText(turn, p) for p in pieces(TWO)]
        for delta in sent:
            session.push(delta)
        end = ReplyEnd(turn, TWO)
        session.push(end)
        events = of_turn(await until_ended(session, turn, per_event=slow), turn)
    forwarded = [e for e in events if isinstance(e, ReplyText)]
    assert len(forwarded) == len(sent) and all(x is y for x, y in zip(forwarded, sent)), "the reply text was not forwarded intact"
    made = [e for e in events if not isinstance(e, ReplyText)]
    yielded = spy.events(turn)
    assert len(made) == len(yielded) and all(x is y for x, y in zip(made, yielded)), (
        f"the consumer got {summary(made)}\nthe handler yielded {summary(yielded)}"
    )
    assert_spoken(events, turn, TWO, end)
    assert_responsive(probe.lags, idle, f"{tts_handler.name}, {len(events)} events to a slow consumer")


async def test_error_mid_stream_ends_only_its_turn(tts_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch,
                                                   avatarchat_factories: Factories) -> None:
    """Synthesis failing on the second clause gives exactly one ErrorEvent naming the tts
    stage and a TurnCancelled(reason="error"), nothing more of that turn (no later clause is
    synthesized), and the next turn on the same session is spoken in full."""
    # Test double: a real voice does not fail on demand, so its blocking core is wrapped
    # to raise on its second call, once.
    fail_at = factory_for(tts_handler.stage, tts_handler.name, avatarchat_factories).fail_at
    core = CoreSpy(*core_of(tts_handler, avatarchat_factories), monkeypatch, fail_at=fail_at)
    spy = OutputSpy(tts_handler, monkeypatch)
    text = "This is the first clause. This one fails. This one is never spoken."
    async with session_for(tts_handler) as session:
        turn = session.new_turn()
        push_reply(session, turn, text)
        events = of_turn(await until_ended(session, turn), turn)
        t_end = time.monotonic()
        calls = core.calls
        events += of_turn(await drain(session), turn)

        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and errors[0].stage == "tts", f"got {summary(events)}"
        assert "injected" in errors[0].message
        assert audio(spy.events(turn)), "the failure came before any audio: not mid-stream"
        i = events.index(errors[0])
        assert events[i + 1:] == [TurnCancelled(turn, "error")], f"after the error: {summary(events[i + 1:])}"
        assert not any(isinstance(e, ReplyEnd) for e in events)
        assert not spy.after(turn, t_end), f"the handler yielded after the error: {summary(spy.after(turn, t_end))}"
        assert core.calls == calls == 2, f"{core.calls} synthesis calls: the turn went on after its error"

        await speak(session, TWO)


@pytest.mark.parametrize("text", ["", "🎉🎉 ✨", "#AI 🤖"], ids=["empty", "emoji", "hashtag-emoji"])
async def test_nothing_speakable_gives_reply_end_only(tts_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch,
                                                      avatarchat_factories: Factories, text: str) -> None:
    """A reply with nothing speakable passes its ReplyEnd on and makes no audio at all
    (no synthesis call, no first-audio mark)."""
    core = CoreSpy(*core_of(tts_handler, avatarchat_factories), monkeypatch)
    async with session_for(tts_handler) as session:
        turn = session.new_turn()
        if text:
            session.push(ReplyText(turn, text))
        end = ReplyEnd(turn, text)
        session.push(end)
        events = of_turn(await until_ended(session, turn), turn)
    made = [e for e in events if not isinstance(e, ReplyText)]
    assert len(made) == 1 and made[0] is end, f"got {summary(made)}"
    assert core.calls == 0, "the voice was asked to say nothing"
