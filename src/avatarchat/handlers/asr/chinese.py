"""What whisper's Chinese needs after decoding: simplified characters, full-width marks,
and a way to count what was said (one token per character).

Whisper was trained on Chinese written both ways and writes traditional characters now and
then (北京市中華人民共和國); OpenCC's ``t2s`` table (the ``opencc`` package, a C++ library
with its dictionaries inside the wheel, no other dependency) turns them into simplified
ones, phrase by phrase, in well under a millisecond. Whisper also writes half-width marks
after Chinese characters at times (对,这就是我); the end-of-turn rules and the page expect
the full-width ones.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from avatarchat.engine.handler import HandlerLoadError

#: The add-on that installs whisper base and OpenCC.
ADDON_HINT = "avatarchat models add whisper-base"
#: Read by whisper as the speech before this one: a simplified-Chinese sentence with a full
#: stop steers it to simplified characters and to punctuation (bench asr measures it).
DEFAULT_PROMPT = "以下是普通话的句子。"

_CJK_CHAR = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
_TOKEN = re.compile(rf"{_CJK_CHAR}|[a-z0-9']+")
_HALF_TO_FULL = {",": "，", "?": "？", "!": "！", ";": "；", ":": "：", ".": "。"}
# A half-width mark right after a Chinese character, not inside a number ("3.5") or a name.
_HALF_MARK = re.compile(rf"(?<={_CJK_CHAR})([,?!;:.])(?![0-9A-Za-z])")


def is_chinese(language: str) -> bool:
    """``zh``, ``zh-CN``, ``zh_TW``...: whisper's ``zh``."""
    return language.lower().replace("_", "-").split("-")[0] == "zh"


def whisper_language(language: str) -> str:
    """Whisper's code for ``language`` (``zh-CN`` -> ``zh``; others as given)."""
    return "zh" if is_chinese(language) else language


def tokens(text: str) -> list[str]:
    """Lower-cased words, each Chinese character a word of its own (marks dropped): what a
    character error rate counts, and what a loop repeats."""
    return _TOKEN.findall(text.lower())


def full_width_marks(text: str) -> str:
    """Half-width , ? ! ; : . right after a Chinese character made full-width."""
    return _HALF_MARK.sub(lambda m: _HALF_TO_FULL[m.group(1)], text)


class Simplifier:
    """Traditional -> simplified Chinese (OpenCC ``t2s``). Thread-safe: one converter,
    used under a lock (OpenCC's C++ object is not documented as safe to share)."""

    def __init__(self) -> None:
        try:
            import opencc
        except ImportError as exc:
            raise HandlerLoadError(f"Chinese transcripts need OpenCC (opencc): {ADDON_HINT}") from exc
        self._converter: Any = opencc.OpenCC("t2s")
        self._lock = threading.Lock()

    def __call__(self, text: str) -> str:
        if not text:
            return text
        with self._lock:
            return str(self._converter.convert(text))
