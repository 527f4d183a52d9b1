"""Text between the LLM and the TTS: cleaning for speech and an incremental clause splitter.

``clean_for_speech`` turns one clause of LLM output into what a voice should say: no emoji,
no markdown markers, no hashtags, single spaces. ``ClauseSplitter`` cuts the streamed reply
into clauses as soon as each is known to be complete, so the TTS can start on the first
clause while the LLM is still writing the rest.

The splitter works on the raw text and the cleaner on each clause, so that split decisions
see the punctuation exactly as the LLM wrote it. Cleaning therefore never relies on a
markdown span being whole: markers are removed one by one, not matched in pairs.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# --- cleaning -----------------------------------------------------------------------------

_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # emoticons, pictographs, transport, flags, supplemental symbols
    "\u2600-\u27bf"  # miscellaneous symbols and dingbats (☀ ✅ ❤)
    "\u2b00-\u2bff"  # arrows and stars (⭐)
    "\u2190-\u21ff"  # arrows
    "\ufe0e\ufe0f\u200d\u20e3"  # variation selectors, zero-width joiner, keycap
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "]+"
)
# Stage directions small chat models act out: "(laughs)", "*smiles*". Only a known list, so
# that a real aside in brackets is still said.
_STAGE_DIRECTION = re.compile(
    r"[(*\[](?:laugh(?:s|ing)?|chuckl(?:es|ing)|giggl(?:es|ing)|smil(?:es|ing)|grin(?:s|ning)?|"
    r"sigh(?:s|ing)?|wink(?:s|ing)?|nod(?:s|ding)?|paus(?:es|ing)|clears throat)[)*\]]",
    re.IGNORECASE,
)
# The same in Chinese replies: "（笑）", "(微笑)".
_STAGE_DIRECTION_ZH = re.compile(r"[(（*\[](?:笑|微笑|大笑|偷笑|叹气|眨眼|点头)[)）*\]]")
_EMOTICON = re.compile(r"(?<!\w)[:;=][-']?[()\[\]DPp/\\|*]+(?!\w)")
_CODE_FENCE = re.compile(r"```[\w+-]*")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+")
_LINE_MARKUP = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|>[ \t]?|[-*+•][ \t]+|\d{1,3}[.)][ \t]+)", re.M)
_HASHTAG_NUMBER = re.compile(r"(?<![\w&])#(\d)")
_HASHTAG = re.compile(r"(?<![\w&])#\w+")
_EMPHASIS = re.compile(r"[*~`|]+|(?<!\w)_+|_+(?!\w)")
_INNER_UNDERSCORE = re.compile(r"(?<=\w)_(?=\w)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?…，。！？、；：])")
_SPACE = re.compile(r"\s+")
_SPOKEN = re.compile(r"\w")


def clean_for_speech(text: str) -> str:
    """What a voice should say for ``text``: one line, no markup; "" when nothing is speakable.

    Removes emoji and text emoticons, code fences and backticks, emphasis markers
    (``**bold**``, ``*italics*``, ``_x_``, ``~~x~~``), headings, quote marks and list
    bullets at line starts, URLs, hashtags, and acted-out stage directions ("(laughs)",
    "*smiles*"); ``[text](url)`` becomes ``text``.
    Hashtags are removed whole, not read as their word: small LLMs append clusters of
    them ("#Friendly #AI") that carry no meaning in speech, and a CamelCase tag would be
    read as one odd word anyway. ``#1`` is kept as "number 1". A result without any
    letter or digit (a lone "!" left by an emoji) is "", so no audio is made for it.
    """
    text = _EMOJI.sub(" ", text)
    text = _STAGE_DIRECTION.sub(" ", text)
    text = _STAGE_DIRECTION_ZH.sub(" ", text)
    text = _EMOTICON.sub(" ", text)
    text = _CODE_FENCE.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _LINE_MARKUP.sub("", text)
    text = _HASHTAG_NUMBER.sub(r"number \1", text)
    text = _HASHTAG.sub(" ", text)
    text = _EMPHASIS.sub("", text)
    text = _INNER_UNDERSCORE.sub(" ", text)  # snake_case reads as two words
    text = _SPACE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text if _SPOKEN.search(text) else ""


# --- splitting ----------------------------------------------------------------------------

# Chinese (full-width) marks end a sentence or clause without a space after them, and
# have no abbreviation or decimal to tell apart: they cut as soon as the next character
# is known.
_SENTENCE_END_ZH = "。！？"
_CLAUSE_END_ZH = "，、；："
_SENTENCE_END = ".!?…" + _SENTENCE_END_ZH
_AT_ONCE = frozenset("!?！？")  # marks that end a reply's first clause as soon as they come
_CLAUSE_END = ",;:—" + _CLAUSE_END_ZH
# Closing marks that may sit between the punctuation and the space: 'He said "no." Then'.
_CLOSERS = "\"'”’)]*_`）」』】》"
#: Han characters: each counts as a word (Chinese has no spaces between words).
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def is_han(ch: str) -> bool:
    """Whether ``ch`` is a Chinese (Han) character."""
    return bool(_HAN.match(ch))


def count_words(text: str) -> int:
    """Words in ``text``: whitespace-separated runs, each Han character one word (a Chinese
    character is about as long to say as a short English word)."""
    return len(_HAN.sub(" ", text).split()) + len(_HAN.findall(text))
#: Words that end with a period without ending the sentence (compared in lower case).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs e.g i.e cf approx fig inc ltd co mt gen gov sen rep "
    "capt lt col sgt no dept est".split()
)


#: Words after which the first clause may end before a joining word, with no punctuation.
FIRST_SOFT_WORDS = 4
#: The reply's opening lasts until this many words were emitted: after a shorter opener
#: ("Sure!", "Yes,", "Of course."), the next clause is cut by the first clause's rules too.
OPENING_WORDS = 4
_JOINING_WORDS = frozenset(
    "and but or because so which that who when while where with without for to of in on at from "
    "like than as if".split()
)


def _joins_next(text: str, i: int) -> bool:
    """Whether the complete word after the whitespace at ``i`` is a joining word."""
    rest = text[i + 1:]
    end = 0
    while end < len(rest) and rest[end].isalpha():
        end += 1
    # Only a word already followed by a space is known: "and" might yet become "android".
    return 0 < end < len(rest) and rest[end].isspace() and rest[:end].lower() in _JOINING_WORDS


#: The Chinese first clause: once it holds this many characters it breaks before a word
#: that opens a new part of the sentence ("中国的首都|是北京。", "月亮离地球|大约有…"), the
#: way an English one breaks before "with": Qwen writes ~15 characters a second on one core,
#: so a 14-character first sentence kept the voice waiting ~0.5 s longer than its first part.
FIRST_SOFT_HAN = 5
#: Words a Chinese sentence goes on with (conjunctions, modal verbs, adverbs of degree and
#: time, measure phrases). Two characters or more: never the tail of another word.
_JOINING_ZH = (
    "因为", "所以", "但是", "可是", "不过", "而且", "并且", "然后", "如果", "虽然", "因此", "于是",
    "以及", "或者", "大约", "大概", "非常", "特别", "已经", "应该", "可以", "能够", "需要", "通过",
    "由于", "之所以", "一种", "一个", "一些", "一道", "就是", "也是", "都是",
)
#: Characters that make one word with what follows them: 不可以, 每一个, 这一些, 第一个.
_BOUND_BEFORE = frozenset("不没每某哪这那第唯统单同万逐一")
#: The copula, alone: not after a character it makes a word with (总是, 但是, 还是, 于是…).
_NOT_BEFORE_SHI = frozenset("于但还可就总都也不要正只凡倒硬若而或即乃算真像老更又越")


def _joins_next_zh(text: str, i: int) -> bool:
    """Whether a joining word starts right after the Han character at ``i``."""
    rest = text[i + 1:]
    if text[i] in _BOUND_BEFORE:
        return False
    if rest.startswith(_JOINING_ZH):
        return True
    # "是" only once the next character is known (是否 is not the copula).
    return rest[:1] == "是" and text[i] not in _NOT_BEFORE_SHI and len(rest) > 1 and is_han(rest[1]) \
        and rest[1] != "否"


class Clause(NamedTuple):
    """One clause and whether it closes a sentence or a line (a list item, a heading), so
    that what has been said so far is whole."""

    text: str
    ends_sentence: bool


class ClauseSplitter:
    """Cuts streamed text into clauses; feeding it in any pieces gives the same clauses
    (but see the first clause's ``!`` and ``?`` below).

    A clause ends:

    * at a newline (list items and headings are separate units);
    * after ``. ! ? …`` (plus closing quotes/brackets) followed by whitespace and a word
      that does not start in lower case — not after an abbreviation ("Dr. Smith", "e.g."),
      an initial ("J. Smith") or a list number ("1. First"); decimals ("3.5") and times
      have no space after the point, so they never split;
    * after ``, ; : —`` followed by whitespace (``—`` also without), but only once the
      clause holds ``first_min_words`` words for a clause of the reply's opening (start
      the voice early: "Yes," "Well," go at once), ``min_words`` for later ones (audio is
      already playing, and longer clauses get better intonation);
    * at the first space after ``max_words`` words when no punctuation came (run-ons);
      for a clause of the opening, after ``first_max_words``, and already before a
      joining word ("and", "with", "of"…) once it holds ``FIRST_SOFT_WORDS``: the user
      waits for it. In Chinese (each Han character a word), before a joining word
      (因为, 大约, 可以, the copula 是…) once it holds ``FIRST_SOFT_HAN`` characters.

    The opening is the clauses that start before ``opening_words`` words have been
    emitted: the first clause, and after a short one ("Sure!", "Yes,") the next too, which
    has only the short one's playing time (~0.4 s) to be written and synthesized.
    ``opening_words=1, first_min_words=4`` is the rule before issue 16 (only the first
    clause, a comma after 4 words).

    The reply's first clause ends at a ``!`` or ``?`` at once (``first_marks_at_once``),
    without waiting for the next token (one token less to wait for on "Sure!"); so when it
    arrives in pieces, a second mark or closing quote after it ("Wow!!", '"Hi!"') starts
    the next clause, where it cleans to nothing said. Otherwise:
    A sentence end is decided only once the next non-space character is known, so a
    clause is emitted one token after its punctuation at the latest. ``flush`` returns the
    rest. Clauses are stripped and never empty.
    """

    def __init__(self, first_min_words: int = 1, min_words: int = 8, max_words: int = 30,
                 first_max_words: int | None = None, opening_words: int = OPENING_WORDS,
                 first_marks_at_once: bool = True) -> None:
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words or max_words
        self.min_words = min_words
        self.max_words = max_words
        self.opening_words = opening_words
        self.first_marks_at_once = first_marks_at_once
        self._pending = ""
        self._words = 0  # words in the clauses emitted so far

    @property
    def words_emitted(self) -> int:
        """Words in the clauses emitted so far (``feed`` and ``flush``)."""
        return self._words

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; return the clauses it completed (possibly none)."""
        return [clause.text for clause in self.feed_clauses(delta)]

    def feed_clauses(self, delta: str) -> list[Clause]:
        """``feed``, telling for each clause whether it ends a sentence or a line."""
        self._pending += delta
        out: list[Clause] = []
        while (cut := self._find_cut(self._pending)) is not None:
            at_newline = self._pending[cut:cut + 1] == "\n"
            clause = self._pending[:cut].strip()
            self._pending = self._pending[cut:].lstrip()
            if clause:
                out.append(Clause(clause, at_newline or ends_with_sentence_end(clause)))
                self._words += count_words(clause)
        return out

    def flush(self) -> list[str]:
        """The remainder as a final clause (if any text is left); the splitter is then empty."""
        rest, self._pending = self._pending.strip(), ""
        if not rest:
            return []
        self._words += count_words(rest)
        return [rest]

    def _find_cut(self, text: str) -> int | None:
        """Index just past the first complete clause, or None until more text is needed."""
        n = len(text)
        first = self._words < self.opening_words  # a clause of the opening
        min_words = self.first_min_words if first else self.min_words
        max_words = self.first_max_words if first else self.max_words
        words, in_word = 0, False  # words begun in text[:i + 1]
        for i, ch in enumerate(text):
            han = is_han(ch)
            if han or not ch.isspace() and not in_word:
                words += 1
            in_word = not ch.isspace() and not han
            if ch == "\n":
                if text[:i].strip():
                    return i
            elif ch in _SENTENCE_END_ZH or ch in _CLAUSE_END_ZH:
                j = i + 1
                while j < n and (text[j] in _SENTENCE_END or text[j] in _CLOSERS):
                    j += 1
                if j == n:
                    if self.first_marks_at_once and self._words == 0 and set(text[i:j]) <= _AT_ONCE:
                        return j  # "好的！": said at once, as "Sure!"
                    return None  # a closing quote may follow
                if ch in _SENTENCE_END_ZH or words >= min_words:
                    return j
            elif ch in _SENTENCE_END:
                j = i + 1
                while j < n and (text[j] in _SENTENCE_END or text[j] in _CLOSERS):
                    j += 1
                if j == n:
                    if self.first_marks_at_once and self._words == 0 and set(text[i:j]) <= _AT_ONCE:
                        # The reply's first words ("Sure!", "Really?") are what the user
                        # waits for; the next token can only add a mark or a closing quote.
                        return j
                    return None  # the next characters decide
                if not text[j].isspace():
                    continue  # "3.5", "e.g", "?!" inside a run
                k = j
                while k < n and text[k].isspace():
                    k += 1
                if k == n:
                    return None
                if self._ends_sentence(text, i, j, text[k]):
                    return j
            elif ch in _CLAUSE_END:
                j = i + 1
                while j < n and text[j] in _CLOSERS:
                    j += 1
                if j == n:
                    return None
                if (ch == "—" or text[j].isspace()) and words >= min_words:
                    return j
            elif ch.isspace() and words >= max_words:
                return i
            elif han and words >= self.max_words and i + 1 < n and is_han(text[i + 1]):
                # A run-on Chinese clause: no space to wait for. Not at the opening's shorter
                # limit: a cut between characters may split a word (编|程), so only when
                # the clause is long enough that its intonation breaks anyway.
                return i + 1
            elif han and first and words >= FIRST_SOFT_HAN and _joins_next_zh(text, i):
                return i + 1
            elif ch.isspace() and first and words >= FIRST_SOFT_WORDS and _joins_next(text, i):
                # The first clause is what the user waits for: rather than wait for a comma
                # that may come 15 words later, break before a joining word ("... with").
                return i
        return None

    @staticmethod
    def _ends_sentence(text: str, i: int, j: int, next_char: str) -> bool:
        if next_char.islower():
            return False  # "e.g. the", "wait... what"
        if text[i:j].rstrip(_CLOSERS) != ".":
            return True  # "!", "?", "…", "..."
        words = text[:i].split()
        word = words[-1].lstrip("(\"'“‘*_") if words else ""
        if word.lower() in ABBREVIATIONS:
            return False
        if len(word) == 1 and word.isalpha() and word.isupper():
            return False  # an initial: "J. Smith"
        if word.isdigit() and len(words) == 1:
            return False  # a list number: "1. First"
        return True


def ends_with_sentence_end(text: str) -> bool:
    """Whether ``text`` ends with ``. ! ? …``, closing quotes and brackets aside."""
    return text.rstrip().rstrip(_CLOSERS).endswith(tuple(_SENTENCE_END))


def without_dangling_end(clause: str) -> str:
    """``clause`` cut at the token cap, less what cannot end a spoken phrase: a bracket left
    open ("the Ares (Greek:") and trailing clause punctuation ("and so on:")."""
    opened = max(clause.rfind("("), clause.rfind("["))
    if opened > max(clause.rfind(")"), clause.rfind("]")):
        clause = clause[:opened]
    return clause.rstrip().rstrip(_CLAUSE_END + "-").rstrip()
