"""Smart Turn v3.2 (turn: smart_turn): load errors, the features it is fed, what it says of
real speech (hibari), and the handler in a real Session after the real whisper ASR."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import yaml

from avatarchat.bench.pauses import make_pauses
from avatarchat.config import DEFAULT_CONFIG, parse_config
from avatarchat.engine.events import EndOfTurnGuess, Event, SpeechPaused, UserTranscript
from avatarchat.engine.handler import HandlerLoadError, SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.turn.features import FRAMES, RATE, WINDOW_SAMPLES, features, last_window, log_mel
from avatarchat.handlers.turn.smart_turn import (
    SMART_TURN_MODEL,
    SmartTurnHandler,
    SmartTurnModel,
    SmartTurnOptions,
    load_model,
)
from avatarchat.handlers.vad.silero import VAD_MODEL

# Pairs of (the whole sentence, the same synthesis cut at the "|"), where the model's
# verdicts were far apart in bench turn (P 0.99 vs 0.01-0.05).
PAIRS = (
    "Could you explain how a rainbow forms after the | rain?",
    "I need to buy a present for my | brother who turns twelve next week.",
    "We could go to the cinema or | stay at home tonight.",
)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = 0.5 + 0.5 * np.sin(np.arange(n) * 2 * np.pi * 4 / RATE)  # 4 Hz syllables
    return (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)


# -- loading -------------------------------------------------------------------------------


def test_a_wrong_sha256_stops_loading_with_a_reinstall_hint() -> None:
    wrong = dataclasses.replace(SMART_TURN_MODEL, sha256="0" * 64)
    with pytest.raises(HandlerLoadError, match=r"sha256.*--no-deps pipecat-ai==1\.14\.0 --force-reinstall"):
        load_model(model=wrong)


def test_a_missing_package_names_the_package_to_install() -> None:
    missing = dataclasses.replace(SMART_TURN_MODEL, package="avatarchat_no_such_package")
    with pytest.raises(HandlerLoadError, match=r"not installed.*pip install --no-deps pipecat-ai==1\.14\.0"):
        load_model(model=missing)


def test_an_onnx_file_that_is_not_smart_turn_is_refused() -> None:
    vad = VAD_MODEL.locate()  # a real ONNX model with other inputs and outputs
    with pytest.raises(HandlerLoadError, match="is not Smart Turn v3"):
        SmartTurnModel(vad)


def test_the_config_takes_a_turn_stage() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["turn"] = {"handler": "smart_turn", "threads": 1, "max_audio_s": 6}
    config = parse_config(raw)
    assert config.stages["turn"].handler == "smart_turn"
    assert isinstance(config.stages["turn"].options, SmartTurnOptions)
    raw["turn"]["threshold"] = 0.5  # the engine's end_of_turn.audio_threshold decides, not the handler
    with pytest.raises(Exception, match="threshold"):
        parse_config(raw)


# -- features ------------------------------------------------------------------------------


def test_features_are_80_mels_by_800_frames_of_8_seconds() -> None:
    x = features(speechlike(3.0))
    assert x.shape == (1, 80, FRAMES) and x.dtype == np.float32
    assert FRAMES == 800 and WINDOW_SAMPLES == 8 * RATE


def test_a_short_utterance_is_padded_in_front_so_its_end_stays_at_the_window_end() -> None:
    a = speechlike(2.0)
    window = last_window(a)
    assert np.array_equal(window[-len(a):], a) and not window[: -len(a)].any()
    mel = log_mel(window)
    # The speech is in the last 2 s (200 frames); the padding before it (a constant once
    # normalized) is the same in every frame.
    assert mel[:, -150:].mean() > mel[:, :500].mean() + 0.5
    assert np.ptp(mel[:, :500], axis=1).max() == 0.0


def test_a_long_utterance_keeps_its_last_8_seconds() -> None:
    a = speechlike(11.0)
    assert np.array_equal(last_window(a), a[-WINDOW_SAMPLES:])
    assert np.array_equal(last_window(a, seconds=3.0)[-3 * RATE:], a[-3 * RATE:])
    assert not last_window(a, seconds=3.0)[: -3 * RATE].any()


def test_features_do_not_depend_on_loudness() -> None:
    # Smart Turn's recipe normalizes the 8 s window (zero mean, unit variance) first.
    a = speechlike(3.0)
    np.testing.assert_allclose(features(a), features(a * 0.1), atol=2e-3)


def test_features_match_whisper_feature_extraction_of_faster_whisper() -> None:
    # An independent implementation of the same Whisper features (on the normalized window).
    from faster_whisper.feature_extractor import FeatureExtractor

    window = last_window(speechlike(5.0, seed=3))
    normalized = ((window - window.mean()) / np.sqrt(window.var() + 1e-7)).astype(np.float32)
    reference = FeatureExtractor(chunk_length=8)(normalized, padding=0)
    np.testing.assert_allclose(log_mel(window), reference[:, :FRAMES], atol=1e-4)


def test_log_mel_refuses_a_window_that_is_not_8_seconds() -> None:
    with pytest.raises(ValueError, match="128000 samples"):
        log_mel(np.zeros(RATE, np.float32))


# -- the real model on real speech -------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> SmartTurnModel:
    return load_model()


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

    tts = HibariTTS(HibariOptions())
    tts.load()
    pauses = make_pauses(tts, PAIRS)
    return [(pauses[i].audio, pauses[i + 1].audio) for i in range(0, len(pauses), 2)]


@pytest.mark.slow
def test_a_finished_question_scores_above_the_same_words_cut_mid_sentence(
    model: SmartTurnModel, pairs: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    for (complete, unfinished), text in zip(pairs, PAIRS, strict=True):
        p_complete, p_unfinished = model.complete(complete), model.complete(unfinished)
        assert p_complete > 0.8 and p_unfinished < 0.2, (text, p_complete, p_unfinished)


@pytest.mark.slow
def test_the_output_is_a_probability_and_the_same_each_time(
    model: SmartTurnModel, pairs: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    complete = pairs[0][0]
    p = model.complete(complete)
    assert 0.0 <= p <= 1.0 and model.complete(complete) == p
    assert 0.0 <= model.complete(np.zeros(RATE, np.float32)) <= 1.0


# -- the handler in a session -----------------------------------------------------------------


@pytest.mark.slow
async def test_the_asr_passes_each_pause_on_once_transcribed_and_the_handler_guesses_it(
    pairs: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    from avatarchat.handlers.asr.whisper import WhisperHandler, WhisperOptions

    turn_stage = SmartTurnHandler(SmartTurnOptions())
    asr = WhisperHandler(WhisperOptions())
    await asyncio.gather(asyncio.to_thread(turn_stage.load), asyncio.to_thread(asr.load))
    complete, unfinished = pairs[1]
    out: list[Event] = []
    async with Session([asr, turn_stage], SessionInfo("t")) as session:
        # No usable audio: no guess (the ASR still transcribes it, as "").
        session.push(SpeechPaused(1, audio=np.zeros(0, np.float32), speech_end=10.0))
        session.push(SpeechPaused(1, audio=unfinished, speech_end=11.5))
        session.push(SpeechPaused(1, audio=complete, speech_end=13.25))

        async def collect() -> None:
            async for event in session.events():
                out.append(event)
                transcripts = [e for e in out if isinstance(e, UserTranscript)]
                if len(transcripts) >= 3 and len([e for e in out if isinstance(e, EndOfTurnGuess)]) >= 2:
                    return

        await asyncio.wait_for(collect(), timeout=120)
    guesses = [e for e in out if isinstance(e, EndOfTurnGuess)]
    assert [(g.turn, g.speech_end) for g in guesses] == [(1, 11.5), (1, 13.25)]
    assert guesses[0].complete < 0.2 < 0.8 < guesses[1].complete
    # The ASR got every pause (the empty one too): its early transcripts carry their speech_end.
    heard = {e.speech_end: e.text for e in out if isinstance(e, UserTranscript)}
    # Each guess comes after its pause's words: the model never ran beside whisper.
    order = [(type(e).__name__, getattr(e, "speech_end", None)) for e in out
             if isinstance(e, UserTranscript | EndOfTurnGuess)]
    for g in guesses:
        assert order.index(("UserTranscript", g.speech_end)) < order.index(("EndOfTurnGuess", g.speech_end))
    assert not any(e.final for e in out if isinstance(e, UserTranscript))
    assert set(heard) == {10.0, 11.5, 13.25} and "brother" in heard[13.25].lower()
