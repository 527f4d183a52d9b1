"""``avatarchat bench avatar``: what the portrait stage costs and how fast its frames come.

A spoken reply of about N seconds (sentences synthesized once by the configured TTS, not
timed) goes through the real portrait handler inside a Session, as the TTS stage would
send it. Reported:

* render cost: per-frame render time (wall and thread CPU, median/p90/p99), frames per CPU
  second, and the share of one core 25 fps needs;
* first-frame latency: from a reply's first audio chunk entering the stage to its first
  frame leaving it (the ``avatar_first_frame`` mark), median over several replies;
* ``--paced``: chunks fed at real-time pace (each at its offset on the reply clock); the
  process CPU over that wall time is the avatar's steady load, and each frame's lateness
  against its own pts says whether 25 fps is kept.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from avatarchat.bench.stats import machine, max_rss_mb, summarize
from avatarchat.engine.config import PipelineConfig
from avatarchat.engine.events import (
    AvatarFrame,
    ReplyAudio,
    ReplyEnd,
    TurnCancelled,
    now,
)
from avatarchat.engine.handler import Handler, SessionInfo, handlers_for, run_blocking
from avatarchat.engine.session import Session

SENTENCES = (
    "Hello there, it is lovely to meet you.",
    "The moon is about three hundred and eighty thousand kilometres away from the Earth.",
    "Would you like me to tell you more about it, or shall we talk about something else?",
    "I think a warm bowl of soup is a perfect dinner on a cold and rainy evening.",
    "Elephants are remarkable animals with long memories and very strong family bonds.",
    "Staying focused is easier when you take short breaks and keep your phone away.",
)
LATENCY_REPLIES = 7


async def bench_avatar(config: PipelineConfig, seconds: float, paced: bool, progress: Any) -> dict[str, Any]:
    tts, avatar = await _load(config, progress)
    chunks = await _speech(tts, seconds)
    audio_s = sum(len(s) / tts.sample_rate for s, _, _ in chunks)
    progress(f"synthesized {audio_s:.1f} s of speech in {len(chunks)} chunks")
    timer = _RenderTimer(avatar)
    with timer:
        run = await (_paced(avatar, chunks, tts.sample_rate) if paced else _flat_out(avatar, chunks, tts.sample_rate))
        per_frame = timer.take()
        latencies = [await _first_frame_ms(avatar, chunks[:2], tts.sample_rate) for _ in range(LATENCY_REPLIES)]
    fps = avatar.options.fps
    cpu_per_frame = run["cpu_s"] / max(run["frames"], 1)
    report: dict[str, Any] = {
        "benchmark": "avatar",
        "mode": "paced" if paced else "flat-out",
        "config": config.path,
        "avatar": avatar.options.avatar,
        "fps_target": fps,
        "audio_s": round(audio_s, 2),
        "frames": run["frames"],
        "wall_s": round(run["wall_s"], 3),
        "process_cpu_s": round(run["cpu_s"], 3),
        # Everything the process did per frame (render, params, events, executor hops).
        "fps_per_cpu_second": round(run["frames"] / run["cpu_s"], 1) if run["cpu_s"] > 0 else None,
        "cpu_pct_of_one_core_at_target_fps": round(100.0 * cpu_per_frame * fps, 1),
        # The renderer alone (thread CPU inside render calls).
        "fps_render_only": round(len(per_frame) / sum(c for _, c in per_frame), 1) if per_frame else None,
        "render_ms": _ms(summarize(t * 1000 for t, _ in per_frame), [t for t, _ in per_frame]),
        "render_cpu_ms": _ms(summarize(c * 1000 for _, c in per_frame), [c for _, c in per_frame]),
        "first_frame_after_first_chunk_ms": summarize(latencies),
        "machine": machine(),
        "max_rss_mb": max_rss_mb(),
    }
    if paced:
        report["cpu_pct_of_one_core_paced"] = round(100.0 * run["cpu_s"] / run["wall_s"], 1)
        report["frame_lateness_ms"] = _ms(summarize(run["lateness_ms"]), run["lateness_ms"], scale=1.0)
        report["late_frames_over_40ms"] = int(sum(1 for x in run["lateness_ms"] if x > 40.0))
    else:
        report["fps_wall"] = round(run["frames"] / run["wall_s"], 1)
    return report


async def _load(config: PipelineConfig, progress: Any) -> tuple[Any, Handler[Any]]:
    """The config's TTS and avatar handlers only (no ASR or LLM), loaded. A config without
    an avatar stage gets the portrait handler with its default options."""
    tts_cfg = config.stages["tts"]
    tts = handlers_for("tts")[tts_cfg.handler](tts_cfg.options)
    av_cfg = config.stages.get("avatar")
    if av_cfg is None:
        cls = handlers_for("avatar")["portrait"]
        avatar = cls(cls.Options())
    else:
        avatar = handlers_for("avatar")[av_cfg.handler](av_cfg.options)
    for handler in (tts, avatar):
        t0 = time.perf_counter()
        await run_blocking(handler.load)
        progress(f"loaded {handler.stage} {handler.name} in {time.perf_counter() - t0:.2f} s")
    return tts, avatar


async def _speech(tts: Any, seconds: float) -> list[tuple[np.ndarray, tuple, str]]:
    """Clauses synthesized until they add up to ``seconds`` of audio."""
    out: list[tuple[np.ndarray, tuple, str]] = []
    total, i = 0.0, 0
    while total < seconds:
        text = SENTENCES[i % len(SENTENCES)]
        samples, phonemes = await run_blocking(tts.synthesize, text)
        out.append((samples, phonemes, text))
        total += len(samples) / tts.sample_rate
        i += 1
    return out


def _reply(turn: int, chunks: list[tuple[np.ndarray, tuple, str]], rate: int) -> list[ReplyAudio]:
    out, offset = [], 0.0
    for samples, phonemes, text in chunks:
        out.append(ReplyAudio(turn, samples, rate, offset, text, phonemes))
        offset += len(samples) / rate
    return out


async def _flat_out(avatar: Handler[Any], chunks: list, rate: int) -> dict[str, Any]:
    """Every chunk at once: the stage renders as fast as it can."""
    async with Session([avatar], SessionInfo("bench-avatar")) as session:
        turn = session.new_turn()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for chunk in _reply(turn, chunks, rate):
            session.push(chunk)
        session.push(ReplyEnd(turn))
        frames = 0
        async for event in session.events():
            frames += isinstance(event, AvatarFrame)
            if isinstance(event, ReplyEnd | TurnCancelled):
                break
        return {"frames": frames, "cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - t0}


async def _paced(avatar: Handler[Any], chunks: list, rate: int) -> dict[str, Any]:
    """Each chunk pushed when the reply clock reaches its offset (a TTS exactly keeping pace)."""
    async with Session([avatar], SessionInfo("bench-avatar-paced")) as session:
        turn = session.new_turn()
        replies = _reply(turn, chunks, rate)
        cpu0, start = time.process_time(), time.monotonic()

        async def feed() -> None:
            for chunk in replies:
                await asyncio.sleep(max(0.0, start + chunk.offset - time.monotonic()))
                session.push(chunk)
            session.push(ReplyEnd(turn))

        feeder = asyncio.create_task(feed())
        frames, lateness = 0, []
        try:
            async for event in session.events():
                if isinstance(event, AvatarFrame):
                    frames += 1
                    lateness.append((time.monotonic() - (start + event.pts)) * 1000.0)
                if isinstance(event, ReplyEnd | TurnCancelled):
                    break
            # Count the time the tail's frames are due, so CPU % is over real time.
            end_pts = frames / avatar.options.fps
            await asyncio.sleep(max(0.0, start + end_pts - time.monotonic()))
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        return {"frames": frames, "cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - start,
                "lateness_ms": lateness}


async def _first_frame_ms(avatar: Handler[Any], chunks: list, rate: int) -> float:
    async with Session([avatar], SessionInfo("bench-avatar-latency")) as session:
        turn = session.new_turn()
        t_in = now()
        for chunk in _reply(turn, chunks, rate):
            session.push(chunk)
        session.push(ReplyEnd(turn))
        first = None
        async for event in session.events():
            if isinstance(event, AvatarFrame) and first is None:
                first = event
                t_out = now()
            if isinstance(event, ReplyEnd | TurnCancelled):
                break
        assert first is not None, "the avatar stage made no frame"
        return (t_out - t_in) * 1000.0


class _RenderTimer:
    """Wraps the handler's renderer to time every render call (wall and thread CPU)."""

    def __init__(self, avatar: Any) -> None:
        self.renderer = avatar.renderer
        self.samples: list[tuple[float, float]] = []

    def __enter__(self) -> _RenderTimer:
        render = self.renderer.render

        def timed(params: Any) -> np.ndarray:
            w0, c0 = time.perf_counter(), time.thread_time()
            image = render(params)
            self.samples.append((time.perf_counter() - w0, time.thread_time() - c0))
            return image

        self.renderer.render = timed
        return self

    def take(self) -> list[tuple[float, float]]:
        out, self.samples = self.samples, []
        return out

    def __exit__(self, *exc: object) -> None:
        del self.renderer.render  # the class's method again


def _ms(summary: dict[str, Any], values: list[float], scale: float = 1000.0) -> dict[str, Any]:
    """``summary`` plus p99 (``values`` in seconds unless ``scale`` says otherwise)."""
    if values:
        summary["p99"] = round(float(np.percentile(np.asarray(values) * scale, 99)), 2)
    return summary
