"""The Chinese labelled pauses for ``bench turn``: Mandarin speech that stops, finished
("complete") or mid-sentence ("unfinished"), as the VAD hands it on at a pause.

As in ``bench/pauses.py`` (English), each sentence is synthesized whole, here by the
Mandarin voice (``tts: mandarin``), and the unfinished clip is the same synthesis cut where
the ``|`` stands, so it keeps the pitch and pace of a speaker who has not finished. The
voice's own timings (its durations, 12.5 ms frames, as IPA-like segments per initial and
final) say where each character's syllable ends. About half the cuts leave a word that dangles (和, 的, 因为, 一个, 关于...);
the others leave a phrase that would pass for a sentence ("我昨天晚上看书 | 看到了十二点"),
where the words alone cannot tell. Sentences are written in characters only (no digits or
Latin), so every character is one syllable of the voice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from avatarchat.bench.pauses import Pause, Synthesizer, _clip
from avatarchat.engine.events import PhonemeTiming

#: The sentences of ``SENTENCES_ZH`` written after the rules were tuned (the held-out check).
HELD_OUT = frozenset({"我打算明年去北京或者上海工作。", "他跑得很快因为他每天都练习。", "你觉得这件衣服的颜色好看吗？",
                      "我们先去吃饭然后再去看电影。", "请给我一杯热水。", "你能不能说慢一点？", "我从来没有去过南方的城市。",
                      "我在学校里认识了一个朋友他是从英国来的。", "这个周末我想在家休息不想出门。",
                      "我妈妈做的饺子特别好吃每次我都吃很多。", "明天见。", "你住在哪里？"})

#: Sentences; ``|`` marks where the unfinished clip stops (no mark: complete only).
SENTENCES_ZH: tuple[str, ...] = (
    # The cut leaves a word that dangles (a conjunction, 的, a preposition, a measure word).
    # The rules of engine/endofturn_zh.py were tuned on these 36 (up to the held-out group).
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
    # Written after the word rules were tuned on the sentences above: a check that the
    # rules were not fitted to them (bench turn reports them apart, as held_out).
    "我打算明年去北京或者|上海工作。",
    "他跑得很快因为|他每天都练习。",
    "你觉得这件衣服的|颜色好看吗？",
    "我们先去吃饭然后|再去看电影。",
    "请给我一杯|热水。",
    "你能不能|说慢一点？",
    "我从来没有去过|南方的城市。",
    "我在学校里认识了一个朋友|他是从英国来的。",
    "这个周末我想在家休息|不想出门。",
    "我妈妈做的饺子特别好吃|每次我都吃很多。",
    "明天见。",
    "你住在哪里？",
    # Short turns, complete only.
    "现在几点了？",
    "你好。",
    "你喜欢音乐吗？",
    "谢谢你。",
    "为什么天空是蓝色的？",
    "你叫什么名字？",
)

_HAN = re.compile(r"[\u4e00-\u9fff]")
#: A cut stops this long before the syllable's timed end. The voice's timings give a final
#: the voiced frames of the boundary after it (right for the lips), where the next
#: syllable's onset has begun: cut there, whisper heard that onset as one more character in
#: 8 of the first 12 cuts ("我想买一个小", "所以我"); two frames earlier, in 2.
ONSET_GUARD_S = 0.025

#: One syllable as the voice's timings show it: its initial's sounds (none for a syllable
#: without one) and its final's sounds (IPA-like, ``avatar.pinyin_visemes``).
SyllableSounds = tuple[tuple[str, ...], tuple[str, ...]]


def split_zh(marked: str) -> tuple[str, int | None]:
    """The sentence without its mark, and the number of characters before the mark (None:
    no mark)."""
    head, bar, _ = marked.partition("|")
    return marked.replace("|", ""), (len(_HAN.findall(head)) if bar else None)


def syllable_ends(timings: Sequence[PhonemeTiming], syllables: Sequence[SyllableSounds]) -> list[float]:
    """Seconds at which each syllable ends, walking the voice's timings syllable by
    syllable. An initial may be missing (a segment of no frames is not emitted); anything
    else that does not match raises ``ValueError``, so a cut is never guessed."""
    names = [t.phoneme for t in timings]
    at, ends = 0, []
    for k, (initial, final) in enumerate(syllables):
        if initial and tuple(names[at:at + len(initial)]) == initial \
                and tuple(names[at + len(initial):at + len(initial) + len(final)]) == final:
            at += len(initial)
        if tuple(names[at:at + len(final)]) != final:
            raise ValueError(f"syllable {k + 1}: expected {initial + final}, the voice gave {names[at:at + 4]}")
        at += len(final)
        ends.append(timings[at - 1].end)
    if at != len(names):
        raise ValueError(f"{len(names) - at} sounds left after {len(syllables)} syllables")
    return ends


def mandarin_syllables() -> Callable[[str], list[SyllableSounds]]:
    """The sounds of each syllable of a sentence, from the Mandarin voice's own front end
    (its symbol table, pinyin, and the segments its timings are made of)."""
    from avatarchat.avatar.pinyin_visemes import ERHUA, final_segments, initial_segment
    from avatarchat.handlers.tts.mandarin import SYMBOLS
    from avatarchat.handlers.tts.pinyin import SymbolTable, to_phonemes

    table = SymbolTable.load(SYMBOLS.locate())

    def of(sentence: str) -> list[SyllableSounds]:
        out = []
        for syl in to_phonemes(sentence, table).syllables:
            initial = tuple(s.phoneme for s in initial_segment(syl.initial, 0.0, 1.0))
            final = tuple(s.phoneme for s in final_segments(f"{syl.final}{syl.tone}", 0.0, 1.0))
            out.append((initial, final + ((ERHUA,) if syl.er else ())))
        return out

    return of


def make_pauses_zh(tts: Synthesizer, sentences: tuple[str, ...] = SENTENCES_ZH,
                   syllables: Callable[[str], list[SyllableSounds]] | None = None) -> list[Pause]:
    """The labelled pauses of ``sentences`` (blocking: one synthesis per sentence).
    ``syllables``: each sentence's syllable sounds (default: the Mandarin voice's)."""
    sounds = syllables or mandarin_syllables()
    pauses: list[Pause] = []
    for marked in sentences:
        sentence, cut = split_zh(marked)
        audio, timings = tts.synthesize(sentence)
        try:
            per_syllable = sounds(sentence)
            if len(per_syllable) != len(_HAN.findall(sentence)):
                raise ValueError(f"{len(per_syllable)} syllables for {len(_HAN.findall(sentence))} characters")
            ends = syllable_ends(timings, per_syllable)
        except ValueError as exc:
            raise ValueError(f"{sentence!r}: {exc}") from None
        pauses.append(Pause("complete", sentence, sentence, _clip(audio, tts.sample_rate, ends[-1])))
        if cut is not None:
            said = marked.partition("|")[0]
            stop = ends[cut - 1] - ONSET_GUARD_S
            pauses.append(Pause("unfinished", sentence, said, _clip(audio, tts.sample_rate, stop)))
    return pauses
