"""A client that sends Opus DTX on its microphone, as browsers do when the answer asks
(server.mic_dtx): the engine still hears the silence in time, so turns end as they should
(server/micgaps.py; the wall clock's share is tested in virtual time in test_micgaps.py)."""

from __future__ import annotations

import asyncio
import time

from tests.peer_harness import (  # the fixtures are registered here by their import
    SAMPLES,
    Server,
    clients,
    pipeline,
    server,
    words,
)
from tests.rtc_client import RtcTestClient

__all__ = ["clients", "pipeline", "server"]


async def test_a_dtx_microphone_is_heard_in_time_and_its_question_answered(
        server: Server, clients: list[RtcTestClient]) -> None:
    client = RtcTestClient(dtx=True)
    clients.append(client)
    await client.connect(server.offer_fn)
    peer = server.peers[0]
    assert "usedtx=1" in client.answer_sdp
    await asyncio.sleep(1.5)  # silence: one packet in ten goes out
    client.speak(SAMPLES / "question.wav")
    final = await client.wait_message(lambda m: m["type"] == "transcript" and m.get("final"), 30)
    assert {"capital", "france"} <= set(words(final["text"])), final
    await client.wait_message(lambda m: m["type"] == "reply" and m.get("final"), 60)
    await asyncio.sleep(2.0)  # silence again, while the reply plays
    gaps = peer._mic_gaps
    assert gaps is not None and gaps.filled_from_timestamps > 0 and gaps.filled_from_clock > 0
    # The engine's stream of the mic keeps up with the wall clock: without the silence put
    # back it would hold one frame in ten of every silence.
    started = client.mic._t0
    assert started is not None
    heard = peer.session.context("vad").detector.received / 16000
    sent = time.monotonic() - started
    print(f"\nDTX mic: the engine heard {heard:.2f} s of the {sent:.2f} s sent; silence put back: "
          f"{gaps.filled_from_timestamps / 48000:.2f} s from timestamps, {gaps.filled_from_clock / 48000:.2f} s "
          f"from the clock")
    assert abs(heard - sent) < 0.5, (heard, sent)
    metrics = await client.wait_message(lambda m: m["type"] == "metrics", 60)
    assert metrics["vad_hangover_ms"] < 1500, metrics  # ~1000 ms at most when nothing decides sooner
