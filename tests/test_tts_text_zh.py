"""Chinese replies through the TTS text stage (handlers/tts/text.py): clauses end at full-width
marks with no space after them, Han characters count as words, cleaning keeps Chinese.
(English behaviour is tests/test_tts_text.py's, unchanged.)"""

from __future__ import annotations

import pytest

from avatarchat.handlers.tts.text import (
    Clause,
    ClauseSplitter,
    clean_for_speech,
    count_words,
    ends_with_sentence_end,
    without_dangling_end,
)

REPLY = "好的！北京是中国的首都，也是一座历史悠久的城市。它有很多名胜古迹，比如故宫和长城。我想，你会喜欢。你想去哪里？"


def clauses(text: str, step: int) -> list[Clause]:
    s = ClauseSplitter(first_max_words=8, opening_words=4)
    out: list[Clause] = []
    for i in range(0, len(text), step):
        out += s.feed_clauses(text[i:i + step])
    return out + [Clause(rest, ends_with_sentence_end(rest)) for rest in s.flush()]


@pytest.mark.parametrize("step", [1, 2, 5, len(REPLY)])
def test_a_chinese_reply_is_cut_at_its_marks_in_any_pieces(step: int) -> None:
    assert clauses(REPLY, step) == [
        Clause("好的！", True),
        Clause("北京是中国的首都，", False),  # the opening: cut at its comma
        Clause("也是一座历史悠久的城市。", True),
        Clause("它有很多名胜古迹，", False),  # later: a comma once the clause has 8 words (characters)
        Clause("比如故宫和长城。", True),
        Clause("我想，你会喜欢。", True),  # "我想，" has 2 words: no cut at its comma
        Clause("你想去哪里？", True),
    ]


def test_a_closing_quote_stays_with_its_sentence() -> None:
    assert [c.text for c in clauses("他说：“今天很冷。”然后就走了。", 1)] == ["他说：", "“今天很冷。”", "然后就走了。"]


def test_a_run_on_chinese_clause_is_cut_between_characters() -> None:
    run_on = "这座城市的夏天热得让人受不了街上的行人都躲在树荫下面乘凉小孩子们在河边玩水老人们坐在院子里聊天"
    out = clauses(run_on, 3)
    # At 30 characters (max_words), not at the opening's 8: a cut may split a word.
    assert [len(c.text) for c in out] == [30, len(run_on) - 30] and "".join(c.text for c in out) == run_on
    assert clauses("Python是一种高级编程语言，广泛用于数据处理。", 1)[0].text == "Python是一种高级编程语言，"


@pytest.mark.parametrize(("reply", "first"), [
    ("月亮离地球大约有38万公里。", "月亮离地球"),  # before 大约, once 5 characters are there
    ("天空之所以是蓝色的，是因为阳光散射。", "天空之所以"),  # the copula after a full subject
    ("今天晚上应该做一道烤鸡胸肉。", "今天晚上应该做"),
    ("中国的首都是北京。", "中国的首都是北京。"),  # 都是 may be "all are": not cut there
    ("他每一个问题都回答了。", "他每一个问题都回答了。"),  # 每一个 is one word
    ("我们不可以这样做。", "我们不可以这样做。"),  # nor 不|可以
    ("天是否会下雨呢？", "天是否会下雨呢？"),  # 是否 is not the copula
])
def test_the_first_chinese_clause_breaks_before_a_joining_word(reply: str, first: str) -> None:
    """Qwen writes ~15 characters a second: the voice starts on the sentence's first part."""
    for pieces in (1, 2, 3):
        out = clauses(reply, pieces)
        assert out[0].text == first and "".join(c.text for c in out) == reply


def test_mixed_text_keeps_its_english_words_in_the_clause() -> None:
    assert [c.text for c in clauses("我喜欢Python和AI，你呢？", 2)] == ["我喜欢Python和AI，", "你呢？"]


def test_han_characters_count_as_words() -> None:
    assert count_words("我喜欢Python和AI") == 6
    assert count_words("Hello there, my friend") == 4  # English as before


@pytest.mark.parametrize(("text", "said"), [
    ("（笑）你好😀！", "你好！"),
    ("😀！！", ""),
    ("。。", ""),
    ("**重点**是这个。", "重点是这个。"),
    ("你好 ，世界 。", "你好，世界。"),
])
def test_cleaning_chinese(text: str, said: str) -> None:
    assert clean_for_speech(text) == said


def test_sentence_ends_and_dangling_ends_in_chinese() -> None:
    assert ends_with_sentence_end("好的。") and ends_with_sentence_end("真的吗？”")
    assert not ends_with_sentence_end("我觉得，")
    assert without_dangling_end("比如说：") == "比如说"
