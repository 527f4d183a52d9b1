"""The ``openai`` TTS and ASR handlers against a local server of OpenAI's audio API
(``avatarchat.testing.services.openai_audio``), driven by the official ``openai`` client
over real HTTP: real speech from the embedded voice, real transcripts from the embedded
whisper. What the real service does is not verified here, only its documented protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from avatarchat.audio.resample import resample
from avatarchat.engine.events import (
    ErrorEvent,
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    SpeechEnded,
    SpeechPaused,
    SpeechSoFar,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.handler import HandlerLoadError, SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.asr.openai_transcribe import OpenAITranscribeASR, OpenAITranscribeOptions
from avatarchat.handlers.services.openai_audio import NO_KEY
from avatarchat.handlers.tts.openai_speech import OpenAISpeechOptions, OpenAISpeechTTS
from avatarchat.testing.conformance import drain, of_turn, read_until, summary
from avatarchat.testing.services.base import GOOD_KEY, LocalService, speech
from avatarchat.testing.services.openai_audio import app_with, whisper_transcribe

pytestmark = pytest.mark.slow

CLAUSE = "The quick brown fox jumps over the lazy dog."
LONG = " ".join(f"This is sentence number {n} of a long reply." for n in ("one", "two", "three", "four", "five"))
WAIT_S = 60.0  # bounded waits on events, generous for a loaded machine


@pytest.fixture
def svc() -> Iterator[LocalService]:
    """The server at real-time pace (a clause streams for as long as it plays), 50 ms each way."""
    with LocalService(app_with(pace=1.0), delay_ms=50) as service:
        yield service


def tts_for(svc: LocalService, **options: Any) -> OpenAISpeechTTS:
    tts = OpenAISpeechTTS(OpenAISpeechOptions(**{"base_url": f"{svc.url}/v1", "api_key": GOOD_KEY, "model": "tts-1",
                                                 **options}))
    tts.load()
    return tts


def asr_for(svc: LocalService, **options: Any) -> OpenAITranscribeASR:
    asr = OpenAITranscribeASR(OpenAITranscribeOptions(**{"base_url": f"{svc.url}/v1", "api_key": GOOD_KEY,
                                                         "model": "whisper-1", **options}))
    asr.load()
    return asr


def requests(svc: LocalService, path: str) -> list[dict[str, Any]]:
    return [e for e in svc.seen if e["path"] == path]


def reply(session: Session, text: str) -> int:
    turn = session.new_turn()
    session.push(ReplyText(turn, text))
    session.push(ReplyEnd(turn, text))
    return turn


def ended(turn: int) -> Any:
    return lambda evs: any(isinstance(e, ReplyEnd | TurnCancelled) and e.turn == turn for e in evs)


async def wait_until(predicate: Any, within: float = WAIT_S) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)


# --- TTS ------------------------------------------------------------------------------------


async def test_tts_streams_a_clause_in_pieces_that_say_it(svc: LocalService) -> None:
    """One clause comes as several contiguous 24 kHz pieces, the first while the server is
    still sending it; only the last carries the text; whisper hears the clause in them."""
    tts = tts_for(svc, first_clause_max_words=30)  # the whole sentence is one clause
    async with Session([tts], SessionInfo("t")) as session:
        turn = reply(session, CLAUSE)
        first = await read_until(session, lambda evs: any(isinstance(e, ReplyAudio) for e in evs), WAIT_S)
        speech_entry = requests(svc, "/v1/audio/speech")[-1]
        assert speech_entry["body"]["input"] == CLAUSE
        sent_at_first, total = speech_entry["sent_bytes"], len(speech(CLAUSE)) * 2
        events = first + await read_until(session, ended(turn), WAIT_S)
    assert sent_at_first < total, "the first audio waited for the whole clause"
    chunks = [e for e in of_turn(events, turn) if isinstance(e, ReplyAudio)]
    assert len(chunks) > 2, f"one clause came in {len(chunks)} piece(s)"
    assert [c.text for c in chunks] == [""] * (len(chunks) - 1) + [CLAUSE]
    assert all(c.sample_rate == 24000 and c.phonemes == () for c in chunks)
    clock = 0.0
    for c in chunks:
        assert c.offset == pytest.approx(clock, abs=1e-6)
        clock += c.duration
    audio = np.concatenate([c.samples for c in chunks])
    heard = await asyncio.to_thread(whisper_transcribe, resample(audio, 24000, 16000), "en")
    assert "quick brown fox" in heard.lower() and "lazy dog" in heard.lower(), heard
    assert speech_entry["outcome"] == "complete"


async def test_tts_request_shape(svc: LocalService) -> None:
    """What the server is sent: POST /v1/audio/speech, Bearer key, JSON with model, voice,
    input and response_format pcm (plus speed and instructions when set)."""
    tts = tts_for(svc, voice="nova", speed=1.25, instructions="Speak warmly.")
    async with Session([tts], SessionInfo("t")) as session:
        turn = reply(session, "Hello there.")
        await read_until(session, ended(turn), WAIT_S)
    check, spoken = requests(svc, "/v1/audio/speech")  # load's check, then the clause
    for entry in (check, spoken):
        assert entry["headers"]["Authorization"] == f"Bearer {GOOD_KEY}"
        assert entry["headers"]["Content-Type"] == "application/json"
    assert check["body"]["input"] == "Hi."
    assert spoken["body"] == {"model": "tts-1", "voice": "nova", "input": "Hello there.", "response_format": "pcm",
                              "speed": 1.25, "instructions": "Speak warmly."}


async def test_tts_cancel_mid_stream_closes_the_stream(svc: LocalService) -> None:
    """Cancelled after its first audio, a turn ends with TurnCancelled and nothing more; the
    server sees the client go away before its answer was complete; the next turn is spoken."""
    tts = tts_for(svc)
    async with Session([tts], SessionInfo("t")) as session:
        turn = reply(session, LONG)
        await read_until(session, lambda evs: any(isinstance(e, ReplyAudio) for e in evs), WAIT_S)
        assert session.cancel_turn(turn)
        after = of_turn(await drain(session, 0.5), turn)
        assert after == [TurnCancelled(turn, "interrupted")], summary(after)
        streamed = [e for e in requests(svc, "/v1/audio/speech") if e["body"]["input"] != "Hi."]
        await wait_until(lambda: streamed[0].get("outcome") == "client_closed")
        assert streamed[0]["sent_bytes"] < len(speech(streamed[0]["body"]["input"])) * 2
        nxt = reply(session, "Hello again.")
        events = of_turn(await read_until(session, ended(nxt), WAIT_S), nxt)
        assert [e.text for e in events if isinstance(e, ReplyAudio) and e.text] == ["Hello again."]


async def test_tts_rejected_key(svc: LocalService) -> None:
    """A wrong key stops load with one line naming the variable; a key rejected in a live
    turn gives an ErrorEvent, and the session shows the voice's fallback line."""
    with pytest.raises(HandlerLoadError) as caught:
        tts_for(svc, api_key="sk-wrong-key-123456")
    message = str(caught.value)
    assert "rejected the API key (401)" in message and "OPENAI_API_KEY" in message and "\n" not in message
    assert "sk-wrong" not in message
    tts = tts_for(svc)
    svc.fault = "reject_key"
    async with Session([tts], SessionInfo("t")) as session:
        turn = reply(session, CLAUSE)
        events = await read_until(session, lambda evs: any(isinstance(e, ReplyEnd) for e in evs), WAIT_S)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].turn == turn and "rejected the API key" in errors[0].message
    fallback = session.info.settings.voice_fallback_reply
    assert any(isinstance(e, ReplyEnd) and e.text == fallback for e in events), summary(events)


async def test_tts_dropped_connection_mid_stream(svc: LocalService) -> None:
    """The server closing the connection after the first piece fails the turn (an ErrorEvent
    saying the stream broke off); the next turn is spoken in full."""
    tts = tts_for(svc)
    svc.fault = "drop_mid_stream"
    async with Session([tts], SessionInfo("t")) as session:
        turn = reply(session, LONG)
        events = of_turn(await read_until(session, ended(turn), WAIT_S), turn)
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and "broke off" in errors[0].message, summary(events)
        assert events[-1] == TurnCancelled(turn, "error")
        svc.fault = None
        nxt = reply(session, "Hello again.")
        events = of_turn(await read_until(session, ended(nxt), WAIT_S), nxt)
        assert [e.text for e in events if isinstance(e, ReplyAudio) and e.text] == ["Hello again."]
    assert requests(svc, "/v1/audio/speech")[1]["outcome"] == "dropped"


async def test_tts_slow_first_byte_times_out(svc: LocalService) -> None:
    """A server that holds its answer for 30 s fails the clause after first_audio_timeout_s
    (0.5 s here) with a line that says so, instead of leaving the user in silence."""
    tts = tts_for(svc, first_audio_timeout_s=0.5)
    svc.fault, svc.slow_first_s = "slow_first_byte", 30.0
    async with Session([tts], SessionInfo("t")) as session:
        turn = reply(session, CLAUSE)
        events = of_turn(await read_until(session, ended(turn), WAIT_S), turn)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and "no audio within 0.5 s" in errors[0].message, summary(events)


def test_tts_load_errors_name_the_cause(svc: LocalService, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key for OpenAI's own API, an unknown voice, an unknown model, a server that is not
    there: each stops load with one line a user can act on."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(HandlerLoadError, match="no OpenAI API key: set OPENAI_API_KEY"):
        OpenAISpeechTTS(OpenAISpeechOptions()).load()
    with pytest.raises(HandlerLoadError, match="answered 400: Invalid value: 'bogus'"):
        tts_for(svc, voice="bogus")
    with pytest.raises(HandlerLoadError, match="answered 404 .* check base_url and model 'tts-9'"):
        tts_for(svc, model="tts-9")
    with LocalService(app_with()) as gone:
        url = f"{gone.url}/v1"
    with pytest.raises(HandlerLoadError, match=f"cannot reach the speech server at {url}"):
        OpenAISpeechTTS(OpenAISpeechOptions(base_url=url, api_key=GOOD_KEY)).load()
    # A server other than OpenAI's needs no key: a placeholder is sent.
    OpenAISpeechTTS(OpenAISpeechOptions(base_url=f"{svc.url}/v1", check=False)).load()


async def test_tts_resamples_a_server_of_another_rate() -> None:
    """A server whose pcm is 22050 Hz (``pcm_rate: 22050``): the clause comes out at 24 kHz,
    as long as the server's audio, and still says the clause."""
    with LocalService(app_with(pace=0, rate=22050)) as svc:
        tts = tts_for(svc, pcm_rate=22050, first_clause_max_words=30)
        async with Session([tts], SessionInfo("t")) as session:
            turn = reply(session, CLAUSE)
            events = of_turn(await read_until(session, ended(turn), WAIT_S), turn)
    chunks = [e for e in events if isinstance(e, ReplyAudio)]
    audio = np.concatenate([c.samples for c in chunks])
    sent_s = len(speech(CLAUSE, "en", 22050)) / 22050
    # The stage trims the silence before the reply's first sound (at most ~0.1 s).
    assert sent_s - 0.15 < len(audio) / 24000 <= sent_s + 0.01
    heard = await asyncio.to_thread(whisper_transcribe, resample(audio, 24000, 16000), "en")
    assert "quick brown fox" in heard.lower(), heard


# --- ASR ------------------------------------------------------------------------------------


def utterance(text: str) -> np.ndarray:
    pad = np.zeros(4800, np.float32)
    return np.concatenate([pad, speech(text, "en", 16000), pad])


async def test_asr_transcribes_an_utterance_with_the_expected_request(svc: LocalService) -> None:
    """An utterance in, its words out as one final transcript; the server got a multipart
    POST /v1/audio/transcriptions: a 16 kHz mono WAV named speech.wav, model, language
    (the session's), response_format json, temperature 0."""
    asr = asr_for(svc)
    audio = utterance(CLAUSE)
    async with Session([asr], SessionInfo("t")) as session:
        turn = session.new_turn()
        session.push(SpeechEnded(turn, audio, speech_end=time.monotonic()))
        events = await read_until(session, lambda evs: any(isinstance(e, UserTranscript) for e in evs), WAIT_S)
    got = [e for e in events if isinstance(e, UserTranscript)]
    assert len(got) == 1 and got[0].final and "quick brown fox" in got[0].text.lower(), summary(events)
    (entry,) = requests(svc, "/v1/audio/transcriptions")
    assert entry["headers"]["Authorization"] == f"Bearer {GOOD_KEY}"
    assert entry["headers"]["Content-Type"].startswith("multipart/form-data")
    assert entry["body"] == {"model": "whisper-1", "language": "en", "response_format": "json", "temperature": "0.0",
                             "file": {"filename": "speech.wav", "content_type": "audio/wav",
                                      "bytes": 44 + 2 * len(audio)}}
    assert [e["path"] for e in svc.seen] == ["/v1/models", "/v1/audio/transcriptions"]


async def test_asr_rejected_key(svc: LocalService) -> None:
    """A wrong key stops load (listing the models) with one line; a key rejected in a live
    turn ends it with an ErrorEvent and the ASR's fallback line."""
    with pytest.raises(HandlerLoadError, match=r"rejected the API key \(401\): set OPENAI_API_KEY"):
        asr_for(svc, api_key="sk-wrong-key-123456")
    asr = asr_for(svc)
    svc.fault = "reject_key"
    async with Session([asr], SessionInfo("t")) as session:
        turn = session.new_turn()
        session.push(SpeechEnded(turn, utterance(CLAUSE), speech_end=time.monotonic()))
        events = await read_until(session, lambda evs: any(isinstance(e, ReplyEnd) for e in evs), WAIT_S)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].stage == "asr" and "rejected the API key" in errors[0].message
    assert not any(isinstance(e, UserTranscript) for e in events)
    fallback = session.info.settings.asr_fallback_reply
    assert any(isinstance(e, ReplyEnd) and e.text == fallback for e in events), summary(events)


@pytest.mark.parametrize("fault, says", [("drop_mid_stream", "the connection to the transcription server at"),
                                         ("slow_first_byte", "gave no transcript within 5 s"),
                                         ("server_error", "answered 500")])
async def test_asr_failures_end_only_their_turn(svc: LocalService, fault: Any, says: str) -> None:
    """A connection dropped before the answer, an answer held 30 s (first_result_timeout_s
    5 s: the next utterance's real transcription must fit it on a loaded machine), a 500:
    the turn ends with an ErrorEvent saying so; the next utterance is heard."""
    asr = asr_for(svc, first_result_timeout_s=5.0 if fault == "slow_first_byte" else 10.0)
    svc.fault, svc.slow_first_s = fault, 30.0
    async with Session([asr], SessionInfo("t")) as session:
        turn = session.new_turn()
        session.push(SpeechEnded(turn, utterance(CLAUSE), speech_end=time.monotonic()))
        events = of_turn(await read_until(session, ended(turn), WAIT_S), turn)
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert len(errors) == 1 and says in errors[0].message, summary(events)
        svc.fault = None
        nxt = session.new_turn()
        session.push(SpeechEnded(nxt, utterance("Hello there."), speech_end=time.monotonic()))
        got: list[Event] = await read_until(
            session, lambda evs: any(isinstance(e, UserTranscript) and e.turn == nxt for e in evs), WAIT_S)
    assert "hello" in [e for e in got if isinstance(e, UserTranscript)][-1].text.lower()


@pytest.mark.parametrize("partials", [False, True])
async def test_asr_partials_only_when_asked(svc: LocalService, partials: bool) -> None:
    """Speech so far is transcribed (a non-final transcript, one billed call) only with
    ``partials: true``; off, it costs nothing and gives nothing."""
    asr = asr_for(svc, partials=partials)
    audio = utterance(CLAUSE)
    async with Session([asr], SessionInfo("t")) as session:
        turn = session.new_turn()
        session.push(SpeechSoFar(turn, audio, voiced_until=session.info.clock.now()))
        session.push(SpeechEnded(turn, audio, speech_end=session.info.clock.now()))
        events = await read_until(
            session, lambda evs: any(isinstance(e, UserTranscript) and e.final for e in evs), WAIT_S)
    said = [e for e in events if isinstance(e, UserTranscript)]
    assert [e.final for e in said] == ([False, True] if partials else [True]), summary(said)
    assert len(requests(svc, "/v1/audio/transcriptions")) == (2 if partials else 1)


async def test_asr_streamed_transcript_grows_then_ends_final(svc: LocalService) -> None:
    """With ``stream: true`` the request asks for server-sent events; the transcript comes
    as growing non-final transcripts (each extending the last), then one final with the
    words. whisper-1, which does not stream, fails the turn with the server's 400."""
    asr = asr_for(svc, model="gpt-4o-mini-transcribe", stream=True)
    async with Session([asr], SessionInfo("t")) as session:
        turn = session.new_turn()
        session.push(SpeechEnded(turn, utterance(CLAUSE), speech_end=time.monotonic()))
        events = await read_until(
            session, lambda evs: any(isinstance(e, UserTranscript) and e.final for e in evs), WAIT_S)
    said = [e for e in events if isinstance(e, UserTranscript)]
    assert len(said) > 3 and [e.final for e in said] == [False] * (len(said) - 1) + [True], summary(said)
    growing = [e.text for e in said[:-1]]
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(growing, growing[1:])), growing
    assert growing[-1] == said[-1].text and "quick brown fox" in said[-1].text.lower()
    assert requests(svc, "/v1/audio/transcriptions")[-1]["body"]["stream"] == "true"

    asr = asr_for(svc, stream=True)  # whisper-1
    async with Session([asr], SessionInfo("t")) as session:
        turn = session.new_turn()
        session.push(SpeechEnded(turn, utterance(CLAUSE), speech_end=time.monotonic()))
        events = of_turn(await read_until(session, ended(turn), WAIT_S), turn)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and "answered 400: Streaming is not supported" in errors[0].message, summary(events)


@pytest.mark.parametrize("early", [True, False])
async def test_asr_pause_transcript_reused_or_skipped(svc: LocalService, early: bool) -> None:
    """A pause, then the end of the same utterance: with ``early`` the pause is transcribed
    (a non-final transcript with its ``speech_end``) and the end reuses it; without, the pause
    only passes on. Either way one upload, and one final transcript with the words."""
    asr = asr_for(svc, early=early)
    audio = utterance(CLAUSE)
    async with Session([asr], SessionInfo("t")) as session:
        turn, at = session.new_turn(), session.info.clock.now()
        session.push(SpeechPaused(turn, audio, speech_end=at))
        session.push(SpeechEnded(turn, audio, speech_end=at))
        events = await read_until(
            session, lambda evs: any(isinstance(e, UserTranscript) and e.final for e in evs), WAIT_S)
    said = [e for e in events if isinstance(e, UserTranscript)]
    assert [(e.final, e.speech_end) for e in said] == ([(False, at), (True, None)] if early else [(True, None)])
    assert "quick brown fox" in said[-1].text.lower()
    assert any(isinstance(e, SpeechPaused) for e in events), "the pause was not passed on"
    assert len(requests(svc, "/v1/audio/transcriptions")) == 1


async def test_asr_chinese_session_hints_language_and_script(svc: LocalService) -> None:
    """A Chinese session sends ``language: zh`` and, unless the config gives a prompt, a
    simplified-Chinese sentence as the prompt (the script Whisper models should write); a
    transcript in traditional characters comes out simplified, its marks full-width."""
    from avatarchat.engine.handler import SessionSettings
    from avatarchat.handlers.asr.chinese import DEFAULT_PROMPT

    said: dict[str, str] = {}

    def transcribe(audio: np.ndarray, language: str) -> str:  # the server's model: not what is tested
        said["language"] = language
        return "你們好,小明"  # traditional, a half-width comma

    with LocalService(app_with(transcribe=transcribe)) as zh_svc:
        for prompt, sent in ((None, DEFAULT_PROMPT), ("", None), ("人名：小明", "人名：小明")):
            asr = asr_for(zh_svc, prompt=prompt)
            async with Session([asr], SessionInfo("t", SessionSettings(language="zh"))) as session:
                turn = session.new_turn()
                session.push(SpeechEnded(turn, utterance("Hello."), speech_end=time.monotonic()))
                events = await read_until(
                    session, lambda evs: any(isinstance(e, UserTranscript) and e.final for e in evs), WAIT_S)
            # As asr whisper writes it: simplified (OpenCC), full-width marks.
            assert [e.text for e in events if isinstance(e, UserTranscript)] == ["你们好，小明"]
            body = requests(zh_svc, "/v1/audio/transcriptions")[-1]["body"]
            assert body["language"] == "zh" and body.get("prompt") == sent, body
    assert said["language"] == "zh"


def test_asr_load_checks_the_model(svc: LocalService) -> None:
    """A model the server does not list stops load, naming the ones it has."""
    with pytest.raises(HandlerLoadError, match="has no model 'whisper-9' \\(it lists: .*whisper-1"):
        asr_for(svc, model="whisper-9")
    assert NO_KEY  # a server other than OpenAI's gets a placeholder key, never an error
