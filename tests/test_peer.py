"""PeerSession over real loopback WebRTC with the real embedded pipeline.

The Python aiortc client (tests/rtc_client.py) talks to ``PeerSession.open`` through the
documented protocol only: the same thing a browser does through the HTTP app. Figures that
the report quotes are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from avatarchat.audio.io import load_audio
from avatarchat.engine.config import load_config
from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.peer import OfferError, PeerSession
from avatarchat.server.protocol import MAX_MESSAGE_BYTES
from avatarchat.server.settings import ServerSettings
from tests.configs import greedy_default
from tests.rtc_client import RtcTestClient

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
pytestmark = pytest.mark.slow


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The embedded default config at temperature 0 (a long story is long every run), loaded
    once. Loaded in a throwaway loop: the handlers are plain objects (models, thread pools)
    that each test's own loop can use."""
    config = load_config(greedy_default(tmp_path_factory.mktemp("config")))
    return asyncio.run(Pipeline.load(config, progress=lambda _: None))


class Server:
    """``offer_fn`` for the client, opening PeerSessions directly; closes them at the end."""

    def __init__(self, pipeline: Pipeline, settings: ServerSettings | None = None) -> None:
        self.pipeline = pipeline
        self.settings = settings or ServerSettings()
        self.peers: list[PeerSession] = []
        self.closed: list[PeerSession] = []
        self.events: list[tuple[str, Any]] = []

    # The duck-typed metrics sink.
    def session_opened(self) -> None: self.events.append(("opened", None))
    def session_closed(self) -> None: self.events.append(("closed", None))
    def turn_done(self, timings_ms: dict[str, float]) -> None: self.events.append(("turn", timings_ms))
    def error(self, stage: str) -> None: self.events.append(("error", stage))

    async def offer_fn(self, sdp: str, type_: str) -> str:
        peer, answer = await PeerSession.open(self.pipeline, sdp, type_, self.settings, metrics=self,
                                              on_closed=self.closed.append)
        self.peers.append(peer)
        return answer

    async def client(self) -> RtcTestClient:
        client = RtcTestClient()
        await client.connect(self.offer_fn)
        return client

    async def shutdown(self) -> None:
        for peer in self.peers:
            await peer.close("test over")


@pytest.fixture
async def server(pipeline: Pipeline) -> AsyncIterator[Server]:
    srv = Server(pipeline)
    yield srv
    await srv.shutdown()


@pytest.fixture
async def clients() -> AsyncIterator[list[RtcTestClient]]:
    made: list[RtcTestClient] = []
    yield made
    for c in made:
        await c.close()


def reply_done(turn: int | None = None) -> Any:
    return lambda m: m["type"] == "reply" and m["final"] and (turn is None or m["turn"] == turn)


def assert_final_matches(deltas: list[dict[str, Any]], final: dict[str, Any]) -> None:
    """The final reply is the streamed deltas, unless the model hit its token cap: then it
    stops where the voice did (an unfinished last sentence is not said)."""
    streamed = "".join(d["text"] for d in deltas).strip()
    assert deltas, "no reply deltas before the final"
    if final.get("truncated") is True:
        assert streamed.startswith(final["text"].strip()), (streamed, final)
    else:
        assert streamed == final["text"].strip(), (streamed, final)

async def test_spoken_question_gets_transcript_reply_video_and_audio(server: Server, clients: list[RtcTestClient]) -> None:
    client = await server.client()
    clients.append(client)
    assert re.search(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 ", client.answer_sdp), "no loopback candidate"
    assert server.peers[0].video_codec == "VP8"
    mic = next(t.receiver for t in server.peers[0]._pc.getTransceivers() if t.kind == "audio")
    assert getattr(mic, "_RTCRtpReceiver__jitter_buffer")._prefetch == ServerSettings().mic_prefetch_packets == 1
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
    assert client.fps(since=speaking) >= 20, client.fps(since=speaking)
    assert client.fps() >= 20
    loud = client.loud_times()
    assert len(loud) > 25, "less than half a second of reply audio heard"  # 20 ms chunks
    assert client.last_frame is not None and client.last_frame.shape == (512, 512, 3)
    assert {"asr_ms", "first_audio_sent_ms", "first_frame_sent_ms"} <= set(metrics)
    # Audio and video of the reply start together (frames are placed on the audio schedule).
    assert abs(metrics["first_frame_sent_ms"] - metrics["first_audio_sent_ms"]) < 120
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
    from avatarchat.server.tracks import PlayoutListener
    playout = Playout(clock, PlayoutListener(finished=ended.append))
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


# --- voice barge-in ---------------------------------------------------------------------------

LONG_QUESTION = "Tell me a long story about a dragon."


def voice_onset(samples: np.ndarray, threshold: float = 0.01) -> float:
    """Seconds into ``samples`` (48 kHz) of the first 20 ms frame louder than ``threshold``."""
    rms = np.sqrt(np.mean(samples[: len(samples) // 960 * 960].reshape(-1, 960) ** 2, axis=1))
    return float(np.argmax(rms > threshold)) * 0.02


def envelope(client: RtcTestClient, since: float) -> list[tuple[float, float]]:
    """(arrival, RMS) of each received 20 ms audio chunk since ``since``."""
    return [(t, float(np.sqrt(np.mean(s * s)))) for t, s in client.audio_chunks if t >= since and len(s)]


def first_quiet(env: list[tuple[float, float]], after: float, level: float, hold_s: float = 0.3) -> float | None:
    """Arrival of the first chunk after ``after`` from which audio stays below ``level`` for ``hold_s``."""
    start = None
    for t, rms in env:
        if t < after:
            continue
        if rms >= level:
            start = None
        elif start is None:
            start = t
        elif t - start >= hold_s:
            return start
    return None


async def start_long_reply(client: RtcTestClient) -> int:
    """Ask for a long story by text; return its turn once ~300 ms of its audio has arrived."""
    client.send({"type": "text", "text": LONG_QUESTION})
    said = await client.wait_message(lambda m: m["type"] == "transcript", 30)
    heard = len(client.loud_times())
    await client._until(lambda: len(client.loud_times()) > heard + 15, 60)
    return said["turn"]


async def test_speaking_over_the_reply_stops_it_and_the_question_is_answered(
        server: Server, clients: list[RtcTestClient]) -> None:
    client = await server.client()
    clients.append(client)
    story = await start_long_reply(client)
    question = load_audio(SAMPLES / "question.wav", 48000)
    queued = time.monotonic()
    client.speak(question)
    onset = queued + voice_onset(question)  # the mic plays queued audio from its next frame

    cut = await client.wait_message(lambda m: m["type"] == "reply" and m.get("interrupted"), 10)
    assert cut["turn"] == story and cut["final"]
    said = await client.wait_message(lambda m: m["type"] == "transcript" and m["final"] and m["turn"] > story, 30)
    assert words(said["text"]) == ["what", "is", "the", "capital", "of", "france"]
    answer = await client.wait_message(reply_done(said["turn"]), 60)
    # Not checked for "Paris": the 135M model, with the cut story in its history, is not reliable.
    assert answer["text"].strip()

    peer = server.peers[0]
    barge = peer.turntaking.history[0]
    assert barge.cut == (story,) and barge.turn == said["turn"]
    env = envelope(client, onset - 1.0)
    loud = float(np.median([r for t, r in env if t < onset]))
    ducked = first_quiet(env, onset, 0.35 * loud, hold_s=0.06)
    # The end of the last audible chunk before the answer (which comes seconds later); on an
    # overloaded machine the reply may already be between chunks at the onset.
    stopped = max((t + 0.02 for t, r in env if onset < t < barge.at + 0.6 and r > 0.002), default=onset)
    assert ducked is not None
    confirm = cut["_at"]
    _, vad_onset, duck_at = peer.turntaking.ducks[0]
    # Client and server share this process's monotonic clock, so their times compare.
    print(f"\nbarge-in, server: VAD onset +{1000 * (vad_onset - onset):.0f} ms after the mic's; ducked "
          f"{1000 * (duck_at - vad_onset):.0f} ms and decided {1000 * (barge.at - vad_onset):.0f} ms "
          f"({barge.why}) after the VAD onset. client: reply audio ducked {1000 * (ducked - onset):.0f} ms "
          f"and silent {1000 * (stopped - onset):.0f} ms after the mic onset, silent "
          f"{1000 * (stopped - barge.at):.0f} ms after the decision; heard {cut['text']!r}; "
          f"then answered {answer['text']!r}")
    assert barge.at - vad_onset < 0.3 + 0.2
    assert stopped - barge.at < 0.25, stopped - barge.at  # the 200 ms promise plus the network
    # Nothing of the old turn after the cut: no more text, no metrics.
    late = [m for m in client.messages if m.get("turn") == story and m["_at"] > confirm]
    assert late == [], late
    assert not client.of_type("metrics", story)
    assert story not in peer.playout.turns
    history = peer.session.context("llm").history
    assert history[-2][1].endswith("[interrupted]") and history[-2][0] == LONG_QUESTION


async def test_speech_while_a_reply_is_prepared_drops_it_instead_of_talking_over_it(
        server: Server, clients: list[RtcTestClient]) -> None:
    """What happens when the user goes on after a pause the end of turn took for the end:
    here made deterministic with a typed question and, at once, a spoken one (the VAD hears
    it start ~100 ms later; the typed reply's first audio is ~300 ms away). Once the speech
    has lasted min_speech, the reply in preparation is dropped (or cut, ducked, if it began
    meanwhile): not played over the user, as it was before, until their final transcript
    superseded it. The spoken question is asked as the typed one's continuation."""
    question = load_audio(SAMPLES / "followup.wav", 48000)
    question = question[round(voice_onset(question) * 48000):]
    client = await server.client()
    clients.append(client)
    client.send({"type": "text", "text": "What is the capital of France?"})
    onset = time.monotonic()
    client.speak(question)
    typed = await client.wait_message(lambda m: m["type"] == "transcript", 30)
    cut = await client.wait_message(lambda m: m.get("interrupted") and m["turn"] == typed["turn"], 10)
    said = await client.wait_message(lambda m: m["type"] == "transcript" and m["final"] and m["turn"] > typed["turn"], 30)
    assert words(said["text"]) == ["and", "what", "is", "it", "famous", "for"]
    peer = server.peers[0]
    barge = peer.turntaking.history[0]
    assert barge.cut == (typed["turn"],) and barge.turn == said["turn"] and barge.why == "speech"
    # Decided by the speech, long before its final transcript could have superseded the reply.
    assert cut["_at"] < said["_at"] and cut["_at"] - onset < 1.0, cut["_at"] - onset  # ~0.45 s idle
    played = peer.playout.played_seconds(typed["turn"])
    print(f"\nspeech while a reply is prepared: dropped {1000 * (cut['_at'] - onset):.0f} ms after the "
          f"onset, {played:.2f} s of it played, heard {cut['text']!r}")
    assert played < 0.8, played  # idle: 0-0.25 s, ducked; talking over the user: ~1.4 s
    answer = await client.wait_message(reply_done(said["turn"]), 60)
    assert answer["text"].strip() and not answer.get("interrupted")
    history = peer.session.context("llm").history
    if cut["text"]:  # a word of it was heard (the reply began to play first): its own exchange
        assert history[-2] == ("What is the capital of France?", f"{cut['text']} [interrupted]"), history
    else:  # nothing heard: the spoken question was asked as the typed one's continuation
        assert history[-1][0] == f"What is the capital of France? {said['text']}", history


async def test_a_short_blip_during_the_reply_does_not_stop_it(
        server: Server, clients: list[RtcTestClient]) -> None:
    from avatarchat.audio.resample import resample
    from avatarchat.handlers.tts.hibari import HibariTTS

    tts = next(h for h in server.pipeline.handlers if isinstance(h, HibariTTS))
    word, _ = tts.synthesize("Hey!")
    word = resample(word, 24000, 48000)
    at = int(voice_onset(word) * 48000)
    blip = word[at:at + int(0.12 * 48000)]  # 120 ms of a spoken word
    client = await server.client()
    clients.append(client)
    story = await start_long_reply(client)
    sent = time.monotonic()
    client.speak(blip)
    await asyncio.sleep(2.0)
    peer = server.peers[0]
    assert not [m for m in client.messages if m.get("interrupted")]
    assert peer.turntaking.history == [] and peer.playout.playing == story
    before = sum(r > 0.01 for _, r in envelope(client, sent - 1.1) if _ < sent)
    after = sum(r > 0.01 for _, r in envelope(client, sent + 0.9))
    print(f"\nblip: VAD started a turn: {bool(peer.turntaking.ducks)}; reply chunks louder than "
          f"-40 dBFS in the 1.1 s before it {before}, in the 1.1 s from 0.9 s after it {after}")
    assert after >= min(15, before // 2), "the reply did not go on after the blip"
    assert peer.playout.volume == 1.0
    client.send({"type": "interrupt"})
    cut = await client.wait_message(lambda m: m["type"] == "reply" and m.get("interrupted"), 5)
    assert cut["turn"] == story and cut["text"]


# --- the avatar's own voice coming back through the mic -----------------------------------

ECHO_DB, ECHO_DELAY_S, ECHO_FOR_S = -15.0, 0.08, 5.0


async def echoed_reply(srv: Server) -> tuple[RtcTestClient, PeerSession, int, float]:
    """A client with no echo cancellation (its mic hears the reply at ``ECHO_DB``,
    ``ECHO_DELAY_S`` late) asks for a long story and listens for ``ECHO_FOR_S`` of it, or
    until it is cut or ends; returns the client, the peer, the story's turn and the
    seconds of the story played meanwhile."""
    client = await srv.client()
    client.mic.start_echo(ECHO_DB, ECHO_DELAY_S)
    story = await start_long_reply(client)
    peer = srv.peers[-1]
    over = lambda m: m.get("turn") == story and (m.get("interrupted") or m["type"] == "metrics")  # noqa: E731
    try:
        await client.wait_message(over, ECHO_FOR_S)
    except TimeoutError:
        pass
    return client, peer, story, peer.playout.played_seconds(story)


@pytest.mark.xfail(reason="the guard removes ~7 dB of an Opus round trip; the VAD still hears the rest "
                          "and the reply is cut after ~1 s (why echo_guard is off by default). The "
                          "requirement relies on the browser's echo cancellation and is checked with "
                          "Chromium's own in tests/test_echo_browser.py", strict=False)
async def test_the_avatars_own_echo_does_not_stop_its_reply(pipeline: Pipeline, clients: list[RtcTestClient]) -> None:
    server = Server(pipeline, ServerSettings(barge_in={"echo_guard": True}))
    client, peer, story, played = await echoed_reply(server)
    clients.append(client)
    try:
        guard = peer.echo
        assert guard is not None
        ended = bool(client.of_type("metrics", story))
        stats = guard.stats
        print(f"\necho guard: {played:.1f} s of the reply played{' (to its end)' if ended else ''}; "
              f"ducks {len(peer.turntaking.ducks)}; {stats}; {stats.mean_ms:.3f} ms per mic chunk")
        assert not [m for m in client.messages if m.get("interrupted")]
        assert peer.turntaking.history == []
        assert ended or played >= ECHO_FOR_S - 0.5, played
        assert stats.checked > 100 and stats.cancelled > 0.5 * stats.checked
    finally:
        await server.shutdown()  # also when the expected failure happens: no leaked tasks


async def test_without_the_echo_guard_the_echo_stops_the_reply(pipeline: Pipeline) -> None:
    """Proves the test above can fail: the same echo, unguarded, barges in."""
    srv = Server(pipeline, ServerSettings(barge_in={"echo_guard": False}))
    client, peer, story, played = await echoed_reply(srv)
    try:
        cut = [m for m in client.messages if m.get("interrupted")]
        print(f"\nno echo guard: cut {bool(cut)} after {played:.1f} s; ducks {len(peer.turntaking.ducks)}; "
              f"barge-ins {peer.turntaking.history}")
        assert peer.echo is None
        assert peer.turntaking.ducks, "the echo did not even duck the reply"
        assert cut and cut[0]["turn"] == story
    finally:
        await client.close()
        await srv.shutdown()
