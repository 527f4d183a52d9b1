"""Faults inside a turn: the avatar says (or shows) a short fallback line, the turn ends,
and the next turn of the same session gets a real answer.

The language model is xllamacpp's OpenAI-compatible server on SmolLM2 (one per module),
reached by the ``openai_compatible`` handler through ``tests/fault_proxy.py``, a TCP proxy
that refuses connections, holds back the first byte, cuts the stream or replaces it with
garbage on command; one test stops a real server and starts it again. The voice is hibari,
and whisper transcribes the fallback it says back to words. For the TTS and ASR faults a
wrapper that raises around the real handler is the fault being injected (a real model
does not fail on demand). Nothing here bounds wall-clock time; each fault's time from the
question to the fallback's first audio is logged (``-o log_cli=true`` shows it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatarchat.audio.io import load_audio
from avatarchat.audio.resample import resample
from avatarchat.engine.events import (
    ErrorEvent,
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    SpeechEnded,
    TurnCancelled,
    UserTranscript,
    now,
)
from avatarchat.engine.handler import Handler, HandlerOptions, SessionInfo, SessionSettings
from avatarchat.engine.session import Session
from avatarchat.handlers.asr.whisper import WhisperHandler, WhisperOptions
from avatarchat.handlers.llm.openai_compatible import OpenAICompatibleLLM
from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS
from tests.fault_proxy import FaultProxy
from tests.llm_server import free_port, port_open, serve_llm

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SETTINGS = SessionSettings()
QUESTION = "What is the capital of France?"
#: Bounds on waits for events, generous for a loaded 2-core machine; never a performance target.
WAIT_S = 60.0


# --- fixtures: one server, one voice, one ear per module ----------------------------------


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    with serve_llm() as url:
        yield url


@pytest.fixture(scope="module")
def voice() -> HibariTTS:
    tts = HibariTTS(HibariOptions())
    tts.load()
    return tts


@pytest.fixture(scope="module")
def ear() -> WhisperHandler:
    asr = WhisperHandler(WhisperOptions())
    asr.load()
    return asr


def llm_via(url: str, **options: Any) -> OpenAICompatibleLLM:
    settings: dict[str, Any] = {"model": "smollm2", "max_tokens": 40, "temperature": 0.0, **options}
    llm = OpenAICompatibleLLM(OpenAICompatibleLLM.Options(api_url=f"{url}/v1", **settings))
    llm.load()
    return llm


def server_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- reading a session ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one question led to: the events of its turn, and those of a fallback turn."""

    asked: float
    turn: list[Event]
    fallback: list[Event]

    @property
    def error(self) -> ErrorEvent:
        errors = [e for e in self.turn if isinstance(e, ErrorEvent)]
        assert len(errors) == 1, f"expected one error, got {self.turn}"
        return errors[0]

    def audio(self, events: list[Event]) -> list[ReplyAudio]:
        return [e for e in events if isinstance(e, ReplyAudio)]

    def seconds_to_fallback_audio(self) -> float:
        first = self.audio(self.fallback)[0]
        return first_seen[id(first)] - self.asked


#: When each ReplyAudio and ReplyEnd came out of the session (monotonic), by object id.
first_seen: dict[int, float] = {}


async def outcome(session: Session, turn: int, asked: float) -> Outcome:
    """Events of ``turn`` until it ends; if it failed, also those of the fallback turn the
    engine opened for it (the next turn id), until that one's ReplyEnd."""
    mine: list[Event] = []
    fallback: list[Event] = []
    fallback_turn: int | None = None
    async with asyncio.timeout(WAIT_S):
        async for event in session.events():
            if isinstance(event, ReplyAudio | ReplyEnd):
                first_seen[id(event)] = time.monotonic()
            if event.turn == turn:
                mine.append(event)
                if isinstance(event, TurnCancelled) and event.reason == "error":
                    fallback_turn = turn + 1
                elif isinstance(event, ReplyEnd | TurnCancelled):
                    return Outcome(asked, mine, [])
            elif event.turn == fallback_turn:
                fallback.append(event)
                if isinstance(event, ReplyEnd | TurnCancelled):
                    return Outcome(asked, mine, fallback)
    raise AssertionError("the session's output ended")


async def ask(session: Session, text: str = QUESTION) -> Outcome:
    asked = time.monotonic()
    return await outcome(session, session.say(text), asked)


def rms(chunks: list[ReplyAudio]) -> float:
    samples = np.concatenate([c.samples for c in chunks])
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


async def heard(ear: WhisperHandler, chunks: list[ReplyAudio]) -> str:
    """What whisper hears in the spoken chunks (lower case, letters and spaces only)."""
    samples = resample(np.concatenate([c.samples for c in chunks]), chunks[0].sample_rate, 16000)
    text = await asyncio.get_running_loop().run_in_executor(None, ear.transcribe, samples, "en")
    return "".join(ch for ch in text.lower() if ch.isalpha() or ch == " ")


async def assert_fallback_said(result: Outcome, ear: WhisperHandler, line: str, key_words: tuple[str, ...],
                               stage: str, fault: str) -> None:
    """The turn failed at ``stage`` and the fallback ``line`` was shown and spoken."""
    assert result.error.stage == stage and len(result.error.error_id) == 8
    assert isinstance(result.turn[-1], TurnCancelled) and result.turn[-1].reason == "error"
    assert [e.text for e in result.fallback if isinstance(e, ReplyText)] == [line]
    assert isinstance(result.fallback[-1], ReplyEnd) and result.fallback[-1].text == line
    spoken = result.audio(result.fallback)
    assert spoken and rms(spoken) > 0.01, "the fallback was not spoken"
    words = await heard(ear, spoken)
    assert all(w in words for w in key_words), f"whisper heard {words!r} for {line!r}"
    log.info("fault %s: question -> fallback audio %.2f s", fault, result.seconds_to_fallback_audio())


async def assert_answers(session: Session) -> str:
    """The next question gets a real reply from the model, spoken; returns its text."""
    result = await ask(session)
    assert not result.fallback and not any(isinstance(e, ErrorEvent) for e in result.turn), result.turn
    end = result.turn[-1]
    assert isinstance(end, ReplyEnd) and end.text.strip() and end.text not in SETTINGS.fallback_reply
    assert rms(result.audio(result.turn)) > 0.01
    return end.text


def remembered_replies(session: Session) -> list[str]:
    return [reply for _, reply in session.context("llm").history]


# --- the language model's server ------------------------------------------------------------------


Fault = Callable[[FaultProxy], Awaitable[None]]


async def refuse(proxy: FaultProxy) -> None:
    await proxy.refuse()


async def slow(proxy: FaultProxy) -> None:
    proxy.delay_first_byte(WAIT_S)  # the handler's first_token_timeout_s (1 s here) gives up first


async def cut(proxy: FaultProxy) -> None:
    proxy.cut_after(1500)  # a few words into the reply (each SSE chunk is ~300 bytes)


async def noise(proxy: FaultProxy) -> None:
    proxy.garbage(b"\x00\xffthis is no event stream\r\n\r\n")


async def bad_json(proxy: FaultProxy) -> None:
    proxy.garbage(b'data: {"choices": [{"delta": {"content": "Par\n\n')


@pytest.mark.parametrize("fault", [refuse, slow, cut, noise, bad_json], ids=lambda f: f.__name__)
async def test_a_server_fault_is_answered_by_the_fallback_and_the_next_turn_works(
        llm_url: str, voice: HibariTTS, ear: WhisperHandler, fault: Fault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FaultProxy(server_port(llm_url)) as proxy:
        llm = llm_via(proxy.url, first_token_timeout_s=1.0, api_key="sk-test-secret-key")
        async with Session([llm, voice], SessionInfo("faults")) as session:
            await fault(proxy)
            result = await ask(session)
            await assert_fallback_said(result, ear, SETTINGS.fallback_reply, ("language", "model"), "llm",
                                       fault.__name__)
            assert proxy.url in result.error.message and "sk-test-secret-key" not in result.error.message
            assert remembered_replies(session) == [], "a failed turn left something in the model's history"
            await proxy.restore()
            # The 1 s first-token limit made the slow fault quick to test; a real answer on a
            # loaded machine gets a generous one.
            llm.options = llm.options.model_copy(update={"first_token_timeout_s": WAIT_S})
            await assert_answers(session)
            remembered = remembered_replies(session)
            assert len(remembered) == 1 and SETTINGS.fallback_reply not in remembered[0], (
                f"the fallback entered the model's history: {remembered}")
        assert proxy.connections >= 1, "the handler did not go through the proxy"
    assert "sk-test-secret-key" not in caplog.text, "the api_key reached the log"


async def test_a_stream_cut_mid_reply_stops_what_the_model_had_begun(llm_url: str, voice: HibariTTS) -> None:
    """The words before the cut went out; after the error nothing more of that reply does."""
    async with FaultProxy(server_port(llm_url)) as proxy:
        llm = llm_via(proxy.url, max_tokens=120, first_token_timeout_s=WAIT_S)
        async with Session([llm, voice], SessionInfo("cut")) as session:
            # What the model stage yields, as it yields it (the session's output may drop
            # deltas of the failed turn still queued behind the voice).
            yielded: list[Event] = []
            session.listen((ReplyText,), yielded.append)
            proxy.cut_after(2500)
            result = await ask(session, "Tell me a long story about a brave little dragon.")
            failed = result.error.turn
            assert [e for e in yielded if e.turn == failed], "the cut came before any word: not mid-reply"
            after = result.turn[result.turn.index(result.error) + 1:]
            assert after == [TurnCancelled(failed, "error")], f"more of the failed reply came out: {after}"
            assert not any(isinstance(e, ReplyEnd) for e in result.turn)
            assert [e.text for e in result.fallback if isinstance(e, ReplyText)] == [SETTINGS.fallback_reply]


async def test_a_stopped_server_is_answered_by_the_fallback_until_it_is_back(
        voice: HibariTTS, ear: WhisperHandler) -> None:
    port = free_port()
    llm = llm_via(f"http://127.0.0.1:{port}")
    async with Session([llm, voice], SessionInfo("stopped")) as session:
        with serve_llm(port=port):
            await assert_answers(session)
        assert not port_open(port)
        result = await ask(session)
        await assert_fallback_said(result, ear, SETTINGS.fallback_reply, ("language", "model"), "llm", "stopped")
        with serve_llm(port=port):
            await assert_answers(session)


async def test_a_server_that_never_accepts_times_out_connecting(voice: HibariTTS) -> None:
    """A listener whose backlog is full drops new connection attempts: the connect timeout
    ends the turn, and the fallback is said."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # fill the accept queue; later SYNs go unanswered
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            llm = llm_via(f"http://127.0.0.1:{port}", connect_timeout_s=0.5)
            async with Session([llm, voice], SessionInfo("connect")) as session:
                result = await ask(session)
        finally:
            for s in fillers:
                s.close()
    assert "did not answer in time" in result.error.message
    assert [e.text for e in result.fallback if isinstance(e, ReplyText)] == [SETTINGS.fallback_reply]
    assert result.audio(result.fallback)
    log.info("fault connect-timeout: question -> fallback audio %.2f s", result.seconds_to_fallback_audio())


# --- a voice or an ear that raises ------------------------------------------------------------------


class RaisesOnce(Handler[HandlerOptions]):
    """``inner`` with the fault injected: its first ``handle`` of an event of type
    ``on`` raises, as a model failing mid-session would; after that it is ``inner``."""

    def __init__(self, inner: Handler[Any], on: type[Event]) -> None:
        super().__init__(HandlerOptions())
        self.inner, self.on, self.raised = inner, on, False
        self.name, self.stage = f"raises-once-{inner.name}", inner.stage  # type: ignore[misc]
        self.accepts, self.forwards = inner.accepts, inner.forwards  # type: ignore[misc]

    def create_context(self, session: SessionInfo) -> Any:
        return self.inner.create_context(session)

    async def handle(self, ctx: Any, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, self.on) and not self.raised:
            self.raised = True
            raise RuntimeError(f"injected: {self.inner.name} failed on {type(event).__name__}")
        async with aclosing(self.inner.handle(ctx, event)) as outputs:  # type: ignore[type-var]
            async for out in outputs:
                yield out

    def cancel_turn(self, ctx: Any, turn: int) -> None:
        self.inner.cancel_turn(ctx, turn)

    def close_context(self, ctx: Any) -> None:
        self.inner.close_context(ctx)


async def test_a_voice_that_raises_shows_the_fallback_and_the_next_turn_is_spoken(
        llm_url: str, voice: HibariTTS) -> None:
    async with Session([llm_via(llm_url), RaisesOnce(voice, ReplyText)], SessionInfo("voice")) as session:
        result = await ask(session)
        assert result.error.stage == "tts" and "injected" in result.error.message
        line = SETTINGS.voice_fallback_reply
        assert [e.text for e in result.fallback if isinstance(e, ReplyText)] == [line]
        assert isinstance(result.fallback[-1], ReplyEnd) and result.fallback[-1].text == line
        assert not result.audio(result.fallback), "the failed voice cannot say it: it is shown only"
        log.info("fault tts-raises: question -> fallback shown %.2f s", first_seen[id(result.fallback[-1])] - result.asked)
        await assert_answers(session)


async def test_an_ear_that_raises_says_the_fallback_and_the_next_turn_is_heard(
        llm_url: str, voice: HibariTTS, ear: WhisperHandler) -> None:
    question = load_audio(SAMPLES / "question.wav", 16000)
    pipeline = [RaisesOnce(ear, SpeechEnded), llm_via(llm_url), voice]
    async with Session(pipeline, SessionInfo("ear")) as session:
        asked = time.monotonic()
        turn = session.new_turn()
        session.push(SpeechEnded(turn, question, speech_end=now()))
        result = await outcome(session, turn, asked)
        await assert_fallback_said(result, ear, SETTINGS.asr_fallback_reply, ("didnt", "catch"), "asr", "asr-raises")
        assert remembered_replies(session) == []
        turn = session.new_turn()
        session.push(SpeechEnded(turn, question, speech_end=now()))
        result = await outcome(session, turn, time.monotonic())
    transcript = [e for e in result.turn if isinstance(e, UserTranscript)]
    assert transcript and transcript[0].text.strip(), "the next utterance was not heard"
    assert isinstance(result.turn[-1], ReplyEnd) and result.turn[-1].text.strip()
    assert result.audio(result.turn)
