"""``asr: dashscope`` (Paraformer real-time) against the local DashScope server
(avatarchat.testing.services.dashscope), driven by the official dashscope SDK over a real
WebSocket on 127.0.0.1, through a real engine session.

The server recognizes with the embedded whisper, so the utterance (said by the embedded
voice) must come back as its words. One test gives the server a scripted recognizer
instead (it says the sentence's words in proportion to the audio heard), so that its
partial results are deterministic; the test says so.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from avatarchat.engine.events import (
    ErrorEvent,
    Event,
    ReplyText,
    SpeechEnded,
    SpeechPaused,
    SpeechSoFar,
    SpeechStarted,
    TimingMark,
    UserTranscript,
)
from avatarchat.engine.handler import HandlerLoadError, SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.asr.dashscope import DashScopeASR
from avatarchat.testing.conformance import drain, of_turn, read_until, summary
from avatarchat.testing.services.base import GOOD_KEY, LocalService, speech
from avatarchat.testing.services.dashscope import PATH, server

pytestmark = pytest.mark.slow

SENTENCE = "What is the weather like in Paris today?"
STEP = 8000  # a SpeechSoFar every 0.5 s of speech


def words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]+", " ", text.lower()).split()


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    """The sentence said by the embedded voice at 16 kHz, with 0.2 s of pre-roll."""
    return np.concatenate([np.zeros(3200, np.float32), speech(SENTENCE, "en", 16000)])


@pytest.fixture(scope="module")
def svc() -> Iterator[LocalService]:
    with LocalService(server()) as service:
        yield service


@pytest.fixture(autouse=True)
def fresh(svc: LocalService) -> None:
    svc.fault, svc.seen[:] = None, []


def asr(svc: LocalService, **options: Any) -> DashScopeASR:
    handler = DashScopeASR(DashScopeASR.Options(**{"url": f"{svc.ws_url}{PATH}", "api_key": GOOD_KEY, **options}))
    handler.load()
    return handler


async def speak(session: Session, audio: np.ndarray, pause: bool = True, gap_s: float = 0.2) -> int:
    """One user turn as the VAD sends it: the speech so far every 0.5 s, a pause, the end."""
    turn = session.new_turn()
    for n in range(STEP, len(audio), STEP):
        session.push(SpeechSoFar(turn, audio[:n], voiced_until=time.monotonic()))
        await asyncio.sleep(gap_s)
    if pause:
        session.push(SpeechPaused(turn, audio, speech_end=time.monotonic()))
    session.push(SpeechEnded(turn, audio, speech_end=time.monotonic()))
    return turn


def final(events: list[Event], turn: int) -> bool:
    return any(isinstance(e, UserTranscript) and e.final and e.turn == turn for e in events)


def messages(svc: LocalService, action: str) -> list[dict[str, Any]]:
    return [s["body"] for s in svc.seen if s["kind"] == "ws-message" and s["body"]["header"]["action"] == action]


async def test_a_spoken_question_comes_back_as_its_words(svc: LocalService, utterance: np.ndarray) -> None:
    """Audio streamed while spoken; the pause gives an early (non-final) transcript with its
    speech_end; the end gives asr_start, asr_final and the final transcript, which is the
    sentence said; every other transcript is non-final."""
    handler = asr(svc)
    async with Session([handler], SessionInfo("a")) as session:
        turn = await speak(session, utterance)
        events = of_turn(await read_until(session, lambda evs: final(evs, turn)), turn)
    transcripts = [e for e in events if isinstance(e, UserTranscript)]
    assert transcripts[-1].final and words(transcripts[-1].text) == words(SENTENCE), summary(events)
    assert not any(t.final for t in transcripts[:-1])
    assert any(t.speech_end is not None for t in transcripts[:-1]), "the pause gave no early transcript"
    marks = [e.name for e in events if isinstance(e, TimingMark)]
    assert marks[-2:] == ["asr_start", "asr_final"]
    assert any(isinstance(e, SpeechPaused) for e in events), "the pause was not passed on to the turn stage"


async def test_the_task_starts_when_the_user_starts_speaking(svc: LocalService, utterance: np.ndarray) -> None:
    """SpeechStarted (control lane) connects and starts the turn's task before any audio; a
    turn with no SpeechSoFar (a short answer) then uses it: one run-task, its words back."""
    handler = asr(svc, check=False)
    ctx = handler.create_context(SessionInfo("a"))
    try:
        assert handler.on_control(ctx, SpeechStarted(1)) == []
        deadline = time.monotonic() + 10
        while not messages(svc, "run-task") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert messages(svc, "run-task") and not any(s["kind"] == "ws-binary" for s in svc.seen)
        out = [e async for e in handler.handle(ctx, SpeechEnded(1, utterance, speech_end=time.monotonic()))]
    finally:
        handler.close_context(ctx)
    assert len(messages(svc, "run-task")) == 1
    got = [e for e in out if isinstance(e, UserTranscript)]
    assert len(got) == 1 and got[0].final and words(got[0].text) == words(SENTENCE)


async def test_a_next_turn_starting_does_not_cut_the_last_ones_result(svc: LocalService, utterance: np.ndarray) -> None:
    """The user speaks again while the last turn's final result is on its way: the new
    turn's task opens beside it, and each turn gets its own words."""
    handler = asr(svc, check=False)
    ctx = handler.create_context(SessionInfo("a"))
    other = "Please tell me a joke."
    try:
        handler.on_control(ctx, SpeechStarted(1))

        async def end(turn: int, audio: np.ndarray) -> list[Event]:
            return [e async for e in handler.handle(ctx, SpeechEnded(turn, audio, speech_end=time.monotonic()))]

        first = asyncio.create_task(end(1, utterance))
        await asyncio.sleep(0.05)
        handler.on_control(ctx, SpeechStarted(2))
        got1 = await first
        got2 = await end(2, np.concatenate([np.zeros(3200, np.float32), speech(other, "en", 16000)]))
    finally:
        handler.close_context(ctx)
    for got, said in ((got1, SENTENCE), (got2, other)):
        finals = [e for e in got if isinstance(e, UserTranscript) and e.final]
        assert len(finals) == 1 and words(finals[0].text) == words(said), summary(got)


async def test_request_shape_is_what_dashscope_documents(svc: LocalService, utterance: np.ndarray) -> None:
    """One task per turn: run-task for Paraformer (PCM, 16 kHz, the session's language as
    the hint), every sample of the utterance once in binary frames of at most 100 ms,
    then finish-task; the key in the handshake."""
    handler = asr(svc, check=False, model="paraformer-realtime-v2")
    async with Session([handler], SessionInfo("a")) as session:
        turn = await speak(session, utterance, gap_s=0.05)
        await read_until(session, lambda evs: final(evs, turn))
    handshake = next(s for s in svc.seen if s["kind"] == "ws")
    assert handshake["headers"]["Authorization"] == f"Bearer {GOOD_KEY}"
    (run,) = messages(svc, "run-task")
    payload = run["payload"]
    assert (payload["task_group"], payload["task"], payload["function"]) == ("audio", "asr", "recognition")
    assert payload["model"] == "paraformer-realtime-v2" and run["header"]["streaming"] == "duplex"
    p = payload["parameters"]
    assert (p["format"], p["sample_rate"], p["language_hints"]) == ("pcm", 16000, ["en"])
    frames = [s["body"] for s in svc.seen if s["kind"] == "ws-binary"]
    assert sum(frames) == 2 * len(utterance) and max(frames) <= 3200
    (finish,) = messages(svc, "finish-task")
    assert finish["header"]["task_id"] == run["header"]["task_id"]


async def test_partials_reach_the_page_as_the_service_hears(utterance: np.ndarray) -> None:
    """The server's recognizer here is scripted (the sentence's words in proportion to the
    audio it has heard): each intermediate result becomes a non-final transcript, growing."""
    said = SENTENCE.split()

    def scripted(audio: np.ndarray, language: str) -> str:
        return " ".join(said[: max(1, round(len(said) * len(audio) / len(utterance)))])

    async with LocalService(server(transcribe=scripted, partial_s=0.4)) as service:
        handler = asr(service, check=False)
        async with Session([handler], SessionInfo("a")) as session:
            turn = await speak(session, utterance, pause=False, gap_s=0.3)
            events = of_turn(await read_until(session, lambda evs: final(evs, turn)), turn)
    partials = [e.text for e in events if isinstance(e, UserTranscript) and not e.final]
    assert len(partials) >= 2, summary(events)
    assert all(len(a.split()) < len(b.split()) for a, b in zip(partials, partials[1:])), partials
    assert [e.text for e in events if isinstance(e, UserTranscript) and e.final] == [SENTENCE]


async def test_cancel_mid_stream_closes_the_task_and_drops_its_result(svc: LocalService, utterance: np.ndarray) -> None:
    handler = asr(svc, check=False)
    async with Session([handler], SessionInfo("a")) as session:
        turn = session.new_turn()
        session.push(SpeechSoFar(turn, utterance[:STEP], voiced_until=time.monotonic()))
        deadline = time.monotonic() + 10
        while not any(s["kind"] == "ws-binary" for s in svc.seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert session.cancel_turn(turn)
        session.push(SpeechEnded(turn, utterance, speech_end=time.monotonic()))
        after = of_turn(await drain(session, 1.5), turn)
        assert not any(isinstance(e, UserTranscript) for e in after), summary(after)
        while not any(s["kind"] == "ws-closed" for s in svc.seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert any(s["kind"] == "ws-closed" and s["body"]["client_closed"] for s in svc.seen)
        assert not messages(svc, "finish-task"), "a cancelled turn's task was finished, not dropped"


async def failed_turn(handler: DashScopeASR, audio: np.ndarray) -> ErrorEvent:
    """A turn whose recognition fails: one ErrorEvent of the asr stage, then the session's
    "didn't catch that" line as a reply of its own."""
    async with Session([handler], SessionInfo("a")) as session:
        turn = await speak(session, audio, gap_s=0.05)
        line = session.info.settings.asr_fallback_reply
        events = await read_until(session, lambda evs: any(isinstance(e, ReplyText) and e.text == line for e in evs))
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].stage == "asr" and errors[0].turn == turn, summary(events)
    assert not final(events, turn)
    return errors[0]


async def test_rejected_key_fails_load_in_one_line_and_a_live_turn_gets_the_fallback(
        svc: LocalService, utterance: np.ndarray) -> None:
    with pytest.raises(HandlerLoadError) as failed:
        asr(svc, api_key="sk-wrong")
    message = str(failed.value)
    assert "rejected the API key" in message and "DASHSCOPE_API_KEY" in message and "\n" not in message
    handler = asr(svc, check=False)
    svc.fault = "reject_key"
    assert "rejected the API key" in (await failed_turn(handler, utterance)).message


async def test_dropped_connection_mid_stream_ends_the_turn_and_the_next_works(
        svc: LocalService, utterance: np.ndarray) -> None:
    handler = asr(svc, check=False)
    svc.fault = "drop_mid_stream"
    assert "broke off" in (await failed_turn(handler, utterance)).message
    svc.fault = None
    async with Session([handler], SessionInfo("a")) as session:
        turn = await speak(session, utterance, gap_s=0.05)
        events = of_turn(await read_until(session, lambda evs: final(evs, turn)), turn)
    assert words(events[-1].text) == words(SENTENCE)  # type: ignore[attr-defined]


async def test_slow_first_result_times_out_instead_of_hanging(svc: LocalService, utterance: np.ndarray) -> None:
    handler = asr(svc, check=False, first_result_timeout_s=0.5, pause_wait_ms=0)
    svc.fault, svc.slow_first_s = "slow_first_byte", 30.0
    assert "within 0.5 s" in (await failed_turn(handler, utterance)).message


def test_unknown_model_and_missing_key_fail_load(svc: LocalService, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HandlerLoadError, match="ModelNotFound"):
        asr(svc, model="paraformer-v9")
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    with pytest.raises(HandlerLoadError, match="DASHSCOPE_API_KEY"):
        asr(svc, api_key="")


async def test_a_chinese_session_hints_zh_and_its_words_join_without_spaces(svc: LocalService) -> None:
    """language zh: the task's language hint is zh, and the Mandarin voice's question comes
    back in Chinese characters, not spaced (the server hears it with whisper base)."""
    said = "今天北京的天气怎么样？"
    audio = np.concatenate([np.zeros(3200, np.float32), speech(said, "zh", 16000)])
    handler = asr(svc, check=False, language="zh")
    async with Session([handler], SessionInfo("a")) as session:
        turn = await speak(session, audio, pause=False, gap_s=0.05)
        events = of_turn(await read_until(session, lambda evs: final(evs, turn), timeout=120), turn)
    (run,) = messages(svc, "run-task")
    assert run["payload"]["parameters"]["language_hints"] == ["zh"]
    text = [e for e in events if isinstance(e, UserTranscript) and e.final][0].text
    assert " " not in text
    heard = sum(c in text for c in said[:-1])
    assert heard >= 0.8 * len(said[:-1]), f"said {said}, heard {text}"


def _result(words_end_ms: list[float], text: str = "中国的首都是") -> dict[str, Any]:
    """A ``result-generated`` frame as the service sends it: an intermediate sentence."""
    words = [{"begin_time": max(0.0, e - 200), "end_time": e, "text": "x", "punctuation": ""} for e in words_end_ms]
    return {"header": {"event": "result-generated"},
            "payload": {"output": {"sentence": {"text": text, "end_time": None, "sentence_end": False,
                                                "words": words}}}}


@pytest.mark.parametrize(("sent_ms", "last_word_ms", "stale"), [
    (2000, 1000, True),    # the result heard half of what was sent: not the pause's words
    (2000, 1800, False),   # up to the pause (its silence is still being sent)
    (2000, None, False),   # no word times: the text is taken as it is
])
def test_a_result_that_has_not_heard_the_last_words_is_stale(sent_ms: int, last_word_ms: float | None,
                                                              stale: bool) -> None:
    # Unit level, on the frames the service sends: the pause path then gives no words
    # rather than old ones (end of turn would wait the unfinished hangover on "…是").
    from avatarchat.handlers.asr.dashscope import RATE, _lags, _note, _Stream

    stream = _Stream(1, task=None)  # type: ignore[arg-type]
    stream.sent = sent_ms * RATE // 1000
    _note(stream, _result([] if last_word_ms is None else [last_word_ms / 2, last_word_ms]))
    assert stream.text("") == "中国的首都是"
    assert _lags(stream) is stale
