"""The ``edge`` voice against a local read-aloud server, through the real edge-tts client.

This machine cannot reach speech.platform.bing.com, so ``avatarchat.testing.services.edge``
serves the read-aloud protocol on 127.0.0.1 (voice list; speech.config and ssml in;
turn.start, WordBoundary metadata, MP3 audio frames, turn.end out; real speech from the
embedded voices). edge-tts fixes the service's wss:// URL and verifies TLS against certifi
only, so the handler's ``url: ws://127.0.0.1:PORT`` hands edge-tts an aiohttp connector that
opens its connections to the local server in the clear: everything above TCP (edge-tts's
handshake, query, headers, framing, parsing, its retry on 403) is the real client's code;
TLS and the real service are not exercised. Nothing in edge_tts is patched.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import Any, cast

import numpy as np
import pytest
from pydantic import ValidationError

from avatarchat.avatar.lipsync import curves_from_phonemes, frame_times
from avatarchat.engine.events import ErrorEvent, PhonemeTiming, ReplyAudio, ReplyEnd, ReplyText, TimingMark
from avatarchat.engine.handler import HandlerLoadError, SessionInfo, SessionSettings
from avatarchat.handlers.tts.edge import EdgeOptions, EdgeTTS
from avatarchat.handlers.tts.edge_audio import word_phonemes
from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS
from avatarchat.testing.fakes import FakeLLM
from avatarchat.testing.harness import run_pipeline_test
from avatarchat.testing.services import edge as fixture
from avatarchat.testing.services.base import LocalService

SENTENCE = "Hello there, how are you today?"
#: Bounds on waits, generous for a loaded 2-core machine; never a performance target.
WAIT_S = 60.0


@pytest.fixture(scope="module")
def service() -> Iterator[LocalService]:
    fixture.warm(chinese=True)  # the first request's deadline is not for loading voices
    with LocalService(fixture.app) as svc:
        yield svc


@pytest.fixture(autouse=True)
def clean(service: LocalService) -> Iterator[None]:
    service.fault, service.seen[:] = None, []
    yield
    service.fault = None


def edge(service: LocalService, **options: Any) -> EdgeTTS:
    handler = EdgeTTS(EdgeOptions(url=service.ws_url, **options))
    handler.load()
    return handler


async def pieces(handler: EdgeTTS, text: str) -> list[tuple[np.ndarray, tuple[Any, ...]]]:
    async with asyncio.timeout(WAIT_S), aclosing(handler.synthesize_stream(text, first=True)) as stream:
        return [piece async for piece in stream]


def seen(service: LocalService, path: str) -> list[dict[str, Any]]:
    return [e for e in service.seen if e["path"] == path or e["path"].endswith(path)]


async def closed(service: LocalService) -> dict[str, Any]:
    """What the server noted when the client's socket closed (waiting for it)."""
    async with asyncio.timeout(WAIT_S):
        while not seen(service, "closed"):
            await asyncio.sleep(0.02)
    return seen(service, "closed")[0]


async def test_a_clause_streams_in_pieces_of_the_servers_speech_with_word_timed_phonemes(service: LocalService) -> None:
    handler = await asyncio.to_thread(edge, service)
    got = await pieces(handler, SENTENCE)

    assert len(got) >= 3, "a 2 s clause comes in pieces as it streams"
    audio = np.concatenate([p[0] for p in got])
    sent, words = fixture.timed_speech(SENTENCE, False)
    # The decoded MP3 is the server's speech, LAME's and the decoder's delay later.
    delay = fixture.DECODED_DELAY
    n = min(len(sent), len(audio) - delay)
    a, b = audio[delay:delay + n], sent[:n]
    assert float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))) > 0.9
    # Phonemes, back on the clause's timeline: each word's run sits in the span Edge gave it.
    starts, at = [], 0.0
    timeline = []
    for samples, phonemes in got:
        timeline += [(p.phoneme, p.start + at, p.end + at) for p in phonemes]
        at += len(samples) / handler.sample_rate
    runs: list[list[tuple[str, float, float]]] = [[]]
    for entry in timeline:
        if entry[0] == " ":
            runs.append([])
        else:
            runs[-1].append(entry)
    runs = [r for r in runs if r]
    assert len(runs) == len(words) == 6
    shift = delay / fixture.RATE
    for run, word in zip(runs, words, strict=True):
        starts.append(run[0][1])
        assert run[0][1] == pytest.approx(word.start + shift, abs=1e-3)
        assert run[-1][2] == pytest.approx(word.end + shift, abs=1e-3)
    assert "h" in runs[0][0][0] and any("ə" in p or "ɛ" in p for p, _, _ in runs[0])  # "Hello": espeak's IPA


async def test_the_request_has_the_services_shape(service: LocalService) -> None:
    handler = await asyncio.to_thread(edge, service, rate="+10%", pitch="-5Hz")
    await pieces(handler, "Fish & chips <now>.")

    voices, = seen(service, "/voices/list")
    assert voices["body"]["trustedclienttoken"] == fixture.TRUSTED_CLIENT_TOKEN
    handshake, = seen(service, "/edge/v1")
    query, headers = handshake["body"], handshake["headers"]
    assert query["TrustedClientToken"] == fixture.TRUSTED_CLIENT_TOKEN
    assert re.fullmatch(r"[0-9a-f]{32}", query["ConnectionId"])
    assert query["Sec-MS-GEC"] and query["Sec-MS-GEC-Version"]
    assert headers["Origin"] == "chrome-extension://jdiccldimpdaibmpdkjnbmckianbfold"
    assert "Edg/" in headers["User-Agent"] and headers["Cookie"].startswith("muid=")
    assert headers["Host"] == "speech.platform.bing.com"  # the relay gets the service's request as is
    config, = seen(service, "speech.config")
    audio = config["body"]["context"]["synthesis"]["audio"]
    assert audio["metadataoptions"]["wordBoundaryEnabled"] == "true"
    assert audio["outputFormat"] == "audio-24khz-48kbitrate-mono-mp3"
    assert config["headers"]["Content-Type"] == "application/json; charset=utf-8"
    ssml, = seen(service, "ssml")
    assert ssml["headers"]["Content-Type"] == "application/ssml+xml"
    assert ssml["body"]["voice"] == "Microsoft Server Speech Text to Speech Voice (en-US, EmmaMultilingualNeural)"
    assert (ssml["body"]["rate"], ssml["body"]["pitch"], ssml["body"]["volume"]) == ("+10%", "-5Hz", "+0%")
    assert ssml["body"]["text"] == "Fish & chips <now>."  # escaped in the SSML, whole again in the XML
    assert (await closed(service))["body"] == {"turn_end_sent": True}


async def test_a_reply_is_spoken_piece_by_piece_with_its_text_on_each_clauses_last_piece(
        service: LocalService) -> None:
    handler = await asyncio.to_thread(edge, service)
    events = await run_pipeline_test([FakeLLM([SENTENCE]), handler], ["Hi!"], ignore=(), timeout=WAIT_S)

    audio = [e for e in events if isinstance(e, ReplyAudio)]
    marks = [e for e in events if isinstance(e, TimingMark) and e.name == "tts_first_audio"]
    assert len(marks) == 1 and events.index(marks[0]) < events.index(audio[0])
    assert len(audio) >= 3 and all(a.sample_rate == 24000 for a in audio)
    for before, after in zip(audio, audio[1:]):
        assert after.offset == pytest.approx(before.offset + before.duration)
    # Two clauses; each one's text rides on its last piece only, so heard text never runs ahead.
    assert [a.text for a in audio if a.text] == ["Hello there,", "how are you today?"]
    assert audio[-1].text and sum(1 for a in audio if not a.text) >= 1
    assert sum(1 for a in audio for p in a.phonemes if p.phoneme == " ") == 6  # a boundary per word
    assert isinstance(events[-1], ReplyEnd) and not any(isinstance(e, ErrorEvent) for e in events)


async def test_cancelling_a_turn_mid_clause_closes_the_socket_and_nothing_more_comes_out(
        service: LocalService) -> None:
    handler = await asyncio.to_thread(edge, service)
    ctx = handler.create_context(SessionInfo("cancel"))
    long = "This sentence is long enough to be still streaming when the turn is cancelled by the user."
    out: list[Any] = []
    async with asyncio.timeout(WAIT_S):
        stage = cast(AsyncGenerator[Any, None], handler.handle(ctx, ReplyText(1, long)))
        async for event in stage:
            out.append(event)
            if isinstance(event, ReplyAudio):
                break
        # What the engine does on a barge-in: the turn is cancelled, its generator closed.
        handler.cancel_turn(ctx, 1)
        await stage.aclose()
    note = await closed(service)
    assert note["body"] == {"turn_end_sent": False}, "the server was still sending when the client left"
    async with asyncio.timeout(WAIT_S):
        after = [e async for e in handler.handle(ctx, ReplyEnd(1, long))]
    assert not any(isinstance(e, ReplyAudio) for e in after)


async def test_a_rejected_request_stops_load_with_one_line_and_fails_only_its_turn(service: LocalService) -> None:
    service.fault = "reject_key"
    with pytest.raises(HandlerLoadError) as failed:
        await asyncio.to_thread(edge, service)
    assert "HTTP 403" in str(failed.value) and "\n" not in str(failed.value)
    assert len(seen(service, "/voices/list")) == 2, "edge-tts fixes its clock from the 403's Date and retries once"

    handler = await asyncio.to_thread(edge, service, check=False)
    events = await run_pipeline_test([FakeLLM([SENTENCE, "Fine."]), handler], ["Hi!"], timeout=WAIT_S,
                                     until=lambda out: any(isinstance(e, ReplyEnd) and e.turn > 1 for e in out))
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].stage == "tts" and "403" in errors[0].message
    assert len(seen(service, "/edge/v1")) == 2, "the synthesis is retried once too"
    assert not any(isinstance(e, ReplyAudio) for e in events)
    # The voice is what failed: the session's fallback line is shown, in a turn of its own.
    fallback = [e for e in events if isinstance(e, ReplyEnd)]
    assert [e.text for e in fallback] == [SessionSettings().voice_fallback_reply]

    service.fault = None
    events = await run_pipeline_test([FakeLLM(["Fine."]), handler], ["Again?"], timeout=WAIT_S)
    assert any(isinstance(e, ReplyAudio) for e in events) and not any(isinstance(e, ErrorEvent) for e in events)


async def test_a_connection_dropped_mid_stream_is_an_error_and_the_next_turn_works(service: LocalService) -> None:
    handler = await asyncio.to_thread(edge, service)
    service.fault = "drop_mid_stream"
    events = await run_pipeline_test([FakeLLM([SENTENCE]), handler], ["Hi!"], timeout=WAIT_S)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and "closed the connection mid-clause" in errors[0].message

    service.fault = None
    events = await run_pipeline_test([FakeLLM([SENTENCE]), handler], ["Again?"], timeout=WAIT_S)
    assert " ".join(e.text for e in events if isinstance(e, ReplyAudio) and e.text) == SENTENCE


async def test_a_slow_first_byte_times_out_instead_of_hanging(service: LocalService) -> None:
    handler = await asyncio.to_thread(edge, service, first_audio_timeout_s=0.5)
    service.fault, service.slow_first_s = "slow_first_byte", 30.0
    with pytest.raises(TimeoutError, match="no audio within 0.5 s"):
        await pieces(handler, SENTENCE)
    assert (await closed(service))["body"] == {"turn_end_sent": False}  # the client left; the server gave up


async def test_an_unknown_voice_a_server_error_or_an_unreachable_server_stops_load_with_one_line(service: LocalService) -> None:
    with pytest.raises(HandlerLoadError, match=r"unknown Edge voice 'en-US-NobodyNeural': 6 voices, e\.g\. en-US-"):
        await asyncio.to_thread(edge, service, voice="en-US-NobodyNeural")
    service.fault = "server_error"
    with pytest.raises(HandlerLoadError, match=r"^Edge TTS answered HTTP 500 \(ws://127\.0\.0\.1:\d+\)$"):
        await asyncio.to_thread(edge, service)
    service.fault = None
    unchecked = await asyncio.to_thread(edge, service, voice="en-US-NobodyNeural", check=False)
    with pytest.raises(RuntimeError, match="said nothing in voice 'en-US-NobodyNeural'"):
        await pieces(unchecked, SENTENCE)  # in a turn: the service answers with no audio
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: nothing answers there
        with pytest.raises(HandlerLoadError, match=f"cannot reach Edge TTS at ws://127.0.0.1:{port}"):
            await asyncio.to_thread(lambda: EdgeTTS(EdgeOptions(url=f"ws://127.0.0.1:{port}")).load())


def test_the_url_is_the_service_or_a_plain_relay() -> None:
    assert EdgeOptions().url == "wss://speech.platform.bing.com/consumer/speech/synthesize/readaloud/edge/v1"
    assert EdgeOptions(url="ws://127.0.0.1:9000").url == "ws://127.0.0.1:9000"
    for bad in ("https://example.com", "ws://relay", "ws://relay:9/other/path", "wss://relay:443"):
        with pytest.raises(ValidationError, match="ws://HOST:PORT"):
            EdgeOptions(url=bad)
    with pytest.raises(ValidationError):
        EdgeOptions(rate="fast")
    assert EdgeOptions(proxy="http://127.0.0.1:3128").proxy  # edge-tts's own, to the service
    with pytest.raises(ValidationError, match="proxy is for reaching the service"):
        EdgeOptions(url="ws://127.0.0.1:9000", proxy="http://127.0.0.1:3128")


async def test_a_chinese_voice_speaks_with_pinyin_like_phonemes_per_character(service: LocalService) -> None:
    handler = await asyncio.to_thread(edge, service, voice="zh-CN-XiaoxiaoNeural")
    got = await pieces(handler, "你好，今天天气很好。")
    ssml, = seen(service, "ssml")
    assert ssml["body"]["voice"] == "Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)"
    phonemes = [p for _, ph in got for p in ph]
    assert sum(1 for p in phonemes if p.phoneme == " ") == 8  # a WordBoundary per character here
    assert sum(len(s) for s, _ in got) / 24000 > 1.0
    assert not any(p.phoneme == "ə" for p in phonemes), "espeak-ng's Mandarin said every character"


def test_edges_word_spans_filled_with_espeak_phonemes_move_the_mouth_like_the_voices_own_timings() -> None:
    """On hibari's speech, the words timed as Edge times them (the fixture's boundaries) and
    filled by ``word_phonemes`` give the mouth hibari's own phoneme timings give (its G2P
    differs from espeak-ng's, so not every frame can agree), far closer than a word-long
    open mouth. Measured on 8 sentences: 69 % of speaking frames, jaw r 0.72 (one vowel per
    word: 6 %, 0.08)."""
    hibari = HibariTTS(HibariOptions())
    hibari.load()
    agree, flat_agree = [], []
    for sentence in ("The capital of France is Paris, a city on the Seine.",
                     "Please remember to water the plants on Monday.",
                     "Turn left after the bridge and you will see the museum."):
        samples, words = fixture.timed_speech(sentence, False)
        _, truth = hibari.synthesize(sentence)
        spans = [(w.text, w.start, w.end) for w in words]
        times = frame_times(len(samples) / fixture.RATE, 25)
        own = curves_from_phonemes(truth, times).visemes
        ours = curves_from_phonemes(word_phonemes("en-us", spans), times).visemes
        flat = curves_from_phonemes([PhonemeTiming("ə", s, e) for _, s, e in spans], times).visemes
        speaking = [i for i, v in enumerate(own) if v != "sil"]
        agree.append(np.mean([own[i] == ours[i] for i in speaking]))
        flat_agree.append(np.mean([own[i] == flat[i] for i in speaking]))
    assert min(agree) > 0.45 and np.mean(agree) > 3 * np.mean(flat_agree)
