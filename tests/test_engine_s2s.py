"""The engine with a speech-to-speech stage (``s2s``) in place of ASR + LLM + TTS.

The configs: either ``s2s`` or all of ``asr``, ``llm``, ``tts``. Then a real pipeline:
silero VAD, ``qwen_omni`` against the local Qwen-Omni realtime server (through the
dashscope SDK), the portrait avatar, and the engine's ``Conversation`` (turn-taking, the
cut, heard text, metrics) with a ``FakeSink`` playing on the real clock. The user is real
speech from the embedded voice, fed as a live microphone (20 ms chunks in real time). The
server hears each utterance as the next of a list of transcripts the test sets (fixed, so
the test knows which question each turn asked).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from avatarchat.engine.clock import REAL_CLOCK
from avatarchat.engine.config import ConfigError, parse_sections
from avatarchat.engine.conversation import Conversation, ConversationListener
from avatarchat.engine.events import Event, ReplyEnd, ReplyInterrupted, TimingMark, UserTranscript
from avatarchat.engine.handler import SessionSettings
from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.turn import stage_timings
from avatarchat.handlers.avatar.portrait import PortraitHandler, PortraitOptions
from avatarchat.handlers.s2s.qwen_omni import QwenOmniOptions, QwenOmniS2S
from avatarchat.handlers.vad.silero import SileroOptions, SileroVADHandler
from avatarchat.testing import FakeSink, pipeline_of
from avatarchat.testing.services.base import GOOD_KEY, LocalService, speech
from avatarchat.testing.services.qwen_omni import PATH, OmniScript, _clauses, default_answer, server

QUESTION = "What is the capital of France?"
STORY = "Tell me a story."
PARIS = default_answer(QUESTION)
CHUNK_S = 0.02


def test_a_config_has_either_s2s_or_asr_llm_and_tts() -> None:
    config, _ = parse_sections({"vad": {"handler": "silero"}, "s2s": {"handler": "qwen_omni"}})
    assert list(config.stages) == ["vad", "s2s"]
    assert Pipeline.build(config).reply_sample_rate == 24000  # the s2s model's voice
    with pytest.raises(ConfigError, match=r"asr: not with s2s \(a speech-to-speech model replaces asr, llm, tts\)"):
        parse_sections({"vad": {"handler": "silero"}, "s2s": {"handler": "qwen_omni"}, "asr": {"handler": "whisper"}})
    with pytest.raises(ConfigError, match=r"tts: missing section; every config needs vad, asr, llm, tts "
                                          r"\(or vad and s2s, a speech-to-speech model, in place of asr, llm, tts\)"):
        parse_sections({"vad": {"handler": "silero"}, "asr": {"handler": "whisper"}, "llm": {"handler": "local"}})
    with pytest.raises(ConfigError, match=r"s2s\.handler: unknown handler 'nope'; allowed: .*qwen_omni"):
        parse_sections({"vad": {"handler": "silero"}, "s2s": {"handler": "nope"}})


class Mic:
    """A live microphone: 20 ms chunks in real time, of what was queued, else silence."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self._queued: list[np.ndarray] = []
        self._task: asyncio.Task[None] | None = None

    def say(self, audio: np.ndarray) -> None:
        self._queued.append(audio)

    async def __aenter__(self) -> Mic:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        n = round(16000 * CHUNK_S)
        start, i, tape = loop.time(), 0, np.zeros(0, np.float32)
        while True:
            if len(tape) < n and self._queued:
                tape = np.concatenate([tape, *self._queued])
                self._queued.clear()
            chunk, tape = (tape[:n], tape[n:]) if len(tape) >= n else (np.zeros(n, np.float32), tape)
            self.conversation.push_audio(chunk, 16000)
            i += 1
            await asyncio.sleep(max(0.0, start + i * CHUNK_S - loop.time()))


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Wait (bounded) until ``check()`` is truthy; returns it."""
    async with asyncio.timeout(timeout):
        while not (value := check()):
            await asyncio.sleep(0.01)
    return value


@pytest.fixture(scope="module")
def loaded() -> tuple[SileroVADHandler, PortraitHandler]:
    vad, avatar = SileroVADHandler(SileroOptions()), PortraitHandler(PortraitOptions())
    vad.load()
    avatar.load()
    return vad, avatar


@pytest.fixture
async def omni() -> AsyncIterator[tuple[LocalService, OmniScript]]:
    heard = iter([QUESTION, STORY])
    script = OmniScript(transcribe=lambda audio: next(heard, ""))
    async with LocalService(server(script)) as svc:
        yield svc, script


@pytest.mark.slow
async def test_a_spoken_question_is_answered_and_speaking_over_the_reply_cuts_it(
        loaded: tuple[SileroVADHandler, PortraitHandler], omni: tuple[LocalService, OmniScript]) -> None:
    vad, avatar = loaded
    svc, script = omni
    s2s = QwenOmniS2S(QwenOmniOptions(url=svc.ws_url + PATH, api_key=GOOD_KEY, check=False))
    settings = SessionSettings()
    sink = FakeSink(REAL_CLOCK)
    events: list[Event] = []
    conversation = Conversation(pipeline_of([vad, s2s, avatar], settings), sink,
                                ConversationListener(event=events.append), session_id="s2s")
    await conversation.start()
    try:
        async with Mic(conversation) as mic:
            mic.say(speech(QUESTION, rate=16000))
            started = await until(lambda: sink.records("started"))
            first = started[0].turn
            # Speak over the reply once its first sentence (2.1 s of audio) has been heard.
            await asyncio.sleep(max(0.0, started[0].at + 2.3 - REAL_CLOCK.now()))
            mic.say(speech(STORY, rate=16000))
            cut = await until(lambda: [e for e in events if isinstance(e, ReplyInterrupted)])
            second = await until(lambda: [e.turn for e in events if isinstance(e, ReplyEnd) and e.turn != first])
            await until(lambda: any(r.turn == second[0] for r in sink.records("started")))
    finally:
        await conversation.close()

    # The question was heard (the s2s model's transcript) and answered: played, animated, timed.
    assert [e.text for e in events if isinstance(e, UserTranscript) and e.turn == first] == [QUESTION]
    assert sink.frames.get(first, 0) > 0
    marks = {e.name: e.at for e in events if isinstance(e, TimingMark) and e.turn == first}
    timings = stage_timings(marks)
    assert {"first_audio_after_speech_end_ms", "avatar_first_frame_ms", "vad_hangover_ms"} <= set(timings), timings
    assert timings["first_audio_after_speech_end_ms"] > 0
    # The barge-in cut it: what was heard is whole stretches of the reply said by then.
    (interrupted,) = cut
    assert interrupted.turn == first and interrupted.reason == "barge-in" and interrupted.continued
    assert sink.heard[first] == pytest.approx(interrupted.heard_s)
    assert PARIS.startswith(interrupted.heard_text)
    if interrupted.heard_s >= 2.1:  # the first sentence had been said
        assert interrupted.heard_text.startswith(_clauses(PARIS)[0])
    # The next question was answered, and the model was told what the user had heard.
    (question, instructions) = script.asked[1]
    assert question == STORY
    told = (f'the user heard only "{interrupted.heard_text}"' if interrupted.heard_text
            else "cut off before the user heard any of it")
    assert instructions is not None and told in instructions
    ends = {e.turn: e.text for e in events if isinstance(e, ReplyEnd)}
    assert ends[second[0]] == default_answer(STORY)
    assert first not in ends or ends[first] == PARIS  # a reply done before the cut ends whole


@pytest.mark.slow
async def test_a_websocket_client_gets_the_transcript_the_reply_its_audio_and_the_metrics(
        loaded: tuple[SileroVADHandler, PortraitHandler], omni: tuple[LocalService, OmniScript]) -> None:
    from tests.ws_harness import running

    vad, _ = loaded
    svc, _script = omni
    s2s = QwenOmniS2S(QwenOmniOptions(url=svc.ws_url + PATH, api_key=GOOD_KEY, check=False))
    async with running(pipeline_of([vad, s2s], SessionSettings())) as app:
        client = await app.client("ws")
        assert client.hello["reply_sample_rate"] == 24000  # the s2s model's voice declares it
        client.speak(speech(QUESTION, rate=client.hello["sample_rate"]))
        metrics = await client.wait_message(lambda m: m["type"] == "metrics", timeout=60)
        heard = client.of_type("transcript", metrics["turn"])
        final = [m["text"] for m in client.of_type("reply", metrics["turn"]) if m["final"]]
        audio_s = sum(len(s) for _, s in client.audio_chunks) / client.hello["reply_sample_rate"]
    assert [m["text"] for m in heard if m["final"]] == [QUESTION]
    assert final == [PARIS]
    assert audio_s >= 0.9 * sum(len(speech(c)) for c in _clauses(PARIS)) / 24000  # the reply, played out
    assert metrics["first_audio_after_speech_end_ms"] > 0 and "first_audio_sent_ms" in metrics
