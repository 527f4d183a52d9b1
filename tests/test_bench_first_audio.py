"""bench/first_audio.py: the pacing of scripted replies and the playback it scores."""

from __future__ import annotations

import numpy as np
import pytest

from avatarchat.bench.first_audio import heard, paced
from avatarchat.engine.events import ReplyAudio


def test_paced_replies_come_in_word_sized_tokens_at_the_rate() -> None:
    text = "Sure! The moon is 384,000 km away."
    stream = paced("x", text, rate=20.0)
    assert stream.text == text
    assert [d for _, d in stream.deltas][:4] == ["Sure", "!", " The", " moon"]
    assert [t for t, _ in stream.deltas][:3] == pytest.approx([0.0, 0.05, 0.1])


def _chunk(seconds: float, offset: float) -> ReplyAudio:
    return ReplyAudio(1, np.ones(int(seconds * 100), np.float32), 100, offset, text="w")


def test_playback_adds_silence_only_for_a_chunk_that_came_after_the_audio_ran_out() -> None:
    # Played from the first chunk's arrival (0.1 s), back to back: the second is in time
    # (0.3 s < 0.6 s), the third comes 0.2 s after the audio before it ran out (1.0 s).
    chunks = [(0.1, _chunk(0.5, 0.0)), (0.3, _chunk(0.4, 0.5)), (1.2, _chunk(0.3, 0.9))]
    audio, stalls = heard(chunks, 100)
    assert stalls == pytest.approx([0.0, 0.2])
    assert len(audio) == 50 + 40 + 20 + 30
    assert not audio[90:110].any() and audio[110:].all()
