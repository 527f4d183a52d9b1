"""Silero VAD handler on real speech (hibari TTS) with known silences, and the resampler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from avatarchat.audio.resample import Resampler, resample
from avatarchat.engine.events import (
    NO_TURN,
    Event,
    SpeechEnded,
    SpeechOngoing,
    SpeechPaused,
    SpeechSoFar,
    SpeechStarted,
    TimingMark,
    TurnCancelled,
    UserAudio,
)
from avatarchat.engine.handler import SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.vad.silero import SileroOptions, SileroVADHandler

RATE = 16_000
TOLERANCE_S = 0.1

PHRASE_A = "Hello there, how are you doing today?"
PHRASE_B = "Tell me something about the weather."


@pytest.fixture(scope="module")
def phrases() -> dict[str, np.ndarray]:
    from hibari import Hibari

    tts = Hibari()
    return {text: resample(tts(text), 24_000, RATE) for text in (PHRASE_A, PHRASE_B)}


def voiced_span(x: np.ndarray, rate: int = RATE) -> tuple[float, float]:
    """Start and end (s) of the audible part: 10 ms frames within 40 dB of the loudest."""
    hop = rate // 100
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.nonzero(rms > rms.max() * 0.01)[0]
    return loud[0] * hop / rate, (loud[-1] + 1) * hop / rate


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def stream_clock(n_samples: int, chunk: int, rate: int) -> Iterator[float]:
    """Arrival times of each chunk as if captured live from t=0: its last sample's time."""
    for start in range(0, n_samples, chunk):
        yield min(start + chunk, n_samples) / rate


async def run_vad(
    audio: np.ndarray, options: SileroOptions | None = None, rate: int = RATE, chunk_s: float = 0.02
) -> list[Event]:
    """Push ``audio`` through a real Session in chunks; return everything that came out.

    The handler's clock replays the stream in "real time", so event times are seconds
    from the start of ``audio`` and can be compared with where the speech was put.
    """
    chunk = int(rate * chunk_s)
    arrivals = stream_clock(len(audio), chunk, rate)
    vad = SileroVADHandler(options or SileroOptions(), clock=lambda: next(arrivals))
    vad.load()
    out: list[Event] = []
    async with Session([vad], SessionInfo("t")) as session:
        for start in range(0, len(audio), chunk):
            session.push(UserAudio(NO_TURN, audio[start : start + chunk], rate))
        session.push(TimingMark(NO_TURN, "eof"))
        async for event in session.events():
            if isinstance(event, TimingMark) and event.name == "eof":
                break
            out.append(event)
    return out


def of_type(events: list[Event], kind: type[Event]) -> list:
    return [e for e in events if isinstance(e, kind)]


@pytest.mark.slow
async def test_two_phrases_give_two_turns_with_accurate_boundaries(phrases: dict[str, np.ndarray]) -> None:
    a, b = phrases[PHRASE_A], phrases[PHRASE_B]
    audio = np.concatenate([silence(1.0), a, silence(1.2), b, silence(1.0)])
    b_at = 1.0 + len(a) / RATE + 1.2
    truth = [tuple(1.0 + t for t in voiced_span(a)), tuple(b_at + t for t in voiced_span(b))]

    t0 = time.perf_counter()
    events = await run_vad(audio)
    per_chunk_ms = (time.perf_counter() - t0) / (len(audio) / (RATE * 0.02)) * 1000
    print(f"VAD: {per_chunk_ms:.3f} ms per 20 ms chunk (session included)")

    started, ended = of_type(events, SpeechStarted), of_type(events, SpeechEnded)
    assert [e.turn for e in started] == [1, 2] and [e.turn for e in ended] == [1, 2]
    for s, e, (on, off) in zip(started, ended, truth, strict=True):
        assert abs(s.at - on) < TOLERANCE_S, f"onset {s.at:.3f}s vs truth {on:.3f}s"
        assert abs(e.speech_end - off) < TOLERANCE_S, f"end {e.speech_end:.3f}s vs truth {off:.3f}s"
        # The decision comes one hangover (end_ms) after the speech ended.
        assert 0.45 < e.at - e.speech_end < 0.6
        # Utterance: pre-roll + speech + ~100 ms of trailing silence, at 16 kHz.
        expected = (e.speech_end - s.at) + 0.3 + 0.1
        assert abs(len(e.audio) / RATE - expected) < 0.05
        assert e.audio.dtype == np.float32
    marks = [(m.turn, m.name) for m in of_type(events, TimingMark)]
    assert marks == [(t, n) for t in (1, 2) for n in ("speech_start", "speech_end", "vad_end")]
    mark = next(m for m in of_type(events, TimingMark) if m.name == "speech_end")
    assert mark.at == ended[0].speech_end
    # Each end was announced by a pause (pause_ms after the speech) carrying the same speech
    # end, so the ASR could transcribe early; the pause came before the end decision.
    paused = of_type(events, SpeechPaused)
    assert [p.turn for p in paused] == [1, 2]
    for p, e in zip(paused, ended, strict=True):
        assert p.speech_end == e.speech_end and events.index(p) < events.index(e)
        assert abs(len(p.audio) - len(e.audio)) <= 512


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["silence", "noise"])
async def test_silence_and_noise_start_no_turn(kind: str) -> None:
    rng = np.random.default_rng(1)
    audio = silence(3.0) if kind == "silence" else rng.normal(0, 0.02, 3 * RATE).astype(np.float32)
    events = await run_vad(audio)
    assert events == []


@pytest.mark.slow
async def test_pause_shorter_than_hangover_does_not_split(phrases: dict[str, np.ndarray]) -> None:
    a, b = phrases[PHRASE_A], phrases[PHRASE_B]
    # The phrases carry ~0.3 s of their own silence at each end: the gap is ~0.35 s < 500 ms.
    audio = np.concatenate([silence(0.5), a[: int(RATE * voiced_span(a)[1])], b, silence(1.0)])
    events = await run_vad(audio)
    assert len(of_type(events, SpeechStarted)) == 1
    (ended,) = of_type(events, SpeechEnded)
    assert len(ended.audio) / RATE > (len(a) + len(b)) / RATE - 1.0
    # The gap was long enough for an early transcript, whose speech end the end then outdates.
    assert all(p.speech_end < ended.speech_end for p in of_type(events, SpeechPaused)[:-1])


@pytest.mark.slow
async def test_max_utterance_forces_an_end(phrases: dict[str, np.ndarray]) -> None:
    audio = np.concatenate([silence(0.5), phrases[PHRASE_A], silence(1.0)])
    events = await run_vad(audio, SileroOptions(max_utterance_s=1.0))
    started, ended = of_type(events, SpeechStarted), of_type(events, SpeechEnded)
    # The forced end comes after 1 s of speech (to one 32 ms window); the rest is a new turn.
    assert ended[0].turn == 1
    assert abs(ended[0].speech_end - started[0].at - 1.0) < 0.04
    assert ended[0].at - started[0].at < 1.1
    assert len(started) >= 2


@pytest.mark.slow
async def test_blip_shorter_than_min_utterance_is_dropped(phrases: dict[str, np.ndarray]) -> None:
    audio = np.concatenate([silence(0.5), phrases[PHRASE_B], silence(1.0)])
    events = await run_vad(audio, SileroOptions(min_utterance_ms=5000))
    assert [type(e) for e in events if not isinstance(e, TimingMark | SpeechOngoing)] == [SpeechStarted, TurnCancelled]
    assert events[-1] == TurnCancelled(1, reason="too short")


@pytest.mark.slow
async def test_speech_ongoing_marks_voiced_speech_after_the_start(phrases: dict[str, np.ndarray]) -> None:
    audio = np.concatenate([silence(0.5), phrases[PHRASE_A], silence(1.0)])
    events = await run_vad(audio)
    started, ended = of_type(events, SpeechStarted)[0], of_type(events, SpeechEnded)[0]
    ongoing = of_type(events, SpeechOngoing)
    assert len(ongoing) >= 5 and all(e.turn == started.turn for e in ongoing)
    times = [e.voiced_until for e in ongoing]
    assert times == sorted(times) and started.at < times[0] <= ended.speech_end + 0.04
    # One about every 64 ms of voice: the first ones come without a gap.
    assert times[1] - times[0] < 0.1


@pytest.mark.slow
async def test_speech_so_far_grows_while_the_user_speaks(phrases: dict[str, np.ndarray]) -> None:
    speech = phrases[PHRASE_A]
    audio = np.concatenate([silence(0.5), speech, silence(1.0)])
    events = await run_vad(audio, SileroOptions(partial_ms=500))
    ended = of_type(events, SpeechEnded)[0]
    so_far = of_type(events, SpeechSoFar)
    # One per 500 ms of speech (pauses inside it do not count), each the start of the end.
    assert 2 <= len(so_far) <= len(speech) / RATE / 0.5
    sizes = [len(e.audio) for e in so_far]
    assert sizes == sorted(sizes) and sizes[-1] < len(ended.audio)
    for e in so_far:
        assert e.turn == ended.turn and e.voiced_until < ended.speech_end
        assert np.array_equal(e.audio, ended.audio[: len(e.audio)])
    # Each comes right behind a SpeechOngoing of the same instant, so barge-in misses none.
    for e in so_far:
        before = events[next(i for i, x in enumerate(events) if x is e) - 1]
        assert isinstance(before, SpeechOngoing) and before.voiced_until == e.voiced_until
    assert not of_type(await run_vad(audio), SpeechSoFar)  # off by default


@pytest.mark.slow
async def test_cancelled_turn_is_followed_to_its_end_silently(phrases: dict[str, np.ndarray]) -> None:
    audio = np.concatenate([silence(0.5), phrases[PHRASE_A], silence(1.0)])
    vad = SileroVADHandler(SileroOptions())
    vad.load()
    chunk = RATE // 50
    seen: list[Event] = []
    async with Session([vad], SessionInfo("t")) as session:
        first_half = int(RATE * 1.5)
        for start in range(0, first_half, chunk):
            session.push(UserAudio(NO_TURN, audio[start : start + chunk], RATE))
        events = session.events()
        started = await asyncio.wait_for(anext(events), 5)
        assert isinstance(started, SpeechStarted)
        assert session.cancel_turn(started.turn)
        for start in range(first_half, len(audio), chunk):
            session.push(UserAudio(NO_TURN, audio[start : start + chunk], RATE))
        session.push(TimingMark(NO_TURN, "eof"))
        async for event in events:
            if isinstance(event, TimingMark) and event.name == "eof":
                break
            seen.append(event)
        await events.aclose()
    # Only the cancellation: no SpeechEnded, and the rest of the speech is no new turn.
    assert seen == [TurnCancelled(started.turn, reason="interrupted")]


async def test_vad_options_reject_unknown_keys() -> None:
    with pytest.raises(ValueError):
        SileroOptions.model_validate({"treshold": 0.4})


# --- the resampler -------------------------------------------------------------------


@pytest.mark.parametrize("src", [8_000, 22_050, 24_000, 44_100, 48_000])
def test_resample_keeps_a_tone_and_streams_like_whole(src: int) -> None:
    t = np.arange(src) / src
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = resample(x, src, RATE)
    assert len(whole) == RATE
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    assert np.abs(whole - ref)[100:-100].max() < 1e-3
    r, parts, pos = Resampler(src, RATE), [], 0
    for size in np.random.default_rng(0).integers(1, 900, 10_000):
        parts.append(r.process(x[pos : pos + size]))
        pos += size
        if pos >= len(x):
            break
    parts.append(r.flush())
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


def test_resample_filters_what_the_new_rate_cannot_hold() -> None:
    t = np.arange(48_000) / 48_000
    tone = (0.5 * np.sin(2 * np.pi * 11_000 * t)).astype(np.float32)  # above 8 kHz Nyquist
    assert np.abs(resample(tone, 48_000, RATE))[100:-100].max() < 0.01


def test_quiet_windows_skip_the_model_until_speech_and_the_phrase_is_still_found(
        phrases: dict[str, np.ndarray]) -> None:
    """An idle session (a muted or noise-suppressed mic) costs no model call per window; the
    real model still hears the phrase that follows, and runs through the hangover."""
    from avatarchat.handlers.vad.silero import QUIET_PEAK, _Detector

    handler = SileroVADHandler(SileroOptions())
    handler.load()
    model = handler._new_vad()
    calls = 0

    class Counting:  # the real model, counted
        window_size_samples = model.window_size_samples

        def process(self, window: object) -> float:
            nonlocal calls
            calls += 1
            return float(model.process(window))

    detector = _Detector(Counting(), handler.options)
    hiss = (np.random.default_rng(1).standard_normal(RATE) * QUIET_PEAK / 8).astype(np.float32)
    assert detector.feed(silence(1.0)) == [] and detector.feed(hiss) == []
    assert calls == 0
    decisions = detector.feed(np.concatenate([phrases[PHRASE_A], silence(2.0)]))
    kinds = [type(d).__name__ for d in decisions]
    assert "_Start" in kinds and "_End" in kinds, kinds
    assert calls > len(phrases[PHRASE_A]) // Counting.window_size_samples // 2
