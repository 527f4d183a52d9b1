"""A live microphone for real-model session tests: 16 kHz audio pushed in 20 ms chunks, each
at its real time, as a browser's would arrive."""

from __future__ import annotations

import asyncio

import numpy as np

from avatarchat.engine.events import NO_TURN, UserAudio
from avatarchat.engine.session import Session

RATE = 16_000
CHUNK = 320  # 20 ms


async def feed_live(session: Session, signal: np.ndarray, *, then_silence: bool = False) -> None:
    """Push ``signal`` in real time; with ``then_silence`` go on sending silence until
    cancelled (a mic stays open after the user stops)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k, i in enumerate(range(0, len(signal), CHUNK)):
        await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))
        session.push(UserAudio(NO_TURN, signal[i:i + CHUNK], RATE))
    while then_silence:
        await asyncio.sleep(0.02)
        session.push(UserAudio(NO_TURN, np.zeros(CHUNK, np.float32), RATE))
