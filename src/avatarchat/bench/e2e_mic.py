"""The fake microphone of ``avatarchat bench e2e``: questions spoken by hibari into one WAV
that Chromium plays as its microphone, with long silences between them.

With ``pauses`` each question is said with a pause in the middle ("What is the capital"
... 0.6 s ... "of France?"): the whole question is synthesized at once and the silence is
put in at a word boundary found from hibari's phoneme timings, so both halves keep the
intonation of one sentence (the first half does not sound finished). The pause lengths are
fixed, 0.4-0.8 s, so two runs speak the same file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Sample rate of the fake-microphone WAVs written here (Chromium's capture rate).
FAKE_MIC_RATE = 48000

#: Questions with a mid-sentence pause: the words before it, the words after it.
PAUSED_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is the capital", "of France?"),
    ("Can you tell me", "a short story about a cat?"),
    ("How far is the Moon", "from the Earth?"),
    ("What should I cook", "for dinner tonight?"),
    ("Why is the sky", "blue?"),
    ("Who wrote the play", "Romeo and Juliet?"),
    ("How do I stay focused", "while working from home?"),
    ("What is the tallest", "mountain in the world?"),
)
#: The questions of a Chinese run (``session.language: zh``), spoken by the Mandarin voice.
QUESTIONS_ZH: tuple[str, ...] = (
    "中国的首都是哪里？",
    "你能推荐一本好书吗？",
    "月亮离地球有多远？",
    "我今天晚上应该做什么菜？",
    "天空为什么是蓝色的？",
    "给我讲一讲大象吧。",
    "你最喜欢什么颜色？",
    "工作的时候怎么保持专注？",
)
#: The pauses, in turn (seconds): deterministic, within 0.4-0.8 s.
PAUSES_S: tuple[float, ...] = (0.6, 0.4, 0.8, 0.5, 0.7)
#: Each side of a cut fades over this long (a step in the waveform would click).
FADE_S = 0.005

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Spoken:
    """One question in the fake microphone file (seconds from the file's start).

    ``pause`` is the (start, end) of the silence put in mid-question, or None."""

    text: str
    start: float
    end: float
    pause: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end, "pause": self.pause}


def word_boundary(phonemes: Sequence[Any], words_before: int) -> float:
    """The time (s) in the middle of the word gap after the first ``words_before`` words,
    from hibari's phoneme timings, where each gap between words is one ``" "`` phoneme.

    Raises ValueError if the timings have fewer gaps than that."""
    gaps = [p for p in phonemes if p.phoneme == " "]
    if not 1 <= words_before <= len(gaps):
        raise ValueError(f"no word gap after word {words_before}: the phonemes have {len(gaps)} gaps")
    gap = gaps[words_before - 1]
    return (gap.start + gap.end) / 2


def with_pause(speech: np.ndarray, rate: int, at_s: float, pause_s: float) -> np.ndarray:
    """``speech`` with ``pause_s`` of silence put in at ``at_s``, each side faded over
    ``FADE_S``."""
    cut = int(round(at_s * rate))
    n = int(round(FADE_S * rate))
    head, tail = speech[:cut].copy(), speech[cut:].copy()
    if len(head) >= n:
        head[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    if len(tail) >= n:
        tail[:n] *= np.linspace(0.0, 1.0, n, dtype=np.float32)
    return np.concatenate([head, np.zeros(int(round(pause_s * rate)), np.float32), tail])


def paused_questions(turns: int) -> list[tuple[str, str, float]]:
    """``turns`` questions with their pause: (before, after, pause seconds), cycling."""
    return [(*PAUSED_QUESTIONS[i % len(PAUSED_QUESTIONS)], PAUSES_S[i % len(PAUSES_S)]) for i in range(turns)]


def question_voice(language: str) -> Any:
    """A loaded TTS that speaks questions in ``language``: the Mandarin voice for Chinese
    (the add-on ``mandarin-voice``), hibari for everything else."""
    from avatarchat.engine.handler import handlers_for
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

    if language.lower().startswith("zh"):
        cls = handlers_for("tts").get("mandarin")
        if cls is None:
            raise RuntimeError("Chinese questions need the Mandarin voice: avatarchat models add mandarin-voice")
        tts = cls(cls.Options())
    else:
        tts = HibariTTS(HibariOptions())
    tts.load()
    return tts


def questions_wav(path: Path, questions: Sequence[str | tuple[str, str, float]], lead_s: float,
                  gap_s: float, progress: Progress, language: str = "en") -> list[Spoken]:
    """Speak ``questions`` (in ``language``: ``question_voice``) into one 48 kHz WAV:
    ``lead_s`` of silence, then each question followed by ``gap_s`` of silence. A question
    given as (before, after, pause) is spoken whole with ``pause`` seconds of silence between
    its two parts (English only: the cut is found at hibari's word gaps). Returns where each
    question (and its pause) lies in the file."""
    from avatarchat.audio.io import write_wav
    from avatarchat.audio.resample import resample

    tts = question_voice(language)
    parts: list[np.ndarray] = [np.zeros(int(lead_s * FAKE_MIC_RATE), np.float32)]
    spoken, clock = [], lead_s
    for q in questions:
        text = q if isinstance(q, str) else f"{q[0]} {q[1]}"
        samples, phonemes = tts.synthesize(text)
        speech = resample(samples, tts.sample_rate, FAKE_MIC_RATE).astype(np.float32)
        speech *= 0.5 / max(float(np.abs(speech).max()), 1e-6)  # the same level for every question
        pause = None
        if not isinstance(q, str):
            at = word_boundary(phonemes, len(q[0].split()))
            speech = with_pause(speech, FAKE_MIC_RATE, at, q[2])
            pause = (round(clock + at, 3), round(clock + at + q[2], 3))
        end = clock + len(speech) / FAKE_MIC_RATE
        spoken.append(Spoken(text, round(clock, 3), round(end, 3), pause))
        clock = end + gap_s
        parts += [speech, np.zeros(int(gap_s * FAKE_MIC_RATE), np.float32)]
    write_wav(path, np.concatenate(parts), FAKE_MIC_RATE)
    progress(f"fake microphone: {len(questions)} questions, {clock:.1f} s -> {path}")
    return spoken
