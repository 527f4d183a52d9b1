"""Whisper base hears Chinese: the Mandarin voice says everyday sentences, whisper base
(``language: zh``) writes them back in simplified characters, within the issue's 10 %
character error rate.

No registry package ships recordings of real people speaking Mandarin with a clear
provenance (see docs/MODELS.md), so the speech is the Mandarin voice's (a synthetic voice
trained on one reader: the CER on real, varied speakers will be higher). Both models are
deterministic (greedy decoding, fixed weights), so the bound is not a flaky one; `avatarchat
bench asr --config configs/zh.yaml` measures the full set and the time per call.
"""

from __future__ import annotations

import numpy as np
import pytest

from avatarchat.audio.resample import resample
from avatarchat.bench.asr import char_errors
from avatarchat.engine.endofturn_zh import looks_unfinished_zh
from avatarchat.engine.events import NO_TURN, SpeechEnded, SpeechPaused, TimingMark, UserTranscript
from avatarchat.engine.handler import HandlerLoadError, SessionInfo, SessionSettings
from avatarchat.engine.session import Session
from avatarchat.handlers.asr.chinese import Simplifier
from avatarchat.handlers.asr.whisper import RATE, WhisperHandler, WhisperOptions

pytestmark = pytest.mark.slow

SENTENCES = (
    "你好，你是谁？",
    "今天天气怎么样？",
    "请给我讲一个笑话。",
    "为什么天空是蓝色的？",
    "我们周末去看电影吧。",
    "你能帮我写一封信吗？",
)


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    from avatarchat.handlers.tts.mandarin import MandarinOptions, MandarinTTS

    tts = MandarinTTS(MandarinOptions())
    try:
        tts.load()
    except HandlerLoadError as exc:
        pytest.skip(f"avatarchat models add mandarin-voice --accept-licence ({exc})")
    return {s: resample(tts.synthesize(s)[0], tts.sample_rate, RATE).astype(np.float32) for s in SENTENCES}


@pytest.fixture(scope="module")
def whisper() -> WhisperHandler:
    handler = WhisperHandler(WhisperOptions(model="base", language="zh"))
    try:
        handler.load()
    except HandlerLoadError as exc:
        pytest.skip(f"avatarchat models add whisper-base ({exc})")
    return handler


def test_whisper_base_writes_the_voices_chinese_back_in_simplified_characters(
        whisper: WhisperHandler, speech: dict[str, np.ndarray]) -> None:
    simplified = Simplifier()
    errors = total = 0
    heard = {}
    for sentence, audio in speech.items():
        text = whisper.transcribe(audio, "zh")
        heard[sentence] = text
        e, n = char_errors(sentence, text)
        errors, total = errors + e, total + n
        assert simplified(text) == text, text  # no traditional character left
        assert not any(c in text for c in ",?!"), text  # full-width marks after Chinese
    assert errors / total <= 0.10, heard
    # The rules that end a turn read whisper's marks and particles: these questions are complete.
    assert looks_unfinished_zh(heard["你能帮我写一封信吗？"]) is False
    assert looks_unfinished_zh(heard["我们周末去看电影吧。"]) is False


def test_the_short_window_hears_chinese_as_the_full_window_does(
        whisper: WhisperHandler, speech: dict[str, np.ndarray]) -> None:
    full = WhisperHandler(WhisperOptions(model="base", language="zh", window_s=30.0))
    full._model, full._simplifier = whisper._model, whisper._simplifier  # the same weights
    short_errors = full_errors = total = 0
    for sentence, audio in speech.items():
        s, n = char_errors(sentence, whisper.transcribe(audio, "zh"))
        f, _ = char_errors(sentence, full.transcribe(audio, "zh"))
        short_errors, full_errors, total = short_errors + s, full_errors + f, total + n
    assert whisper.fallbacks == 0  # no loop sent a clip to the full window
    assert short_errors <= full_errors + 2, (short_errors, full_errors, total)


async def test_a_chinese_session_gets_simplified_text_at_the_pause_and_reuses_it(
        speech: dict[str, np.ndarray]) -> None:
    # The session's language decides (no language option): zh-CN is whisper's zh.
    handler = WhisperHandler(WhisperOptions(model="base"))
    try:
        handler.load()
    except HandlerLoadError as exc:
        pytest.skip(f"avatarchat models add whisper-base ({exc})")
    audio = speech["今天天气怎么样？"]
    info = SessionInfo("zh", settings=SessionSettings(language="zh-CN"))
    out = []
    async with Session([handler], info) as session:
        session.push(SpeechPaused(3, audio=audio, speech_end=5.0))
        session.push(SpeechEnded(3, audio=audio, speech_end=5.0))
        session.push(TimingMark(NO_TURN, "eof"))
        async for event in session.events():
            if isinstance(event, TimingMark) and event.name == "eof":
                break
            out.append(event)
    partial, final = [e for e in out if isinstance(e, UserTranscript)]
    assert partial.speech_end == 5.0 and not partial.final and final.final
    assert final.text == partial.text and char_errors("今天天气怎么样？", final.text)[0] <= 1, final.text
    marks = {e.name: e.at for e in out if isinstance(e, TimingMark)}
    assert marks["asr_final"] - marks["asr_start"] < 0.05  # the pause's transcript, not a second call


def test_bench_asr_scores_chinese_by_characters(whisper: WhisperHandler, speech: dict[str, np.ndarray]) -> None:
    from avatarchat.bench.asr import _run

    clips = [("mandarin", s, a) for s, a in list(speech.items())[:3]]
    report = _run(whisper, clips, "zh", True)
    rows = report["clips"]
    assert [r["said"] for r in rows] == [s for _, s, _ in clips]
    errors = sum(r["errors"] for r in rows)
    chars = sum(char_errors(s, "")[1] for _, s, _ in clips)
    assert report["cer_percent"] == round(100 * errors / chars, 1)
    assert report["call_ms"]["n"] == 3 and 0 <= report["closing_mark_share"] <= 1
