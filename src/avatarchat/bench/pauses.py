"""A labelled set of pauses for ``bench turn``: English speech that stops, either finished
("complete") or mid-sentence ("unfinished"), as the VAD hands it on at a pause.

Each sentence is spoken whole by hibari; its phoneme timings (a space between words) say
where each word ends. The complete clip is the whole sentence; the unfinished one is the
same synthesis cut where the ``|`` stands, so it keeps the pitch and pace of a speaker who
has not finished (a sentence synthesized only up to the cut would fall like a finished
one). About half the cuts leave a word that dangles ("and", "the", "to"); the others leave
a phrase that would pass for a sentence ("I lost my keys | somewhere in the house"), where
the words alone cannot tell. ``make_pauses`` gives each clip as an ideal VAD would hand it
on (its pre-roll 0.3 s, the speech, its 0.1 s tail of silence); ``through_vad`` runs the
real Silero VAD over the speech and keeps what its ``SpeechPaused`` holds (its own onset,
its own ``speech_end`` a few windows after the last sound), which is what a turn stage sees.

Deterministic: hibari seeds its noise per clause, and the set has no randomness of its own.
Chinese is not in the set: no Chinese voice has landed yet (issue 11).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import ClassVar, Literal, Protocol

import numpy as np

from avatarchat.audio.resample import resample
from avatarchat.engine.events import NO_TURN, PhonemeTiming, SpeechPaused, TimingMark, UserAudio
from avatarchat.engine.handler import SessionInfo
from avatarchat.engine.session import Session
from avatarchat.handlers.vad.silero import SileroOptions, SileroVADHandler

RATE = 16_000
PREROLL_S = 0.3  # the VAD's default preroll_ms
TAIL_S = 0.1  # the VAD keeps this much after the last voiced audio
_FADE_S = 0.01  # a cut mid-waveform would click
_PUNCTUATION = frozenset(".?!,;:")

#: Sentences; ``|`` marks where the unfinished clip stops (no mark: complete only).
SENTENCES: tuple[str, ...] = (
    # The cut leaves a word that dangles.
    "I was thinking about the weather today and | what to wear.",
    "Can you tell me the | name of the tallest mountain in Europe?",
    "I would like to | learn how to cook pasta at home.",
    "My sister lives in a small town near the | sea and she loves it.",
    "Could you explain how a rainbow forms after the | rain?",
    "I went to the shop because | I needed some bread and milk.",
    "What do you think about | the new library in town?",
    "We could go to the cinema or | stay at home tonight.",
    "Tell me a story about a | dragon who lives in a castle.",
    "I need to buy a present for my | brother who turns twelve next week.",
    "Is it true that the | moon has no air at all?",
    "My favourite kind of music is jazz but | I also like rock.",
    "How long does it take to | fly from London to Tokyo?",
    "I have been learning to play the | guitar for about a year.",
    "What is the best way to | keep plants alive in winter?",
    "She told me that | the meeting was moved to Friday.",
    "Why do cats like to sit in | boxes so much?",
    "I want to know if | it will rain tomorrow morning.",
    "Can you remind me what the | capital of Australia is?",
    "We walked along the river with | our dog until sunset.",
    "I think the problem is that | nobody reads the instructions.",
    "Do you know where I can find a | good place to eat around here?",
    # The cut leaves a phrase that could pass for a whole sentence.
    "I was reading a book last night | and fell asleep on the sofa.",
    "Tell me about the weather | in Paris next weekend.",
    "What is the capital | of the country with the most people?",
    "I had a really strange dream | about flying over the ocean.",
    "Can you recommend a good book | for a long train journey?",
    "My brother bought a new car | even though he cannot drive.",
    "The children played in the garden | until it got dark outside.",
    "How do airplanes stay up | when they are so heavy?",
    "I like to go running in the morning | before work starts.",
    "What should I cook for dinner | if I only have rice and eggs?",
    "The train was late again today | so I missed my meeting.",
    "Who painted the famous picture | of the woman with the smile?",
    "I lost my keys | somewhere in the house yesterday.",
    "Explain how the heart works | in simple words please.",
    "We are planning a trip to Spain | next summer with friends.",
    "Why is the sky blue | during the day but red at sunset?",
    "Give me three ideas | for a birthday party.",
    "I finished my homework | but I forgot to bring it to school.",
    "Where do penguins live | and what do they eat?",
    "My grandmother makes the best apple pie | in the whole world.",
    "Can you help me write a letter | to my landlord about the heating?",
    "The museum opens at nine | on weekdays and ten on Sundays.",
    "I would like a cup of tea | with a little milk please.",
    "What happened to the dinosaurs | millions of years ago?",
    # Short turns, complete only.
    "What time is it?",
    "Hello there.",
    "Do you like music?",
    "Who wrote Romeo and Juliet?",
    "Thank you very much.",
    "Why is the sky blue?",
)

Label = Literal["complete", "unfinished"]


class Synthesizer(Protocol):
    """What the set needs of a TTS: ``HibariTTS.synthesize`` (24 kHz audio, phoneme timings)."""

    sample_rate: ClassVar[int]

    def synthesize(self, text: str) -> tuple[np.ndarray, tuple[PhonemeTiming, ...]]: ...


@dataclass(frozen=True)
class Pause:
    """One labelled pause: what was said up to it, and the audio the VAD hands on."""

    label: Label
    sentence: str  # the whole sentence (without the mark)
    said: str  # the words spoken before the pause
    audio: np.ndarray  # 16 kHz mono float32: pre-roll + speech + tail, as the VAD hands it on


def split(marked: str) -> tuple[str, int | None]:
    """The sentence without its mark, and the number of words before the mark (None: no mark)."""
    head, bar, _ = marked.partition("|")
    sentence = " ".join(marked.replace("|", " ").split())
    return sentence, (len(head.split()) if bar else None)


def word_ends(timings: tuple[PhonemeTiming, ...], n_words: int) -> list[float]:
    """Seconds at which each word's last sound ends: a space phoneme starts the next word;
    the last word ends before its closing punctuation. Raises ``ValueError`` if the
    phonemes' words are not the text's (a word the G2P split or joined)."""
    sounds = [t for t in timings if t.phoneme not in _PUNCTUATION]
    ends = [t.start for t in sounds if t.phoneme == " "]
    if len(ends) != n_words - 1 or not sounds:
        raise ValueError(f"{len(ends) + 1} phoneme words for {n_words} written words")
    return [*ends, sounds[-1].end]


def _clip(audio24: np.ndarray, rate: int, end_s: float) -> np.ndarray:
    speech = resample(np.asarray(audio24[: int(round(end_s * rate))], np.float32), rate, RATE)
    speech = np.asarray(speech, np.float32).copy()
    fade = min(len(speech), int(_FADE_S * RATE))
    if fade:
        speech[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    pad = np.zeros(int(PREROLL_S * RATE), np.float32), np.zeros(int(TAIL_S * RATE), np.float32)
    return np.concatenate([pad[0], speech, pad[1]])


def make_pauses(tts: Synthesizer, sentences: tuple[str, ...] = SENTENCES) -> list[Pause]:
    """The labelled pauses of ``sentences``: a complete one for each, an unfinished one for
    each that has a mark. Blocking (one synthesis per sentence)."""
    pauses: list[Pause] = []
    for marked in sentences:
        sentence, cut = split(marked)
        words = sentence.split()
        audio, timings = tts.synthesize(sentence)
        try:
            ends = word_ends(timings, len(words))
        except ValueError as exc:
            raise ValueError(f"{sentence!r}: {exc}") from None
        pauses.append(Pause("complete", sentence, sentence, _clip(audio, tts.sample_rate, ends[-1])))
        if cut is not None:
            said = " ".join(words[:cut])
            pauses.append(Pause("unfinished", sentence, said, _clip(audio, tts.sample_rate, ends[cut - 1])))
    return pauses


async def _last_pause(vad: SileroVADHandler, speech: np.ndarray) -> np.ndarray | None:
    """The audio of the VAD's last ``SpeechPaused`` for ``speech`` fed in 20 ms chunks
    between 0.5 s of silence and enough silence to end the turn: the pause after the last
    word (hibari leaves gaps of 150 ms and more between some words, which pause too)."""
    after = np.zeros(int(RATE * (vad.options.end_ms / 1000 + 0.2)), np.float32)
    x = np.concatenate([np.zeros(RATE // 2, np.float32), speech, after])
    chunk = RATE // 50
    found: np.ndarray | None = None
    async with Session([vad], SessionInfo("pauses")) as session:
        for start in range(0, len(x), chunk):
            session.push(UserAudio(NO_TURN, x[start : start + chunk], RATE))
        session.push(TimingMark(NO_TURN, "eof"))
        async for event in session.events():
            if isinstance(event, SpeechPaused):
                found = np.asarray(event.audio, np.float32)
            if isinstance(event, TimingMark) and event.name == "eof":
                break
    return found


def through_vad(pauses: list[Pause], options: SileroOptions | None = None) -> tuple[list[Pause], int]:
    """``pauses`` with the audio the real Silero VAD hands on at its last pause (blocking),
    and how many clips it made no pause for (those keep their ideal audio)."""
    vad = SileroVADHandler(options or SileroOptions(pause_ms=150, end_ms=1000))
    vad.load()

    async def run() -> list[np.ndarray | None]:
        cut = int(PREROLL_S * RATE), int(TAIL_S * RATE)
        return [await _last_pause(vad, p.audio[cut[0] : len(p.audio) - cut[1]]) for p in pauses]

    found = asyncio.run(run())
    missed = sum(a is None for a in found)
    return [p if a is None else replace(p, audio=a) for p, a in zip(pauses, found, strict=True)], missed
