"""bench turn: the labelled pauses (real hibari speech), the rules' scoring, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatarchat.bench.pauses import (
    PREROLL_S,
    RATE,
    SENTENCES,
    TAIL_S,
    Pause,
    make_pauses,
    split,
    through_vad,
    word_ends,
)
from avatarchat.bench.turn import Rules, Scored, score_rules, threshold_sweep, word_verdicts
from avatarchat.cli.main import main
from avatarchat.engine.events import PhonemeTiming

RULES = Rules(complete_ms=250, unfinished_ms=1600, end_ms=1000)


def test_the_set_is_large_enough_and_every_cut_is_mid_sentence() -> None:
    cuts = [split(s) for s in SENTENCES]
    assert sum(1 for _, k in cuts) >= 40 and sum(1 for _, k in cuts if k is not None) >= 40
    for sentence, k in cuts:
        if k is not None:
            assert 1 <= k < len(sentence.split()), sentence
    assert split("I lost my keys | somewhere.") == ("I lost my keys somewhere.", 4)
    assert split("What time is it?") == ("What time is it?", None)


def test_word_ends_come_from_the_spaces_and_refuse_a_mismatch() -> None:
    t = (PhonemeTiming("h", 0.1, 0.2), PhonemeTiming("i", 0.2, 0.3), PhonemeTiming(" ", 0.3, 0.35),
         PhonemeTiming("j", 0.35, 0.5), PhonemeTiming(".", 0.5, 0.8))
    assert word_ends(t, 2) == [0.3, 0.5]
    with pytest.raises(ValueError, match="2 phoneme words for 3 written words"):
        word_ends(t, 3)


def scored(label: str, words: bool | None, p: float) -> Scored:
    pause = Pause(label, "s", "s", np.zeros(10, np.float32))  # type: ignore[arg-type]
    return Scored(pause, "text", words, p, 50.0)


def test_each_rule_gives_its_hangover_and_counts_false_ends() -> None:
    clips = [
        scored("complete", False, 0.9),  # both say finished
        scored("complete", False, 0.3),  # the voice doubts a full stop
        scored("unfinished", True, 0.9),  # dangling words: no voice outweighs them
        scored("unfinished", False, 0.2),  # Whisper's full stop after a phrase, the voice says no
        scored("unfinished", None, 0.7),  # words unsure, the voice says finished
    ]
    r = score_rules(clips, RULES, threshold=0.5, doubtful=[800])
    words, voice, both = r["words"], r["smart_turn"], r["words+smart_turn(doubtful_ms=800)"]
    # words: 250, 250 | 1600, 250, the VAD's 1000
    assert words["complete"]["accuracy"] == 1.0 and words["complete"]["hangover_ms"]["median"] == 250
    assert words["unfinished"]["hangover_ms"]["max"] == 1600 and words["unfinished"]["hangover_ms"]["min"] == 250
    assert words["unfinished"]["false_end_share"] == {"0.4s_pause": round(1 / 3, 3), "0.8s_pause": round(1 / 3, 3)}
    # Smart Turn alone: 250, 1600 | 250, 1600, 250
    assert voice["complete"]["accuracy"] == 0.5 and voice["unfinished"]["accuracy"] == round(1 / 3, 3)
    assert voice["unfinished"]["false_end_share"]["0.4s_pause"] == round(2 / 3, 3)
    # Both: 250, 800 | 1600, 800, 250
    assert both["complete"]["hangover_ms"]["max"] == 800 and both["complete"]["answered_at_complete_ms"] == 0.5
    assert both["unfinished"]["false_end_share"] == {"0.4s_pause": round(1 / 3, 3), "0.8s_pause": round(1 / 3, 3)}
    sweep = threshold_sweep(clips, [0.5, 0.95], RULES)
    assert sweep["0.5"]["smart_turn_accuracy"] == {"complete": 0.5, "unfinished": round(1 / 3, 3)}
    assert sweep["0.95"]["combined_answered_at_complete_ms"] == 0.0
    assert word_verdicts(clips)["unfinished"] == {"complete": 1, "unfinished": 1, "unsure": 1}


def test_a_plain_question_outweighs_a_doubting_voice_as_in_the_engine() -> None:
    """The bench weighs a Chinese question (``Scored.asks``) as ``EndOfTurn`` does: the voice
    is not asked, so a doubting Smart Turn no longer makes it wait ``doubtful_ms``."""
    from dataclasses import replace

    doubted = scored("complete", False, 0.2)
    r = score_rules([doubted, replace(doubted, asks=True)], RULES, threshold=0.5, doubtful=[800])
    both = r["words+smart_turn(doubtful_ms=800)"]["complete"]
    assert both["answered_at_complete_ms"] == 0.5 and both["hangover_ms"]["max"] == 800
    assert r["smart_turn"]["complete"]["accuracy"] == 0.0  # Smart Turn alone still judged on its own


@pytest.fixture(scope="module")
def pauses() -> list[Pause]:
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

    tts = HibariTTS(HibariOptions())
    tts.load()
    return make_pauses(tts, SENTENCES[:2] + SENTENCES[-1:])


@pytest.mark.slow
def test_an_unfinished_pause_is_the_same_speech_cut_short(pauses: list[Pause]) -> None:
    assert [p.label for p in pauses] == ["complete", "unfinished", "complete", "unfinished", "complete"]
    complete, unfinished = pauses[0], pauses[1]
    assert unfinished.said == "I was thinking about the weather today and"
    assert complete.said == complete.sentence == "I was thinking about the weather today and what to wear."
    assert 0.5 * RATE < len(unfinished.audio) < len(complete.audio) - 0.4 * RATE
    # Pre-roll silence, then the same samples up to the cut (before its 10 ms fade).
    pre = int(PREROLL_S * RATE)
    assert not complete.audio[:pre].any() and not complete.audio[-int(TAIL_S * RATE):].any()
    n = len(unfinished.audio) - int(TAIL_S * RATE) - int(0.02 * RATE)
    np.testing.assert_allclose(unfinished.audio[pre:n], complete.audio[pre:n], atol=0.05)
    assert float(np.abs(unfinished.audio[pre:n]).max()) > 0.05  # speech, not silence


@pytest.mark.slow
def test_the_vad_hands_on_each_pause_with_its_own_timing(pauses: list[Pause]) -> None:
    heard, missed = through_vad(pauses)
    assert missed == 0 and [h.label for h in heard] == [p.label for p in pauses]
    for ideal, vad in zip(pauses, heard, strict=True):
        assert vad.said == ideal.said and vad.audio is not ideal.audio
        # The same speech, give or take the VAD's onset (~0.1 s later: hibari's lead-in) and
        # its speech_end (up to ~0.2 s before the last sound has faded out).
        assert -0.6 * RATE < len(vad.audio) - len(ideal.audio) < 0.2 * RATE, ideal.said
        assert float(np.abs(vad.audio[-int(0.05 * RATE):]).max()) < 0.05  # it ends in the pause


@pytest.mark.slow
def test_bench_turn_on_a_few_pauses_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "turn.json"
    assert main(["bench", "turn", "--limit", "2", "--doubtful", "600", "800", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "turn" and report["language"] == "en" and "Chinese" in report["note"]
    assert report["pauses"] == {"complete": 2, "unfinished": 2, "vad_missed": 0}
    assert report["config"] == {"complete_ms": 250, "unfinished_ms": 1600, "vad_end_ms": 1000, "audio_threshold": 0.5}
    assert set(report["rules"]) == {"words", "smart_turn", "words+smart_turn(doubtful_ms=600)",
                                    "words+smart_turn(doubtful_ms=800)"}
    for rule in report["rules"].values():
        assert rule["complete"]["n"] == 2 and "answered_at_complete_ms" in rule["complete"]
        assert set(rule["unfinished"]["false_end_share"]) == {"0.4s_pause", "0.8s_pause"}
    assert report["smart_turn_ms"]["n"] == 4 and report["smart_turn_ms"]["median"] > 0
    assert len(report["clips"]) == 4 and all(0.0 <= c["p"] <= 1.0 for c in report["clips"])
    assert "0.5" in report["threshold_sweep"] and report["machine"]["cpus"] >= 1
    assert set(report["tail_sweep"]) == {"drop_0ms", "drop_50ms", "drop_100ms", "drop_150ms"}
    assert set(report["smart_turn_accuracy_ideal_cuts"]) == {"complete", "unfinished"}
    assert json.loads(capsys.readouterr().out) == report


def test_bench_turn_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "turn", "--limit", "0"]) != 0
    assert main(["bench", "turn", "--threshold", "1.5"]) != 0
    assert "--threshold" in capsys.readouterr().err
