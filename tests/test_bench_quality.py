"""``avatarchat bench quality``: the question set, the scoring, and a short real run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from avatarchat.bench.quality import Question, in_language, load_questions, score
from avatarchat.cli.main import main


def test_the_set_has_20_english_and_10_chinese_questions_whose_patterns_compile() -> None:
    questions = load_questions()
    assert sum(q.language == "en" for q in questions) == 20
    assert sum(q.language == "zh" for q in questions) == 10
    assert len({q.text for q in questions}) == 30
    for q in questions:
        for pattern in (*q.right, *q.wrong, *q.topic):
            re.compile(pattern)
        # Repeating the question back is never a right answer.
        assert not score(q, q.text)["right"], q.text


def test_a_reply_is_right_only_with_every_right_pattern_and_no_wrong_one() -> None:
    spider = next(q for q in load_questions() if "spider" in q.text)
    assert score(spider, "A spider has eight legs.")["right"]
    assert score(spider, "Spiders have 8 legs.")["right"]
    wrong = score(spider, "A spider has 80 legs, or eight pairs of legs.")
    assert not wrong["right"] and wrong["on_topic"]
    assert not score(spider, "I like turtles.")["on_topic"]
    egg = Question("en", "How do I boil an egg?", ("water", "minute|boil"), (), ("egg",))
    assert score(egg, "Put it in boiling water for nine minutes.")["right"]
    assert not score(egg, "Put it in a pan.")["right"]


def test_the_language_counts_and_lengths_are_measured_per_language() -> None:
    assert in_language("你好，我叫Ava。", "zh") and not in_language("Hello, I am Ava.", "zh")
    assert in_language("Paris.", "en") and not in_language("巴黎 Paris", "en")
    assert in_language("60", "en") and in_language("12", "zh") and not in_language(" ", "en")
    capital = Question("zh", "中国的首都是哪里？", ("北京",), (), ("首都",))
    assert not score(capital, "The capital is Beijing (北京).")["right"]  # mostly English
    s = score(capital, "中国的首都是北京。")
    assert s["right"] and s["chars"] == 8 and s["spoken_s"] == 2.0
    en = score(Question("en", "q", ("blue",)), "The sky is blue today.")
    assert en["words"] == 5 and en["spoken_s"] == 2.0


@pytest.mark.slow
def test_bench_quality_runs_the_default_llm_and_writes_its_scores(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.json"
    assert main(["bench", "quality", "--limit", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    (model, result), = report["models"].items()
    assert model == "smollm2-135m" and result["options"]["temperature"] == 0.0
    assert [r["question"] for r in result["replies"]] == ["What is the capital of France?", "中国的首都是哪里？"]
    assert result["summary"]["en"]["right"] == 1  # "The capital of France is Paris, ..."
    assert result["summary"]["zh"]["questions"] == 1
    assert all(r["total_ms"] > 0 and r["reply"] for r in result["replies"])
