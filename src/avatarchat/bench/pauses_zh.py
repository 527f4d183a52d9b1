"""The Chinese labelled pauses for ``bench turn``: Mandarin speech that stops, finished
("complete") or mid-sentence ("unfinished"), as the VAD hands it on at a pause.

As in ``bench/pauses.py`` (English), each sentence is synthesized whole, here by the
Mandarin voice (``tts: mandarin``), and the unfinished clip is the same synthesis cut where
the ``|`` stands, so it keeps the pitch and pace of a speaker who has not finished. The
voice's own durations (12.5 ms frames per initial and final) say where each character's
syllable ends. About half the cuts leave a word that dangles (和, 的, 因为, 一个, 关于...);
the others leave a phrase that would pass for a sentence ("我昨天晚上看书 | 看到了十二点"),
where the words alone cannot tell. Sentences are written in characters only (no digits or
Latin), so every character is one syllable of the voice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from avatarchat.bench.pauses import Pause, Synthesizer, _clip
from avatarchat.engine.events import PhonemeTiming

#: Sentences; ``|`` marks where the unfinished clip stops (no mark: complete only).
SENTENCES_ZH: tuple[str, ...] = (
    # The cut leaves a word that dangles (a conjunction, 的, a preposition, a measure word).
    "我今天早上去了超市和|银行。",
    "我想买一个|新的手机。",
    "如果明天下雨的话|我们就在家看电影。",
    "我最喜欢的|水果是苹果。",
    "因为我很累所以|我想早点睡觉。",
    "你觉得我应该|学中文还是日语？",
    "我昨天看了一部电影但是|我不太喜欢。",
    "我想知道关于|长城的历史。",
    "吃完饭以后|我们去散步吧。",
    "我小时候住在|一个很小的村子里。",
    "我的妹妹喜欢画画还有|唱歌。",
    "你可以给我推荐一些|好看的电视剧吗？",
    "我正在学习怎么|做中国菜。",
    "请你把|窗户关上。",
    "我每天都|喝一杯牛奶。",
    # The cut leaves a phrase that could pass for a whole sentence.
    "你能告诉我|怎么去火车站吗？",
    "请帮我查一下|去上海的机票。",
    "我和我的朋友|周末要去爬山。",
    "你知道为什么|猫喜欢睡觉吗？",
    "我觉得这本书|非常有意思。",
    "虽然今天很冷|但是我还是想出去。",
    "我昨天晚上看书|看到了十二点。",
    "今天的天气很好|我们去公园走走吧。",
    "我弟弟买了一辆新车|虽然他还不会开。",
    "北京的冬天很冷|经常下雪。",
    "我想喝一杯咖啡|不要加糖。",
    "我丢了我的钥匙|可能在家里。",
    "我们下个月去日本旅游|你想一起去吗？",
    "这家饭店的菜很好吃|就是有点贵。",
    "我每天早上六点起床|然后去跑步。",
    # Short turns, complete only.
    "现在几点了？",
    "你好。",
    "你喜欢音乐吗？",
    "谢谢你。",
    "为什么天空是蓝色的？",
    "你叫什么名字？",
)

_HAN = re.compile(r"[\u4e00-\u9fff]")


def split_zh(marked: str) -> tuple[str, int | None]:
    """The sentence without its mark, and the number of characters before the mark (None:
    no mark)."""
    head, bar, _ = marked.partition("|")
    return marked.replace("|", ""), (len(_HAN.findall(head)) if bar else None)


def char_ends(timings: Sequence[PhonemeTiming], n_chars: int) -> list[float]:
    """Seconds at which each character's syllable ends, from the voice's timings: a
    syllable's sounds carry its index in ``PhonemeTiming.phoneme`` order, one toned final
    per character (``ao3``), pauses and boundaries (``sil``, ``#0``-``#3``) excluded.
    Raises ``ValueError`` if the finals are not one per character."""
    finals = [t for t in timings if _is_final(t.phoneme)]
    if len(finals) != n_chars:
        raise ValueError(f"{len(finals)} toned finals for {n_chars} characters")
    return [t.end for t in finals]


def _is_final(phoneme: str) -> bool:
    return len(phoneme) > 1 and phoneme[-1] in "12345" and not phoneme.startswith("#")


def make_pauses_zh(tts: Synthesizer, sentences: tuple[str, ...] = SENTENCES_ZH) -> list[Pause]:
    """The labelled pauses of ``sentences`` (blocking: one synthesis per sentence)."""
    pauses: list[Pause] = []
    for marked in sentences:
        sentence, cut = split_zh(marked)
        audio, timings = tts.synthesize(sentence)
        try:
            ends = char_ends(timings, len(_HAN.findall(sentence)))
        except ValueError as exc:
            raise ValueError(f"{sentence!r}: {exc}") from None
        pauses.append(Pause("complete", sentence, sentence, _clip(audio, tts.sample_rate, ends[-1])))
        if cut is not None:
            said = marked.partition("|")[0]
            pauses.append(Pause("unfinished", sentence, said, _clip(audio, tts.sample_rate, ends[cut - 1])))
    return pauses
