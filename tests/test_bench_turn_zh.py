"""bench turn in Chinese: the labelled set and how its cuts are found (pure; the run on the
Mandarin voice is measured by ``avatarchat bench turn --config configs/zh.yaml``)."""

from __future__ import annotations

import re

import pytest

from avatarchat.bench.pauses_zh import SENTENCES_ZH, split_zh, syllable_ends
from avatarchat.engine.handler import HandlerLoadError
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


def test_syllable_ends_walk_the_voices_segments() -> None:
    t = [PhonemeTiming("n", 0.1, 0.15), PhonemeTiming("i", 0.15, 0.3),  # 你
         PhonemeTiming("x", 0.3, 0.35), PhonemeTiming("a", 0.35, 0.5), PhonemeTiming("u", 0.5, 0.6)]  # 好
    assert syllable_ends(t, [(("n",), ("i",)), (("x",), ("a", "u"))]) == [0.3, 0.6]
    # An initial of no frames is not in the timings: the syllable still ends at its final.
    assert syllable_ends(t[1:], [(("n",), ("i",)), (("x",), ("a", "u"))]) == [0.3, 0.6]
    with pytest.raises(ValueError, match="syllable 2"):
        syllable_ends(t, [(("n",), ("i",)), (("x",), ("o",))])
    with pytest.raises(ValueError, match="left after"):
        syllable_ends(t, [(("n",), ("i",))])


@pytest.mark.slow
def test_every_sentence_is_cut_at_a_syllable_end_of_the_mandarin_voice() -> None:
    # The real voice (the mandarin-voice add-on): each sentence's timings align with its
    # syllables, and each cut leaves the words before the mark, shorter than the whole.
    from avatarchat.bench.pauses_zh import make_pauses_zh
    from avatarchat.handlers.tts.mandarin import MandarinOptions, MandarinTTS

    tts = MandarinTTS(MandarinOptions())
    try:
        tts.load()
    except HandlerLoadError as exc:
        pytest.skip(f"avatarchat models add mandarin-voice --accept-licence ({exc})")
    pauses = make_pauses_zh(tts)
    complete = {p.sentence: p for p in pauses if p.label == "complete"}
    unfinished = [p for p in pauses if p.label == "unfinished"]
    assert len(complete) == len(SENTENCES_ZH) and len(unfinished) == sum("|" in s for s in SENTENCES_ZH)
    for p in unfinished:
        assert p.sentence.startswith(p.said)
        assert 0.3 < len(p.audio) / len(complete[p.sentence].audio) < 0.95, p.said
