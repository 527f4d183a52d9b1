"""The TTS engines with their real models, and the streaming stage inside a real Session."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from avatarchat.engine.events import (
    Event,
    PhonemeTiming,
    ReplyAudio,
    ReplyEnd,
    ReplyText,
    TimingMark,
    TurnCancelled,
)
from avatarchat.engine.handler import HandlerLoadError, SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.tts.base import StreamingTTS, Synthesis, trim_leading_silence, trim_trailing_silence
from avatarchat.handlers.tts.espeak import EspeakOptions, EspeakTTS
from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

SENTENCE = "Well, I think that is a really good idea. Let us try it."
_PAUSE = " .,;:!?—…\"()“”"


@pytest.fixture(scope="module")
def hibari() -> HibariTTS:
    tts = HibariTTS(HibariOptions())
    tts.load()
    return tts


@pytest.fixture(scope="module")
def espeak() -> EspeakTTS:
    tts = EspeakTTS(EspeakOptions())
    tts.load()
    return tts


def check_speech(samples: np.ndarray, phonemes: tuple[PhonemeTiming, ...], rate: int) -> None:
    """Nonempty audio whose phoneme timings are ordered, cover it, and hold its energy."""
    assert samples.dtype == np.float32 and samples.ndim == 1
    duration = len(samples) / rate
    assert duration > 1.0 and np.abs(samples).max() > 0.05
    assert len(phonemes) > 10
    for a, b in zip(phonemes, phonemes[1:]):
        assert a.start <= a.end <= b.start + 1e-9
    assert 0 <= phonemes[0].start < 0.2
    assert abs(phonemes[-1].end - duration) < 0.05
    # Speech energy lies in spoken phonemes (widened by 50 ms for onsets and releases).
    energy = samples.astype(np.float64) ** 2
    spoken = np.zeros(len(samples), bool)
    for p in phonemes:
        if p.phoneme.strip(_PAUSE):
            spoken[max(0, int((p.start - 0.05) * rate)) : int((p.end + 0.05) * rate)] = True
    assert energy[spoken].sum() / energy.sum() > 0.95
    assert energy[spoken].mean() > 10 * energy[~spoken].mean()


@pytest.mark.slow
def test_hibari_speaks_with_phoneme_timings(hibari: HibariTTS) -> None:
    samples, phonemes = hibari.synthesize(SENTENCE)
    assert hibari.sample_rate == 24000
    check_speech(samples, phonemes, 24000)
    assert {"ð", "ɪ", "."} <= {p.phoneme for p in phonemes}
    # Durations come in whole 25 ms units.
    units = np.array([p.end - p.start for p in phonemes]) / 0.025
    assert np.allclose(units, np.round(units), atol=1e-6)


@pytest.mark.slow
def test_hibari_is_reproducible_and_speed_shortens(hibari: HibariTTS) -> None:
    a, _ = hibari.synthesize("Same words twice.")
    b, _ = hibari.synthesize("Same words twice.")
    assert np.array_equal(a, b)
    fast = HibariTTS(HibariOptions(speed=1.6))
    fast.load()
    c, phonemes = fast.synthesize("Same words twice.")
    assert len(c) < 0.8 * len(a)
    assert abs(phonemes[-1].end - len(c) / 24000) < 0.05


def _silence_s(samples: np.ndarray, rate: int) -> tuple[float, float, float]:
    """(before the first sound, the longest gap between sounds, after the last sound)."""
    window = rate // 100
    rms = np.sqrt(np.mean(samples[: len(samples) // window * window].reshape(-1, window) ** 2, axis=1))
    loud = np.flatnonzero(rms >= 0.002)
    gap = int(np.max(np.diff(loud)) - 1) if len(loud) > 1 else 0
    return loud[0] * 0.01, gap * 0.01, (len(rms) - 1 - int(loud[-1])) * 0.01


@pytest.mark.slow
@pytest.mark.parametrize(("first", "second"), [
    ("Well,", "I think so."),
    ("I met Dr. Smith yesterday,", "at the clinic."),
    ("The distance between Earth", "and the Moon varies a lot."),  # cut with no punctuation
    ("Here is a simple recipe", "for pasta with tomatoes."),
])
def test_the_seam_after_a_clause_cut_inside_a_sentence_is_a_short_pause(hibari: HibariTTS, first: str,
                                                                         second: str) -> None:
    # Said alone, a clause ends like an utterance (0.1-0.35 s of silence: a seam of
    # 0.3-0.5 s with the next clause's onset); the whole sentence pauses 0-0.2 s there.
    a, pa = trim_trailing_silence(*hibari.synthesize(first), 24000)
    b, _ = hibari.synthesize(second)
    whole, _ = hibari.synthesize(f"{first} {second}")
    seam = _silence_s(a, 24000)[2] + _silence_s(b, 24000)[0]
    assert seam <= _silence_s(whole, 24000)[1] + 0.15
    assert pa[-1].end <= len(a) / 24000 + 1e-9


@pytest.mark.slow
async def test_the_stage_trims_the_pause_only_inside_a_sentence(hibari: HibariTTS) -> None:
    reply = "Well, I think so. Thanks."
    async with Session([hibari], SessionInfo("t")) as session:
        turn = session.new_turn()
        for d in deltas(reply):
            session.push(ReplyText(turn, d))
        session.push(ReplyEnd(turn, reply))
        audio = [e for e in await collect(session, turn) if isinstance(e, ReplyAudio)]
    assert [a.text for a in audio] == ["Well,", "I think so.", "Thanks."]
    assert _silence_s(audio[0].samples, 24000)[2] <= 0.06  # a comma: the sentence goes on
    assert _silence_s(audio[1].samples, 24000)[2] >= 0.2  # a full stop keeps its pause
    assert audio[1].offset == pytest.approx(audio[0].duration)


def test_hibari_options_forbid_downloading_voices() -> None:
    with pytest.raises(ValueError):
        HibariOptions(voice="emma")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HibariOptions(speed=3.0)


@pytest.mark.slow
def test_espeak_speaks_with_exact_phoneme_events(espeak: EspeakTTS) -> None:
    samples, phonemes = espeak.synthesize(SENTENCE)
    assert espeak.sample_rate == 22050
    check_speech(samples, phonemes, 22050)
    assert "ð" in {p.phoneme for p in phonemes}  # IPA names


@pytest.mark.slow
def test_espeak_german_voice() -> None:
    tts = EspeakTTS(EspeakOptions(voice="de"))
    tts.load()
    samples, phonemes = tts.synthesize("Guten Tag, wie geht es Ihnen heute? Mir geht es gut.")
    check_speech(samples, phonemes, 22050)
    assert "ɡ" in {p.phoneme for p in phonemes}


@pytest.mark.slow
def test_espeak_unknown_voice_is_a_clear_load_error() -> None:
    with pytest.raises(HandlerLoadError, match="no voice 'xx-nope'.*en-us"):
        EspeakTTS(EspeakOptions(voice="xx-nope")).load()


@pytest.mark.slow
def test_espeak_is_safe_from_many_threads(espeak: EspeakTTS) -> None:
    # espeak-ng is not bit-reproducible (its voicing carries state across calls), so
    # compare what interleaved calls would break: the phonemes, the length, the timings.
    samples, phonemes = espeak.synthesize("Thread safety.")
    expected = [p.phoneme for p in phonemes]
    results: list[Synthesis] = []

    def work() -> None:
        results.append(espeak.synthesize("Thread safety."))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    for audio, timings in results:
        assert [p.phoneme for p in timings] == expected
        assert abs(len(audio) - len(samples)) < 0.02 * len(samples)
        assert timings[-1].end == pytest.approx(len(audio) / 22050)


# --- the streaming stage in a session ---------------------------------------------------

REPLY = "Hello there! I am glad you asked, because this is a fun one. **Let us** try it 🎉. #AI"


def deltas(text: str, size: int = 4) -> Iterator[str]:
    return (text[i : i + size] for i in range(0, len(text), size))


async def collect(session: Session, turn: int) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(60):
        async for event in session.events():
            if event.turn == turn:
                out.append(event)
            if isinstance(event, ReplyEnd | TurnCancelled) and event.turn == turn:
                return out
    return out


def _onset_s(samples: np.ndarray, rate: int, level: float = 0.002) -> float:
    """Seconds before the first 10 ms window at or over ``level`` RMS."""
    w = rate // 100
    rms = np.sqrt(np.mean(samples[: len(samples) // w * w].reshape(-1, w) ** 2, axis=1))
    return float(np.flatnonzero(rms >= level)[0] * w / rate)


def test_trim_leading_silence_moves_the_timings_with_the_audio() -> None:
    rate = 16_000
    tone = 0.3 * np.sin(2 * np.pi * 200 * np.arange(rate // 2) / rate).astype(np.float32)
    samples = np.concatenate([np.zeros(int(0.08 * rate), np.float32), tone])
    phonemes = (PhonemeTiming(" ", 0.0, 0.05), PhonemeTiming("a", 0.08, 0.3), PhonemeTiming("b", 0.3, 0.58))
    trimmed, moved = trim_leading_silence(samples, phonemes, rate)
    assert len(samples) - len(trimmed) == int(0.07 * rate)  # 10 ms of the silence kept
    assert [round(p.start, 3) for p in moved] == [0.0, 0.01, 0.23] and moved[0].end == 0.0
    assert np.array_equal(trimmed[int(0.01 * rate):], tone)
    # Sound from the first sample, or no sound at all: nothing to cut.
    assert trim_leading_silence(tone, phonemes, rate)[0] is tone
    silent = np.zeros(rate, np.float32)
    assert trim_leading_silence(silent, phonemes, rate) == (silent, phonemes)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hibari", "espeak"])
async def test_stage_streams_clauses_through_a_session(engine: str, request: pytest.FixtureRequest) -> None:
    tts: StreamingTTS = request.getfixturevalue(engine)
    async with Session([tts], SessionInfo("t")) as session:
        turn = session.new_turn()
        for d in deltas(REPLY):
            session.push(ReplyText(turn, d))
        session.push(ReplyEnd(turn, REPLY))
        events = await collect(session, turn)

    # The reply text is forwarded to the client unchanged, delta by delta.
    assert "".join(e.text for e in events if isinstance(e, ReplyText)) == REPLY
    events = [e for e in events if not isinstance(e, ReplyText)]
    assert isinstance(events[0], TimingMark) and events[0].name == "tts_first_audio"
    audio = [e for e in events if isinstance(e, ReplyAudio)]
    # "Hello there!" opens the reply: the clause after it is cut early too (at its comma).
    assert [a.text for a in audio] == ["Hello there!", "I am glad you asked,", "because this is a fun one.",
                                       "Let us try it."]
    assert events[1:-1] == audio and events[-1] == ReplyEnd(turn, REPLY)
    offset = 0.0
    for a in audio:
        assert a.sample_rate == tts.sample_rate and a.phonemes
        assert a.offset == pytest.approx(offset)
        offset += a.duration
    assert [m for m in events if isinstance(m, TimingMark)] == [events[0]]
    # The first chunk starts with sound (its leading silence is what the user would wait
    # for); later ones keep theirs, the pause between clauses.
    first_10ms = audio[0].samples[: tts.sample_rate // 100]
    assert np.sqrt(np.mean(first_10ms**2)) < 0.05 and _onset_s(audio[0].samples, tts.sample_rate) <= 0.02


@pytest.mark.parametrize(("reply", "said"), [
    # Cut at the token cap mid-sentence: the half sentence is not said, and the text ends there.
    ("The moon is round. It shines at night, and the", "The moon is round."),
    ("The moon is round. It shines at night.", "The moon is round. It shines at night."),
    ("The moon is round and", "The moon is round and"),  # nothing said before it: all of it
    # A clause of the unfinished sentence waits for its end, so it is not said either.
    ("The moon is round. It shines at night, and the stars shine too, as you know, and the", "The moon is round."),
    ("The moon is round. It shines at night, and the stars shine too, as you know, and so on.",
     "The moon is round. It shines at night, and the stars shine too, as you know, and so on."),
    # No whole sentence yet: the first clause went out early, and the rest follows it.
    ("The Blast is a legendary creature from the folklore of the ancient Greeks, specifically the",
     "The Blast is a legendary creature from the folklore of the ancient Greeks, specifically the"),
    # ... less a bracket it was cut in, or a trailing colon.
    ("The Blast is a legendary creature from the folklore of the ancient Greeks, specifically Ares (Greek:",
     "The Blast is a legendary creature from the folklore of the ancient Greeks, specifically Ares"),
    ("The moon is round and has these phases:", "The moon is round and has these phases"),
    # An opener is not a whole sentence to stop at: before, this said "Sure!" and nothing more.
    ("Sure! The moon is round and it shines at night, and the",
     "Sure! The moon is round and it shines at night, and the"),
    ("Sure! The moon is round. It shines at night, and the", "Sure! The moon is round."),
])
async def test_a_reply_cut_at_the_token_cap_ends_where_the_voice_does(espeak: EspeakTTS, reply: str,
                                                                     said: str) -> None:
    async with Session([espeak], SessionInfo("t")) as session:
        turn = session.new_turn()
        for d in deltas(reply):
            session.push(ReplyText(turn, d))
        session.push(ReplyEnd(turn, reply, truncated=True))
        events = await collect(session, turn)
    spoken = " ".join(e.text for e in events if isinstance(e, ReplyAudio))
    assert spoken == said
    assert events[-1] == ReplyEnd(turn, said, truncated=True)


class _SlowTTS(StreamingTTS):
    """A stand-in engine: 0.2 s of tone per clause after a delay, to cancel mid-stream."""

    name = "slow-test"
    sample_rate = 16000

    def synthesize(self, text: str) -> Synthesis:
        threading.Event().wait(0.05)
        t = np.arange(3200) / self.sample_rate
        return np.sin(2 * np.pi * 220 * t).astype(np.float32), (PhonemeTiming("a", 0.0, 0.2),)

    def models(self) -> list[object]:
        return []


@pytest.mark.parametrize("make", ["hibari", "slow"])
async def test_cancel_turn_mid_stream_stops_its_audio(make: str, request: pytest.FixtureRequest) -> None:
    tts: StreamingTTS = request.getfixturevalue("hibari") if make == "hibari" else _SlowTTS(_SlowTTS.Options())
    text = " ".join(f"This is sentence number {i} of a long reply." for i in range(12))
    async with Session([tts], SessionInfo("t")) as session:
        turn = session.new_turn()
        for d in deltas(text):
            session.push(ReplyText(turn, d))
        session.push(ReplyEnd(turn, text))
        seen: list[Event] = []
        async with asyncio.timeout(30):
            async for event in session.events():
                seen.append(event)
                if isinstance(event, ReplyAudio) and len([e for e in seen if isinstance(e, ReplyAudio)]) == 2:
                    assert session.cancel_turn(turn)
                if isinstance(event, TurnCancelled):
                    break
        # Let the stage run on a while: nothing more of the turn may come out.
        next_turn = session.new_turn()
        session.push(ReplyText(next_turn, "Next one."))
        session.push(ReplyEnd(next_turn))
        after = await collect(session, next_turn)
    assert len([e for e in seen if isinstance(e, ReplyAudio)]) == 2
    assert all(e.turn == next_turn for e in after)
    assert [type(e) for e in after if not isinstance(e, ReplyText)] == [TimingMark, ReplyAudio, ReplyEnd]
