"""Voice barge-in and the avatar's own echo, over real loopback WebRTC with the real
embedded pipeline (the aiortc client of tests/rtc_client.py, as in tests/test_peer.py).
The client and the server share this process's monotonic clock, so their times compare.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from avatarchat.audio.io import load_audio
from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.peer import PeerSession
from avatarchat.server.settings import ServerSettings
from tests.peer_harness import (  # the fixtures are registered here by their import
    SAMPLES,
    Server,
    clients,
    pipeline,
    reply_done,
    server,
    words,
)
from tests.rtc_client import RtcTestClient

pytestmark = pytest.mark.slow
__all__ = ["clients", "pipeline", "server"]


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

    cut = await client.wait_message(lambda m: m["type"] == "reply" and m.get("interrupted"), 30)
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
    # Decided by speech (min_speech_ms), and the audio stops soon after. How soon is a
    # performance figure (the 200 ms promise: `avatarchat bench e2e --gap 4`); on a CI
    # machine at load 10 the VAD's word came 0.62 s after the onset, so only the order and
    # a bound that a stalled cut would break are checked here.
    assert barge.at - vad_onset < 2.0
    assert stopped - barge.at < 1.0, stopped - barge.at
    # Nothing of the old turn after the cut: no more text, no metrics.
    late = [m for m in client.messages if m.get("turn") == story and m["_at"] > confirm]
    assert late == [], late
    assert not client.of_type("metrics", story)
    # The server's counters do count the cut, with the latency the user had waited for it.
    cuts = [value for kind, value in server.events if kind == "cut"]
    assert [reason for reason, _ in cuts] == ["barge-in"] and "first_audio_sent_ms" in cuts[0][1]
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
    cut = await client.wait_message(lambda m: m.get("interrupted") and m["turn"] == typed["turn"], 40)
    said = await client.wait_message(lambda m: m["type"] == "transcript" and m["final"] and m["turn"] > typed["turn"], 30)
    assert words(said["text"]) == ["and", "what", "is", "it", "famous", "for"]
    peer = server.peers[0]
    barge = peer.turntaking.history[0]
    assert barge.cut == (typed["turn"],) and barge.turn == said["turn"] and barge.why == "speech"
    # Decided by the speech, before its final transcript could have superseded the reply.
    # ~0.45 s on an idle machine; 1.14 s once under stress-ng (CI-like run): the bound is
    # wall-clock, so it only catches a decision that waited for the transcript (~2 s).
    assert cut["_at"] < said["_at"] and cut["_at"] - onset < 1.6, cut["_at"] - onset
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
    cut = await client.wait_message(lambda m: m["type"] == "reply" and m.get("interrupted"), 30)
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
    server = Server(pipeline, ServerSettings(echo_guard=True))
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
    srv = Server(pipeline, ServerSettings(echo_guard=False))
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
