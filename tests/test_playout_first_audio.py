"""A reply's first sound where the page draws the avatar (server/tracks.py, server/face.py),
in virtual time: nothing rendered on the server has to be ready when the voice starts, so
the playout starts it in the frame due now (or the next, if that one has gone), and the
face sender passes the reply's first poses on at once instead of at its next tick (the rows
must reach the page before the voice they go with).

The rig of tests/test_face.py: a real portrait handler making poses, the fake LLM and
voice, the real ``Playout`` and ``FaceSender`` on a ``FakeClock``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from avatarchat.engine.events import ReplyAudio
from avatarchat.server.face import LEAD_S
from avatarchat.server.tracks import FRAME_S, START_MARGIN_S, MediaClock, Playout
from avatarchat.testing import FakeClock
from tests.test_face import FPS, Rig, portrait, rig  # noqa: F401  (fixtures)


def _chunk(turn: int = 1) -> ReplyAudio:
    return ReplyAudio(turn, np.full(4800, 0.1, np.float32), 48000, 0.0, "Hi.")


def _playout(client_draws: bool) -> tuple[FakeClock, Playout]:
    """A playout on a started media clock, for a page that draws the avatar or not."""
    clock = FakeClock()
    media = MediaClock(clock)
    playout = Playout(media)
    if client_draws:
        playout.client_draws(lambda t: None)
    media.start()
    return clock, playout


@pytest.mark.parametrize("client_draws", [False, True])
async def test_the_first_sample_waits_for_a_rendered_frame_only_where_the_server_renders(client_draws: bool) -> None:
    clock, playout = _playout(client_draws)
    await clock.advance(0.203)  # 3 ms into audio frame 10
    for n in range(11):  # frames 0..10 were handed out on time
        playout.audio_frame(n)
    playout.add_audio(_chunk())
    margin = 0.0 if client_draws else START_MARGIN_S
    expected = math.ceil((0.203 + margin) / FRAME_S)
    assert playout.sounding(expected) and not playout.sounding(expected - 1)
    # Server video: the frame due 25-45 ms later; client drawing: the next frame (frame 11).
    assert expected == (12 if not client_draws else 11)
    assert np.any(playout.audio_frame(11) != 0) == client_draws


@pytest.mark.parametrize("client_draws", [False, True])
async def test_a_voice_idle_in_dtx_starts_the_reply_in_the_frame_due_now(client_draws: bool) -> None:
    clock, playout = _playout(client_draws)
    for n in range(3):  # then the voice went quiet (DTX): frames 3..9 were never handed out
        playout.audio_frame(n)
    await clock.advance(0.203)  # 3 ms into audio frame 10
    playout.add_audio(_chunk())
    # Client drawing: frame 10, due 3 ms ago and not sent, carries the first sound (it goes
    # at once); server video: the frame after the margin for the first rendered frame.
    first = 10 if client_draws else math.ceil((0.203 + START_MARGIN_S) / FRAME_S)
    assert playout.sounding(first) and not playout.sounding(first - 1)
    assert np.any(playout.audio_frame(first) != 0)


async def test_a_replys_first_poses_reach_the_page_before_the_next_tick(rig: Rig) -> None:  # noqa: F811
    await rig.clock.advance(1.04)  # halfway between two ticks (every 80 ms from 0)
    rig.conversation.say("Hi!")
    # Step 1 ms at a time until the reply's poses are on the playout's schedule.
    for _ in range(3000):
        await rig.clock.advance(0.001)
        now = rig.media.now()
        due = [k for k in range(math.ceil(now * FPS), math.floor((now + LEAD_S - 0.04) * FPS) + 1)
               if rig.playout.pose_ahead(k / FPS) is not None]
        if due:
            break
    else:
        pytest.fail("the reply never reached the playout")
    # No tick has come since (they are 80 ms apart): the rows sent are already the reply's.
    for k in due:
        assert rig.page.rows[k] == pytest.approx(rig.playout.pose_ahead(k / FPS), abs=1e-3)


async def test_a_burst_replys_rows_from_before_now_reach_the_page(rig: Rig) -> None:  # noqa: F811
    rig.playout.burst_s = 0.1  # the reply's first 100 ms go out at once: media time moves on
    await rig.clock.advance(1.04)
    rig.conversation.say("Hi!")
    for _ in range(3000):
        await rig.clock.advance(0.001)
        start = rig.playout.head_start_frame()
        if start is not None and rig.playout.pose_ahead(start * FRAME_S) is not None:
            break
    else:
        pytest.fail("the reply never reached the playout")
    await rig.clock.advance(0.0)
    now = rig.media.now()
    assert now - start * FRAME_S >= 0.1 - 1e-9  # the reply starts in media time's past
    # Rows of media time already past when the reply came are the reply's, not the idle face.
    past = range(math.ceil(start * FRAME_S * FPS), math.floor(now * FPS))
    assert len(past) >= 2
    for k in past:
        assert rig.page.rows[k] == pytest.approx(rig.playout.pose_ahead(k / FPS), abs=1e-3)
