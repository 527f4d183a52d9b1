"""Patience with a user who pauses mid-sentence (``engine.patience``), in virtual time: the
engine's ``EndOfTurn`` with a scripted user (``ScriptedVAD``, ``FakeASR``: fakes on purpose,
the test is about the engine's timing to the millisecond). The scripted VAD sends a
``SpeechOngoing`` every 64 ms of voice, pauses after 200 ms of silence and ends a turn after
500 ms unless a hint says otherwise. A complete sentence ends after 200 ms here."""

from __future__ import annotations

import logging

import pytest

from avatarchat.engine.events import Event, SpeechEnded, SpeechOngoing, SpeechStarted, TimingMark, UserTranscript
from avatarchat.engine.handler import EndOfTurnSettings, SessionSettings
from avatarchat.engine.patience import MEMORY, PauseHabit
from avatarchat.testing import Audio, FakeASR, FakeClock, ScriptedVAD, UserSpeech, run_pipeline_test

PATIENT = SessionSettings(end_of_turn=EndOfTurnSettings(complete_ms=200, unfinished_ms=1500, patience_margin_ms=300))


async def turns_heard(script: list[UserSpeech], settings: SessionSettings = PATIENT,
                      seconds: float = 8.0) -> list[tuple[str, float, float]]:
    """(final transcript, speech end, decided), in script time, of every turn the user took."""
    clock = FakeClock()
    vad = ScriptedVAD(script)
    events: list[Event] = await run_pipeline_test(
        [vad, FakeASR(vad)], [Audio.silence(seconds)], clock=clock, settings=settings,
        until=lambda evs: clock.elapsed >= seconds - 1e-6,
    )
    marks = {(e.turn, e.name): round(e.at - clock.start, 3) for e in events if isinstance(e, TimingMark)}
    return [(e.text, marks[e.turn, "speech_end"], marks[e.turn, "vad_end"])
            for e in events if isinstance(e, UserTranscript) and e.final]


async def test_a_user_cut_at_a_pause_is_not_cut_at_the_next_one() -> None:
    """Cut once at a 0.4 s pause (the quick end took "What is the capital?" for a question),
    the user is waited for at the next pause: 0.4 s + 300 ms. Going on again after 0.5 s
    there (first voice heard at 5.564, one 64 ms report after 5.5), the wait grows to
    0.564 s + 300 ms (decided with the first 20 ms chunk of audio after 7.064)."""
    heard = await turns_heard([
        UserSpeech(0.5, 1.5, "What is the capital?"), UserSpeech(1.9, 2.6, "of France?"),
        UserSpeech(4.0, 5.0, "How far is the Moon?"), UserSpeech(5.5, 6.2, "from the Earth?"),
    ])
    assert heard == [
        ("What is the capital?", 1.5, 1.7),  # cut: nothing was known of this user
        ("of France?", 2.6, 3.3),  # 700 ms
        ("How far is the Moon? from the Earth?", 6.2, 7.08),  # kept whole; then 864 ms
    ]


async def test_without_a_margin_nothing_is_learnt() -> None:
    quick = SessionSettings(end_of_turn=EndOfTurnSettings(complete_ms=200, unfinished_ms=1500))
    heard = await turns_heard([
        UserSpeech(0.5, 1.5, "What is the capital?"), UserSpeech(1.9, 2.6, "of France?"),
        UserSpeech(4.0, 5.0, "How far is the Moon?"), UserSpeech(5.5, 6.2, "from the Earth?"),
    ], quick)
    assert [h[0] for h in heard] == ["What is the capital?", "of France?", "How far is the Moon?", "from the Earth?"]


async def test_a_user_who_answers_after_a_second_is_never_slowed() -> None:
    heard = await turns_heard([UserSpeech(0.5, 1.5, "What time is it?"), UserSpeech(2.8, 3.5, "Thanks, and the date?"),
                               UserSpeech(5.0, 6.0, "Where am I?")])
    assert heard == [("What time is it?", 1.5, 1.7), ("Thanks, and the date?", 3.5, 3.7), ("Where am I?", 6.0, 6.2)]


async def test_a_backchannel_soon_after_is_not_a_comeback() -> None:
    """ "Mm-hm" 0.4 s after a question is the user acknowledging, not going on."""
    heard = await turns_heard([UserSpeech(0.5, 1.5, "What time is it?"), UserSpeech(1.9, 2.4, "mm-hm"),
                               UserSpeech(4.0, 5.0, "Where am I?")])
    assert heard[-1] == ("Where am I?", 5.0, 5.2)


async def test_patience_fades_once_the_user_stops_pausing() -> None:
    """After one comeback, the next MEMORY finished pauses that end their turn wait; then the
    comeback has left the memory and the quick end is back."""
    script = [UserSpeech(0.5, 1.5, "What is the capital?"), UserSpeech(1.9, 2.6, "of France?")]
    starts = [4.0 + 2.0 * i for i in range(MEMORY + 1)]
    script += [UserSpeech(t, t + 0.5, f"Question {i}?") for i, t in enumerate(starts)]
    heard = await turns_heard(script, seconds=starts[-1] + 2.0)
    waits = [round(decided - end, 3) for _, end, decided in heard]
    # "of France?" and the next MEMORY - 1 questions wait 700 ms: the comeback is among the
    # newest MEMORY outcomes until the MEMORY-th plain end is recorded (at the next start).
    assert waits == [0.2] + [0.7] * MEMORY + [0.2, 0.2]


def test_the_learnt_wait_is_capped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Events straight into ``PauseHabit``: a comeback after 1.0 s asks 1.0 s + the margin,
    capped. Not comebacks, but ends: a cough after the end (a turn with no words), and a
    150 ms burst that whisper read words into (the reply's echo)."""
    habit = PauseHabit(margin_ms=800, cap_ms=1500)
    habit.judged(1, speech_end=10.0, base_ms=250)
    habit.on_event(SpeechEnded(1, audio=Audio.silence(0.1).samples, speech_end=10.0, at=10.25))
    with caplog.at_level(logging.INFO, logger="avatarchat.engine.patience"):
        habit.on_event(SpeechStarted(2, at=11.0))
        assert habit.floor_ms() == 0  # not until its words say it was the user going on
        habit.on_event(SpeechOngoing(2, voiced_until=11.3))
        habit.on_event(UserTranscript(2, "and the date", final=False))
    assert habit.floor_ms() == 1500
    assert "went on after a 1.00 s pause" in caplog.text
    habit.judged(2, speech_end=12.0, base_ms=250)
    habit.on_event(SpeechEnded(2, audio=Audio.silence(0.1).samples, speech_end=12.0, at=13.5))
    habit.on_event(SpeechStarted(3, at=12.6))  # a cough: no words come
    habit.on_event(SpeechStarted(4, at=20.0))
    habit.judged(4, speech_end=20.5, base_ms=250)
    habit.on_event(SpeechEnded(4, audio=Audio.silence(0.1).samples, speech_end=20.5, at=20.75))
    habit.on_event(SpeechStarted(5, at=21.0))
    habit.on_event(SpeechOngoing(5, voiced_until=21.15))
    habit.on_event(UserTranscript(5, "the sun", final=False))
    assert list(habit._outcomes) == [1.0, None, None]


def test_a_pause_judged_after_the_voice_came_back_teaches_nothing() -> None:
    """The judgement came 300 ms after a pause the user had already ended: the gap is not
    known from the next voice report, so it is not taken for a long pause."""
    habit = PauseHabit(margin_ms=300, cap_ms=1500)
    habit.on_event(SpeechOngoing(1, voiced_until=10.1))
    habit.judged(1, speech_end=10.0, base_ms=250)
    habit.on_event(SpeechOngoing(1, voiced_until=10.6))
    assert habit.floor_ms() == 0
    habit.judged(1, speech_end=11.0, base_ms=250)  # judged in the silence: the voice after it counts
    habit.on_event(SpeechOngoing(1, voiced_until=11.5))
    assert habit.floor_ms() == 800
