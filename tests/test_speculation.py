"""A reply started at the pause (``engine.speculation``), in virtual time with a scripted user
and fake reply handlers (fakes on purpose: the test is about the engine's bookkeeping and
timing, to the millisecond; the real stack is measured by ``bench e2e``).

The scripted VAD pauses after 150 ms of silence; the fake ASR then gives the words so far at
once. A complete sentence ends the turn after 400 ms of silence (``complete_ms``), so the
reply made at the pause (LLM: first word after 100 ms, a word per 50 ms; TTS: 50 ms a
clause) is ready before the turn is decided.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from avatarchat.engine.events import (
    NO_TURN,
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyInterrupted,
    ReplyText,
    TimingMark,
    TurnCancelled,
    UserAudio,
    UserTranscript,
)
from avatarchat.engine.handler import EndOfTurnSettings, SessionInfo, SessionSettings
from avatarchat.engine.session import Session
from avatarchat.testing import Audio, FakeASR, FakeClock, FakeLLM, FakeTTS, FakeTTSOptions, ScriptedVAD, UserSpeech
from avatarchat.testing.user import ScriptedVADOptions


def settings(speculate: bool) -> SessionSettings:
    return SessionSettings(end_of_turn=EndOfTurnSettings(complete_ms=400, unfinished_ms=1500, speculate=speculate))


@dataclass
class Run:
    """What came out of a session, each event with its virtual time (s after the start)."""

    out: list[tuple[float, Event]] = field(default_factory=list)
    llm: FakeLLM | None = None
    tts: FakeTTS | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    speculator: tuple[int, int, int] | None = None

    def events(self, kind: type[Event] | tuple[type[Event], ...] = Event) -> list[Event]:
        return [e for _, e in self.out if isinstance(e, kind)]

    def first(self, kind: type[Event]) -> float:
        return next(t for t, e in self.out if isinstance(e, kind))

    def final_at(self) -> float:
        return next(t for t, e in self.out if isinstance(e, UserTranscript) and e.final)

    def mark(self, name: str) -> float:
        return next(e.at for _, e in self.out if isinstance(e, TimingMark) and e.name == name)  # type: ignore[attr-defined]


async def converse(script: list[UserSpeech], speculate: bool = True, seconds: float = 5.0,
                   replies: tuple[str, ...] = ("Paris is the capital.",),
                   act: object = None, asr_latency_s: float = 0.0) -> Run:
    """Play ``script`` for ``seconds`` of virtual time; ``act(session, clock)`` (a coroutine
    function) runs alongside, for a test that cuts a reply."""
    clock = FakeClock()
    vad = ScriptedVAD(script, ScriptedVADOptions(pause_ms=150, end_ms=1000))
    run = Run(llm=FakeLLM(replies, first_token_s=0.1, token_s=0.05), tts=FakeTTS(FakeTTSOptions(synth_ms=50)))
    session = Session([vad, FakeASR(vad, asr_latency_s), run.llm, run.tts], SessionInfo("t", settings(speculate), clock=clock))
    t0 = clock.now()

    async def read() -> None:
        async for event in session.events():
            run.out.append((round(clock.now() - t0, 3), event))

    await session.start()
    reader = asyncio.create_task(read())
    actor = asyncio.create_task(act(session, clock)) if act is not None else None  # type: ignore[operator]
    try:
        for chunk in Audio.silence(seconds).chunks():
            await clock.advance(0.02)
            session.push(UserAudio(NO_TURN, chunk, 16_000))
        await clock.settle()
        run.history = list(session.context("llm").history)
        if session.speculator is not None:
            s = session.speculator
            run.speculator = (s.started, s.used, s.dropped)
    finally:
        for task in (reader, actor):
            if task is not None:
                task.cancel()
        await asyncio.gather(reader, *(t for t in [actor] if t is not None), return_exceptions=True)
        await session.close()
    return run


async def test_a_finished_question_is_answered_the_moment_the_turn_ends() -> None:
    script = [UserSpeech(0.5, 1.5, "What is the capital of France?")]
    spec, plain = await converse(script, replies=("Paris.",)), await converse(script, False, replies=("Paris.",))
    for run in (spec, plain):
        assert [e.text for e in run.events(UserTranscript) if e.final] == ["What is the capital of France?"]
        assert "".join(e.text for e in run.events(ReplyText)) == "Paris."
        assert {e.turn for _, e in run.out} == {1}, "the speculation's own turn id never comes out"
    # Decided 400 ms after the speech (1.9 s). With speculation the reply was made during
    # those 400 ms: its audio comes out with the decision; without, an LLM and a TTS later.
    assert spec.mark("vad_end") == pytest.approx(plain.mark("vad_end")) == pytest.approx(1.9 + spec.mark("speech_end") - 1.5)
    t_spec = spec.first(ReplyAudio) - spec.final_at()
    t_plain = plain.first(ReplyAudio) - plain.final_at()
    assert t_spec == pytest.approx(0.0, abs=0.001)
    assert t_plain == pytest.approx(0.1 + 0.05, abs=0.001)  # first token, then a clause's synthesis
    # The final transcript comes out before any of the reply.
    kinds = [(type(e), getattr(e, "final", None)) for _, e in spec.out if not isinstance(e, TimingMark)]
    assert kinds.index((UserTranscript, True)) < kinds.index((ReplyText, None))
    assert spec.speculator == (1, 1, 0)
    assert spec.llm is not None and len(spec.llm.requests) == 1, "the question is answered once"
    assert spec.history == [("What is the capital of France?", "Paris.")]
    marks = {e.name for e in spec.events(TimingMark)}  # type: ignore[attr-defined]
    assert "speculation_adopted" in marks and "speculation_adopted" not in {
        e.name for e in plain.events(TimingMark)}  # type: ignore[attr-defined]


async def test_a_user_who_goes_on_hears_nothing_of_the_dropped_speculation() -> None:
    # "What is the capital" then 0.5 s of thought: the pause's transcript starts a
    # speculation (the words cannot tell), the voice coming back drops it.
    script = [UserSpeech(0.5, 1.3, "What is the capital"), UserSpeech(1.8, 2.4, "of France?")]

    def answer(messages: list[dict[str, str]]) -> str:
        return "Paris." if "France" in messages[-1]["content"] else "Capital of what?"

    run = await converse(script, replies=answer)  # type: ignore[arg-type]
    assert run.llm is not None and [m[-1]["content"] for m in run.llm.requests] == [
        "What is the capital", "What is the capital of France?"]
    assert "".join(e.text for e in run.events(ReplyText)) == "Paris."
    # The first speculation was spoken (inside the session) before the user went on ...
    assert run.tts is not None and "Capital of what?" in [text for _, text in run.tts.spoken]
    # ... and none of it came out.
    assert [e.text for e in run.events(ReplyAudio)] == ["Paris."]
    assert not run.events(TurnCancelled), "a dropped speculation is not the user's business"
    assert {e.turn for _, e in run.out} == {1}
    assert run.speculator == (2, 1, 1)
    assert run.history == [("What is the capital of France?", "Paris.")]


async def test_a_speculation_dropped_after_its_reply_was_made_leaves_no_history() -> None:
    # The pause lasts 0.9 s, so the speculative reply is complete (in history) before the
    # user goes on; the unfinished-looking words wait 1.5 s, so the turn has not ended.
    script = [UserSpeech(0.5, 1.3, "Tell me about Paris"), UserSpeech(2.2, 2.8, "and its history.")]
    run = await converse(script, replies=("Paris is old.",), seconds=6.0)
    assert run.speculator == (2, 1, 1)
    assert run.history == [("Tell me about Paris and its history.", "Paris is old.")]
    assert len(run.events(ReplyEnd)) == 1


async def test_a_cut_adopted_reply_is_remembered_as_heard_under_the_users_turn() -> None:
    script = [UserSpeech(0.5, 1.5, "What is the capital of France?")]
    seen: list[list[int]] = []

    async def cut(session: Session, clock: FakeClock) -> None:
        await clock.sleep_until(clock.now() + 2.0)  # after the decision (1.9 s), mid-reply
        seen.append(sorted(session.open_turns))
        session.signal(ReplyInterrupted(1, "Paris", 0.4, True, False, "barge-in"))
        session.cancel_turn(1, "barge-in")

    run = await converse(script, replies=("Paris is the capital of France and a big city.",), act=cut)
    assert seen == [[1]], "outside, the reply is the user's turn 1"
    cancelled = run.events(TurnCancelled)
    assert [(e.turn, e.reason) for e in cancelled] == [(1, "barge-in")]  # type: ignore[attr-defined]
    assert [e.turn for e in run.events(ReplyInterrupted)] == [1]
    assert run.history == [("What is the capital of France?", "Paris [interrupted]")]
    assert not run.events(ReplyEnd)


async def test_a_pause_transcript_that_comes_after_the_user_went_on_starts_nothing() -> None:
    # Pause at 1.45 s, its words at 1.85 s (a slow ASR); the voice came back at 1.6 s.
    script = [UserSpeech(0.5, 1.3, "What is the capital"), UserSpeech(1.6, 2.2, "of France?")]
    run = await converse(script, replies=("Paris.",), asr_latency_s=0.4)
    assert run.speculator is not None and run.speculator[0] == 1, "only the last pause speculated"
    assert run.speculator[1:] == (1, 0)
    assert run.llm is not None and [m[-1]["content"] for m in run.llm.requests] == ["What is the capital of France?"]


async def test_a_speculation_adopted_as_soon_as_it_starts_still_comes_out_as_the_users_turn() -> None:
    # The pause's words come 250 ms after the pause, past the 400 ms of silence a complete
    # sentence needs: the turn ends with them, and its final transcript overtakes the
    # speculation's start on its way through the stages.
    script = [UserSpeech(0.5, 1.5, "What is the capital of France?")]
    run = await converse(script, replies=("Paris is the capital.",), asr_latency_s=0.25)
    assert run.speculator == (1, 1, 0)
    assert {e.turn for _, e in run.out} == {1}
    assert [e.text for e in run.events(UserTranscript) if e.final] == ["What is the capital of France?"]
    assert "".join(e.text for e in run.events(ReplyText)) == "Paris is the capital."
    assert len(run.events(ReplyEnd)) == 1 and run.llm is not None and len(run.llm.requests) == 1


async def test_a_speculation_whose_llm_fails_is_dropped_and_the_turn_answered_when_it_ends() -> None:
    """The LLM fails on its first request (the speculation's): nobody is told, nothing is
    said; the user's final transcript is then answered as if no speculation had been made."""

    class FailsOnce(FakeLLM):
        async def stream(self, ctx, messages):  # type: ignore[no-untyped-def, override]
            if not self.requests:
                self.requests.append(messages)
                raise RuntimeError("the model server went away")
            async for delta in super().stream(ctx, messages):
                yield delta

    script = [UserSpeech(0.5, 1.5, "What is the capital of France?")]
    clock = FakeClock()
    vad = ScriptedVAD(script, ScriptedVADOptions(pause_ms=150, end_ms=1000))
    llm = FailsOnce(("Paris.",), first_token_s=0.1, token_s=0.05)
    session = Session([vad, FakeASR(vad), llm, FakeTTS()], SessionInfo("t", settings(True), clock=clock))
    out: list[Event] = []

    async def read() -> None:
        async for event in session.events():
            out.append(event)

    await session.start()
    reader = asyncio.create_task(read())
    try:
        for chunk in Audio.silence(4.0).chunks():
            await clock.advance(0.02)
            session.push(UserAudio(NO_TURN, chunk, 16_000))
        await clock.settle()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await session.close()
    assert session.speculator is not None and (session.speculator.started, session.speculator.used) == (1, 0)
    assert not [e for e in out if type(e).__name__ in ("ErrorEvent", "TurnCancelled")]
    assert [e.text for e in out if isinstance(e, ReplyAudio)] == ["Paris."]
    assert {e.turn for e in out} == {1} and len(llm.requests) == 2
