"""``run_pipeline_test`` and the fakes of ``avatarchat.testing``, in virtual time.

The fakes stand in for models on purpose: these tests are about the harness and the
engine's plumbing, and run in milliseconds of real time (``FakeClock``).
"""

from __future__ import annotations

import asyncio

import pytest

from avatarchat.engine.events import (
    ErrorEvent,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    SpeechEnded,
    SpeechOngoing,
    SpeechPaused,
    SpeechStarted,
    TimingMark,
    TurnCancelled,
    UserAudio,
    UserTranscript,
)
from avatarchat.engine.handler import SessionInfo, SessionSettings
from avatarchat.engine.heard import SpokenChunk, heard_text
from avatarchat.engine.session import Session
from avatarchat.testing import (
    Audio,
    FakeASR,
    FakeClock,
    FakeLLM,
    FakeTTS,
    ScriptedVAD,
    UserSpeech,
    Wait,
    of_turn,
    pipeline_of,
    run_pipeline_test,
    speech_seconds,
)

QUESTION = UserSpeech(0.5, 1.5, "What time is it?")


def user(*speech: UserSpeech, asr_latency_s: float = 0.0) -> list:
    vad = ScriptedVAD(list(speech))
    return [vad, FakeASR(vad, latency_s=asr_latency_s)]


async def test_typed_text_gives_the_reply_in_order_with_its_audio() -> None:
    clock = FakeClock()
    events = await run_pipeline_test(
        [FakeLLM(["Hi there. How are you?"], first_token_s=0.1, token_s=0.05), FakeTTS()],
        ["Hello!"],
        clock=clock,
        expected=[UserTranscript, ReplyText, ReplyText, ReplyText, ReplyAudio, ReplyText, ReplyText, ReplyAudio,
                  ReplyEnd],
    )
    assert [e.text for e in events if isinstance(e, ReplyAudio)] == ["Hi there.", "How are you?"]
    assert events[-1] == ReplyEnd(1, "Hi there. How are you?")
    # Five words: the first after 0.1 s, each next 0.05 s later, all in virtual time.
    assert clock.elapsed == pytest.approx(0.3)


async def test_a_scripted_user_is_heard_and_answered() -> None:
    """The whole voice path on fakes: speech from 0.5 to 1.5 s, the VAD's events at the
    instants a VAD would send them, the script's transcript, the reply."""
    clock = FakeClock()
    t0 = clock.now()
    events = await run_pipeline_test(
        [*user(QUESTION, asr_latency_s=0.1), FakeLLM(["It is noon."]), FakeTTS()],
        [Audio.silence(2.5)], turns=[1], clock=clock,
    )
    kinds = [type(e) for e in events if not isinstance(e, TimingMark | SpeechOngoing)]
    # (The pause goes on after its transcript, for a ``turn`` stage; nothing here takes it.)
    assert kinds == [SpeechStarted, UserTranscript, SpeechPaused, UserTranscript, ReplyText, ReplyText, ReplyText,
                     ReplyAudio, ReplyEnd]
    started = events[0]
    assert isinstance(started, SpeechStarted) and started.at == pytest.approx(t0 + 0.5)
    ongoing = [e.voiced_until - t0 for e in events if isinstance(e, SpeechOngoing)]
    # One every 64 ms of voice after the 96 ms that started the turn, up to the speech's end.
    assert ongoing == pytest.approx([0.596 + 0.064 * k for k in range(1, 15)])
    # At the pause (200 ms of silence) the words so far, at the end the final words.
    assert [(e.text, e.final, e.speech_end) for e in events if isinstance(e, UserTranscript)] == [
        ("What time is it?", False, pytest.approx(t0 + 1.5)), ("What time is it?", True, None)]
    marks = {e.name: e.at - t0 for e in events if isinstance(e, TimingMark) and e.name in ("speech_end", "vad_end")}
    assert marks == pytest.approx({"speech_end": 1.5, "vad_end": 2.0})


async def test_speech_shorter_than_a_word_is_cancelled_and_a_click_makes_no_turn() -> None:
    click, blip = UserSpeech(0.2, 0.25), UserSpeech(0.5, 0.6)  # 50 ms: no turn; 100 ms: too short
    events = await run_pipeline_test(
        [*user(click, blip), FakeLLM()], [Audio.silence(1.2)], turns=[1], clock=FakeClock(),
    )
    assert [type(e) for e in events if not isinstance(e, TimingMark | SpeechOngoing)] == [SpeechStarted, TurnCancelled]
    assert events[-1] == TurnCancelled(1, "too short")


async def test_events_with_turn_ids_are_sent_as_they_are() -> None:
    tts = FakeTTS()
    events = await run_pipeline_test(
        [tts],
        [ReplyText(1, "One two three. Four"), ReplyText(2, "Other turn."), ReplyEnd(2, "Other turn."),
         ReplyEnd(1, "One two three. Four")],
        clock=FakeClock(),
    )
    assert [e.text for e in of_turn(events, 1) if isinstance(e, ReplyAudio)] == ["One two three.", "Four"]
    assert tts.spoken == [(1, "One two three."), (2, "Other turn."), (1, "Four")]
    audio = [e for e in of_turn(events, 1) if isinstance(e, ReplyAudio)]
    assert audio[0].offset == 0.0 and audio[1].offset == pytest.approx(audio[0].duration)
    assert audio[0].duration == pytest.approx(speech_seconds("One two three."))


async def test_the_fake_voice_has_word_timings_that_heard_text_reads() -> None:
    """Each letter is a 60 ms phoneme and words are 40 ms apart, so a position on the reply
    clock maps onto whole words."""
    events = await run_pipeline_test([FakeTTS()], [ReplyText(1, "Tell me a story"), ReplyEnd(1)], clock=FakeClock())
    chunks = [SpokenChunk.of(e) for e in events if isinstance(e, ReplyAudio)]
    assert heard_text(chunks, 0.2) == ""  # "Tell" ends at 0.24 s
    assert heard_text(chunks, 0.25) == "Tell"
    assert heard_text(chunks, 0.24 + 0.04 + 0.12 + 0.04 + 0.06) == "Tell me a"
    assert heard_text(chunks, 10.0) == "Tell me a story"


async def test_the_fake_llm_keeps_a_history_and_stops_when_cancelled() -> None:
    clock = FakeClock()
    llm = FakeLLM(["First answer.", "Second answer."])
    events = await run_pipeline_test([llm], ["One?", Wait(1.0), "Two?"], clock=clock)
    assert [e.text for e in events if isinstance(e, ReplyEnd)] == ["First answer.", "Second answer."]
    assert llm.requests[1][-3:] == [
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Two?"},
    ]

    async with Session([llm], SessionInfo("cancel", clock=clock)) as session:
        turn = session.say("Tell me a long story.")
        await clock.advance(0.12)  # the first word is out, the next is 0.05 s away
        assert llm.active_generations() == 1
        assert session.cancel_turn(turn)
        await clock.settle()
        assert llm.active_generations() == 0 and clock.next_due() is None


async def test_an_error_ends_the_turn_with_the_engines_error_path() -> None:
    def broken(messages: list) -> str:
        raise RuntimeError("the model is on fire")

    # The transcript the LLM passed on belonged to the failed turn: it is dropped with it.
    events = await run_pipeline_test([FakeLLM(broken)], ["Hello?"], clock=FakeClock(),
                                     expected=[ErrorEvent, TurnCancelled])
    error = events[0]
    assert isinstance(error, ErrorEvent) and "on fire" in error.message
    assert events[-1] == TurnCancelled(1, "error")


async def test_expected_types_that_differ_fail_with_both_listings() -> None:
    with pytest.raises(AssertionError, match=r"expected \['UserTranscript', 'ReplyEnd'\]"):
        await run_pipeline_test([FakeLLM(["Hi."])], ["Hello"], clock=FakeClock(),
                                expected=[UserTranscript, ReplyEnd])


async def test_a_pipeline_that_never_ends_the_turn_fails_instead_of_hanging() -> None:
    with pytest.raises(AssertionError, match="stuck: nothing left to wake"):
        await run_pipeline_test([FakeTTS()], [ReplyText(1, "No end.")], clock=FakeClock(), timeout=0.2)
    with pytest.raises(AssertionError, match="no end after 0.2 s"):
        await run_pipeline_test([FakeTTS()], [ReplyText(1, "No end.")], timeout=0.2)
    with pytest.raises(ValueError, match="nothing to wait for"):
        await run_pipeline_test([FakeTTS()], [Audio.silence(0.1)], clock=FakeClock())


async def test_until_stops_reading_where_the_test_says() -> None:
    events = await run_pipeline_test(
        user(QUESTION), [Audio.silence(1.0)], clock=FakeClock(),
        until=lambda evs: any(isinstance(e, SpeechStarted) for e in evs),
    )
    assert isinstance(events[-1], SpeechStarted)
    assert not any(isinstance(e, UserAudio | SpeechEnded) for e in events)


async def test_a_cancelled_scripted_turn_says_nothing_more() -> None:
    clock = FakeClock()
    vad = ScriptedVAD([QUESTION])
    async with Session([vad], SessionInfo("vad", clock=clock)) as session:
        for _ in range(40):  # 0.8 s of microphone: the turn started at 0.596 s
            await clock.advance(0.02)
            session.push(UserAudio(-1, Audio.silence(0.02).samples, 16_000))
        await clock.settle()
        assert session.open_turns == {1}
        assert session.cancel_turn(1)
        for _ in range(100):
            await clock.advance(0.02)
            session.push(UserAudio(-1, Audio.silence(0.02).samples, 16_000))
        events = await run_drain(session, clock)
    assert events[-1] == TurnCancelled(1, "interrupted")
    assert not any(isinstance(e, SpeechEnded) for e in events)


async def run_drain(session: Session, clock: FakeClock) -> list:
    """What the session has emitted so far (the clock stopped, the loop settled)."""
    out: list = []

    async def read() -> None:
        async for e in session.events():
            out.append(e)

    task = asyncio.create_task(read())
    await clock.settle()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return out


async def test_a_pipeline_runs_as_its_handlers_do_with_its_session_settings() -> None:
    llm = FakeLLM(["Hello."])
    settings = SessionSettings(system_prompt="You are Bob.")
    events = await run_pipeline_test(pipeline_of([llm, FakeTTS()], settings), ["Hi"], clock=FakeClock(),
                                     expected=[UserTranscript, ReplyText, ReplyAudio, ReplyEnd])
    assert events[-1] == ReplyEnd(1, "Hello.")
    assert llm.requests[0][0] == {"role": "system", "content": "You are Bob."}


async def test_a_real_handler_working_in_an_executor_runs_on_a_fake_clock() -> None:
    """Work off the loop is waited for in real time: a voice synthesizing in a worker thread
    (espeak-ng here) speaks the whole reply while the fake clock stands still."""
    from avatarchat.handlers.tts.espeak import EspeakOptions, EspeakTTS

    tts = EspeakTTS(EspeakOptions())
    tts.load()
    clock = FakeClock()
    events = await run_pipeline_test([tts], [ReplyText(1, "Hello there. How are you?"), ReplyEnd(1)], clock=clock)
    assert [e.text for e in events if isinstance(e, ReplyAudio)] == ["Hello there.", "How are you?"]
    assert clock.elapsed == 0.0
