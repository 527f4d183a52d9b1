"""The engine's control lane: control events reach every stage that reacts to them at once,
ahead of queued data and while the stage is busy; engine-made ones (``signal``) too; end of
turn is wired by the session from its settings; and no task is made per event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from avatarchat.engine.events import (
    NO_TURN,
    EndOfTurnHint,
    Event,
    ReplyInterrupted,
    ReplyText,
    SpeechStarted,
    TimingMark,
    UserAudio,
    UserTranscript,
)
from avatarchat.engine.handler import EndOfTurnSettings, Handler, HandlerOptions, SessionInfo, SessionSettings
from avatarchat.engine.session import Session
from tests.fakes import FakeLLM


class Talker(Handler[HandlerOptions]):
    """A first stage: each ``UserAudio`` chunk starts a turn (``SpeechStarted``)."""

    name = "talker"
    stage = "vad"
    accepts = (UserAudio,)

    def __init__(self) -> None:
        super().__init__(HandlerOptions())
        self.hints: list[EndOfTurnHint] = []

    controls = (EndOfTurnHint,)

    async def handle(self, ctx: SessionInfo, event: Event) -> AsyncIterator[Event]:
        yield SpeechStarted(ctx.new_turn())

    def create_context(self, session: SessionInfo) -> SessionInfo:
        return session

    def on_control(self, ctx: object, event: Event) -> list[Event]:
        assert isinstance(event, EndOfTurnHint)
        self.hints.append(event)
        return [TimingMark(event.turn, "hinted")]


class Slowpoke(Handler[HandlerOptions]):
    """A last stage that takes ``hold`` to handle each ``ReplyText``, and notes the control
    events it hears and whether it was busy then."""

    name = "slowpoke"
    stage = "avatar"
    accepts = (ReplyText,)
    controls = (SpeechStarted, ReplyInterrupted)

    def __init__(self, hold: asyncio.Event) -> None:
        super().__init__(HandlerOptions())
        self.hold = hold
        self.busy = False
        self.heard: list[tuple[str, bool]] = []

    async def handle(self, ctx: object, event: Event) -> AsyncIterator[Event]:
        self.busy = True
        try:
            await self.hold.wait()
        finally:
            self.busy = False
        yield event

    def on_control(self, ctx: object, event: Event) -> list[Event]:
        self.heard.append((type(event).__name__, self.busy))
        return []


async def _until(check: object, tries: int = 200) -> None:
    for _ in range(tries):
        if callable(check) and check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_speech_started_reaches_a_busy_later_stage_at_once() -> None:
    hold = asyncio.Event()
    slow = Slowpoke(hold)
    async with Session([Talker(), FakeLLM(words=["a ", "b ", "c "]), slow], SessionInfo("s")) as session:
        session.say("hello")  # the slow stage gets busy with the reply's first delta
        await _until(lambda: slow.busy)
        session.push(UserAudio(NO_TURN, np.zeros(160, np.float32), 16000))
        await _until(lambda: slow.heard)
        # Heard while its handle() was still waiting: ahead of the queued deltas.
        assert slow.heard == [("SpeechStarted", True)]
        hold.set()


async def test_a_signalled_cut_reaches_the_stage_and_comes_out() -> None:
    hold = asyncio.Event()
    slow = Slowpoke(hold)
    async with Session([FakeLLM(), slow], SessionInfo("s")) as session:
        turn = session.say("hi")
        await _until(lambda: slow.busy)
        session.signal(ReplyInterrupted(turn, "Hel", 0.2, True, False, "interrupt"))
        out = await anext(e async for e in session.events() if isinstance(e, ReplyInterrupted))
        assert out.heard_text == "Hel"
        await _until(lambda: slow.heard)
        assert slow.heard == [("ReplyInterrupted", True)]
        hold.set()


async def test_end_of_turn_is_wired_from_the_settings_and_hints_the_first_stage() -> None:
    settings = SessionSettings(end_of_turn=EndOfTurnSettings(complete_ms=200, unfinished_ms=1500))

    class Asr(Handler[HandlerOptions]):
        name, stage, accepts, forwards = "asr", "asr", (TimingMark,), (TimingMark,)

        async def handle(self, ctx: object, event: Event) -> AsyncIterator[Event]:
            assert isinstance(event, TimingMark)
            said = {"a": ("I want to go to the park and", 1.0), "b": ("Where is it?", 2.0)}
            if event.name in said:  # a pause's transcript, with the pause's speech_end
                text, end = said[event.name]
                yield UserTranscript(event.turn, text, final=False, speech_end=end)

    talker = Talker()
    async with Session([talker, Asr(HandlerOptions())], SessionInfo("s", settings)) as session:
        session.push(TimingMark(7, "a"))
        session.push(TimingMark(8, "b"))
        await _until(lambda: len(talker.hints) == 2)
        async with asyncio.timeout(10):
            hinted = [e async for e in _take(session, 2, lambda e: isinstance(e, TimingMark) and e.name == "hinted")]
    assert [(h.turn, h.speech_end, h.silence_ms) for h in talker.hints] == [(7, 1.0, 1500), (8, 2.0, 200)]
    assert [e.turn for e in hinted] == [7, 8]  # what on_control returned left the stage


async def _take(session: Session, n: int, keep: object) -> AsyncIterator[Event]:
    got = 0
    async for event in session.events():
        if callable(keep) and keep(event):
            yield event
            got += 1
            if got == n:
                return


async def test_no_task_is_made_per_event() -> None:
    async with Session([Talker(), FakeLLM()], SessionInfo("s")) as session:
        before = len(asyncio.all_tasks())
        made = 0
        for _ in range(200):
            session.push(UserAudio(NO_TURN, np.zeros(160, np.float32), 16000))
        async for event in session.events():
            if isinstance(event, SpeechStarted):
                made += 1
                assert len(asyncio.all_tasks()) == before
                if made == 200:
                    break
