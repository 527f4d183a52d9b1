"""PeerSession over real loopback WebRTC with the real embedded pipeline.

The Python aiortc client (tests/rtc_client.py) talks to ``PeerSession.open`` through the
documented protocol only: the same thing a browser does through the HTTP app. Figures that
the report quotes are printed (run with ``-s`` to see them). Barge-in and echo:
tests/test_peer_bargein.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.jitter import InOrderAudio
from avatarchat.server.peer import OfferError, PeerSession
from avatarchat.server.protocol import MAX_MESSAGE_BYTES
from avatarchat.server.settings import ServerSettings
from tests.peer_harness import (  # the fixtures are registered here by their import
    SAMPLES,
    Server,
    assert_final_matches,
    clients,
    pipeline,
    reply_done,
    server,
    words,
)
from tests.rtc_client import RtcTestClient

pytestmark = pytest.mark.slow
__all__ = ["clients", "pipeline", "server"]


async def test_spoken_question_gets_transcript_reply_video_and_audio(server: Server, clients: list[RtcTestClient]) -> None:
    client = await server.client()
    clients.append(client)
    assert re.search(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 ", client.answer_sdp), "no loopback candidate"
    assert server.peers[0].video_codec == "VP8"
    mic = next(t.receiver for t in server.peers[0]._pc.getTransceivers() if t.kind == "audio")
    assert ServerSettings().mic_prefetch_packets == 0
    assert isinstance(getattr(mic, "_RTCRtpReceiver__jitter_buffer"), InOrderAudio)
    assert "usedtx=1" in client.answer_sdp  # server.mic_dtx
    await client.wait_video(1)

    client.speak(SAMPLES / "question.wav")
    said = await client.wait_message(lambda m: m["type"] == "transcript" and m["final"], 30)
    assert words(said["text"]) == ["what", "is", "the", "capital", "of", "france"]
    turn = said["turn"]
    final = await client.wait_message(reply_done(turn), 60)
    assert final["text"].strip()
    deltas = client.of_type("reply", turn)[:-1]
    assert_final_matches(deltas, final)
    metrics = await client.wait_message(lambda m: m["type"] == "metrics" and m["turn"] == turn, 60)

    states = [m["state"] for m in client.messages if m["type"] == "state"]
    assert states == ["listening", "thinking", "speaking", "listening"], states
    speaking = next(m["_at"] for m in client.messages if m.get("state") == "speaking")
    # Video keeps flowing while the avatar speaks. The rate itself (25 fps on an idle
    # machine) is a performance figure, `avatarchat bench e2e`; a busy CI machine sends fewer.
    assert client.fps(since=speaking) >= 5, client.fps(since=speaking)
    loud = client.loud_times()
    assert len(loud) > 25, "less than half a second of reply audio heard"  # 20 ms chunks
    assert client.last_frame is not None and client.last_frame.shape == (512, 512, 3)
    assert {"asr_ms", "first_audio_sent_ms", "first_frame_sent_ms"} <= set(metrics)
    # Audio and video of the reply start together: frames are placed on the audio schedule,
    # so the first reply frame goes out within a few frames of the first audio (wall-clock
    # send times: on a loaded machine the encoder lags; `bench e2e` reports the skew).
    assert abs(metrics["first_frame_sent_ms"] - metrics["first_audio_sent_ms"]) < 1000
    assert [e for e in server.events if e[0] == "turn"]
    print(f"\nfps received {client.fps():.1f} (while speaking {client.fps(since=speaking):.1f}); "
          f"first audio sent {metrics['first_audio_sent_ms']} ms after speech end; "
          f"first frame {metrics['first_frame_sent_ms']} ms; metrics {metrics}")


async def test_typed_text_is_answered_and_interrupt_stops_the_reply(server: Server, clients: list[RtcTestClient]) -> None:
    client = await server.client()
    clients.append(client)
    client.send({"type": "text", "text": "Say hello."})
    said = await client.wait_message(lambda m: m["type"] == "transcript", 30)
    assert said["text"] == "Say hello."
    await client.wait_message(lambda m: m["type"] == "metrics" and m["turn"] == said["turn"], 60)

    # A second, longer reply, interrupted as soon as its audio is heard.
    mark = len(client.messages)
    client.send({"type": "text", "text": "Tell me a long story about a dragon and the sea."})
    said = await client.wait_message(lambda m: m["type"] == "transcript", 30, start=mark)
    turn = said["turn"]
    heard = len(client.loud_times())
    await client._until(lambda: len(client.loud_times()) > heard + 10, 60)  # 200 ms of the reply
    sent_at = time.monotonic()
    client.send({"type": "interrupt"})
    await client.wait_message(lambda m: m.get("state") == "listening", 5, start=mark + 1)
    await asyncio.sleep(1.0)
    late = [t for t in client.loud_times() if t > sent_at]
    stop_ms = (max(late) - sent_at) * 1000 if late else 0.0
    print(f"\ninterrupt: reply audio stopped {stop_ms:.0f} ms after the client sent it")
    # The 200 ms target is measured by `bench e2e`; here the bound only tells a cut from a
    # reply that plays on (it runs for seconds), with room for a loaded CI machine.
    assert stop_ms < 500, stop_ms
    # The cut is confirmed with the words heard; after it, nothing more of the turn (PROTOCOL.md).
    cut = await client.wait_message(lambda m: m.get("turn") == turn and m.get("interrupted") is True, 5, start=mark)
    assert cut["type"] == "reply" and cut["final"] is True
    after = [m for m in client.messages[client.messages.index(cut) + 1:]
             if m.get("turn") == turn and m["type"] in ("reply", "metrics")]
    assert after == [], after
    assert not client.of_type("metrics", turn)
    assert server.peers[0].playout.played_seconds(turn) > 0.15


async def test_two_sessions_get_only_their_own_turns(server: Server, clients: list[RtcTestClient]) -> None:
    a, b = await server.client(), await server.client()
    clients += [a, b]
    a.send({"type": "text", "text": "What is the capital of France?"})
    b.send({"type": "text", "text": "What color is the sky?"})
    done = await asyncio.gather(a.wait_message(reply_done(), 90), b.wait_message(reply_done(), 90))
    assert [m["text"] for m in a.of_type("transcript")] == ["What is the capital of France?"]
    assert [m["text"] for m in b.of_type("transcript")] == ["What color is the sky?"]
    for client, final in zip((a, b), done):
        turn = client.of_type("transcript")[0]["turn"]
        assert {m["turn"] for m in client.of_type("reply")} == {turn}
        assert_final_matches(client.of_type("reply")[:-1], final)
    assert done[0]["text"] != done[1]["text"]


async def test_bad_messages_get_errors_and_the_session_goes_on(server: Server, clients: list[RtcTestClient]) -> None:
    client = await server.client()
    clients.append(client)
    bad: list[Any] = ["this is not json", '{"type": "text", "text": "' + "x" * MAX_MESSAGE_BYTES + '"}',
                      '{"type": "dance"}', b"\x00\xff\xfe binary", '{"type": "text"}', "[1, 2]",
                      '{"type": "text", "text": ""}']
    for i, message in enumerate(bad):
        mark = len(client.messages)
        client.send(message)
        err = await client.wait_message(lambda m: m["type"] == "error", 5, start=mark)
        assert err["message"], (i, err)
    errors = [m["message"] for m in client.of_type("error")]
    assert "not JSON" in errors[0] and "too big" in errors[1] and "unknown message type" in errors[2]
    client.send({"type": "ping", "t": 1.5})
    assert (await client.wait_message(lambda m: m["type"] == "pong", 5))["t"] == 1.5
    client.send({"type": "text", "text": "Say hello."})
    await client.wait_message(reply_done(), 60)


async def test_bad_offers_are_refused(server: Server) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        with pytest.raises(OfferError, match="no audio"):
            await server.offer_fn(pc.localDescription.sdp, "offer")
    finally:
        await pc.close()
    with pytest.raises(OfferError, match="not an SDP"):
        await server.offer_fn("garbage", "offer")
    with pytest.raises(OfferError, match="offer"):
        await server.offer_fn("v=0\r\n", "answer")
    broken = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
    with pytest.raises(OfferError, match="cannot be answered"):
        await server.offer_fn(broken, "offer")
    assert server.peers == [] and server.events == []


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def test_twenty_sessions_open_and_close_without_leaks(server: Server) -> None:
    async def one() -> None:
        client = await server.client()
        try:
            await client.wait_video(1)
        finally:
            await client.close()
            await server.peers[-1].close()

    for _ in range(3):  # warm-up: codecs, thread pools, first-use caches
        await one()
    tasks, rss = len(asyncio.all_tasks()), rss_mb()
    t0 = time.monotonic()
    for _ in range(20):
        await one()
    await asyncio.sleep(0.2)
    grown = rss_mb() - rss
    print(f"\n20 sessions in {time.monotonic() - t0:.1f} s; RSS growth {grown:.1f} MB")
    assert len(asyncio.all_tasks()) == tasks, [t.get_name() for t in asyncio.all_tasks()]
    assert grown < 60
    assert len(server.closed) == 23 and all(p.closed for p in server.peers)
    assert [e for e, _ in server.events].count("closed") == 23


async def test_vanished_client_is_closed(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PeerSession, "disconnect_timeout_s", 1.5)
    client = await server.client()
    try:
        # Media flowing first: before the first mic frame the server waits connect_timeout_s.
        await client.wait_video(5)
        client.send({"type": "text", "text": "Tell me about the sea."})
        await client.wait_message(lambda m: m["type"] == "transcript", 30)
        gone = time.monotonic()
        await client.vanish()
        peer = server.peers[0]
        await asyncio.wait_for(peer.wait_closed(), 5.0)
        print(f"\nvanished client closed after {time.monotonic() - gone:.1f} s")
        assert server.closed == [peer]
    finally:
        await client.close()
    await peer.close()  # idempotent
    assert server.closed == [peer]


async def test_h264_when_configured(pipeline: Pipeline) -> None:
    srv = Server(pipeline, ServerSettings(video_codec="h264"))
    client = await srv.client()
    try:
        await client.wait_video(10)
        assert srv.peers[0].video_codec == "H264"
        assert client.last_frame is not None and client.last_frame.shape == (512, 512, 3)
    finally:
        await client.close()
        await srv.shutdown()


async def test_playout_without_avatar_sends_a_static_frame() -> None:
    from avatarchat.engine.events import ReplyAudio
    from avatarchat.server.tracks import AUDIO_FRAME, AvatarAudioTrack, IdleFrames, MediaClock, Playout

    clock = MediaClock()
    ended: list[int] = []
    from avatarchat.engine.sink import PlaybackListener
    playout = Playout(clock, PlaybackListener(finished=lambda turn, heard, interrupted: ended.append(turn)))
    track = AvatarAudioTrack(clock, playout)
    tone = np.full(2400, 0.5, np.float32)  # 100 ms at 24 kHz
    playout.add_audio(ReplyAudio(7, tone, 24000, 0.0, "a"))
    playout.end(7)
    frames = [await track.recv() for _ in range(12)]
    loud = [f.pts // AUDIO_FRAME for f in frames if np.abs(f.to_ndarray()).max() > 8000]
    assert len(loud) >= 4 and loud == list(range(loud[0], loud[0] + len(loud)))
    assert ended == [7] and abs(playout.played_seconds(7) - 0.1) < 0.002
    image = await IdleFrames(None, 25).get(0)
    assert image.shape == (512, 512, 3)
    track.stop()
