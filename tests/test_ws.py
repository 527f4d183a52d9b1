"""The protocol over both transports, and what only the WebSocket has.

The real app on 127.0.0.1 (tests/ws_harness.py) with the real embedded pipeline at
temperature 0. ``transport``-parametrised tests run the same protocol case over WebRTC
(the aiortc client, offering through ``POST /api/offer``) and over ``GET /api/ws`` (aiohttp's
WebSocket client): the issue's "same protocol tests over both transports". Waits are
generous bounds on events, never timing requirements.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from avatarchat.audio.resample import resample
from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.auth import make_token
from avatarchat.server.protocol import MAX_MESSAGE_BYTES
from avatarchat.server.settings import AuthSettings, HttpLimits, MessageRate, ServerSettings
from tests.peer_harness import SAMPLES, assert_final_matches, pipeline, reply_done, words
from tests.ws_harness import TRANSPORTS, App, running

pytestmark = pytest.mark.slow
__all__ = ["pipeline"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ws_client.py"
SECRET = "s3cret-for-ws-tests-only-0123456789abcdef-0123456789abcdef"
LONG = "Tell me a long story about a dragon and the sea."


@pytest.fixture
async def app(pipeline: Pipeline) -> Any:
    async with running(pipeline) as served:
        yield served


# --- the same protocol over both transports ----------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_typed_text_gets_transcript_reply_metrics_and_audio(app: App, transport: str) -> None:
    client = await app.client(transport)
    client.send({"type": "text", "text": "Say hello."})
    said = await client.wait_message(lambda m: m["type"] == "transcript", 30)
    assert said == {**said, "text": "Say hello.", "final": True}
    turn = said["turn"]
    final = await client.wait_message(reply_done(turn), 90)
    assert_final_matches(client.of_type("reply", turn)[:-1], final)
    metrics = await client.wait_message(lambda m: m["type"] == "metrics" and m["turn"] == turn, 90)
    assert {"llm_first_token_ms", "tts_first_audio_ms", "first_audio_sent_ms"} <= set(metrics)
    await client.wait_message(lambda m: m.get("state") == "listening", 10, start=client.messages.index(metrics))
    states = [m["state"] for m in client.messages if m["type"] == "state"]
    assert states == ["listening", "thinking", "speaking", "listening"], states
    assert len(client.loud_times()) > 25, "less than half a second of reply audio"
    assert app.metrics.turns_total == 1 and app.metrics.sessions_active == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_spoken_question_is_answered(app: App, transport: str) -> None:
    client = await app.client(transport)
    client.speak(SAMPLES / "question.wav")
    said = await client.wait_message(lambda m: m["type"] == "transcript" and m["final"], 60)
    assert words(said["text"]) == ["what", "is", "the", "capital", "of", "france"]
    final = await client.wait_message(reply_done(said["turn"]), 90)
    assert "paris" in words(final["text"]), final
    await client.wait_message(lambda m: m["type"] == "metrics" and m["turn"] == said["turn"], 90)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_interrupt_stops_the_audio_and_says_what_was_heard(app: App, transport: str) -> None:
    client = await app.client(transport)
    client.send({"type": "text", "text": LONG})
    said = await client.wait_message(lambda m: m["type"] == "transcript", 30)
    turn = said["turn"]
    await client._until(lambda: len(client.loud_times()) > 40, 90)  # 0.8 s of the reply heard
    mark = len(client.messages)
    sent_at = time.monotonic()
    client.send({"type": "interrupt"})
    cut = await client.wait_message(lambda m: m.get("turn") == turn and m.get("interrupted") is True, 30, start=mark)
    assert cut["type"] == "reply" and cut["final"] is True
    heard = words(cut["text"])
    streamed = words("".join(m["text"] for m in client.of_type("reply", turn) if not m["final"]))
    assert heard and heard == streamed[: len(heard)] and len(heard) < len(streamed), (heard, streamed)
    await client.wait_message(lambda m: m.get("state") == "listening", 30, start=mark)
    stopped = time.monotonic()
    await asyncio.sleep(1.5)  # a reply that plays on would be loud for seconds more
    assert len([t for t in client.loud_times() if t > stopped + 0.5]) == 0
    late = [t for t in client.loud_times() if t > sent_at]
    print(f"\n{transport}: reply audio stopped {(max(late) - sent_at) * 1000 if late else 0:.0f} ms after the interrupt")
    after = [m for m in client.messages[client.messages.index(cut) + 1:] if m.get("turn") == turn]
    assert after == [] and not client.of_type("metrics", turn)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_speaking_over_a_reply_cuts_it_and_the_new_question_is_answered(app: App, transport: str) -> None:
    client = await app.client(transport)
    client.send({"type": "text", "text": LONG})
    story = (await client.wait_message(lambda m: m["type"] == "transcript", 30))["turn"]
    await client._until(lambda: len(client.loud_times()) > 50, 90)  # 1 s of the story heard
    mark = len(client.messages)
    client.speak(SAMPLES / "followup.wav")
    cut = await client.wait_message(lambda m: m.get("turn") == story and m.get("interrupted") is True, 60,
                                    start=mark)
    assert cut["type"] == "reply" and cut["final"] is True and words(cut["text"])
    said = await client.wait_message(lambda m: m["type"] == "transcript" and m["final"], 60, start=mark)
    assert said["turn"] > story and "famous" in words(said["text"]), said
    await client.wait_message(reply_done(said["turn"]), 90)
    assert not client.of_type("metrics", story)
    assert app.metrics.cuts.get("barge-in") == 1, app.metrics.cuts


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_messages_get_errors_and_the_session_goes_on(app: App, transport: str) -> None:
    client = await app.client(transport)
    bad = ["this is not json", '{"type": "text", "text": "' + "x" * MAX_MESSAGE_BYTES + '"}',
           '{"type": "dance"}', '{"type": "text"}', "[1, 2]", '{"type": "ping", "t": NaN}']
    for i, message in enumerate(bad):
        mark = len(client.messages)
        client.send(message)
        err = await client.wait_message(lambda m: m["type"] == "error", 10, start=mark)
        assert err["message"], (i, err)
    errors = [m["message"] for m in client.of_type("error")]
    assert "not JSON" in errors[0] and "too big" in errors[1] and "unknown message type" in errors[2]
    assert "finite" in errors[5]
    client.send({"type": "ping", "t": 1.5})
    assert (await client.wait_message(lambda m: m["type"] == "pong", 10))["t"] == 1.5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_flood_of_messages_gets_one_error_and_is_dropped(pipeline: Pipeline, transport: str) -> None:
    async with running(pipeline, ServerSettings(message_rate=MessageRate(per_s=1, burst=5))) as served:
        client = await served.client(transport)
        for i in range(40):
            client.send({"type": "ping", "t": i})
        await client.wait_message(lambda m: m["type"] == "error", 20)
        await asyncio.sleep(0.5)  # the rest of the flood arrives, and is dropped
        pongs, errors = client.of_type("pong"), client.of_type("error")
        assert 5 <= len(pongs) < 12 and len(errors) == 1 and "too many messages" in errors[0]["message"]


async def test_sessions_of_both_transports_share_the_limits(pipeline: Pipeline) -> None:
    async with running(pipeline, ServerSettings(max_sessions=3, max_sessions_per_client=2)) as served:
        await served.client("webrtc")
        await served.client("ws")
        assert len(served.manager) == 2 and served.metrics.sessions_active == 2
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await served.client("ws")  # this address holds two already
        assert refused.value.status == 429
        async with aiohttp.ClientSession() as http, http.get(served.url + "/metrics") as r:
            assert "avatarchat_sessions_active 2" in await r.text()
        await served.close_clients()
        await asyncio.wait_for(_until(lambda: len(served.manager) == 0), 20)
        assert served.metrics.sessions_active == 0 and served.metrics.sessions_total == 2


# --- the WebSocket's own ----------------------------------------------------------------------


async def test_hello_then_reply_pcm_that_says_the_reply(app: App, pipeline: Pipeline) -> None:
    client = await app.client("ws")
    tts: Any = pipeline.handler("tts")
    assert client.hello == {**client.hello, "type": "hello", "sample_rate": 16000,
                            "reply_sample_rate": tts.sample_rate, "video": "none", "fps": 25}
    assert client.hello["session"] == app.manager.peers[0].id
    assert client.messages[1] == {**client.messages[1], "type": "state", "state": "listening"}
    client.send({"type": "text", "text": "What is the capital of France?"})
    final = await client.wait_message(reply_done(), 90)
    await client.wait_message(lambda m: m["type"] == "metrics", 90)
    pcm = np.concatenate([s for _, s in client.audio_chunks])
    assert {len(s) for _, s in client.audio_chunks} == {tts.sample_rate // 50}  # 20 ms frames
    asr: Any = pipeline.handler("asr")
    heard = words(await asyncio.to_thread(asr.transcribe, resample(pcm, tts.sample_rate, 16000), "en"))
    said = words(final["text"])
    assert len(set(heard) & set(said)) >= 0.7 * len(set(said)), (heard, said)
    # Paced in real time: the reply's frames arrive over about the reply's length.
    arrivals = [t for t, _ in client.audio_chunks]
    assert arrivals[-1] - arrivals[0] > 0.5 * len(pcm) / tts.sample_rate


async def test_bad_binary_messages_get_errors_and_the_session_goes_on(app: App) -> None:
    client = await app.client("ws", mic=False)
    for payload, text in [(b"\x01\x02\x03", "not whole 16-bit samples"),
                          (bytes(32002), "too big: at most 1 s")]:
        mark = len(client.messages)
        client.send(payload)
        err = await client.wait_message(lambda m: m["type"] == "error", 10, start=mark)
        assert text in err["message"], err
    client.send(bytes(32000))  # one second of silence is fine: no error
    client.send({"type": "ping", "t": 2})
    await client.wait_message(lambda m: m["type"] == "pong", 10)
    assert len(client.of_type("error")) == 2
    for _ in range(8):  # 8 s of audio at once: over the 3 s a client may send ahead
        client.send(bytes(32000))
    err = await client.wait_message(lambda m: m["type"] == "error" and "real time" in m["message"], 10)
    await asyncio.sleep(0.3)
    assert client.of_type("error")[2:] == [err]  # one error for the run
    client.send(bytes(200_000))  # past aiohttp's frame limit: the connection closes (1009)
    await client.wait_closed(20)
    assert client.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await asyncio.wait_for(_until(lambda: len(app.manager) == 0), 20)


async def test_jpeg_video_sends_avatar_frames_at_its_fps(app: App) -> None:
    client = await app.client("ws", video="jpeg", mic=False)
    await client._until(lambda: len(client.frames) >= 30, 60)
    with av.open(io.BytesIO(client.frames[-1][1]), mode="r", format="mjpeg") as image:
        frame = next(image.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape == (512, 512, 3) and frame.std() > 5  # a face, not a blank
    session = app.manager.peers[0]
    span = client.frames[-1][0] - client.frames[0][0]
    print(f"\nidle video: {(len(client.frames) - 1) / span:.1f} fps, "
          f"{session.video_bytes / session.video_sent / 1024:.1f} KiB a frame (JPEG), dropped {session.video_dropped}")


async def test_a_client_that_stops_reading_loses_video_frames_not_audio(app: App) -> None:
    """aiohttp's client stops reading the socket while its queue is full (flow control), so
    the server's write buffer fills: video frames are dropped there, audio and messages wait."""
    async with aiohttp.ClientSession() as http, http.ws_connect(app.url + "/api/ws?video=jpeg") as ws:
        assert (await ws.receive_json())["type"] == "hello"
        await ws.send_json({"type": "text", "text": "Say hello."})
        session = app.manager.peers[0]
        await asyncio.wait_for(_until(lambda: session.video_dropped >= 25), 60)  # a second of frames
        assert len(app.manager) == 1
        audio = frames = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # read it all: the reply's audio arrives whole
            msg = await ws.receive(timeout=60)
            if msg.type == aiohttp.WSMsgType.BINARY:
                audio += len(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                m = json.loads(msg.data)
                frames += m["type"] == "frame"
                if m["type"] == "metrics":
                    break
        reply_bytes = session.playout.played_seconds(1) * session.reply_rate * 2
        assert frames > 0 and reply_bytes > 0 and audio >= reply_bytes, (audio, reply_bytes)


async def test_motion_video_sends_the_mouth_curves_of_a_reply(app: App) -> None:
    client = await app.client("ws", video="motion", mic=False)
    assert client.hello["video"] == "motion"
    client.send({"type": "text", "text": "Say hello."})
    turn = (await client.wait_message(lambda m: m["type"] == "transcript", 30))["turn"]
    await client.wait_message(lambda m: m["type"] == "metrics", 90)
    motion = client.of_type("motion", turn)
    assert motion and not client.frames
    for m in motion:
        assert len(m["times"]) == len(m["values"]) == len(m["visemes"]) > 0
        assert all(len(row) == len(m["channels"]) for row in m["values"])
    times = [t for m in motion for t in m["times"]]
    assert times == sorted(times) and times[0] >= 0.0
    assert max(max(abs(v) for v in row) for m in motion for row in m["values"]) > 0.05  # the mouth moved


async def test_auth_and_origin_guard_the_websocket(pipeline: Pipeline) -> None:
    settings = ServerSettings(auth=AuthSettings(secret=SECRET))
    async with running(pipeline, settings) as served:
        refusals: list[tuple[dict[str, Any], int]] = [
            ({}, 401), ({"token": "not-a-token"}, 401),
            ({"token": make_token(SECRET, "t", 60), "headers": {"Origin": "https://evil.example"}}, 403),
            ({"token": make_token(SECRET, "t", 60), "video": "png"}, 400)]
        for kw, status in refusals:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await served.client("ws", **kw)
            assert refused.value.status == status, kw
        assert len(served.manager) == 0
        client = await served.client("ws", token=make_token(SECRET, "t", 60))
        assert client.hello["type"] == "hello"


async def test_a_silent_client_is_closed_after_the_connect_timeout(pipeline: Pipeline) -> None:
    async with running(pipeline, ServerSettings(connect_timeout_s=1.0)) as served:
        client = await served.client("ws", mic=False)
        await client.wait_closed(30)
        assert "not connected within 1 s" in client.of_type("error")[-1]["message"]
        await asyncio.wait_for(_until(lambda: len(served.manager) == 0), 20)
        talker = await served.client("ws")  # sends mic audio: stays
        await asyncio.sleep(2.0)
        assert len(served.manager) == 1 and talker.close_code is None


async def test_a_client_that_only_sends_silence_is_closed_when_idle(pipeline: Pipeline) -> None:
    async with running(pipeline, ServerSettings(idle_timeout_s=1.5)) as served:
        client = await served.client("ws")  # its mic sends silence: connected, never active
        await client.wait_closed(30)
        assert client.of_type("error")[-1]["message"] == "the session ended: idle"
        await asyncio.wait_for(_until(lambda: len(served.manager) == 0), 20)


async def test_shutdown_tells_the_client_and_closes_the_socket(app: App) -> None:
    client = await app.client("ws")
    assert await app.manager.close_all() == 1
    await client.wait_closed(20)
    assert client.of_type("error")[-1]["message"] == "the session ended: server stopping"
    assert len(app.manager) == 0 and app.metrics.sessions_active == 0


async def test_a_websocket_outlives_the_http_deadlines(pipeline: Pipeline) -> None:
    """The connection watchdog's header, body and keep-alive deadlines end with the upgrade."""
    limits = HttpLimits(header_timeout_s=0.5, body_timeout_s=0.5, keepalive_timeout_s=0.5)
    async with running(pipeline, ServerSettings(http=limits)) as served:
        client = await served.client("ws")
        await asyncio.sleep(2.0)
        client.send({"type": "ping", "t": 3})
        await client.wait_message(lambda m: m["type"] == "pong", 10)
        assert client.close_code is None and len(served.manager) == 1


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.05)


async def test_the_example_client_gets_a_spoken_answer(app: App, tmp_path: Path) -> None:
    """examples/ws_client.py (docs/PROTOCOL.md's client), run as a user would."""
    out = tmp_path / "reply.wav"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), app.url, "What is the capital of France?", "--out", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        printed, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = printed.decode()
    assert proc.returncode == 0 and "avatar: " in text and "paris" in text.lower(), text
    with wave.open(str(out)) as f:
        assert f.getframerate() == 24000 and f.getnframes() / f.getframerate() > 0.5
