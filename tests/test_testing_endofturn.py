"""End of turn from the words, in virtual time: the engine's ``EndOfTurn`` on the control lane
with a scripted user (``avatarchat.testing``: ``ScriptedVAD``, ``FakeASR``; fakes on purpose,
the test is about the engine's timing logic, to the millisecond, in milliseconds of real
time). The real-model version is tests/test_endofturn.py.

The scripted VAD pauses after 200 ms of silence (the ASR then transcribes the words so far)
and ends a turn after 500 ms, unless an ``EndOfTurnHint`` for that pause says otherwise.
"""

from __future__ import annotations


from avatarchat.engine.events import Event, TimingMark, UserTranscript
from avatarchat.engine.handler import EndOfTurnSettings, SessionSettings
from avatarchat.testing import Audio, FakeASR, FakeClock, ScriptedVAD, UserSpeech, run_pipeline_test

JUDGED = SessionSettings(end_of_turn=EndOfTurnSettings(complete_ms=200, unfinished_ms=1500))


async def turns_heard(script: list[UserSpeech], settings: SessionSettings | None = None, *, seconds: float = 5.0,
                      asr_latency_s: float = 0.0) -> list[tuple[str, float, float]]:
    """(final transcript, speech end, decided), in script time, of every turn the user took."""
    clock = FakeClock()
    vad = ScriptedVAD(script)
    events: list[Event] = await run_pipeline_test(
        [vad, FakeASR(vad, latency_s=asr_latency_s)], [Audio.silence(seconds)], clock=clock, settings=settings,
        until=lambda evs: False if clock.elapsed < seconds - 1e-6 else True,
    )
    # The ASR takes the SpeechEnded; its time marks pass on.
    marks = {(e.turn, e.name): round(e.at - clock.start, 3) for e in events if isinstance(e, TimingMark)}
    return [(e.text, marks[e.turn, "speech_end"], marks[e.turn, "vad_end"])
            for e in events if isinstance(e, UserTranscript) and e.final]


async def test_without_judging_every_pause_of_500_ms_ends_the_turn() -> None:
    heard = await turns_heard([UserSpeech(0.5, 1.5, "I want to go to the"), UserSpeech(2.3, 3.0, "park.")])
    assert heard == [("I want to go to the", 1.5, 2.0), ("park.", 3.0, 3.5)]


async def test_a_complete_question_ends_after_complete_ms() -> None:
    heard = await turns_heard([UserSpeech(0.5, 1.5, "What time is it?")], JUDGED)
    assert heard == [("What time is it?", 1.5, 1.7)]


async def test_an_unfinished_sentence_waits_unfinished_ms() -> None:
    heard = await turns_heard([UserSpeech(0.5, 1.5, "I want to go to the")], JUDGED)
    assert heard == [("I want to go to the", 1.5, 3.0)]


async def test_the_user_who_pauses_to_think_keeps_the_turn() -> None:
    heard = await turns_heard([UserSpeech(0.5, 1.5, "I want to go to the"), UserSpeech(2.3, 3.0, "park.")], JUDGED)
    # One turn: the long hangover kept it open, and the complete sentence then ended it
    # 200 ms after its last word.
    assert heard == [("I want to go to the park.", 3.0, 3.2)]


async def test_a_hint_for_a_silence_the_user_has_broken_is_ignored() -> None:
    """The pause transcript comes 400 ms late; by then the user spoke again. Its hint (a
    complete question: 200 ms) is for the old silence and must not end the turn; the turn
    goes on to the end of the new speech, whose own pause transcript comes too late to
    shorten the 500 ms."""
    heard = await turns_heard([UserSpeech(0.5, 1.5, "Is it late?"), UserSpeech(1.9, 2.6, "And what day?")],
                              JUDGED, asr_latency_s=0.4)
    # Pause at 1.7, its transcript and hint at 2.1 (voice again since 1.9): ignored.
    assert heard == [("Is it late? And what day?", 2.6, 3.1)]


# -- with an audio end-of-turn model (a ``turn`` stage) ------------------------------------

VOICED = SessionSettings(end_of_turn=EndOfTurnSettings(complete_ms=200, unfinished_ms=1500, doubtful_ms=800))


async def turns_heard_with_voice(script: list[UserSpeech], guess: dict[str, float], *, seconds: float = 5.0,
                                 model_latency_s: float = 0.0, asr_latency_s: float = 0.0
                                 ) -> list[tuple[str, float, float]]:
    """As ``turns_heard``, with a fake audio model after the ASR that guesses
    ``guess[words so far]`` (0.5 for words it does not know)."""
    from avatarchat.testing import FakeTurnModel

    clock = FakeClock()
    vad = ScriptedVAD(script)
    model = FakeTurnModel(vad, lambda words: guess.get(words, 0.5), latency_s=model_latency_s)
    events: list[Event] = await run_pipeline_test(
        [vad, FakeASR(vad, latency_s=asr_latency_s), model], [Audio.silence(seconds)], clock=clock,
        settings=VOICED, until=lambda evs: False if clock.elapsed < seconds - 1e-6 else True,
    )
    marks = {(e.turn, e.name): round(e.at - clock.start, 3) for e in events if isinstance(e, TimingMark)}
    return [(e.text, marks[e.turn, "speech_end"], marks[e.turn, "vad_end"])
            for e in events if isinstance(e, UserTranscript) and e.final]


async def test_words_and_voice_that_agree_end_a_question_after_complete_ms() -> None:
    heard = await turns_heard_with_voice([UserSpeech(0.5, 1.5, "What time is it?")], {"What time is it?": 0.9})
    assert heard == [("What time is it?", 1.5, 1.7)]


async def test_a_full_stop_the_voice_does_not_believe_waits_doubtful_ms() -> None:
    # Whisper's period after a phrase said mid-sentence; the pitch said "more to come".
    heard = await turns_heard_with_voice([UserSpeech(0.5, 1.5, "I was thinking about the weather.")],
                                         {"I was thinking about the weather.": 0.1})
    assert heard == [("I was thinking about the weather.", 1.5, 2.3)]


async def test_words_that_cannot_tell_follow_the_voice() -> None:
    finished = await turns_heard_with_voice([UserSpeech(0.5, 1.5, "hello there")], {"hello there": 0.8})
    unfinished = await turns_heard_with_voice([UserSpeech(0.5, 1.5, "hello there")], {"hello there": 0.2})
    assert finished == [("hello there", 1.5, 1.7)]
    assert unfinished == [("hello there", 1.5, 3.0)]


async def test_dangling_words_wait_whatever_the_voice_says() -> None:
    heard = await turns_heard_with_voice([UserSpeech(0.5, 1.5, "I want to go to the")], {"I want to go to the": 0.99})
    assert heard == [("I want to go to the", 1.5, 3.0)]


async def test_a_voice_that_comes_after_the_words_still_decides() -> None:
    # The model answers 300 ms after the words (which came at the pause): the turn ends as
    # soon as both are in, 200 ms of silence having long passed.
    heard = await turns_heard_with_voice([UserSpeech(0.5, 1.5, "What time is it?")], {"What time is it?": 0.9},
                                         model_latency_s=0.3)
    assert heard == [("What time is it?", 1.5, 2.0)]
