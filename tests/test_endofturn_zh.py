"""Chinese end-of-turn word rules (engine.endofturn_zh): pure functions, no models.

The cases are the kinds of transcript whisper base writes for a pause in Chinese: full-width
marks mostly, half-width ones after a CJK character now and then, a full stop after a phrase
said mid-sentence, and no mark at all at times."""

from __future__ import annotations

import pytest

from avatarchat.engine.endofturn_zh import DANGLING, TRAILING, looks_unfinished_zh


@pytest.mark.parametrize(("text", "verdict"), [
    # Questions and suggestions closed by a particle: complete, with or without a mark.
    ("你好吗？", False),
    ("你今天去哪里了呢？", False),
    ("我们一起去吧", False),
    ("你会说英语吗", False),
    ("这是什么?", False),  # half-width mark
    ("你叫什么", False),
    ("为什么天是蓝色的？", False),  # 的 closed by a question mark
    ("你是怎么知道的?", False),
    # Statements closed by a mark.
    ("北京是中国的首都。", False),
    ("我今天很累！", False),
    ("今天很暖和。", False),  # 暖和 is not the conjunction 和
    ("我也想参与。", False),
    ("好的。", False),  # answers that end in 的
    ("是的", False),
    ("真的？", False),
    ("他说：“我明天来。”", False),  # closing quote after the full stop
    # Open marks: a clause that goes on.
    ("我想问一下，", True),
    ("苹果、香蕉、", True),
    ("我觉得,", True),  # half-width comma after a CJK character
    ("然后……", True),
    ("我想想...", True),
    # Conjunctions and clause openers: unfinished whatever mark whisper put after them.
    ("我喜欢猫和", True),
    ("我喜欢猫和。", True),
    ("我去商店是因为。", True),
    ("但是", True),
    ("所以", True),
    ("然后。", True),
    ("如果明天下雨的话", True),
    ("我小时候吃饭的时候。", True),
    ("你想喝茶还是", True),
    ("我跟", True),
    ("呃", True),
    ("我想知道关于。", True),  # a preposition never ends a sentence
    ("请你把", True),
    # A sentence opened by 虽然/如果… without its main clause.
    ("虽然今天很冷。", True),
    ("如果明天下雨。", True),
    ("虽然今天很冷，但是我还是想出去。", False),
    ("如果明天下雨我们就在家看电影。", False),  # whisper left out the comma
    ("如果你是我，你会怎么做？", False),
    ("即使下雨我也去。", False),
    ("今天虽然很冷。", True),  # after a short subject
    ("我弟弟买了一辆新车虽然他还不会开。", False),  # after its main clause
    # A structural 的 leaves a noun phrase open.
    ("我最喜欢的", True),
    ("我最喜欢的。", True),
    ("这是我妈妈做的。", True),  # a statement waits the longer hangover: the cost of the rule
    # No mark: a word that wants more.
    ("我想", True),
    ("请告诉我关于", True),
    ("我想要一个", True),
    ("今天天气很", True),
    ("你能帮我", True),
    ("我不想", None),  # a refusal, not a verb left open
    ("是", None),  # the whole utterance: an answer
    # Closed by a mark, the same words are whisper's sentence.
    ("我想。", False),
    ("我会。", False),
    # The words cannot tell.
    ("今天天气不错", None),
    ("我今年二十五岁", None),
    ("我想学Python", None),
    ("", None),
    ("   ", None),
])
def test_looks_unfinished_zh(text: str, verdict: bool | None) -> None:
    assert looks_unfinished_zh(text) is verdict


def test_the_word_lists_do_not_overlap() -> None:
    # A word in both would be judged by whichever rule runs first: keep the lists apart.
    assert not DANGLING & TRAILING


@pytest.mark.parametrize(("text", "asks"), [
    ("你好吗？", True),
    ("你会说英语吗", True),
    ("我们一起去吧。", True),
    ("你知道为什么？", True),
    ("为什么天是蓝色的？", True),
    ("北京是中国的首都。", False),
    ("你觉得我应该学中文还是日语。", False),  # whisper's full stop: the words are not enough
    ("我呢，", False),  # a topic, not a question
    ("你喜欢猫还是？", False),  # a dangling word outweighs the mark
    ("", False),
])
def test_asks_zh(text: str, asks: bool) -> None:
    from avatarchat.engine.endofturn_zh import asks_zh

    assert asks_zh(text) is asks
