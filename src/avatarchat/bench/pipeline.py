"""``avatarchat bench pipeline``: N voice turns through the real pipeline, VAD included.

Each question is streamed as live microphone audio would be, 20 ms chunks paced in real
time, with silence before and after, so the VAD decides the end of speech as it would in
a call. For each turn it records when the last voiced audio was heard, when the VAD
decided, and every stage's marks up to the first reply audio sample ready.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from avatarchat.audio.io import load_audio
from avatarchat.bench.stats import machine, max_rss_mb, summarize_rows
from avatarchat.engine.config import PipelineConfig
from avatarchat.engine.events import (
    ReplyEnd,
    ReplyText,
    SpeechStarted,
    TurnCancelled,
    UserAudio,
)
from avatarchat.engine.handler import run_blocking
from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.session import Session
from avatarchat.engine.turn import TurnResult

QUESTIONS = (
    "What is the capital of France?",
    "Can you recommend a good book?",
    "How far away is the moon?",
    "What should I cook for dinner tonight?",
    "Why is the sky blue?",
    "Tell me something about elephants.",
    "What is your favourite colour?",
    "How do I stay focused while working?",
)
CHUNK_S = 0.02


async def bench_pipeline(config: PipelineConfig, turns: int, inputs: list[Path], progress: Any) -> dict[str, Any]:
    pipeline = await Pipeline.load(config, progress=progress)
    tts = pipeline.handler("tts")
    clips = await _questions(tts, inputs, turns)
    rows = []
    async with pipeline.session("bench") as session:
        for i, (label, audio, rate) in enumerate(clips, 1):
            result, t_end = await _voice_turn(session, audio, rate)
            row = _row(result, t_end)
            row["tts_rtf"] = await _tts_rtf(tts, result.reply_text)
            row["question"] = label
            rows.append(row)
            progress(f"turn {i}/{len(clips)}: {result.user_text!r} -> {result.reply_text!r} "
                     f"first audio {row.get('first_audio_after_vad_ms')} ms after the VAD decision")
    vad = config.stages["vad"].options
    return {
        "benchmark": "pipeline",
        "config": config.path,
        "handlers": {s: c.handler for s, c in config.stages.items()},
        "hangover_ms_configured": getattr(vad, "end_ms", None),
        "machine": machine(),
        "max_rss_mb": max_rss_mb(),
        "summary": summarize_rows(rows),
        "turns": rows,
    }


async def _questions(tts: Any, inputs: list[Path], turns: int) -> list[tuple[str, np.ndarray, int]]:
    """Recorded inputs if given, else the questions spoken by the configured TTS (not timed)."""
    if inputs:
        clips = [(p.name, load_audio(p, 16000), 16000) for p in inputs]
    else:
        clips = []
        for q in QUESTIONS:
            samples, _ = await run_blocking(tts.synthesize, q)
            clips.append((q, samples, tts.sample_rate))
    return [clips[i % len(clips)] for i in range(turns)]


#: After a turn's reply has ended, how long its end-of-turn marks may still take to come out.
_MARKS_WAIT_S = 2.0


async def _voice_turn(session: Session, audio: np.ndarray, rate: int) -> tuple[TurnResult, float]:
    """Stream one question as live audio; return the turn's result and when its reply ended."""
    chunk = int(rate * CHUNK_S)
    signal = np.concatenate([np.zeros(int(0.4 * rate), np.float32), audio.astype(np.float32),
                             np.zeros(int(2.0 * rate), np.float32)])
    done = asyncio.Event()

    async def feed() -> None:
        start = time.monotonic()
        for k, i in enumerate(range(0, len(signal), chunk)):
            # Pace by the wall clock: a late chunk is sent at once, as a real mic would.
            await asyncio.sleep(max(0.0, start + k * CHUNK_S - time.monotonic()))
            session.push(UserAudio(-1, signal[i:i + chunk], rate))
        await done.wait()

    feeder = asyncio.create_task(feed())
    result: TurnResult | None = None
    end_at = 0.0
    try:
        async with asyncio.timeout(120) as deadline:
            async for ev in session.events():
                if isinstance(ev, SpeechStarted) and result is None:
                    result = TurnResult(ev.turn)
                if result is None or ev.turn != result.turn:
                    continue
                result.add(ev)
                if isinstance(ev, ReplyText) and "first_delta" not in result.marks:
                    result.marks["first_delta"] = time.monotonic()
                if isinstance(ev, ReplyEnd | TurnCancelled) and not end_at:
                    end_at = time.monotonic()
                    # A reply started at the pause may be whole when the turn is decided, and
                    # come out before the VAD's marks have crossed the stages: wait for them.
                    deadline.reschedule(asyncio.get_running_loop().time() + _MARKS_WAIT_S)
                if end_at and (isinstance(ev, TurnCancelled) or "vad_end" in result.marks):
                    break
    except TimeoutError:
        if not end_at:
            raise
    finally:
        done.set()
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    assert result is not None
    return result, end_at


def _row(result: TurnResult, end_at: float) -> dict[str, Any]:
    m = result.marks

    def ms(a: str, b: str) -> float | None:
        return round((m[b] - m[a]) * 1000.0, 1) if a in m and b in m else None

    deltas = sum(1 for e in result.events if isinstance(e, ReplyText))
    gen_s = end_at - m["first_delta"] if "first_delta" in m else 0.0
    return {
        "user_text": result.user_text,
        "reply_text": result.reply_text,
        "error": "; ".join(result.errors) or None,
        "vad_decision_ms": ms("speech_end", "vad_end"),
        "asr_early_ms": ms("asr_early_start", "asr_early_final"),
        "asr_ms": ms("asr_start", "asr_final"),
        "llm_first_token_ms": ms("llm_start", "llm_first_token"),
        "llm_tokens_per_s": round(deltas / gen_s, 1) if gen_s > 0 and deltas > 1 else None,
        "tts_first_audio_ms": ms("llm_first_token", "tts_first_audio"),
        "first_audio_after_vad_ms": ms("vad_end", "tts_first_audio"),
        "first_audio_after_speech_end_ms": ms("speech_end", "tts_first_audio"),
        "reply_audio_s": round(sum(c.duration for c in result.chunks), 2),
        # What the voice waited for: the first clause's words decide tts_first_audio_ms.
        "first_chunk": result.chunks[0].text if result.chunks else None,
    }


async def _tts_rtf(tts: Any, text: str) -> float | None:
    """Synthesis time over audio time for the reply, measured after the turn."""
    if not text.strip():
        return None
    t0 = time.perf_counter()
    samples, _ = await run_blocking(tts.synthesize, text)
    took = time.perf_counter() - t0
    return round(took / (len(samples) / tts.sample_rate), 4) if len(samples) else None
