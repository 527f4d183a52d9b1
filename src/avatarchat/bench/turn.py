"""``avatarchat bench turn``: how well each end-of-turn rule tells a finished question from a
pause mid-sentence, and the hangover (silence before the turn ends) each gives.

On the labelled pauses of ``bench/pauses.py`` (hibari, English), each as the real Silero VAD
hands it on at its pause (the config's ``vad`` options), three rules:

- ``words``: today's rule, ``engine.endofturn.looks_unfinished`` on whisper tiny.en's
  transcript of the pause (what the session judges now);
- ``smart_turn``: Smart Turn v3.2 alone, finished when P >= ``audio_threshold``;
- ``words+smart_turn``: ``engine.endofturn.hangover_ms`` weighing both, for each
  ``doubtful_ms`` (the silence when the words say finished and the voice does not).

Hangovers use the config's ``session.end_of_turn`` (complete_ms, unfinished_ms) and
``vad.end_ms`` (when nothing decides). For complete pauses the hangover is how long a
finished question waits; for unfinished ones, a hangover shorter than the speaker's pause
ends the turn on them (a false end): reported for pauses of 0.4 s and 0.8 s. The hangover
is the nominal one: the decision itself needs the pause's transcript (pause_ms + a whisper
call, ~0.35 s), so a shorter hangover ends the turn when the transcript is back.

A config whose ``session.language`` is Chinese (``configs/zh.yaml``) runs the Chinese set
instead (``bench/pauses_zh.py``, said by the config's voice, the Mandarin one), transcribed
by the config's whisper (base, zh) and judged by the Chinese word rules
(``engine.endofturn_zh``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from avatarchat.bench.pauses import SENTENCES, Pause, make_pauses, through_vad
from avatarchat.bench.stats import machine, summarize
from avatarchat.config import Config
from avatarchat.engine.endofturn import asks, hangover_ms, looks_unfinished
from avatarchat.handlers.asr.chinese import is_chinese
from avatarchat.handlers.turn.features import RATE, features
from avatarchat.handlers.vad.silero import SileroOptions

#: Trailing audio (ms) dropped from a pause before Smart Turn hears it, in ``tail_sweep``.
TAIL_DROPS_MS = (0, 50, 100, 150)
#: Pause lengths (s) that a speaker takes mid-sentence (the issue's 0.4-0.8 s).
FALSE_END_PAUSES_S = (0.4, 0.8)
LANGUAGE_NOTE = "English (hibari); a Chinese config (configs/zh.yaml) runs the Chinese set"
LANGUAGE_NOTE_ZH = ("Chinese (bench/pauses_zh.py, the config's voice), whisper base zh, "
                    "the Chinese word rules (engine/endofturn_zh.py)")


@dataclass(frozen=True)
class Scored:
    """One pause with what each judge said of it."""

    pause: Pause
    transcript: str
    words: bool | None  # looks_unfinished(transcript)
    p: float  # Smart Turn's P(finished)
    infer_ms: float  # features + ONNX run
    asks: bool = False  # engine.endofturn.asks: the words outweigh the voice (a Chinese question)

    @property
    def voice(self) -> float | None:
        """The voice as end of turn weighs it: not at all where the words plainly ask."""
        return None if self.asks else self.p


@dataclass(frozen=True)
class Rules:
    complete_ms: int
    unfinished_ms: int
    end_ms: int  # the VAD's own hangover, when a rule returns 0


def _hangover(rules: Rules, ms: int) -> int:
    return ms if ms > 0 else rules.end_ms


def _rule_report(scored: Sequence[Scored], hangover: Callable[[Scored], int],
                 says_complete: Callable[[Scored], bool], rules: Rules) -> dict[str, Any]:
    """Accuracy and hangovers of one rule, per label."""
    out: dict[str, Any] = {}
    for label in ("complete", "unfinished"):
        group = [s for s in scored if s.pause.label == label]
        waits = [_hangover(rules, hangover(s)) for s in group]
        right = [says_complete(s) == (label == "complete") for s in group]
        entry: dict[str, Any] = {
            "n": len(group),
            "accuracy": round(float(np.mean(right)), 3) if group else None,
            "hangover_ms": summarize(waits),
        }
        if label == "complete":
            entry["answered_at_complete_ms"] = round(float(np.mean([w <= rules.complete_ms for w in waits])), 3) if group else None
        else:
            entry["false_end_share"] = {
                f"{p:g}s_pause": round(float(np.mean([w < p * 1000 for w in waits])), 3) if group else None
                for p in FALSE_END_PAUSES_S
            }
        out[label] = entry
    return out


def score_rules(scored: Sequence[Scored], rules: Rules, threshold: float,
                doubtful: Sequence[int]) -> dict[str, Any]:
    """The three rules' reports at one ``audio_threshold`` (pure: the bench's figures)."""
    base = {"complete_ms": rules.complete_ms, "unfinished_ms": rules.unfinished_ms}
    report: dict[str, Any] = {
        # Unsure words ("None") count as not saying "complete": the VAD's end_ms decides.
        "words": _rule_report(scored, lambda s: hangover_ms(s.words, None, **base),
                              lambda s: s.words is False, rules),
        "smart_turn": _rule_report(scored, lambda s: hangover_ms(None, s.p, threshold=threshold, **base),
                                   lambda s: s.p >= threshold, rules),
    }
    for d in doubtful:
        wait = _combined(rules, threshold, d)
        report[f"words+smart_turn(doubtful_ms={d})"] = _rule_report(scored, wait, _answers_fast(rules, wait), rules)
    return report


def _answers_fast(rules: Rules, wait: Callable[[Scored], int]) -> Callable[[Scored], bool]:
    """The combination "says complete" when it answers at ``complete_ms``."""
    return lambda s: _hangover(rules, wait(s)) <= rules.complete_ms


def _combined(rules: Rules, threshold: float, doubtful_ms: int) -> Callable[[Scored], int]:
    def wait(s: Scored) -> int:
        return hangover_ms(s.words, s.voice, complete_ms=rules.complete_ms, unfinished_ms=rules.unfinished_ms,
                           doubtful_ms=doubtful_ms, threshold=threshold)
    return wait


def threshold_sweep(scored: Sequence[Scored], thresholds: Sequence[float], rules: Rules) -> dict[str, Any]:
    """Per ``audio_threshold``: Smart Turn alone's accuracy on complete and unfinished pauses,
    and the combination's share of complete pauses answered at ``complete_ms`` and of
    unfinished ones ended at ``complete_ms`` (false ends at any pause; independent of
    ``doubtful_ms``, which only sets how long the others wait)."""
    out = {}
    complete = [s for s in scored if s.pause.label == "complete"]
    unfinished = [s for s in scored if s.pause.label == "unfinished"]

    def share(group: list[Scored], test: Callable[[Scored], bool]) -> float | None:
        return round(float(np.mean([test(s) for s in group])), 3) if group else None

    def fast(s: Scored, t: float) -> bool:
        ms = hangover_ms(s.words, s.voice, complete_ms=rules.complete_ms, unfinished_ms=rules.unfinished_ms,
                         doubtful_ms=rules.end_ms, threshold=t)
        return _hangover(rules, ms) <= rules.complete_ms

    for t in thresholds:
        out[f"{t:g}"] = {
            "smart_turn_accuracy": {"complete": share(complete, lambda s: s.p >= t),
                                    "unfinished": share(unfinished, lambda s: s.p < t)},
            "combined_answered_at_complete_ms": share(complete, lambda s: fast(s, t)),
            "combined_false_end_share": share(unfinished, lambda s: fast(s, t)),
        }
    return out


def word_verdicts(scored: Sequence[Scored]) -> dict[str, dict[str, int]]:
    """How often the words rule said each thing, per label (None: unsure, the VAD decides)."""
    names = {False: "complete", True: "unfinished", None: "unsure"}
    out: dict[str, dict[str, int]] = {}
    for label in ("complete", "unfinished"):
        verdicts = [names[s.words] for s in scored if s.pause.label == label]
        out[label] = {v: verdicts.count(v) for v in names.values()}
    return out


def judge(pauses: Sequence[Pause], transcribe: Callable[[np.ndarray], str],
          complete: Callable[[np.ndarray], float], language: str = "en") -> list[Scored]:
    """Run both judges on every pause (blocking)."""
    scored = []
    for pause in pauses:
        text = transcribe(pause.audio)
        t0 = time.perf_counter()
        p = complete(pause.audio)
        ms = (time.perf_counter() - t0) * 1000
        scored.append(Scored(pause, text, looks_unfinished(text, language), p, ms, asks(text, language)))
    return scored


def accuracy(ps: Sequence[float], pauses: Sequence[Pause], threshold: float) -> dict[str, float | None]:
    """Smart Turn's accuracy per label at ``threshold`` for probabilities ``ps`` of ``pauses``."""
    out: dict[str, float | None] = {}
    for label in ("complete", "unfinished"):
        right = [(p >= threshold) == (label == "complete") for p, x in zip(ps, pauses, strict=True) if x.label == label]
        out[label] = round(float(np.mean(right)), 3) if right else None
    return out


def tail_sweep(scored: Sequence[Scored], complete: Callable[[np.ndarray], float], rules: Rules,
               threshold: float) -> dict[str, Any]:
    """Smart Turn alone and words+Smart Turn when the last few ms of each pause (the VAD's
    tail after its ``speech_end``, and a window or two before it) are not heard."""
    out = {}
    pauses = [s.pause for s in scored]
    for ms in TAIL_DROPS_MS:
        n = ms * RATE // 1000
        ps = [complete(x.audio[: len(x.audio) - n]) for x in pauses]
        rescored = [replace(s, p=p) for s, p in zip(scored, ps, strict=True)]
        sweep = threshold_sweep(rescored, [threshold], rules)[f"{threshold:g}"]
        out[f"drop_{ms}ms"] = sweep
    return out


def _features_ms(pauses: Sequence[Pause]) -> list[float]:
    times = []
    for pause in pauses:
        t0 = time.perf_counter()
        features(pause.audio)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _chinese_set(config: Config, limit: int | None, progress: Callable[[str], None]) -> tuple[list[Pause], Any]:
    """The Chinese pauses said by the config's voice, and the config's whisper (loaded)."""
    from avatarchat.bench.pauses_zh import SENTENCES_ZH, make_pauses_zh
    from avatarchat.engine.handler import handlers_for
    from avatarchat.handlers.asr.whisper import WhisperHandler, WhisperOptions

    tts_stage, asr_stage = config.stages.get("tts"), config.stages.get("asr")
    if tts_stage is None or asr_stage is None or not isinstance(asr_stage.options, WhisperOptions):
        raise ValueError(f"{config.path}: bench turn in Chinese needs a tts stage (the Mandarin voice) "
                         "and an asr stage with handler: whisper")
    sentences = SENTENCES_ZH[:limit] if limit else SENTENCES_ZH
    progress(f"synthesizing {len(sentences)} Chinese sentences ({tts_stage.handler}) and cutting them")
    tts: Any = handlers_for("tts")[tts_stage.handler](tts_stage.options)
    tts.load()
    ideal = make_pauses_zh(tts, sentences)
    asr = WhisperHandler(asr_stage.options)
    asr.load()
    return ideal, asr


def bench_turn(rules: Rules, threshold: float, doubtful: Sequence[int], thresholds: Sequence[float],
               limit: int | None, progress: Callable[[str], None],
               vad_options: SileroOptions | None = None, config: Config | None = None) -> dict[str, Any]:
    """The report (JSON-able). ``limit``: only the first ``limit`` sentences of the set.
    ``config``: a Chinese one runs the Chinese set (its voice, its whisper)."""
    from avatarchat.handlers.asr.whisper import WhisperHandler, WhisperOptions
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS
    from avatarchat.handlers.turn.smart_turn import SMART_TURN_MODEL, load_model

    language = config.session.language if config is not None else "en"
    if is_chinese(language):
        assert config is not None
        ideal, asr = _chinese_set(config, limit, progress)
        asr_name, language, note = f"whisper {asr.options.model} (zh)", "zh", LANGUAGE_NOTE_ZH
    else:
        sentences = SENTENCES[:limit] if limit else SENTENCES
        progress(f"synthesizing {len(sentences)} sentences (hibari) and cutting them")
        tts = HibariTTS(HibariOptions())
        tts.load()
        ideal = make_pauses(tts, sentences)
        asr = WhisperHandler(WhisperOptions())
        asr.load()
        asr_name, language, note = "whisper tiny.en", "en", LANGUAGE_NOTE
    progress(f"finding the pauses with the Silero VAD ({len(ideal)} clips)")
    pauses, vad_missed = through_vad(ideal, vad_options)
    progress("loading Smart Turn v3.2")
    model = load_model(threads=1)
    model.complete(pauses[0].audio)  # first-run allocations are not a decision's cost
    progress(f"judging {len(pauses)} pauses")
    scored = judge(pauses, lambda a: asr.transcribe(a, language), model.complete, language)
    progress("Smart Turn on the ideal cuts, and without the pauses' last ms")
    ideal_accuracy = accuracy([model.complete(x.audio) for x in ideal], ideal, threshold)
    tails = tail_sweep(scored, model.complete, rules, threshold)
    report = {
        "benchmark": "turn",
        "language": language,
        "note": note,
        "model": {"name": SMART_TURN_MODEL.name, "distribution": f"{SMART_TURN_MODEL.distribution}=="
                  f"{SMART_TURN_MODEL.pinned_version}", "sha256": SMART_TURN_MODEL.sha256, "threads": 1},
        "asr": asr_name,
        "pauses": {"complete": sum(p.label == "complete" for p in pauses),
                   "unfinished": sum(p.label == "unfinished" for p in pauses),
                   "vad_missed": vad_missed},
        "config": {"complete_ms": rules.complete_ms, "unfinished_ms": rules.unfinished_ms,
                   "vad_end_ms": rules.end_ms, "audio_threshold": threshold},
        "smart_turn_ms": summarize(s.infer_ms for s in scored),
        "features_ms": summarize(_features_ms(pauses)),
        "rules": score_rules(scored, rules, threshold, doubtful),
        "words_verdicts": word_verdicts(scored),
        "threshold_sweep": threshold_sweep(scored, thresholds, rules),
        # The same speech cut exactly at its last sound + 0.1 s, without the VAD's timing.
        "smart_turn_accuracy_ideal_cuts": ideal_accuracy,
        "tail_sweep": tails,
        "clips": [{"label": s.pause.label, "said": s.pause.said, "transcript": s.transcript,
                   "words": s.words, "p": round(s.p, 4)} for s in scored],
        "machine": machine(),
    }
    if language == "zh":
        from avatarchat.bench.pauses_zh import HELD_OUT

        # The sentences written after the Chinese rules were tuned: does the verdict hold?
        held = [s for s in scored if s.pause.sentence in HELD_OUT]
        report["held_out"] = {"rules": score_rules(held, rules, threshold, doubtful[-1:]),
                              "words_verdicts": word_verdicts(held)}
    return report
