"""``s2s: qwen_omni`` against the local Qwen-Omni realtime server
(``avatarchat.testing.services.qwen_omni``), driven by the official ``dashscope`` SDK.

Everything is real but the model behind the server: the SDK's websocket-client thread, a
real WebSocket on 127.0.0.1, the handler in a real engine session, and real speech both
ways (the question is said by the embedded voice; the server answers with it too). In the
happy path the server hears the question with the embedded whisper, so what the SDK sent
is checked by ear; elsewhere it hears a fixed transcript the test sets (``OmniScript.heard``).
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from avatarchat.engine.events import (
    ErrorEvent,
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    SpeechEnded,
    SpeechPaused,
    TimingMark,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.handler import HandlerLoadError, SessionInfo, SessionSettings
from avatarchat.engine.session import Session
from avatarchat.engine.turn import place
from avatarchat.handlers.s2s.qwen_omni import QwenOmniOptions, QwenOmniS2S
from avatarchat.testing.services.base import GOOD_KEY, LocalService, from_pcm16, pcm16, speech
from avatarchat.testing.services.qwen_omni import PATH, OmniScript, _clauses, default_answer, server

QUESTION = "What is the capital of France?"
PARIS = default_answer(QUESTION)
SETTINGS = SessionSettings(system_prompt="You are Ava. Answer in one sentence.")


@pytest.fixture
async def omni() -> AsyncIterator[Callable[..., Any]]:
    """Starts local Qwen-Omni servers (``await omni(script, delay_ms=...)``), stopped after the test."""
    started: list[LocalService] = []

    async def start(script: OmniScript | None = None, delay_ms: float = 0.0) -> LocalService:
        svc = LocalService(server(script or OmniScript()), delay_ms=delay_ms)
        await svc.__aenter__()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        await svc.__aexit__()


def handler(svc: LocalService, **options: Any) -> QwenOmniS2S:
    h = QwenOmniS2S(QwenOmniOptions(**{"url": svc.ws_url + PATH, "api_key": GOOD_KEY, "check": False, **options}))
    h.use_session(SETTINGS)
    return h


class Chat:
    """An engine session of the one s2s stage, and everything that came out of it."""

    def __init__(self, h: QwenOmniS2S) -> None:
        self.session = Session([h], SessionInfo("omni", SETTINGS))
        self.events: list[Event] = []
        self._ended: asyncio.Queue[Event] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Chat:
        await self.session.start()
        self._pump = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._pump is not None
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)
        await self.session.close()

    async def _read(self) -> None:
        async for event in self.session.events():
            self.events.append(event)
            if isinstance(event, ReplyEnd | TurnCancelled):
                self._ended.put_nowait(event)

    def ask(self, audio: np.ndarray) -> int:
        turn = self.session.new_turn()
        self.session.push(SpeechEnded(turn, audio, speech_end=0.0))
        return turn

    async def ended(self, timeout: float = 60.0) -> Event:
        """The next turn's end: its ``ReplyEnd`` or ``TurnCancelled``."""
        return await asyncio.wait_for(self._ended.get(), timeout)

    async def replied(self, timeout: float = 60.0) -> ReplyEnd:
        """The next ``ReplyEnd`` (a failed turn's cancel passes; its fallback ends so)."""
        while not isinstance(end := await self.ended(timeout), ReplyEnd):
            pass
        return end

    def of(self, turn: int, kind: type[Event] = Event) -> list[Any]:
        return [e for e in self.events if e.turn == turn and isinstance(e, kind)]


def question_audio() -> np.ndarray:
    return speech(QUESTION, rate=16000)


def reply_audio(text: str) -> np.ndarray:
    """What the server says for ``text``, as it sends it (clause by clause, 16-bit)."""
    return np.concatenate([from_pcm16(pcm16(speech(c, rate=24000))) for c in _clauses(text)])


def sent(svc: LocalService, kind: str) -> list[dict[str, Any]]:
    return [s["body"] for s in svc.seen if s["kind"] == "ws" and s["body"].get("type") == kind]


@pytest.fixture(scope="module")
def whisper() -> Callable[[np.ndarray], str]:
    from avatarchat.handlers.asr.whisper import WhisperHandler, WhisperOptions

    asr = WhisperHandler(WhisperOptions())
    asr.load()
    return lambda audio: asr.transcribe(audio, "en")


@pytest.mark.slow
async def test_a_spoken_question_is_heard_and_answered_with_the_servers_speech(
        omni: Callable[..., Any], whisper: Callable[[np.ndarray], str]) -> None:
    svc = await omni(OmniScript(transcribe=whisper))
    async with Chat(handler(svc)) as chat:
        turn = chat.ask(question_audio())
        end = await chat.ended()
    assert isinstance(end, ReplyEnd) and end.text == PARIS
    # The server's whisper heard the audio the SDK sent: it came through intact.
    heard = chat.of(turn, UserTranscript)
    assert len(heard) == 1 and heard[0].final and "capital of france" in heard[0].text.lower()
    assert "".join(e.text for e in chat.of(turn, ReplyText)) .strip() == PARIS
    chunks: list[ReplyAudio] = chat.of(turn, ReplyAudio)
    assert {c.sample_rate for c in chunks} == {24000}
    for a, b in zip(chunks, chunks[1:]):  # contiguous on the reply timeline
        assert b.offset == pytest.approx(a.offset + a.duration, abs=1e-9)
    np.testing.assert_allclose(place(chunks), reply_audio(PARIS), atol=1e-6)
    # A chunk's text is set only where its stretch of audio ends: the clauses, in order.
    assert [c.text for c in chunks if c.text] == _clauses(PARIS)
    assert chunks[-1].text == _clauses(PARIS)[-1]
    marks = {m.name: m.at for m in chat.of(turn, TimingMark)}
    assert marks["asr_start"] <= marks["llm_start"] <= marks["llm_first_token"] <= marks["tts_first_audio"]
    assert "asr_final" in marks


async def test_the_requests_have_the_shape_the_service_expects(omni: Callable[..., Any]) -> None:
    svc = await omni()
    audio = question_audio()
    async with Chat(handler(svc, voice="Ethan", model="qwen-omni-turbo-realtime")) as chat:
        chat.ask(audio)
        await chat.ended()
        turn = chat.session.say("Tell me a story.")
        end = await chat.ended()
    assert end.turn == turn and isinstance(end, ReplyEnd) and end.text == default_answer("Tell me a story.")
    handshake = next(s for s in svc.seen if s["kind"] == "http")
    assert handshake["path"] == f"{PATH}?model=qwen-omni-turbo-realtime"
    headers = {k.lower(): v for k, v in handshake["headers"].items()}
    assert headers["authorization"] == f"Bearer {GOOD_KEY}"
    assert "dashscope" in headers["user-agent"].lower()
    kinds = [s["body"]["type"] for s in svc.seen if s["kind"] == "ws"]
    appends = kinds.count("input_audio_buffer.append")
    assert kinds == (["session.update"] + ["input_audio_buffer.append"] * appends
                     + ["input_audio_buffer.commit", "response.create", "conversation.item.create", "response.create"])
    (update,) = sent(svc, "session.update")
    session = update["session"]
    assert session["modalities"] == ["text", "audio"] and session["voice"] == "Ethan"
    assert session["turn_detection"] is None  # our VAD decides the turn
    assert session["instructions"] == SETTINGS.system_prompt
    assert session["input_audio_transcription"] == {"model": "gummy-realtime-v1"}
    pcm = b"".join(base64.b64decode(m["audio"]) for m in sent(svc, "input_audio_buffer.append"))
    assert pcm == pcm16(audio)  # 16 kHz 16-bit mono, every sample
    item = sent(svc, "conversation.item.create")[0]["item"]
    assert item == {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}
    assert all(m["event_id"].startswith("event_") for m in sent(svc, "response.create"))


async def test_cancel_mid_stream_sends_response_cancel_and_nothing_of_the_turn_comes_after(
        omni: Callable[..., Any]) -> None:
    script = OmniScript(heard="Tell me a story.", pace_s=0.1)  # 1x real time: long enough to cut
    svc = await omni(script)
    async with Chat(handler(svc)) as chat:
        turn = chat.ask(question_audio())
        while not chat.of(turn, ReplyAudio):
            await asyncio.sleep(0.01)
        assert chat.session.cancel_turn(turn)
        assert isinstance(await chat.ended(), TurnCancelled)
        count = len(chat.events)
        script.heard = QUESTION
        again = chat.ask(question_audio())
        end = await chat.ended()
    assert sent(svc, "response.cancel"), "the server never saw the cancel"
    after = [e for e in chat.events[count:] if e.turn == turn]
    assert after == [], f"turn {turn} went on after its cancel: {after}"
    # The next turn waited for the cancelled response's end: its reply is its own.
    assert isinstance(end, ReplyEnd) and end.turn == again and end.text == PARIS
    np.testing.assert_allclose(place(chat.of(again, ReplyAudio)), reply_audio(PARIS), atol=1e-6)


async def test_a_rejected_key_fails_the_load_in_one_line_and_a_live_turn_says_the_fallback(
        omni: Callable[..., Any]) -> None:
    svc = await omni()
    h = handler(svc, api_key="sk-wrong", check=True)
    with pytest.raises(HandlerLoadError) as info:
        await asyncio.get_running_loop().run_in_executor(None, h.load)
    assert str(info.value) == ("DashScope rejected the API key (HTTP 401 InvalidApiKey): set DASHSCOPE_API_KEY "
                               "to a key from https://bailian.console.aliyun.com")
    async with Chat(handler(svc, api_key="sk-wrong")) as chat:
        turn = chat.ask(question_audio())
        end = await chat.replied()
    (error,) = [e for e in chat.events if isinstance(e, ErrorEvent)]
    assert error.turn == turn and error.stage == "s2s" and "rejected the API key" in error.message
    assert isinstance(end, ReplyEnd) and end.turn > turn and end.text == SETTINGS.fallback_reply


async def test_no_key_at_all_names_the_variable(omni: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    svc = await omni()
    with pytest.raises(HandlerLoadError, match=r"^no DashScope API key: set DASHSCOPE_API_KEY"):
        await asyncio.get_running_loop().run_in_executor(None, handler(svc, api_key="", check=True).load)


async def test_an_unknown_voice_fails_the_load_with_the_services_reason(omni: Callable[..., Any]) -> None:
    svc = await omni()
    with pytest.raises(HandlerLoadError, match=r"Voice 'Nobody' is not supported.*session\.voice"):
        await asyncio.get_running_loop().run_in_executor(None, handler(svc, voice="Nobody", check=True).load)


async def test_a_dropped_connection_ends_the_turn_with_an_error_and_the_next_one_reconnects(
        omni: Callable[..., Any]) -> None:
    svc = await omni()
    async with Chat(handler(svc)) as chat:
        first = chat.ask(question_audio())
        assert (await chat.ended()).turn == first
        svc.fault = "drop_mid_stream"
        dropped = chat.ask(question_audio())
        fallback = await chat.replied()
        svc.fault = None
        again = chat.ask(question_audio())
        end = await chat.ended()
    (error,) = [e for e in chat.events if isinstance(e, ErrorEvent)]
    assert error.turn == dropped and "closed mid-reply" in error.message
    assert isinstance(fallback, ReplyEnd) and fallback.text == SETTINGS.fallback_reply
    assert isinstance(end, ReplyEnd) and end.turn == again and end.text == PARIS
    # The second connection's session is told the conversation the first one held.
    updates = sent(svc, "session.update")
    assert len(updates) == 2 and f"User: {QUESTION}\nYou: {PARIS}" in updates[1]["session"]["instructions"]


async def test_a_slow_first_byte_times_out_and_the_response_is_cancelled(omni: Callable[..., Any]) -> None:
    svc = await omni()
    svc.fault, svc.slow_first_s = "slow_first_byte", 30.0
    async with Chat(handler(svc, first_audio_timeout_s=0.5)) as chat:
        turn = chat.ask(question_audio())
        await chat.replied()  # the fallback
        svc.fault = None
        again = chat.ask(question_audio())
        end = await chat.ended()
    (error,) = [e for e in chat.events if isinstance(e, ErrorEvent)]
    assert error.turn == turn and "sent no audio within 0.5 s" in error.message
    assert sent(svc, "response.cancel")
    assert isinstance(end, ReplyEnd) and end.turn == again and end.text == PARIS


async def test_a_server_error_ends_only_its_turn(omni: Callable[..., Any]) -> None:
    svc = await omni()
    svc.fault = "server_error"
    async with Chat(handler(svc)) as chat:
        turn = chat.ask(question_audio())
        await chat.replied()  # the fallback
        svc.fault = None
        again = chat.ask(question_audio())
        end = await chat.ended()
    (error,) = [e for e in chat.events if isinstance(e, ErrorEvent)]
    assert error.turn == turn and "Internal server error" in error.message
    assert isinstance(end, ReplyEnd) and end.turn == again and end.text == PARIS


async def test_the_utterance_goes_out_at_its_pauses_and_its_end_sends_only_the_rest(omni: Callable[..., Any]) -> None:
    svc = await omni()
    audio = question_audio()
    blip = np.asarray(speech("Um.", rate=16000))
    async with Chat(handler(svc)) as chat:
        dropped, turn = chat.session.new_turn(), chat.session.new_turn()
        chat.session.push(SpeechPaused(dropped, blip, speech_end=0.0))  # a turn the VAD never ends
        chat.session.push(SpeechPaused(turn, audio[: len(audio) // 2], speech_end=0.0))
        chat.session.push(SpeechEnded(turn, audio, speech_end=0.0))
        end = await chat.replied()
    assert end.turn == turn and end.text == PARIS
    kinds = [s["body"]["type"] for s in svc.seen if s["kind"] == "ws"]
    commit = kinds.index("input_audio_buffer.commit")
    # The blip's audio went out, then was cleared; the question went in two parts.
    assert kinds.index("input_audio_buffer.clear") < commit and kinds[commit + 1] == "response.create"
    messages = [s["body"] for s in svc.seen if s["kind"] == "ws"]
    after_clear = messages[kinds.index("input_audio_buffer.clear") + 1: commit]
    assert b"".join(base64.b64decode(m["audio"]) for m in after_clear) == pcm16(audio)
    before_clear = messages[: kinds.index("input_audio_buffer.clear")]
    assert b"".join(base64.b64decode(m["audio"]) for m in before_clear if "audio" in m) == pcm16(blip)


async def test_a_wrong_path_or_a_silent_server_fails_the_load_in_one_line(omni: Callable[..., Any]) -> None:
    svc = await omni()
    loop = asyncio.get_running_loop()
    with pytest.raises(HandlerLoadError, match=r"^DashScope refused the realtime connection to ws://127\.0\.0\.1:\d+/nope: HTTP 404"):
        await loop.run_in_executor(None, handler(svc, url=svc.ws_url + "/nope", check=True).load)
    # A server that takes the connection and never answers: the connect timeout fires.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}{PATH}"
        with pytest.raises(HandlerLoadError, match=r"^cannot reach ws://.*: no Qwen-Omni session within 0\.5 s$"):
            await loop.run_in_executor(None, handler(svc, url=url, connect_timeout_s=0.5, check=True).load)
    finally:
        silent.close()
