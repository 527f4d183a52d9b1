"""The face rows a page draws the avatar from (server/face.py), in virtual time.

A real portrait handler making poses (``avatar_output="params"``), the fake LLM and voice,
the real ``Playout`` (its audio handed out every 20 ms by a task standing in for the audio
track) and a ``FaceSender`` on a ``FakeClock``: what the page would receive, row by row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from avatarchat.engine.conversation import Conversation
from avatarchat.handlers.avatar.portrait import POSE_NAMES, PortraitHandler, PortraitOptions
from avatarchat.server.face import LEAD_S, TICK_S, FaceSender
from avatarchat.server.tracks import FRAME_S, MediaClock, Playout
from avatarchat.testing import FakeClock, FakeLLM, FakeTTS, pipeline_of

FPS = 25
JAW = POSE_NAMES.index("jaw")
WALL = 1_700_000_000.0


@pytest.fixture(scope="module")
def portrait() -> PortraitHandler:
    handler = PortraitHandler(PortraitOptions(fps=FPS))
    handler.load()
    return handler


@dataclass
class Page:
    """What a page keeps: the latest row per frame, and how often each frame was sent."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[int, list[float]] = field(default_factory=dict)
    sends: dict[int, int] = field(default_factory=dict)

    def receive(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "face":
            for i, row in enumerate(message["rows"]):
                k = message["k0"] + i
                self.rows[k] = row
                self.sends[k] = self.sends.get(k, 0) + 1


@dataclass
class Rig:
    clock: FakeClock
    media: MediaClock
    playout: Playout
    conversation: Conversation
    sender: FaceSender
    page: Page


@pytest.fixture
async def rig(portrait: PortraitHandler) -> AsyncIterator[Rig]:
    clock = FakeClock()
    media = MediaClock(clock)
    playout = Playout(media)
    pipeline = pipeline_of([FakeLLM(("Hello there, how are you today?",), first_token_s=0.1, token_s=0.05),
                            FakeTTS(), portrait])
    conversation = Conversation(pipeline, playout, session_id="face", clock=clock, avatar_output="params")
    await conversation.start()
    page = Page()
    sender = FaceSender(conversation, playout, media, FPS, page.receive, wall=lambda: WALL + clock.elapsed)

    async def audio_track() -> None:  # hands out the reply audio as aiortc's track would
        n = 0
        while True:
            await media.sleep_until(n * FRAME_S)
            playout.audio_frame(n)
            n += 1

    tasks = [asyncio.create_task(sender.run()), asyncio.create_task(audio_track())]
    try:
        yield Rig(clock, media, playout, conversation, sender, page)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await conversation.close()


async def test_the_clock_comes_first_then_idle_rows_ahead_each_sent_once(rig: Rig) -> None:
    await rig.clock.advance(2.0)
    first = rig.page.messages[0]
    assert first == {"type": "clock", "media_zero": pytest.approx(WALL, abs=1e-6), "fps": FPS,
                     "names": list(POSE_NAMES)}
    assert all(m["type"] == "face" for m in rig.page.messages[1:])
    # Every frame from 0 to the lead past now, once: an idle face that did not change is
    # not sent again.
    ks = sorted(rig.page.rows)
    assert ks == list(range(0, ks[-1] + 1))
    # The last tick was within TICK_S of now, and looked LEAD_S ahead.
    assert int((2.0 - TICK_S + LEAD_S) * FPS) <= ks[-1] <= int((2.0 + LEAD_S) * FPS)
    assert set(rig.page.sends.values()) == {1}
    assert all(len(row) == len(POSE_NAMES) for row in rig.page.rows.values())
    assert max(abs(row[JAW]) for row in rig.page.rows.values()) < 0.05  # idle: mouth shut


async def test_a_reply_opens_the_mouth_on_its_own_frames_and_a_cut_closes_it_again(rig: Rig) -> None:
    await rig.clock.advance(1.0)
    rig.conversation.say("Hi!")
    await rig.clock.advance(1.5)
    start = rig.playout.pose_ahead  # the reply is on the schedule now
    speaking = [k for k, row in rig.page.rows.items() if row[JAW] > 0.15]
    assert speaking, "no row of the reply opened the mouth"
    assert min(speaking) / FPS > 1.0  # nothing before the question
    # The rows sent are the playout's poses for those frames.
    now_k = int(rig.media.now() * FPS)
    for k in range(now_k, now_k + 3):
        expected = start(k / FPS)
        assert expected is not None
        assert rig.page.rows[k] == pytest.approx(expected, abs=1e-3)
    # Cut now: frames already sent as speaking are sent again, closing the mouth from here.
    cut_at = rig.media.now()
    ahead = [k for k in rig.page.rows if k > cut_at * FPS and rig.page.rows[k][JAW] > 0.15]
    assert ahead, "the lead sent no speaking row past now"
    rig.conversation.interrupt()
    await rig.clock.advance(1.0)
    assert any(rig.page.sends[k] > 1 for k in ahead)
    closed_from = int((cut_at + 0.25) * FPS) + 1  # CLOSE_S (0.18 s) after the cut
    assert all(rig.page.rows[k][JAW] < 0.05 for k in rig.page.rows if k >= closed_from)


async def test_the_voice_starts_at_media_time_0_even_when_the_face_took_the_clock_first() -> None:
    # A page drawing the avatar maps the first RTP timestamp it plays to media time 0.
    from avatarchat.server.tracks import AUDIO_FRAME, MAX_LAG_S, AvatarAudioTrack

    clock = FakeClock()
    media = MediaClock(clock)
    media.start()  # the face sender, at the data channel's opening
    await clock.advance(1.0)  # ICE and DTLS took a second
    track = AvatarAudioTrack(media, Playout(media))
    try:
        first = await track.recv()
        second = await track.recv()
    finally:
        track.stop()
    assert first.pts == 0
    assert second.pts == round((1.0 - MAX_LAG_S) / FRAME_S) * AUDIO_FRAME  # then it catches up
