"""``avatarchat bench quality``: are the LLM's answers right, on topic and short enough to speak?

The question set (``quality.yaml``: 20 everyday English questions, 10 Chinese) is asked one
question per fresh conversation (no history), greedy by default (temperature 0, so a run
repeats), through the handler's own ``handle`` (the same speaker-label stripping and
fallback as in a session). Each reply is scored: right (every ``right`` pattern matches,
no ``wrong`` one does), on topic (a ``topic`` pattern matches, in the question's language)
and its length: words (English), characters (Chinese) and an estimate of the seconds it
takes to say (2.5 words/s; 4 characters/s). Questions in the config's language use its
persona; the others the default English persona or ``ZH_PERSONA`` (``configs/zh.yaml``'s).

``--models`` runs the config's ``local`` LLM once per model, each with its own defaults
(``handlers/llm/local.py`` ``MODEL_DEFAULTS``) and the config's other options.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from avatarchat.bench.stats import machine, summarize
from avatarchat.config import Config
from avatarchat.engine.events import ReplyEnd, ReplyText, TimingMark, UserTranscript
from avatarchat.engine.handler import SessionInfo, SessionSettings
from avatarchat.engine.pipeline import Pipeline
from avatarchat.handlers.llm.base import ChatLLM
from avatarchat.handlers.llm.local import MODEL_DEFAULTS, LocalLLM, LocalLLMOptions

QUESTIONS = Path(__file__).with_name("quality.yaml")
#: The Chinese persona of ``configs/zh.yaml``, for Chinese questions under an English config.
ZH_PERSONA = "你是一个名叫Ava的AI助手。请用中文回答，每次只说一两句话。"
WORDS_PER_S = 2.5  # English speech, ~150 words a minute
CHARS_PER_S = 4.0  # Mandarin speech, ~240 characters a minute
_CJK = re.compile(r"[\u3400-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Question:
    language: str  # "en" or "zh"
    text: str
    right: tuple[str, ...]
    wrong: tuple[str, ...] = ()
    topic: tuple[str, ...] = ()


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [Question(lang, q["q"], tuple(q["right"]), tuple(q.get("wrong", ())), tuple(q.get("topic", ())))
            for lang in ("en", "zh") for q in doc[lang]]


def _matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.IGNORECASE) is not None


def in_language(reply: str, language: str) -> bool:
    """Chinese: mostly Chinese characters (a Latin letter counts a third of one: "Ava" is
    one name); English: none. A reply of digits only ("60") is in either language."""
    cjk, latin = len(_CJK.findall(reply)), len(_LATIN.findall(reply))
    if not reply.strip():
        return False
    return cjk >= latin / 3 and (cjk > 0 or latin == 0) if language == "zh" else cjk == 0


def score(q: Question, reply: str) -> dict[str, Any]:
    """Right / on topic / length of one reply (see the module docstring)."""
    lang_ok = in_language(reply, q.language)
    right = lang_ok and all(_matches(p, reply) for p in q.right) and not any(_matches(p, reply) for p in q.wrong)
    on_topic = right or (lang_ok and any(_matches(p, reply) for p in (q.topic or q.right)))
    words = len(reply.split())
    chars = len(_CJK.findall(reply))
    spoken = chars / CHARS_PER_S if q.language == "zh" else words / WORDS_PER_S
    return {"right": right, "on_topic": on_topic, "in_language": lang_ok, "words": words,
            "chars": chars, "spoken_s": round(spoken, 2)}


async def ask(llm: ChatLLM[Any], q: Question, persona: str) -> dict[str, Any]:
    """One question in a fresh conversation: the reply, its timings, its score."""
    ctx = llm.create_context(SessionInfo("quality", SessionSettings(system_prompt=persona, language=q.language)))
    marks: dict[str, float] = {}
    reply, truncated = "", False
    t0 = time.perf_counter()
    async for event in llm.handle(ctx, UserTranscript(1, q.text)):
        if isinstance(event, TimingMark):
            marks[event.name] = time.perf_counter()
        elif isinstance(event, ReplyEnd):
            reply, truncated = event.text, event.truncated
        elif isinstance(event, ReplyText):
            pass
    first = marks.get("llm_first_token")
    return {"language": q.language, "question": q.text, "reply": reply.strip(), "truncated": truncated,
            "first_token_ms": round((first - t0) * 1000) if first else None,
            "total_ms": round((time.perf_counter() - t0) * 1000), **score(q, reply)}


def llm_for(config: Config, model: str | None) -> ChatLLM[Any]:
    """The config's LLM handler, or its ``local`` LLM switched to ``model`` with that model's
    own defaults (options the config set that differ per model are dropped)."""
    llm = Pipeline.build(config).handler("llm")
    if model is None:
        assert isinstance(llm, ChatLLM)
        return llm
    if not isinstance(llm, LocalLLM):
        raise ValueError("--models needs a config whose llm handler is `local`")
    per_model = {k for defaults in MODEL_DEFAULTS.values() for k in defaults} | {"repeat_penalty", "repeat_last_n"}
    kept = {k: v for k, v in llm.options.model_dump(exclude_unset=True).items() if k not in per_model}
    switched = LocalLLM(LocalLLMOptions.model_validate(kept | {"model": model}))
    switched.use_session(config.session)
    return switched


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lang in ("en", "zh"):
        mine = [r for r in rows if r["language"] == lang]
        if not mine:
            continue
        out[lang] = {
            "questions": len(mine),
            "right": sum(r["right"] for r in mine),
            "on_topic": sum(r["on_topic"] for r in mine),
            "truncated": sum(r["truncated"] for r in mine),
            "words" if lang == "en" else "chars": summarize(r["words" if lang == "en" else "chars"] for r in mine),
            "spoken_s": summarize(r["spoken_s"] for r in mine),
            "first_token_ms": summarize(r["first_token_ms"] for r in mine),
            "total_ms": summarize(r["total_ms"] for r in mine),
        }
    return out


async def bench_quality(config: Config, models: list[str | None], temperature: float | None,
                        limit: int | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Every question of the set (``limit``: the first N of each language) for each model."""
    questions = load_questions()
    if limit is not None:
        questions = [q for lang in ("en", "zh") for q in [q for q in questions if q.language == lang][:limit]]
    # The config's persona for questions in its language; the other language's built-in one.
    personas = {"en": SessionSettings().system_prompt, "zh": ZH_PERSONA} | {
        config.session.language: config.session.system_prompt}
    report: dict[str, Any] = {"bench": "quality", "machine": machine(), "config": str(config.path),
                              "personas": personas, "models": {}}
    for model in models:
        llm = llm_for(config, model)
        if temperature is not None and hasattr(llm.options, "temperature"):
            llm.options.temperature = temperature
        name = model or getattr(llm.options, "model", llm.name)
        say(f"loading {name}")
        llm.load()
        rows = []
        for q in questions:
            row = await ask(llm, q, personas[q.language])
            say(f"{name}: {'RIGHT' if row['right'] else 'on topic' if row['on_topic'] else 'WRONG'}: "
                f"{q.text} -> {row['reply'][:100]!r}")
            rows.append(row)
        close = getattr(llm, "close", None)
        if callable(close):
            close()
        report["models"][name] = {"options": llm.options.model_dump(), "summary": summary(rows), "replies": rows}
        s = report["models"][name]["summary"]
        say(f"{name}: " + "; ".join(f"{lang} right {v['right']}/{v['questions']}, on topic {v['on_topic']}"
                                    for lang, v in s.items()))
    report["machine_after"] = machine()
    return report
