"""Phonemes to visemes to mouth shapes.

The viseme set is the common 15-class one of lip-sync SDKs (sil, PP, FF, TH, DD, kk, CH,
SS, nn, RR, aa, E, ih, oh, ou). Phonemes arrive as IPA characters (hibari's misaki
alphabet, which adds capital letters for diphthongs) or as espeak-ng mnemonics; both map
here. Each viseme has a mouth shape: how far the jaw opens, how much the lips stretch or
round, and whether the upper lip lifts. Values are 0..1 fractions of the renderer's range.
"""

from __future__ import annotations

from dataclasses import dataclass

VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou")


@dataclass(frozen=True, slots=True)
class MouthShape:
    jaw: float = 0.0  # jaw open
    stretch: float = 0.0  # lip corners pulled sideways
    round: float = 0.0  # lips pursed forward
    upper: float = 0.0  # upper lip raise (teeth show)
    press: float = 0.0  # lips pressed together (bilabials)


SHAPES: dict[str, MouthShape] = {
    "sil": MouthShape(),
    "PP": MouthShape(jaw=0.0, press=1.0),
    "FF": MouthShape(jaw=0.12, upper=0.5, stretch=0.1),
    "TH": MouthShape(jaw=0.2, stretch=0.1),
    "DD": MouthShape(jaw=0.25, stretch=0.15),
    "kk": MouthShape(jaw=0.3, stretch=0.1),
    "CH": MouthShape(jaw=0.2, round=0.55, upper=0.3),
    "SS": MouthShape(jaw=0.1, stretch=0.45, upper=0.2),
    "nn": MouthShape(jaw=0.2, stretch=0.15),
    "RR": MouthShape(jaw=0.2, round=0.45),
    "aa": MouthShape(jaw=0.85, stretch=0.1),
    "E": MouthShape(jaw=0.5, stretch=0.55, upper=0.1),
    "ih": MouthShape(jaw=0.35, stretch=0.45),
    "oh": MouthShape(jaw=0.6, round=0.6),
    "ou": MouthShape(jaw=0.3, round=1.0),
}

# IPA and misaki symbols. Misaki writes diphthongs as capitals: A=eɪ I=aɪ O=oʊ W=aʊ Y=ɔɪ.
_IPA: dict[str, str] = {}
for chars, vis in (
    ("pbmɸβ", "PP"), ("fvʋ", "FF"), ("θð", "TH"), ("tdlɾTɖʈɫ", "DD"), ("kɡgŋxɣqɢχʔcɟh", "kk"),
    ("ʃʒʤʧʥʨɕʑçʝj", "CH"), ("szʣʦ", "SS"), ("nɲɳɴ", "nn"), ("ɹrɻʁɽɚɝw", "RR"),
    ("aɑɐæAIWʌ", "aa"), ("eɛɜəᵊœø", "E"), ("iɪyɨᵻ", "ih"), ("oɔɒOY", "oh"), ("uʊɯɤᵝ", "ou"),
):
    for ch in chars:
        _IPA[ch] = vis

# espeak-ng mnemonics (its ASCII phoneme names), by their first letters.
_ESPEAK: dict[str, str] = {
    "p": "PP", "b": "PP", "m": "PP", "f": "FF", "v": "FF", "T": "TH", "D": "TH",
    "t": "DD", "d": "DD", "l": "DD", "k": "kk", "g": "kk", "N": "kk", "h": "kk", "x": "kk",
    "S": "CH", "Z": "CH", "tS": "CH", "dZ": "CH", "j": "CH", "C": "CH",
    "s": "SS", "z": "SS", "n": "nn", "r": "RR", "w": "RR", "R": "RR",
    "a": "aa", "A": "aa", "V": "aa", "e": "E", "E": "E", "@": "E", "3": "E",
    "i": "ih", "I": "ih", "y": "ih", "o": "oh", "O": "oh", "0": "oh", "u": "ou", "U": "ou",
}


def viseme_of(phoneme: str) -> str:
    """The viseme of one phoneme symbol (IPA/misaki or espeak mnemonic); ``sil`` if unknown.

    Stress and length marks are ignored; punctuation, spaces and pauses are ``sil``.
    """
    p = phoneme.strip().lstrip("ˈˌ',%=").rstrip("ː:;")
    if not p or p in ("_", "_:", "||", "|") or not any(ch.isalnum() or ch in "@" or ord(ch) > 127 for ch in p):
        return "sil"
    if p in _IPA:
        return _IPA[p]
    # Two-letter affricates (espeak's IPA writes tʃ, dʒ): the fricative shapes the lips.
    if len(p) >= 2 and p[0] in "td" and p[1] in "ʃʒszɕʑ":
        return _IPA[p[1]]
    if p[:2] in _ESPEAK:
        return _ESPEAK[p[:2]]
    if p[0] in _IPA:
        return _IPA[p[0]]
    return _ESPEAK.get(p[0], "sil")
