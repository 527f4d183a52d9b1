"""``run_pipeline_test``: events in, the session's output out, so a test reads like a spec.

In the style of pipecat's ``run_test``: a list of inputs is sent through a session built
from handler instances (no config file), and the output events come back in order for the
test to assert on, optionally checked against the expected event types::

    events = await run_pipeline_test(
        [FakeLLM(["Hi there."]), FakeTTS()],
        ["Hello!"],
        expected=[UserTranscript, ReplyText, ReplyText, ReplyAudio, ReplyEnd],
    )
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.config import PipelineConfig, StageConfig
from avatarchat.engine.events import NO_TURN, Event, TimingMark, UserAudio
from avatarchat.engine.handler import Handler, SessionInfo, SessionSettings
from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.session import Session
from avatarchat.testing.clock import FakeClock
from avatarchat.testing.reading import ended, summary


@dataclass(frozen=True)
class Audio:
    """Microphone audio (mono float32 in [-1, 1]), sent as ``UserAudio`` chunks of
    ``chunk_s`` seconds. On a ``FakeClock`` each chunk arrives ``chunk_s`` after the one
    before, as a live microphone's would; on a real clock all arrive at once."""

    samples: np.ndarray
    sample_rate: int = 16_000
    chunk_s: float = 0.02

    @classmethod
    def silence(cls, seconds: float, sample_rate: int = 16_000) -> Audio:
        """``seconds`` of a silent microphone (for a ``ScriptedVAD``, the time its script plays)."""
        return cls(np.zeros(round(seconds * sample_rate), np.float32), sample_rate)

    def chunks(self) -> Iterable[np.ndarray]:
        n = max(1, round(self.chunk_s * self.sample_rate))
        return (self.samples[i:i + n] for i in range(0, len(self.samples), n))


@dataclass(frozen=True)
class Wait:
    """Let ``seconds`` of the session's clock pass (advanced on a ``FakeClock``, slept on a
    real one) before the next input."""

    seconds: float


Input = Event | str | Audio | Wait


async def run_pipeline_test(
    handlers: Sequence[Handler[Any]] | Pipeline,
    inputs: Sequence[Input],
    *,
    turns: Iterable[int] | None = None,
    until: Callable[[list[Event]], bool] | None = None,
    expected: Sequence[type[Event]] | None = None,
    ignore: tuple[type[Event], ...] = (TimingMark,),
    clock: Clock | None = None,
    settings: SessionSettings | None = None,
    timeout: float = 10.0,
    session_id: str = "test",
) -> list[Event]:
    """Run ``inputs`` through a new session and return what it emitted.

    ``handlers``: loaded handler instances, in pipeline order (fakes need no loading), or a
    loaded ``Pipeline``. ``inputs``, sent in order:

    - an ``Event``: pushed into the head of the pipeline as it is. Turn ids of such events
      must be 1, 2, 3… in order of first use: the session allocates those turns first;
    - a ``str``: typed text, a turn of its own (``Session.say``);
    - ``Audio``: microphone chunks; ``Wait``: time passing.

    Promise: returns every event the session emitted, in order, from its start until each
    awaited turn has ended (its ``ReplyEnd`` or ``TurnCancelled`` came out; the returned
    list ends with the last of these), or until ``until(events so far)`` holds, when given.
    Awaited turns: ``turns`` if given, else those of the inputs (typed text and events);
    turns that only the VAD starts must be named. Nothing later is read. The session is
    closed before this returns, on success or failure.

    On a ``FakeClock``, once the inputs are sent the clock runs from timer to timer while
    the awaited end has not come (up to ``timeout`` virtual seconds), so a test of fakes
    never waits in real time. With no timer left, work off the loop (a real handler's
    executor call) gets up to ``timeout`` real seconds to make progress; with none, the
    pipeline is stuck and the test fails. On a real clock the wait is at most ``timeout``
    seconds. Failing either way raises ``AssertionError`` listing what came out.

    ``settings``: the session's ``session:`` settings (barge-in, end of turn, persona);
    default: the pipeline's, or ``SessionSettings()``.

    ``expected``: the types the returned events must have, in order, leaving out those of
    ``ignore`` (timing marks by default); a mismatch raises ``AssertionError`` with both.
    """
    session = _session(handlers, clock, settings, session_id)
    sclock = session.info.clock
    awaited: set[int] = set(turns) if turns is not None else set()
    out: list[Event] = []
    done = asyncio.Event()

    def check() -> None:
        if until is not None:
            if until(out):
                done.set()
        elif awaited and all(ended(out, t) for t in awaited):
            done.set()

    async def read() -> None:
        async for event in session.events():
            out.append(event)
            check()
            if done.is_set():
                return

    await session.start()
    reader = asyncio.create_task(read(), name="run_pipeline_test-reader")
    try:
        started = await _send(session, sclock, inputs)
        if turns is None:
            awaited |= started
        if until is None and not awaited:
            raise ValueError("nothing to wait for: name the turns (turns=[1]) or give until=")
        check()
        await _wait(done, sclock, timeout, out)
    finally:
        reader.cancel()
        with suppress(asyncio.CancelledError):
            await reader
        await session.close()
    if expected is not None:
        got = [type(e) for e in out if not isinstance(e, ignore)]
        assert got == list(expected), (
            f"expected {[t.__name__ for t in expected]}\n"
            f"got      {[t.__name__ for t in got]}\n"
            f"events:  {summary(out)}"
        )
    return out


def pipeline_of(handlers: Sequence[Handler[Any]], settings: SessionSettings | None = None) -> Pipeline:
    """A ``Pipeline`` of these handler instances (loaded already; fakes need nothing), with
    ``settings`` as its config's ``session:`` section, as ``Pipeline.build`` would make
    from a config file: for what takes a pipeline (``engine.conversation.Conversation``)."""
    settings = settings or SessionSettings()
    for handler in handlers:
        handler.use_session(settings)
    stages = {h.stage: StageConfig(h.stage, h.name, h.options) for h in handlers}
    return Pipeline(PipelineConfig("<test>", settings, stages), list(handlers))


def _session(handlers: Sequence[Handler[Any]] | Pipeline, clock: Clock | None,
             settings: SessionSettings | None, session_id: str) -> Session:
    if isinstance(handlers, Pipeline):
        if settings is None:
            return handlers.session(session_id, clock=clock or REAL_CLOCK)
        handlers = handlers.handlers
    info = SessionInfo(session_id, settings or SessionSettings(), clock=clock or REAL_CLOCK)
    return Session(list(handlers), info)


async def _send(session: Session, clock: Clock, inputs: Sequence[Input]) -> set[int]:
    """Send ``inputs``; returns the turns they started."""
    started: set[int] = set()
    last = 0  # the newest turn allocated here
    fake = clock if isinstance(clock, FakeClock) else None
    for item in inputs:
        if isinstance(item, str):
            last = session.say(item)
            started.add(last)
        elif isinstance(item, Event):
            if item.turn != NO_TURN:
                while last < item.turn:
                    last = session.new_turn()
                started.add(item.turn)
            session.push(item)
        elif isinstance(item, Audio):
            for chunk in item.chunks():
                if fake is not None:
                    await fake.advance(len(chunk) / item.sample_rate)
                session.push(UserAudio(NO_TURN, chunk, item.sample_rate))
            if fake is not None:
                await fake.settle()
        elif isinstance(item, Wait):
            if fake is not None:
                await fake.advance(item.seconds)
            else:
                await asyncio.sleep(item.seconds)
        else:
            raise TypeError(f"run_pipeline_test cannot send {item!r}: give an Event, a str, Audio or Wait")
    return started


async def _wait(done: asyncio.Event, clock: Clock, timeout: float, out: list[Event]) -> None:
    if isinstance(clock, FakeClock):
        await _wait_virtual(done, clock, timeout, out)
        return
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"no end after {timeout:g} s; got {summary(out)}") from None


async def _wait_virtual(done: asyncio.Event, clock: FakeClock, timeout: float, out: list[Event]) -> None:
    """Run the clock from timer to timer until ``done``. With no timer left, work off the
    loop (a real handler's executor call) gets up to ``timeout`` real seconds to show."""
    deadline = clock.now() + timeout
    await clock.settle()
    while not done.is_set():
        due = clock.next_due()
        if due is None:
            if not await _off_loop_progress(done, clock, timeout, len(out), out):
                raise AssertionError(f"the pipeline is stuck: nothing left to wake, no end; got {summary(out)}")
            continue
        if due > deadline:
            raise AssertionError(f"no end within {timeout:g} s of virtual time; got {summary(out)}")
        await clock.advance_to(due)


async def _off_loop_progress(done: asyncio.Event, clock: FakeClock, timeout: float, seen: int,
                             out: list[Event]) -> bool:
    """Whether, within ``timeout`` real seconds, the session ends, emits or sets a timer."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while loop.time() < give_up:
        await asyncio.sleep(0.005)
        await clock.settle()
        if done.is_set() or len(out) > seen or clock.next_due() is not None:
            return True
    return False
