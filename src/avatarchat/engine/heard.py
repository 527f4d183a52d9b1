"""What the user heard of a reply cut short: the words said by a point on the reply timeline.

A barge-in (or the interrupt button, or a typed message) stops a reply part-way. The LLM
history should keep only what the user heard, so the model knows where it was cut off;
``heard_text`` maps a position on the reply's timeline (``Playout.played_seconds``) onto the
reply's ``ReplyAudio`` chunks and returns the words complete by then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from avatarchat.engine.events import PhonemeTiming, ReplyAudio

#: Phoneme entries that are no sound of their own (word boundaries, stress marks).
_NOT_SOUNDS = frozenset(" ˈˌ")
_PUNCT_ONLY = re.compile(r"^[\W_]+$")


@dataclass(frozen=True, slots=True)
class SpokenChunk:
    """The parts of a ``ReplyAudio`` that ``heard_text`` needs (the samples are not kept)."""

    text: str
    offset: float
    duration: float
    phonemes: tuple[PhonemeTiming, ...] = ()

    @classmethod
    def of(cls, chunk: ReplyAudio) -> SpokenChunk:
        return cls(chunk.text, chunk.offset, chunk.duration, chunk.phonemes)


def word_ends(phonemes: Sequence[PhonemeTiming]) -> list[float]:
    """End time of each spoken word: runs of sounding phonemes between spaces.

    A run of punctuation alone (hibari times a pause as ``","``) is no word.
    """
    ends: list[float] = []
    word: list[PhonemeTiming] = []
    for p in [*phonemes, PhonemeTiming(" ", 0.0, 0.0)]:
        if p.phoneme == " ":
            sounds = [q for q in word if q.phoneme not in _NOT_SOUNDS and not _PUNCT_ONLY.match(q.phoneme)]
            if sounds:
                ends.append(sounds[-1].end)
            word = []
        else:
            word.append(p)
    return ends


def _heard_in_chunk(chunk: SpokenChunk, t: float) -> str:
    """The complete words of ``chunk`` said by ``t`` seconds into it."""
    words = chunk.text.split()
    if not words or t <= 0:
        return ""
    ends = word_ends(chunk.phonemes)
    if ends:
        done = sum(1 for e in ends if e <= t)
        # The G2P may say one written word as two ("42" → "forty two"): then scale.
        n = done if len(ends) == len(words) else (done * len(words)) // len(ends)
        return " ".join(words[:n])
    # No timings: by the share of the chunk's time, to the last whole word.
    cut = int(len(chunk.text) * min(1.0, t / chunk.duration)) if chunk.duration > 0 else 0
    head = chunk.text[:cut]
    if cut < len(chunk.text) and not chunk.text[cut].isspace():
        head = head.rsplit(None, 1)[0] if " " in head.strip() else ""
    return head.strip()


def heard_text(chunks: Iterable[SpokenChunk], seconds: float) -> str:
    """The words of the reply complete by ``seconds`` on its timeline.

    Chunks that ended by then count whole; in the chunk being said, the words whose last
    phoneme ended (or, without phoneme timings, the share of its characters that its
    elapsed time gives, cut back to a whole word). Chunk order does not matter.
    """
    parts: list[str] = []
    for chunk in sorted(chunks, key=lambda c: c.offset):
        if chunk.offset + chunk.duration <= seconds + 1e-6:
            parts.append(chunk.text.strip())
        elif chunk.offset < seconds:
            parts.append(_heard_in_chunk(chunk, seconds - chunk.offset))
            break
        else:
            break
    return " ".join(p for p in parts if p)
