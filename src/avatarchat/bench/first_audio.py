"""``avatarchat bench first-audio``: the TTS's first audio after the LLM's first
token, and the seams after it, for two ways of cutting a reply's opening, on the same replies.

Each question is answered once by the configured LLM and its text deltas are recorded with
their times; scripted replies that open with a short phrase ("Sure!", "Yes,") are paced at
the LLM's measured token rate, and again at ``slow_rate`` (a host where llama.cpp runs at
~26 tokens/s). Every reply stream is then replayed into the real TTS stage once per rule,
the order alternating, so both rules hear the same words at the same times. Per replay:

* ``first_audio_ms``: first delta -> first ``ReplyAudio`` (what the user waits for);
* ``stall_ms``: silence added because a chunk came after the audio before it had played
  out (playback from the first chunk's arrival, back to back); ``first_seam_ms``: the
  silence heard between the first chunk's last sound and the second's first sound;
* ``wer_percent``: whisper on the audio as heard (stalls included) against the words said,
  so a cut that garbles the voice shows as errors.

The LLM is not running during the replays (it ran before), so the TTS has the CPU the LLM
would take from it in a real turn: the figures are a paired comparison, not absolute.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatarchat.audio.resample import resample
from avatarchat.bench.asr import word_errors
from avatarchat.bench.pipeline import QUESTIONS
from avatarchat.bench.stats import machine, summarize
from avatarchat.engine.events import ReplyAudio, ReplyEnd, ReplyText
from avatarchat.engine.handler import SessionInfo, run_blocking
from avatarchat.engine.pipeline import Pipeline

#: Replies that open with a short phrase, as chat models often do (SmolLM2-135M seldom).
SCRIPTED = (
    "Sure! The capital of France is Paris, a city known for its art and food.",
    "Yes, the moon is about 384,000 kilometres away from the earth on average.",
    "Of course. Here is a simple recipe for pasta with tomatoes, garlic and basil.",
    "Hello there! I am Ava, and I am happy to help you with any question you have.",
    "Well, that depends on what you like to read, but many people enjoy mystery novels.",
    "Great question! The sky looks blue because air scatters blue light more than red light.",
    "The capital of France is Paris. It is famous for the Eiffel Tower and its museums.",
    "Absolutely, elephants are the largest land animals, and they live in close family groups.",
)
#: The rules before issue 16, and the defaults now.
OLD = {"first_clause_min_words": 4, "opening_words": 1, "trim_clause_pauses": False, "first_clause_at_once": False}
NEW = {"first_clause_min_words": 1, "opening_words": 4, "trim_clause_pauses": True, "first_clause_at_once": True}
_TOKEN = re.compile(r"\s*[A-Za-z']+|\s*\d+|\s*[^\sA-Za-z\d]")
_SILENT_RMS = 0.002


@dataclass
class Stream:
    """One reply as the LLM streamed it: (seconds after the first delta, delta) pairs."""

    label: str
    deltas: list[tuple[float, str]]
    truncated: bool = False  # the LLM stopped at its token cap

    @property
    def text(self) -> str:
        return "".join(d for _, d in self.deltas)


def paced(label: str, text: str, rate: float) -> Stream:
    """``text`` in word-sized tokens, one every 1/``rate`` s (BPE cuts common words alike)."""
    return Stream(label, [(i / rate, tok) for i, tok in enumerate(_TOKEN.findall(text))])


async def record(llm: Any, question: str) -> Stream:
    """The LLM's reply to ``question`` with the time of each delta."""
    ctx = llm.create_context(SessionInfo("bench-first-audio"))
    deltas: list[tuple[float, str]] = []
    t0 = 0.0
    async for delta in llm.stream(ctx, ctx.messages(question)):
        if not deltas:
            delta = delta.lstrip()
            if not delta:
                continue
            t0 = time.monotonic()
        deltas.append((time.monotonic() - t0, delta))
    return Stream(question, deltas, ctx.finish_reason == "length")


async def replay(tts: Any, stream: Stream) -> tuple[list[tuple[float, ReplyAudio]], float]:
    """Feed ``stream`` to the TTS stage at its times, one event at a time as the engine's
    stage worker does; return each chunk with its arrival (s after the first delta)."""
    ctx = tts.create_context(SessionInfo("bench-first-audio"))
    queue: asyncio.Queue[ReplyText | ReplyEnd] = asyncio.Queue()
    t0 = time.monotonic()

    async def feed() -> None:
        for at, delta in stream.deltas:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            queue.put_nowait(ReplyText(1, delta))
        queue.put_nowait(ReplyEnd(1, stream.text, truncated=stream.truncated))

    feeder = asyncio.create_task(feed())
    chunks: list[tuple[float, ReplyAudio]] = []
    try:
        while True:
            event = await queue.get()
            async for out in tts.handle(ctx, event):
                if isinstance(out, ReplyAudio):
                    chunks.append((time.monotonic() - t0, out))
            if isinstance(event, ReplyEnd):
                break
    finally:
        await feeder
    return chunks, time.monotonic() - t0


def _sound_edges(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """Seconds of silence at the start and at the end of ``samples``."""
    window = rate // 100
    n = len(samples) // window
    if n == 0:
        return 0.0, 0.0
    rms = np.sqrt(np.mean(samples[: n * window].reshape(n, window) ** 2, axis=1))
    loud = np.flatnonzero(rms >= _SILENT_RMS)
    if len(loud) == 0:
        return len(samples) / rate, 0.0
    return loud[0] * window / rate, (n - 1 - loud[-1]) * window / rate


def heard(chunks: list[tuple[float, ReplyAudio]], rate: int) -> tuple[np.ndarray, list[float]]:
    """The reply as played from the first chunk's arrival, back to back, with silence where
    a chunk came late; and the stall before each chunk after the first (s)."""
    parts: list[np.ndarray] = []
    stalls: list[float] = []
    end = chunks[0][0]
    for arrival, chunk in chunks:
        if parts:
            stall = max(0.0, arrival - end)
            stalls.append(stall)
            parts.append(np.zeros(round(stall * rate), np.float32))
            end += stall
        parts.append(chunk.samples)
        end += chunk.duration
    return np.concatenate(parts), stalls


async def measure(tts: Any, asr: Any, stream: Stream, rule: str) -> dict[str, Any]:
    tts.options = tts.options.model_copy(update=OLD if rule == "old" else NEW)
    chunks, _ = await replay(tts, stream)
    if not chunks:
        return {"reply": stream.label, "rule": rule, "error": "no audio"}
    rate = chunks[0][1].sample_rate
    audio, stalls = heard(chunks, rate)
    first_seam = None
    if len(chunks) > 1:
        _, tail = _sound_edges(chunks[0][1].samples, rate)
        lead, _ = _sound_edges(chunks[1][1].samples, rate)
        first_seam = round((tail + stalls[0] + lead) * 1000, 1)
    said = " ".join(c.text for _, c in chunks)
    text = await run_blocking(asr.transcribe, resample(audio, rate, 16_000).astype(np.float32), "en")
    errors, total = word_errors(said, text)
    synth_t0 = time.perf_counter()
    await run_blocking(tts.synthesize, chunks[0][1].text)
    return {
        "reply": stream.label,
        "rule": rule,
        "first_chunk": chunks[0][1].text,
        "chunks": len(chunks),
        "first_audio_ms": round(chunks[0][0] * 1000, 1),
        "first_chunk_synth_ms": round((time.perf_counter() - synth_t0) * 1000, 1),
        "first_seam_ms": first_seam,
        "stall_ms": round(sum(stalls) * 1000, 1),
        "errors": errors,
        "words": total,
        "heard": text,
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rule in ("old", "new"):
        mine = [r for r in rows if r["rule"] == rule and "error" not in r]
        errors, words = sum(r["errors"] for r in mine), sum(r["words"] for r in mine)
        out[rule] = {
            "first_audio_ms": summarize(r["first_audio_ms"] for r in mine),
            "first_chunk_synth_ms": summarize(r["first_chunk_synth_ms"] for r in mine),
            "first_seam_ms": summarize(r["first_seam_ms"] for r in mine),
            "stall_ms": summarize(r["stall_ms"] for r in mine),
            "replies_with_a_stall_over_50ms": sum(1 for r in mine if r["stall_ms"] > 50),
            "wer_percent": round(100 * errors / words, 1) if words else None,
        }
    return out


async def bench_first_audio(config: Any, slow_rate: float, rounds: int, progress: Any) -> dict[str, Any]:
    pipeline = await Pipeline.load(config, progress=progress)
    llm, tts, asr = pipeline.handler("llm"), pipeline.handler("tts"), pipeline.handler("asr")
    recorded = []
    for q in QUESTIONS:
        stream = await record(llm, q)
        recorded.append(stream)
        progress(f"LLM: {q!r} -> {stream.text!r}")
    times = [at for s in recorded for at in (s.deltas[-1][0],) if len(s.deltas) > 1]
    tokens = [len(s.deltas) - 1 for s in recorded if len(s.deltas) > 1]
    rate = float(np.median([n / t for n, t in zip(tokens, times, strict=True) if t > 0])) if tokens else 60.0
    groups = {
        "llm": recorded,
        "scripted": [paced(t, t, rate) for t in SCRIPTED],
        "scripted_slow": [paced(t, t, slow_rate) for t in SCRIPTED],
    }
    report: dict[str, Any] = {"benchmark": "first_audio", "config": config.path, "llm_tokens_per_s": round(rate, 1),
                              "slow_tokens_per_s": slow_rate, "machine_before": machine(), "groups": {}}
    for name, streams in groups.items():
        rows = []
        for r in range(rounds):
            for i, stream in enumerate(streams):
                order = ("old", "new") if (i + r) % 2 == 0 else ("new", "old")
                for rule in order:
                    row = await measure(tts, asr, stream, rule)
                    rows.append(row)
                    progress(f"{name} {rule}: {row.get('first_chunk')!r} first audio {row.get('first_audio_ms')} ms, "
                             f"stall {row.get('stall_ms')} ms")
        report["groups"][name] = {"summary": _summary(rows), "rows": rows}
    report["machine_after"] = machine()
    return report
