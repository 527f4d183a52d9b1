"""bench turn in Chinese: the labelled set and how its cuts are found (pure; the run on the
Mandarin voice is measured by ``avatarchat bench turn --config configs/zh.yaml``)."""

from __future__ import annotations

import re

import pytest

from avatarchat.bench.pauses_zh import SENTENCES_ZH, char_ends, split_zh
from avatarchat.engine.events import PhonemeTiming


def test_the_set_has_both_kinds_and_every_cut_is_mid_sentence() -> None:
    cuts = [split_zh(s) for s in SENTENCES_ZH]
    assert sum(1 for _, k in cuts if k is not None) >= 30 and sum(1 for _, k in cuts if k is None) >= 6
    for sentence, k in cuts:
        # Characters and marks only: one syllable of the voice per character.
        assert re.fullmatch(r"[\u4e00-\u9fff，。？！]+", sentence), sentence
        if k is not None:
            assert 2 <= k < len(re.findall(r"[\u4e00-\u9fff]", sentence)), sentence
    assert split_zh("我想买一个|新的手机。") == ("我想买一个新的手机。", 5)
    assert split_zh("你好。") == ("你好。", None)


def test_char_ends_are_the_ends_of_the_toned_finals() -> None:
    t = [PhonemeTiming("sil", 0.0, 0.1), PhonemeTiming("n", 0.1, 0.15), PhonemeTiming("i3", 0.15, 0.3),
         PhonemeTiming("#0", 0.3, 0.3), PhonemeTiming("h", 0.3, 0.35), PhonemeTiming("ao3", 0.35, 0.6),
         PhonemeTiming("sil", 0.6, 0.8)]
    assert char_ends(t, 2) == [0.3, 0.6]
    with pytest.raises(ValueError, match="2 toned finals for 3 characters"):
        char_ends(t, 3)
