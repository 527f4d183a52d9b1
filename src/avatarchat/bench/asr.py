"""``avatarchat bench asr``: whisper's error rate and time per call, per encoder window.

Whisper's encoder is built for a 30 s window; the handler encodes an utterance that fits
``asr.window_s`` in that shorter window (see handlers/asr/whisper.py). This benchmark puts
the two side by side on the same clips: in English, sentences said by hibari and by
espeak-ng (a second, very different voice), each also with white noise at about 20 dB SNR;
word error rate. With ``--config`` whose ASR language is Chinese (``configs/zh.yaml``): the
Chinese sentences below said by the config's voice (the Mandarin one), clean and with the
same noise; character error rate (CER, marks ignored), each window with whisper's default
simplified-Chinese prompt and without one. The config's ``asr`` options (model, threads,
max_tokens) are used; only ``window_s`` (and the prompt) vary.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from avatarchat.audio.resample import resample
from avatarchat.bench.stats import machine, summarize
from avatarchat.config import Config
from avatarchat.handlers.asr.chinese import is_chinese, tokens
from avatarchat.handlers.asr.whisper import RATE, WhisperHandler, WhisperOptions

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Can you tell me a joke about cats?",
    "How far away is the moon from the earth?",
    "Yesterday I went to the park and saw a big dog.",
    "Please tell me about the weather tomorrow in London.",
    "What time is it?",
    "Hello there.",
    "I would like to learn how to cook pasta at home, what should I buy first?",
    "Why is the sky blue?",
    "Tell me something interesting about elephants.",
    "Do you like music?",
    "Who wrote Romeo and Juliet?",
    "Thank you very much, that was helpful.",
    "Could you explain how a rainbow forms after the rain?",
    "Stop.",
    "Wait, I have another question about computers.",
    "Good morning, how are you today?",
)


#: Everyday Chinese turns to an assistant: questions and statements, 4-25 characters, no
#: digits (whisper writes "25" or "二十五" as it likes; a CER would count the choice).
ZH_SENTENCES = (
    "你好，你是谁？",
    "今天天气怎么样？",
    "北京是中国的首都。",
    "请给我讲一个笑话。",
    "你会说英语吗？",
    "我想学做饭，应该先买什么？",
    "为什么天空是蓝色的？",
    "明天早上会下雨吗？",
    "我昨天去公园看见了一只大狗。",
    "你最喜欢什么颜色？",
    "谢谢你，这对我很有帮助。",
    "从上海到北京坐火车要多久？",
    "请告诉我一些关于熊猫的事情。",
    "我们周末去看电影吧。",
    "等一下，我还有一个问题。",
    "月亮离地球有多远？",
    "早上好，你今天过得怎么样？",
    "我的手机找不到了，怎么办？",
    "你能帮我写一封信吗？",
    "这家饭店的菜很好吃。",
)


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in characters, reference length): the parts of a character error
    rate. Each Chinese character is one unit, a Latin word another; marks are ignored."""
    return _edits(tokens(reference), tokens(hypothesis))


def _edits(ref: list[str], hyp: list[str]) -> tuple[int, int]:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length): the parts of a word error rate."""
    return _edits(words(reference), words(hypothesis))


Clip = tuple[str, str, np.ndarray]  # (voice, sentence, 16 kHz audio)


def _with_noise(voice: str, sentence: str, audio: np.ndarray, rng: np.random.Generator) -> list[Clip]:
    """The clip clean and with white noise at about 20 dB SNR."""
    audio = audio.astype(np.float32)
    noise = rng.normal(0.0, float(np.sqrt(np.mean(audio**2))) / 10.0, len(audio))
    return [(voice, sentence, audio), (f"{voice}+noise", sentence, (audio + noise).astype(np.float32))]


def _clips(progress: Any) -> list[Clip]:
    """(voice, sentence, 16 kHz audio) for every sentence, voice and noise condition."""
    from hibari import Hibari

    from avatarchat.handlers.tts.espeak import EspeakOptions, EspeakTTS

    progress("synthesizing the test sentences (hibari, espeak-ng)")
    hibari = Hibari()
    espeak = EspeakTTS(EspeakOptions())
    espeak.load()
    rng = np.random.default_rng(0)
    clips = []
    for sentence in SENTENCES:
        spoken = {
            "hibari": resample(hibari(sentence).astype(np.float32), 24_000, RATE),
            "espeak": resample(espeak.synthesize(sentence)[0], espeak.sample_rate, RATE),
        }
        for voice, audio in spoken.items():
            clips.extend(_with_noise(voice, sentence, audio, rng))
    return clips


def _zh_clips(config: Config, progress: Any) -> list[Clip]:
    """The Chinese sentences said by the config's voice, clean and with noise."""
    from avatarchat.engine.handler import handlers_for

    stage = config.stages.get("tts")
    if stage is None:
        raise ValueError(f"{config.path}: bench asr in Chinese needs a tts stage (the Mandarin voice) to say its sentences")
    progress(f"synthesizing {len(ZH_SENTENCES)} Chinese sentences ({stage.handler})")
    tts: Any = handlers_for("tts")[stage.handler](stage.options)
    tts.load()
    rng = np.random.default_rng(0)
    clips: list[Clip] = []
    for sentence in ZH_SENTENCES:
        audio = np.asarray(tts.synthesize(sentence)[0], np.float32)
        clips.extend(_with_noise(stage.handler, sentence, resample(audio, tts.sample_rate, RATE), rng))
    return clips


def _asr_options(config: Config | None) -> tuple[WhisperOptions, str]:
    """The config's whisper options and the language it transcribes in."""
    if config is None:
        return WhisperOptions(), "en"
    stage = config.stages.get("asr")
    if stage is None or not isinstance(stage.options, WhisperOptions):
        raise ValueError(f"{config.path}: bench asr needs an asr stage with handler: whisper")
    options = stage.options
    language = "en" if options.model.endswith(".en") else options.language or config.session.language
    return options, language


def _run(handler: WhisperHandler, clips: list[Clip], language: str, chinese: bool) -> dict[str, Any]:
    """Error rate and time per call of ``handler`` over ``clips``."""
    score = char_errors if chinese else word_errors
    handler.transcribe(clips[0][2], language)  # first-call allocations are not the window's
    errors = total = 0
    times: list[float] = []
    per_clip: list[float] = []
    per_voice: dict[str, tuple[int, int]] = {}
    rows = []
    for voice, sentence, audio in clips:
        t0 = time.perf_counter()
        text = handler.transcribe(audio, language)
        times.append((time.perf_counter() - t0) * 1000)
        e, n = score(sentence, text)
        errors, total = errors + e, total + n
        per_clip.append(100 * e / max(n, 1))
        ve, vn = per_voice.get(voice, (0, 0))
        per_voice[voice] = (ve + e, vn + n)
        rows.append({"voice": voice, "said": sentence, "heard": text, "errors": e})
    unit = "cer" if chinese else "wer"
    out: dict[str, Any] = {
        f"{unit}_percent": round(100 * errors / total, 1),
        f"{unit}_percent_by_voice": {v: round(100 * e / n, 1) for v, (e, n) in per_voice.items()},
        "call_ms": summarize(times),
        "full_window_fallbacks": handler.fallbacks,
    }
    if chinese:
        out["cer_percent_per_clip"] = summarize(per_clip)
        # The end-of-turn rules read the closing mark: how often whisper writes one.
        closed = sum(str(r["heard"]).endswith(("。", "？", "！")) for r in rows)
        out["closing_mark_share"] = round(closed / len(rows), 3)
        out["clips"] = rows
    return out


def bench_asr(windows: list[float], progress: Any, config: Config | None = None) -> dict[str, Any]:
    """The report (JSON-able): per window (and, in Chinese, per prompt) the error rate and
    the time per call. ``config``: the ASR options, language and voice to use (None: the
    default, whisper tiny.en in English)."""
    options, language = _asr_options(config)
    chinese = is_chinese(language)
    if chinese:
        assert config is not None
        clips = _zh_clips(config, progress)
        prompts: dict[str, str | None] = {"": options.prompt, "no_prompt": ""}
    else:
        clips, prompts = _clips(progress), {"": options.prompt}
    results: dict[str, Any] = {}
    model = None
    for window in windows:
        for label, prompt in prompts.items():
            name = f"{window:g}s" + (f"_{label}" if label else "")
            progress(f"whisper {options.model}, {language}, {name}: {len(clips)} clips")
            handler = WhisperHandler(options.model_copy(update={"window_s": window, "prompt": prompt}))
            if model is None:
                handler.load()
                model = handler
            else:  # the same weights: only the window and the prompt differ
                handler._model, handler._simplifier = model._model, model._simplifier
            results[name] = _run(handler, clips, language, chinese)
    return {"benchmark": "asr", "model": options.model, "language": language, "threads": options.threads,
            "clips": len(clips), "machine": machine(), "windows": results}
