"""A reply started at the pause, with the real models (silero, whisper tiny.en, SmolLM2 through
llama.cpp, hibari), spoken as a live microphone would send it (20 ms chunks, real time).

The user says "Tell me about Paris", thinks for 0.6 s, and goes on "and its history." The
words end a sentence, so the first pause starts a speculation; the turn cannot end in that
pause (``complete_ms`` 1500), so the voice coming back must drop it: nothing of the first
answer may come out, and the LLM must remember only the whole question. The logic is timed
to the millisecond in tests/test_speculation.py; this shows the real stages obey it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from avatarchat.audio.resample import resample
from avatarchat.engine.events import Event, ReplyAudio, ReplyEnd, ReplyText, UserTranscript
from avatarchat.engine.handler import EndOfTurnSettings, SessionInfo, SessionSettings
from avatarchat.engine.session import Session
from avatarchat.handlers.asr.whisper import WhisperHandler
from avatarchat.handlers.llm.local import LocalLLM
from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS
from avatarchat.handlers.vad.silero import SileroOptions, SileroVADHandler
from tests.live_mic import feed_live

RATE = 16_000
pytestmark = pytest.mark.slow


def spoken(tts: HibariTTS, text: str) -> np.ndarray:
    samples, _ = tts.synthesize(text)
    return resample(samples, tts.sample_rate, RATE).astype(np.float32)


async def talk(session: Session, signal: np.ndarray, after_s: float) -> list[Event]:
    """Stream ``signal`` live, then read the output until a reply ended (or ``after_s``
    seconds past the end of the signal)."""
    out: list[Event] = []

    feeder = asyncio.create_task(feed_live(session, signal, then_silence=True))
    try:
        async with asyncio.timeout(len(signal) / RATE + after_s):
            async for event in session.events():
                out.append(event)
                if isinstance(event, ReplyEnd):
                    return out
    except TimeoutError:
        raise AssertionError(f"no reply; got {[type(e).__name__ for e in out]}") from None
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    return out


async def test_a_user_who_goes_on_after_a_pause_gets_one_answer_to_the_whole_question() -> None:
    vad = SileroVADHandler(SileroOptions(pause_ms=150, end_ms=3000))
    asr = WhisperHandler(WhisperHandler.Options())
    llm = LocalLLM(LocalLLM.Options(temperature=0.0, max_tokens=24))
    tts = HibariTTS(HibariOptions())
    for handler in (vad, asr, llm, tts):
        handler.load()
    first, second = spoken(tts, "Tell me about Paris."), spoken(tts, "And its history.")
    silence = np.zeros(int(0.6 * RATE), np.float32)
    signal = np.concatenate([np.zeros(RATE // 2, np.float32), first, silence, second,
                             np.zeros(3 * RATE, np.float32)])
    settings = SessionSettings(end_of_turn=EndOfTurnSettings(complete_ms=1500, unfinished_ms=3000, speculate=True))
    async with Session([vad, asr, llm, tts], SessionInfo("t", settings)) as session:
        out = await talk(session, signal, after_s=60)
        history = list(session.context("llm").history)
        speculator = session.speculator
    assert speculator is not None
    finals = [e.text for e in out if isinstance(e, UserTranscript) and e.final]
    assert len(finals) == 1 and "paris" in finals[0].lower() and "history" in finals[0].lower(), finals
    assert {e.turn for e in out} == {1}, "one user turn; no speculation's id comes out"
    reply = next(e for e in out if isinstance(e, ReplyEnd)).text
    # (At the token cap the voice stops at the last full sentence: the end says what it said.)
    assert "".join(e.text for e in out if isinstance(e, ReplyText)).startswith(reply)
    assert all(e.text in reply for e in out if isinstance(e, ReplyAudio)), "only the answer's words are spoken"
    assert [user for user, _ in history] == [finals[0]], "the LLM remembers the whole question only"
    # The last pause's words were spoken answer; the first pause's (if its transcript came
    # before the voice did) was dropped.
    assert speculator.used == 1 and speculator.started == speculator.used + speculator.dropped
    print(f"speculations: started {speculator.started}, used {speculator.used}, dropped {speculator.dropped}")
