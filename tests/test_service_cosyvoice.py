"""``tts: cosyvoice`` against the local DashScope server (avatarchat.testing.services.dashscope),
driven by the official dashscope SDK over a real WebSocket on 127.0.0.1.

The server speaks with the embedded voice, so what the handler plays can be compared with
what the server sent, sample for sample (PCM16).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from avatarchat.engine.events import ErrorEvent, Event, ReplyAudio, ReplyEnd, ReplyText, TurnCancelled, UserTranscript
from avatarchat.engine.handler import HandlerLoadError, SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.tts.cosyvoice import CosyVoiceTTS
from avatarchat.testing.conformance import drain, of_turn, read_until, summary, until_ended
from avatarchat.testing.services.base import GOOD_KEY, LocalService, from_pcm16, pcm16, speech
from avatarchat.testing.services.dashscope import PATH, server

pytestmark = pytest.mark.slow

SENTENCE = "The weather in Paris is sunny today."
LONG = " ".join(f"This is sentence number {n} of a long reply." for n in ("one", "two", "three", "four", "five"))


@pytest.fixture(scope="module")
def svc() -> Iterator[LocalService]:
    with LocalService(server()) as service:
        yield service


@pytest.fixture(autouse=True)
def fresh(svc: LocalService) -> None:
    svc.fault, svc.seen[:] = None, []


def voice(svc: LocalService, **options: Any) -> CosyVoiceTTS:
    tts = CosyVoiceTTS(CosyVoiceTTS.Options(**{"url": f"{svc.ws_url}{PATH}", "api_key": GOOD_KEY, **options}))
    tts.load()
    return tts


def reply(session: Session, text: str) -> tuple[int, ReplyEnd]:
    turn = session.new_turn()
    for i in range(0, len(text), 6):
        session.push(ReplyText(turn, text[i:i + 6]))
    end = ReplyEnd(turn, text)
    session.push(end)
    return turn, end


def chunks(events: list[Event]) -> list[ReplyAudio]:
    return [e for e in events if isinstance(e, ReplyAudio)]


def messages(svc: LocalService, action: str) -> list[dict[str, Any]]:
    return [s["body"] for s in svc.seen if s["kind"] == "ws-message" and s["body"]["header"]["action"] == action]


async def test_a_clause_streams_in_pieces_of_the_servers_audio_with_word_timings(svc: LocalService) -> None:
    """One sentence: several ReplyAudio pieces on a contiguous clock, only the last with the
    text; together exactly the audio the server sent (after the leading silence cut); the
    service's word timestamps become phoneme timings inside each piece."""
    tts = voice(svc, check=False)
    async with Session([tts], SessionInfo("t")) as session:
        turn, end = reply(session, SENTENCE)
        events = of_turn(await until_ended(session, turn), turn)
    pieces = chunks(events)
    assert len(pieces) >= 3, summary(events)
    assert [p.text for p in pieces] == [""] * (len(pieces) - 1) + [SENTENCE]
    assert events[-1] is end
    clock = 0.0
    for p in pieces:
        assert p.offset == pytest.approx(clock, abs=1e-6) and p.sample_rate == 24000
        assert all(0 <= ph.start <= ph.end <= p.duration + 1e-6 for ph in p.phonemes)
        clock += p.duration
    assert sum(len(p.phonemes) > 0 for p in pieces) >= len(pieces) // 2, "word timestamps gave no phonemes"
    played = np.concatenate([p.samples for p in pieces])
    sent = from_pcm16(pcm16(speech(SENTENCE, "en", 24000)))
    # The first piece lost its leading silence: the rest is the server's audio, exact.
    cut = len(sent) - len(played)
    assert 0 <= cut < 24000 * 0.5
    assert np.allclose(played, sent[cut:], atol=1e-6)


async def test_request_shape_is_what_dashscope_documents(svc: LocalService) -> None:
    """Handshake with a Bearer key; run-task for CosyVoice (PCM at 24 kHz, voice, model,
    word timestamps, language hint); the clause in continue-task; then finish-task."""
    tts = voice(svc, check=False, voice="longhua_v2", model="cosyvoice-v3-flash")
    await _say(tts, "Hello there.")
    handshake = next(s for s in svc.seen if s["kind"] == "ws")
    assert handshake["path"] == PATH
    assert handshake["headers"]["Authorization"] == f"Bearer {GOOD_KEY}"
    assert handshake["headers"]["User-Agent"].startswith("dashscope")
    (run,) = messages(svc, "run-task")
    assert run["header"]["streaming"] == "duplex"
    payload = run["payload"]
    assert (payload["task_group"], payload["task"], payload["function"]) == ("audio", "tts", "SpeechSynthesizer")
    assert payload["model"] == "cosyvoice-v3-flash" and payload["input"] == {}
    p = payload["parameters"]
    assert (p["voice"], p["format"], p["sample_rate"], p["text_type"]) == ("longhua_v2", "pcm", 24000, "PlainText")
    assert p["word_timestamp_enabled"] is True and p["language_hints"] == ["en"]
    assert [m["payload"]["input"]["text"] for m in messages(svc, "continue-task")] == ["Hello there."]
    (finish,) = messages(svc, "finish-task")
    assert finish["header"]["task_id"] == run["header"]["task_id"] and finish["payload"]["input"] == {}


async def test_the_users_final_words_ready_a_task_for_the_first_clause(svc: LocalService) -> None:
    """A final transcript (a reply is coming) connects and starts a task before any text;
    the reply's first clause is said on that task, with no second run-task."""
    tts = voice(svc, check=False)
    ctx = tts.create_context(SessionInfo("t"))
    try:
        assert tts.on_control(ctx, UserTranscript(1, "How is the weather?", final=True)) == []
        deadline = time.monotonic() + 10
        while not messages(svc, "run-task") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert messages(svc, "run-task") and not messages(svc, "continue-task")
        out = [e async for e in tts.handle(ctx, ReplyText(1, "It is sunny."))]
        out += [e async for e in tts.handle(ctx, ReplyEnd(1, "It is sunny."))]
    finally:
        tts.close_context(ctx)
    assert chunks(out) and chunks(out)[-1].text == "It is sunny."
    (run,) = messages(svc, "run-task")
    (said,) = messages(svc, "continue-task")
    assert said["header"]["task_id"] == run["header"]["task_id"]


async def _say(tts: CosyVoiceTTS, text: str) -> list[Event]:
    async with Session([tts], SessionInfo("t")) as session:
        turn, _ = reply(session, text)
        return of_turn(await until_ended(session, turn), turn)


async def test_cancel_mid_stream_closes_the_socket_and_nothing_more_comes() -> None:
    """cancel_turn after the first audio (the server streams at twice real time, so the
    clause is still coming): TurnCancelled and nothing else of the turn; the server sees
    its client go away; the next turn is spoken."""
    async with LocalService(server(pace=0.5)) as svc:
        await _cancel_mid_stream(svc)


async def _cancel_mid_stream(svc: LocalService) -> None:
    tts = voice(svc, check=False)
    async with Session([tts], SessionInfo("t")) as session:
        turn, _ = reply(session, LONG)
        await read_until(session, lambda evs: any(isinstance(e, ReplyAudio) for e in evs))
        closed_before = sum(s["kind"] == "ws-closed" for s in svc.seen)
        assert session.cancel_turn(turn)
        after = of_turn(await drain(session, 1.0), turn)
        assert after == [TurnCancelled(turn, "interrupted")], summary(after)
        deadline = time.monotonic() + 10
        while sum(s["kind"] == "ws-closed" for s in svc.seen) <= closed_before and time.monotonic() < deadline:
            await drain(session, 0.1)
        gone = [s for s in svc.seen if s["kind"] == "ws-closed"][closed_before:]
        assert gone and gone[0]["body"]["client_closed"], "the server never saw the cancelled stream close"
        finishes = [m["payload"]["input"] for m in messages(svc, "finish-task")]
        assert {"directive": "cancel"} in finishes, f"no cancel directive: {finishes}"
        assert len(messages(svc, "continue-task")) < 5, "every clause was sent despite the cancel"
        turn2, end2 = reply(session, "Still here.")
        assert chunks(of_turn(await until_ended(session, turn2), turn2))


async def test_rejected_key_fails_load_in_one_line_and_a_live_turn_gets_the_fallback(svc: LocalService) -> None:
    with pytest.raises(HandlerLoadError) as failed:
        voice(svc, api_key="sk-wrong")
    message = str(failed.value)
    assert "rejected the API key" in message and "DASHSCOPE_API_KEY" in message and "\n" not in message
    assert "sk-wrong" not in message
    tts = voice(svc, check=False)
    svc.fault = "reject_key"
    events = await _failed_turn(tts)
    assert "rejected the API key" in events[0].message


async def _failed_turn(tts: CosyVoiceTTS) -> list[ErrorEvent]:
    """A turn that fails: one ErrorEvent of the tts stage, then the session's fallback line
    (shown: the voice is what failed) as a turn of its own."""
    async with Session([tts], SessionInfo("t")) as session:
        turn, _ = reply(session, SENTENCE)
        events = await read_until(session, lambda evs: any(isinstance(e, ReplyEnd) and e.turn != turn for e in evs))
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].stage == "tts", summary(events)
    line = SessionInfo("t").settings.voice_fallback_reply
    assert any(isinstance(e, ReplyText) and e.text == line for e in events), summary(events)
    return errors


async def test_dropped_connection_mid_stream_ends_the_turn_and_the_next_works(svc: LocalService) -> None:
    tts = voice(svc, check=False)
    svc.fault = "drop_mid_stream"
    (error,) = await _failed_turn(tts)
    assert "broke off" in error.message
    svc.fault = None
    events = await _say(tts, SENTENCE)
    assert chunks(events)[-1].text == SENTENCE


async def test_slow_first_byte_times_out_instead_of_hanging(svc: LocalService) -> None:
    tts = voice(svc, check=False, first_audio_timeout_s=0.5)
    svc.fault, svc.slow_first_s = "slow_first_byte", 30.0
    (error,) = await _failed_turn(tts)
    assert "within 0.5 s" in error.message


def test_unknown_voice_or_model_fails_load(svc: LocalService) -> None:
    with pytest.raises(HandlerLoadError, match="voice 'nobody'"):
        voice(svc, voice="nobody")
    with pytest.raises(HandlerLoadError, match="ModelNotFound"):
        voice(svc, model="cosyvoice-v9")


def test_no_key_names_the_variable(svc: LocalService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    with pytest.raises(HandlerLoadError, match="DASHSCOPE_API_KEY"):
        voice(svc, api_key="")


def test_unreachable_endpoint_fails_load() -> None:
    tts = CosyVoiceTTS(CosyVoiceTTS.Options(url=f"ws://127.0.0.1:9{PATH}", api_key=GOOD_KEY, connect_timeout_s=2))
    with pytest.raises(HandlerLoadError, match="cannot reach ws://127.0.0.1:9"):
        tts.load()


def test_pieces_never_go_out_tiny_or_silent() -> None:
    """The frames' audio gathered into pieces: each at least the piece size, a quiet stretch
    joined to the piece before it, the short rest to the last one, offsets contiguous."""
    from avatarchat.handlers.tts.cosyvoice import _Pieces

    loud = np.full(1000, 0.3, np.float32)
    quiet = np.zeros(1000, np.float32)
    gathered = _Pieces(1000)
    out = gathered.add(pcm16(np.concatenate([loud, loud, quiet, loud])))  # one big frame
    out += gathered.add(pcm16(loud[:300]))
    out += gathered.finish()
    assert [(at, len(p)) for at, p in out] == [(0, 1000), (1000, 2000), (3000, 1300)]
    assert float(np.abs(out[1][1][1000:]).max()) == 0.0  # the quiet stretch rode with a loud piece
