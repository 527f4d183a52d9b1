"""Whisper in Chinese: simplified output, full-width marks, loops counted in characters,
the character error rate, and the ``whisper-base`` add-on's pins.

The speech tests (the Mandarin voice transcribed back by whisper base) are in
``test_asr_zh_speech.py``; these need no model, except OpenCC's tables where said."""

from __future__ import annotations

import re
from importlib.util import find_spec

import pytest

from avatarchat.bench.asr import ZH_SENTENCES, char_errors
from avatarchat.handlers.asr.chinese import full_width_marks, is_chinese, tokens, whisper_language
from avatarchat.handlers.asr.whisper import BASE_PART1, BASE_PART2, WhisperHandler, WhisperOptions, looks_like_a_loop

needs_opencc = pytest.mark.skipif(find_spec("opencc") is None, reason="avatarchat models add whisper-base")


@pytest.mark.parametrize(("text", "expected"), [
    ("对,这就是我万人敬仰的太乙真人.", "对，这就是我万人敬仰的太乙真人。"),
    ("你好吗?我很好!", "你好吗？我很好！"),
    ("我有3.5个苹果", "我有3.5个苹果"),  # a decimal point stays
    ("我喜欢Python, Java.", "我喜欢Python, Java."),  # marks after Latin words stay
    ("版本是v2.0.", "版本是v2.0."),
    ("已经是全角。", "已经是全角。"),
])
def test_full_width_marks(text: str, expected: str) -> None:
    assert full_width_marks(text) == expected


def test_tokens_count_each_character_and_each_latin_word() -> None:
    assert tokens("我想学Python 3！") == ["我", "想", "学", "python", "3"]
    assert tokens("Hello, world.") == ["hello", "world"]


@pytest.mark.parametrize(("language", "chinese", "code"), [
    ("zh", True, "zh"), ("zh-CN", True, "zh"), ("ZH_tw", True, "zh"), ("en", False, "en"), ("ja", False, "ja"),
])
def test_language_codes(language: str, chinese: bool, code: str) -> None:
    assert is_chinese(language) is chinese and whisper_language(language) == code


@pytest.mark.parametrize(("reference", "hypothesis", "errors"), [
    ("北京是中国的首都。", "北京是中国的首都", 0),  # marks do not count
    ("北京是中国的首都。", "北京是中國的首都。", 1),  # a traditional character is an error
    ("你好，你是谁？", "你好你是谁谁", 1),  # an insertion
    ("今天天气怎么样？", "今天天气样", 2),  # two deletions
    ("谢谢。", "", 2),
])
def test_char_errors(reference: str, hypothesis: str, errors: int) -> None:
    assert char_errors(reference, hypothesis) == (errors, len(tokens(reference)))


def test_the_bench_sentences_have_no_digits_or_latin() -> None:
    # Whisper writes "25" or "二十五" as it likes: a CER must not count that choice.
    assert all(re.fullmatch(r"[\u4e00-\u9fff，。？！]+", s) for s in ZH_SENTENCES)


@pytest.mark.parametrize(("text", "seconds", "loop"), [
    ("你好你好你好你好你好你好你好你好你好你好", 1.0, True),  # 20 characters in a second
    ("我想问一下我想问一下", 3.0, True),  # 5 characters twice
    ("谢谢谢谢谢谢", 2.0, True),  # 2 characters thrice
    ("对不起，对不起。", 2.0, False),  # 3 characters twice is speech
    ("我想学做饭，应该先买什么？", 2.5, False),
    ("好的好的。", 1.0, False),
])
def test_looks_like_a_loop_in_chinese(text: str, seconds: float, loop: bool) -> None:
    assert looks_like_a_loop(text, seconds) is loop


def test_the_prompt_is_chinese_only_for_chinese_on_a_multilingual_model() -> None:
    base = WhisperHandler(WhisperOptions(model="base"))
    assert base.prompt_for("zh") and base.prompt_for("en") == ""
    assert WhisperHandler(WhisperOptions()).prompt_for("zh") == ""  # tiny.en hears English only
    assert WhisperHandler(WhisperOptions(model="base", prompt="")).prompt_for("zh") == ""
    assert WhisperHandler(WhisperOptions(model="base", prompt="人名：李雷。")).prompt_for("en") == "人名：李雷。"


@needs_opencc
def test_chinese_transcripts_come_out_simplified_with_full_width_marks() -> None:
    from avatarchat.handlers.asr.chinese import Simplifier

    handler = WhisperHandler(WhisperOptions(model="base"))
    handler._simplifier = Simplifier()  # what load() sets up, without the model
    assert handler._finish(" 北京市中華人民共和國的首都,對嗎? ", "zh") == "北京市中华人民共和国的首都，对吗？"
    assert handler._finish(" Hello, world. ", "en") == "Hello, world."  # other languages untouched
    keep = WhisperHandler(WhisperOptions(model="base", simplified=False))
    assert keep._finish("中華", "zh") == "中華"


def test_the_addon_pins_the_files_the_handler_checks() -> None:
    from avatarchat import addons
    from avatarchat.handlers.asr.whisper_files import ADDON

    assert addons.get("whisper-base") is ADDON
    assert ADDON.files == (BASE_PART1, BASE_PART2) and ADDON.restriction is None
    path = ADDON.requirements_path()
    assert path is not None and path.is_file()
    pins = dict(re.findall(r"^([a-z0-9-]+)==(\S+) \\$", path.read_text(), re.MULTILINE))
    assert pins == {BASE_PART1.distribution: BASE_PART1.pinned_version,
                    BASE_PART2.distribution: BASE_PART2.pinned_version, "opencc": "1.4.2"}
    # Every pin carries its wheels' sha256 (pip --require-hashes refuses anything else).
    blocks = re.split(r"\n(?=[a-z0-9-]+==)", path.read_text().split("\n", 2)[2])
    assert len(blocks) == 3 and all(re.search(r"--hash=sha256:[0-9a-f]{64}", b) for b in blocks)


def test_without_opencc_chinese_keeps_whispers_script_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    handler = WhisperHandler(WhisperOptions(model="base"))  # no simplifier: OpenCC not installed
    with caplog.at_level("WARNING"):
        assert handler._finish("中華,", "zh") == "中華，"
        assert handler._finish("中華", "zh") == "中華"
    assert caplog.text.count("avatarchat models add whisper-base") == 1


def test_a_missing_opencc_says_which_addon_to_add(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from avatarchat.engine.handler import HandlerLoadError
    from avatarchat.handlers.asr.chinese import Simplifier

    monkeypatch.setitem(sys.modules, "opencc", None)  # import opencc now raises ImportError
    with pytest.raises(HandlerLoadError, match="avatarchat models add whisper-base"):
        Simplifier()
