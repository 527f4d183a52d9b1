"""EchoGuard with real speech (hibari TTS) fed back as the mic, chunk by chunk as a peer does."""

from __future__ import annotations

import time

import numpy as np
import pytest

from avatarchat.audio.resample import resample
from avatarchat.server.echo import EchoGuard

RATE, FRAME = 48000, 960


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, np.ndarray]:
    """(the avatar's reply, a different user utterance), 48 kHz."""
    from avatarchat.handlers.tts.hibari import HibariTTS

    tts = HibariTTS(HibariTTS.Options())
    tts.load()
    reply = tts.synthesize("The dragon flew over the sea, looking for the island where it was born long ago.")[0]
    user = tts.synthesize("Wait, what is the capital of France?")[0]
    return resample(reply, 24000, RATE), resample(user, 24000, RATE)


def run(played: np.ndarray, mic: np.ndarray, seed: int = 0) -> tuple[np.ndarray, EchoGuard, list[float]]:
    """Play ``played`` frame by frame and feed ``mic`` (same length) through a guard, each
    chunk arriving 20-24 ms after its frame was sent; returns the output, the guard and
    the seconds each ``process`` took."""
    rng = np.random.default_rng(seed)
    guard, out, took = EchoGuard(), [], []
    for k in range(len(mic) // FRAME):
        frame = slice(k * FRAME, (k + 1) * FRAME)
        guard.played((np.clip(played[frame], -1, 1) * 32767).astype(np.int16), k * 0.02)
        t0 = time.perf_counter()
        out.append(guard.process(mic[frame], RATE, k * 0.02 + 0.02 + rng.uniform(0, 0.004)))
        took.append(time.perf_counter() - t0)
    return np.concatenate(out), guard, took


def echo_of(played: np.ndarray, gain_db: float, delay_s: float, noise_db: float = -70.0) -> np.ndarray:
    n = len(played) // FRAME * FRAME
    d = round(delay_s * RATE)
    mic = np.zeros(n, np.float32)
    mic[d:] = 10 ** (gain_db / 20) * played[: n - d]
    mic += np.random.default_rng(1).normal(0, 10 ** (noise_db / 20), n).astype(np.float32)
    return mic


def db(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(float(a @ a) / float(b @ b))


@pytest.mark.parametrize("gain_db", [-12.0, -20.0])
@pytest.mark.parametrize("delay_s", [0.04, 0.12, 0.25])
def test_echo_alone_is_removed(speech: tuple[np.ndarray, np.ndarray], gain_db: float, delay_s: float) -> None:
    reply, _ = speech
    mic = echo_of(reply, gain_db, delay_s)
    out, guard, took = run(reply, mic)
    settled = slice(RATE // 2, len(mic))  # after the first search has found the delay
    drop = db(mic[settled], out[settled])
    print(f"\n{gain_db} dB, {delay_s * 1000:.0f} ms: residual {drop:.1f} dB below the mic; delay "
          f"{-(guard.delay or 0) / RATE * 1000:.1f} ms after the anchor; {1000 * np.mean(took):.3f} ms per chunk "
          f"(max {1000 * np.max(took):.3f})")
    assert drop >= 15.0  # (its cost per chunk is printed, not asserted: a loaded machine doubles it)


def test_double_talk_keeps_the_users_voice(speech: tuple[np.ndarray, np.ndarray]) -> None:
    reply, user = speech
    mic = echo_of(reply, -12.0, 0.12)
    voice = np.zeros_like(mic)
    at = RATE  # the user starts 1 s into the reply
    voice[at:at + len(user)] = user[: len(mic) - at]
    out, _, took = run(reply, mic + voice)
    spoken = voice != 0
    kept = db(out[spoken], voice[spoken])
    print(f"\ndouble talk: the user's speech comes out at {kept:+.1f} dB; {1000 * np.mean(took):.3f} ms per chunk")
    assert abs(kept) < 3.0


def test_nothing_played_passes_the_mic_through(speech: tuple[np.ndarray, np.ndarray]) -> None:
    _, user = speech
    guard = EchoGuard()
    for k in range(len(user) // FRAME):
        guard.played(np.zeros(FRAME, np.int16), k * 0.02)
        chunk = user[k * FRAME:(k + 1) * FRAME]
        assert guard.process(chunk, RATE, k * 0.02 + 0.02) is chunk
    assert guard.stats.checked == 0
