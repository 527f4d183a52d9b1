"""Conformance of every registered ASR handler, on real speech.

An ASR handler hears the VAD's utterances (16 kHz mono) and says what was said: exactly one
final ``UserTranscript`` per ``SpeechEnded``, with the words spoken; whatever it says
earlier (a growing transcript from ``SpeechSoFar``, a pause's from ``SpeechPaused``) is never
final. Cancelling a turn drops its pending transcript; a failing transcription ends only its
own turn. The speech is the embedded voice's (hibari), so the words are known.

The handler's core (``ConformanceFactory.core``) is the call that transcribes one
utterance: the cases count it and make it fail.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import numpy as np
import pytest

from avatarchat.engine.events import (
    ErrorEvent,
    Event,
    SpeechEnded,
    SpeechPaused,
    SpeechSoFar,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.handler import Handler, SessionInfo
from avatarchat.engine.session import Session
from avatarchat.testing.conformance import CoreSpy, OutputSpy, drain, of_turn, read_until, summary
from avatarchat.testing.conformance.factories import Factories, core_of, factory_for

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

RATE = 16_000
WEATHER = "The weather is lovely today."
STORY = "Please tell me a short story about a cat."
#: A transcript is right enough when it holds this share of the spoken words.
HEARD_SHARE = 0.6
#: Generous: a real model on a loaded 2-core machine, or a server's round trip.
TIMEOUT_S = 60.0


def utterance(text: str) -> np.ndarray:
    """``text`` said by the embedded voice at 16 kHz, with the VAD's 0.3 s pre-roll and tail."""
    from avatarchat.testing.services.base import speech

    pad = np.zeros(int(0.3 * RATE), np.float32)
    return np.concatenate([pad, speech(text, "en", RATE), pad])


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def heard(said: str, transcript: str) -> bool:
    """Whether ``transcript`` holds most of the words ``said``."""
    got = set(words(transcript))
    want = words(said)
    return sum(w in got for w in want) >= HEARD_SHARE * len(want)


def finals(events: list[Event], turn: int) -> list[UserTranscript]:
    return [e for e in of_turn(events, turn) if isinstance(e, UserTranscript) and e.final]


def finished(events: list[Event], turn: int) -> bool:
    """Whether ``turn`` has its final transcript, or was cancelled."""
    return any(e.turn == turn and (isinstance(e, TurnCancelled) or isinstance(e, UserTranscript) and e.final)
               for e in events)


async def until_final(session: Session, *turns: int) -> list[Event]:
    return await read_until(session, lambda evs: all(finished(evs, t) for t in turns), TIMEOUT_S)


def ended_utterance(turn: int, audio: np.ndarray, session: Session) -> SpeechEnded:
    return SpeechEnded(turn, audio, speech_end=session.info.clock.now())


async def hear(session: Session, text: str) -> UserTranscript:
    """One utterance of ``text`` on ``session``: its one final transcript, checked."""
    turn = session.new_turn()
    session.push(ended_utterance(turn, utterance(text), session))
    events = await until_final(session, turn)
    got = finals(events, turn)
    assert len(got) == 1, f"turn {turn}: {summary(of_turn(events, turn))}"
    assert heard(text, got[0].text), f"said {text!r}, transcribed {got[0].text!r}"
    return got[0]


async def test_one_final_transcript_per_utterance(asr_handler: Handler[Any]) -> None:
    """Two utterances back to back: each turn gets exactly one final transcript, holding
    the words said in that turn's utterance (not the other's)."""
    async with Session([asr_handler], SessionInfo("conformance")) as session:
        a, b = session.new_turn(), session.new_turn()
        session.push(ended_utterance(a, utterance(WEATHER), session))
        session.push(ended_utterance(b, utterance(STORY), session))
        events = await until_final(session, a, b)
        events += await drain(session)
    for turn, said in ((a, WEATHER), (b, STORY)):
        got = finals(events, turn)
        assert len(got) == 1, f"turn {turn}: {summary(of_turn(events, turn))}"
        assert heard(said, got[0].text), f"turn {turn}: said {said!r}, transcribed {got[0].text!r}"


async def test_partials_are_never_final(asr_handler: Handler[Any]) -> None:
    """Speech so far and a pause, then the end of the same utterance: whatever the handler
    says before the end is not final (a pause's transcript carries its ``speech_end``), and
    the end gives exactly one final transcript, the turn's last."""
    audio = utterance(STORY)
    async with Session([asr_handler], SessionInfo("conformance")) as session:
        turn = session.new_turn()
        now = session.info.clock.now()
        session.push(SpeechSoFar(turn, audio[: len(audio) // 2], voiced_until=now))
        session.push(SpeechPaused(turn, audio, speech_end=now))
        session.push(SpeechEnded(turn, audio, speech_end=now))
        events = await until_final(session, turn)
        events += await drain(session)
    said = [e for e in of_turn(events, turn) if isinstance(e, UserTranscript)]
    assert said and said[-1].final and heard(STORY, said[-1].text), f"got {summary(said)}"
    assert not any(e.final for e in said[:-1]), f"a partial came out final: {summary(said)}"
    for partial in said[:-1]:
        assert partial.speech_end in (None, now), f"a partial names another pause: {partial}"


async def test_cancel_turn_drops_the_pending_transcript(asr_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch,
                                                        avatarchat_factories: Factories) -> None:
    """Cancelled while its utterance is being transcribed, a turn emits TurnCancelled and no
    transcript (the handler yields none after the cancel); the next utterance is heard."""
    core = CoreSpy(*core_of(asr_handler, avatarchat_factories), monkeypatch)
    spy = OutputSpy(asr_handler, monkeypatch)
    async with Session([asr_handler], SessionInfo("conformance")) as session:
        turn = session.new_turn()
        session.push(ended_utterance(turn, utterance(STORY), session))
        async with asyncio.timeout(TIMEOUT_S):
            while not core.calls:
                await asyncio.sleep(0.002)
        t_cancel = time.monotonic()
        assert session.cancel_turn(turn), "the turn ended before it could be cancelled"
        after = of_turn(await drain(session, 1.0), turn)
        assert after == [TurnCancelled(turn, "interrupted")], f"after cancel_turn: {summary(after)}"
        late = [e for e in spy.after(turn, t_cancel) if isinstance(e, UserTranscript)]
        assert not late, f"the handler yielded a transcript after cancel: {summary(late)}"
        await hear(session, WEATHER)


async def test_error_ends_only_its_turn(asr_handler: Handler[Any], monkeypatch: pytest.MonkeyPatch,
                                        avatarchat_factories: Factories) -> None:
    """Transcription failing on one utterance gives exactly one ErrorEvent naming the asr
    stage and a TurnCancelled(reason="error") for that turn, no transcript of it; the
    utterances before and after it on the same session are heard."""
    # Test double: a real model or server does not fail on demand, so the handler's core
    # is wrapped to raise on call ``fail_at``, once.
    fail_at = factory_for(asr_handler.stage, asr_handler.name, avatarchat_factories).fail_at
    CoreSpy(*core_of(asr_handler, avatarchat_factories), monkeypatch, fail_at=fail_at)
    async with Session([asr_handler], SessionInfo("conformance")) as session:
        for _ in range(fail_at - 1):
            await hear(session, WEATHER)
        turn = session.new_turn()
        session.push(ended_utterance(turn, utterance(STORY), session))
        events = of_turn(await until_final(session, turn), turn)
        events += of_turn(await drain(session), turn)
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and errors[0].stage == "asr", f"got {summary(events)}"
        assert "injected" in errors[0].message
        assert not finals(events, turn), f"a failed turn was transcribed: {summary(events)}"
        i = events.index(errors[0])
        assert events[i + 1:] == [TurnCancelled(turn, "error")], f"after the error: {summary(events[i + 1:])}"
        await hear(session, WEATHER)
