"""Mandarin lip-sync: pinyin initials and finals as timed IPA-like segments.

The Mandarin voice times each initial and each final (12.5 ms frames). A final is often
several mouth shapes ("ang" = an open a, then the velar ŋ; "iao" = i, a, u), so a final's
time is split over its segments by weight (main vowel 1, glide and coda less), and every
segment is one IPA symbol that ``avatar.visemes.viseme_of`` maps. Initials and finals use
the voice's own spelling (TensorFlowTTS Baker: ``^`` = no initial, ``ii`` = the vowel of
zi/ci/si, ``iii`` = of zhi/chi/shi/ri, ``v`` = ü, ``uei``/``uen``/``iou`` written in full).
"""

from __future__ import annotations

from typing import NamedTuple

#: Initial -> IPA symbol (one mouth shape each). "^" (no initial) has none: its time goes to
#: the final's first vowel, which the mouth is already forming.
INITIALS: dict[str, str] = {
    "b": "p", "p": "p", "m": "m", "f": "f",
    "d": "t", "t": "t", "n": "n", "l": "l",
    "g": "k", "k": "k", "h": "x",
    "j": "ʨ", "q": "ʨ", "x": "ɕ",
    "zh": "ʃ", "ch": "ʃ", "sh": "ʃ", "r": "ɻ",  # retroflex: lips pushed forward, like ʃ
    "z": "ʦ", "c": "ʦ", "s": "s",
}

# Weights: main vowel 1.0, a glide before it 0.35, an off-glide or nasal coda after it 0.5.
_G, _V, _C = 0.35, 1.0, 0.5
FINALS: dict[str, tuple[tuple[str, float], ...]] = {
    "a": (("a", _V),), "ai": (("a", _V), ("i", _C)), "an": (("a", _V), ("n", _C)),
    "ang": (("a", _V), ("ŋ", _C)), "ao": (("a", _V), ("u", _C)),
    "e": (("ə", _V),), "ei": (("e", _V), ("i", _C)), "en": (("ə", _V), ("n", _C)),
    "eng": (("ə", _V), ("ŋ", _C)), "er": (("ɚ", _V),),
    "i": (("i", _V),), "ia": (("i", _G), ("a", _V)), "ian": (("i", _G), ("ɛ", _V), ("n", _C)),
    "iang": (("i", _G), ("a", _V), ("ŋ", _C)), "iao": (("i", _G), ("a", _V), ("u", _C)),
    "ie": (("i", _G), ("ɛ", _V)), "ii": (("ɨ", _V),), "iii": (("ɨ", _V),),
    "in": (("i", _V), ("n", _C)), "ing": (("i", _V), ("ŋ", _C)),
    "iong": (("i", _G), ("ʊ", _V), ("ŋ", _C)), "iou": (("i", _G), ("o", _V), ("u", _C)),
    "o": (("o", _V),), "ong": (("ʊ", _V), ("ŋ", _C)), "ou": (("o", _V), ("u", _C)),
    "u": (("u", _V),), "ua": (("u", _G), ("a", _V)), "uai": (("u", _G), ("a", _V), ("i", _C)),
    "uan": (("u", _G), ("a", _V), ("n", _C)), "uang": (("u", _G), ("a", _V), ("ŋ", _C)),
    "uei": (("u", _G), ("e", _V), ("i", _C)), "uen": (("u", _G), ("ə", _V), ("n", _C)),
    "ueng": (("u", _G), ("ə", _V), ("ŋ", _C)), "uo": (("u", _G), ("o", _V)),
    "v": (("y", _V),), "van": (("y", _G), ("ɛ", _V), ("n", _C)), "ve": (("y", _G), ("ɛ", _V)),
    "vn": (("y", _V), ("n", _C)),
}
#: The erhua ending (哪儿 "nar"): an r-coloured vowel.
ERHUA = "ɚ"


class Segment(NamedTuple):
    """One mouth shape: an IPA symbol from ``start`` to ``end`` seconds."""

    phoneme: str
    start: float
    end: float


def initial_segment(initial: str, start: float, end: float) -> list[Segment]:
    """The initial's segment (none for ``^`` or an unknown initial, or no time)."""
    ipa = INITIALS.get(initial)
    return [Segment(ipa, start, end)] if ipa and end > start else []


def final_segments(final: str, start: float, end: float) -> list[Segment]:
    """The final (tone digit allowed: ``ang4``) split over its segments by weight; an
    unknown final becomes one neutral vowel so the mouth still moves."""
    parts = FINALS.get(final.rstrip("12345"), (("ə", _V),))
    if end <= start:
        return []
    total = sum(w for _, w in parts)
    out, at = [], start
    for k, (ipa, weight) in enumerate(parts):
        stop = end if k == len(parts) - 1 else at + (end - start) * weight / total
        out.append(Segment(ipa, at, stop))
        at = stop
    return out
