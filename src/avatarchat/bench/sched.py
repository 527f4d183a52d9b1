"""``avatarchat bench sched``: turn-critical latency with several sessions on one machine,
under each way of scheduling the blocking model calls, compared within one run.

One pipeline (the config's real models) serves every session. Per block, ``talking``
sessions each hear a question ending at the same moment (live-paced 20 ms chunks, VAD
included) while every session, talking or not, keeps a 25 fps video stream going as the
server's video track does: the server's ``IdleFrames`` when no reply is on screen (idle
renders are ``BACKGROUND`` jobs of the "render" lane; while one waits, the last frame is
shown again), and a yuv conversion and VP8 encode per frame in the default executor (where
aiortc encodes). Reply frames are the avatar stage's (``NORMAL`` in the render lane). A frame due more than ``MAX_LAG_S`` ago is
skipped, as the track does. Blocks rotate through the schedulers, so drift in the machine's
load spreads over all of them alike.

Schedulers compared:

- ``executor``: every model call in the loop's default executor (before issue 11);
- ``fifo``: the lanes of ``default_lanes()``, first come first served;
- ``priority``: the same lanes, turn-critical first;
- ``priority+nice``: and background jobs on niced threads (nice 10).

Reported per scheduler: speech end → first reply audio ready (what the user waits, less
playout) median and p90, its stages, the frames a second each session sent, and the
fresh idle renders a second of the idle sessions.

``--llm`` measures the other choice of the issue instead: the local LLM with several
questions at once, llama.cpp's slots (``parallel``, one batch) against one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarchat.bench.pipeline import QUESTIONS
from avatarchat.bench.stats import machine, max_rss_mb, summarize
from avatarchat.engine.config import PipelineConfig
from avatarchat.engine.events import ReplyAudio, ReplyEnd, SpeechStarted, TurnCancelled, UserAudio
from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.scheduling import Scheduler, default_lanes, run_model, use_scheduler
from avatarchat.engine.session import Session
from avatarchat.engine.turn import TurnResult

CHUNK_S = 0.02
MAX_TALKING = len(QUESTIONS)
MAX_LAG_S = 0.2  # as server.tracks: a frame this late is skipped
LEAD_S = 1.0  # idle video before the questions start
TAIL_S = 1.5  # silence after the questions (the hangover is shorter)

SCHEDULERS: dict[str, Callable[[], Scheduler]] = {
    "executor": lambda: Scheduler({}),
    "fifo": lambda: Scheduler(default_lanes(), prioritize=False, background_nice=0),
    "priority": lambda: Scheduler(default_lanes(), background_nice=0),
    "priority+nice": lambda: Scheduler(default_lanes(), background_nice=10),
}


@dataclass
class _Video:
    """One session's 25 fps stream: frames sent, and until when a reply is on screen."""

    fps: int
    sent: int = 0
    idle_shown: int = 0  # idle frames shown, fresh or repeated
    repeated: int = 0  # idle frames shown again while the next render waited in its lane
    replying_until: float = 0.0
    reply_audio_s: float = 0.0
    first_audio_at: float | None = None
    started: float = field(default_factory=time.monotonic)


async def bench_sched(config: PipelineConfig, talking: int, idle: int, rounds: int,
                      progress: Any) -> dict[str, Any]:
    pipeline = await Pipeline.load(config, progress=progress)
    tts: Any = pipeline.handler("tts")
    clips = []
    for q in QUESTIONS[:talking]:
        samples, _ = await run_model(tts.synthesize, q, lane="tts")
        clips.append((q, np.asarray(samples, np.float32), tts.sample_rate))
    schedulers = {name: make() for name, make in SCHEDULERS.items()}
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in schedulers}
    fps: dict[str, list[list[tuple[float, float]]]] = {name: [] for name in schedulers}
    cpu0, wall0, load0 = os.times(), time.monotonic(), machine()
    try:
        names = list(schedulers)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                with use_scheduler(schedulers[name]):
                    rows, rates = await _block(pipeline, clips, talking + idle)
                turns[name] += [row | {"round": r + 1} for row in rows]
                fps[name].append(rates)
                waits = ", ".join(f"{row['first_audio_after_speech_end_ms']}" for row in rows)
                progress(f"round {r + 1}/{rounds} {name:<14} speech end → first audio {waits} ms; "
                         f"fps (fresh idle) {', '.join(f'{x:.1f} ({y:.1f})' for x, y in rates)}")
    finally:
        for s in schedulers.values():
            await asyncio.to_thread(s.close)
    cpu1, wall = os.times(), time.monotonic() - wall0
    return {
        "benchmark": "sched",
        "config": config.path,
        "sessions": {"talking": talking, "idle": idle},
        "rounds": rounds,
        "lanes": default_lanes(),
        "machine_before": load0,
        "machine_after": machine(),
        "process_cpu_share": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall, 2),
        "max_rss_mb": max_rss_mb(),
        "summary": {name: _summary(turns[name], fps[name], talking) for name in schedulers},
        "paired_vs_executor": _paired(turns, "executor"),
        "turns": turns,
    }


def _summary(rows: list[dict[str, Any]], fps: list[list[tuple[float, float]]], talking: int) -> dict[str, Any]:
    keys = ["first_audio_after_speech_end_ms", "first_audio_after_asr_ms", "vad_hangover_ms",
            "asr_early_ms", "asr_ms", "llm_first_token_ms", "tts_first_audio_ms"]
    out: dict[str, Any] = {k: summarize(row.get(k) for row in rows) for k in keys}
    out["failed_turns"] = sum(1 for row in rows if row.get("first_audio_after_speech_end_ms") is None)
    # Frames sent a second (a talking session's count its reply's frames, rendered by the
    # pipeline); and, of an idle session's, the fresh idle renders (not shown again).
    out["video_fps_talking"] = summarize(sent for block in fps for sent, _ in block[:talking])
    out["video_fps_idle"] = summarize(sent for block in fps for sent, _ in block[talking:])
    out["fresh_idle_fps_idle"] = summarize(fresh for block in fps for _, fresh in block[talking:])
    return out


def _paired(turns: dict[str, list[dict[str, Any]]], base: str) -> dict[str, Any]:
    """Per round, each scheduler's mean wait over ``base``'s in the same round: the machine's
    load drifts between rounds more than between the blocks of one round."""
    def means(rows: list[dict[str, Any]]) -> dict[int, float]:
        by_round: dict[int, list[float]] = {}
        for row in rows:
            if row.get("first_audio_after_speech_end_ms") is not None:
                by_round.setdefault(row["round"], []).append(row["first_audio_after_speech_end_ms"])
        return {r: float(np.mean(v)) for r, v in by_round.items()}

    ref = means(turns.get(base, []))
    out: dict[str, Any] = {}
    for name, rows in turns.items():
        mine = means(rows)
        ratios = [mine[r] / ref[r] for r in ref if r in mine and ref[r] > 0]
        if name != base and ratios:
            out[name] = {"median_ratio": round(float(np.median(ratios)), 2),
                         "rounds_faster": sum(1 for x in ratios if x < 1.0), "rounds": len(ratios)}
    return out


async def _block(pipeline: Pipeline, clips: list[tuple[str, np.ndarray, int]], sessions: int
                 ) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    """One block: every session opened, the talking ones each ask once, all at once."""
    longest = max(len(a) / rate for _, a, rate in clips)
    async with contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(pipeline.session(f"bench-{i}")) for i in range(sessions)]
        videos = [_Video(pipeline.handler("avatar").fps) for _ in opened]  # type: ignore[attr-defined]
        background = [asyncio.create_task(_stream(s, v), name=f"video-{i}")
                      for i, (s, v) in enumerate(zip(opened, videos))]
        background += [asyncio.create_task(_drain(s), name="drain") for s in opened[len(clips):]]
        try:
            rows = await asyncio.gather(*(_turn(s, v, audio, rate, LEAD_S + longest - len(audio) / rate)
                                          for s, v, (_, audio, rate) in zip(opened, videos, clips)))
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
    now = time.monotonic()
    return list(rows), [(v.sent / (now - v.started), (v.idle_shown - v.repeated) / (now - v.started)) for v in videos]


async def _drain(session: Session) -> None:
    """An idle session's output is read (and dropped) as a transport would."""
    async for _ in session.events():
        pass


async def _turn(session: Session, video: _Video, audio: np.ndarray, rate: int, lead_s: float) -> dict[str, Any]:
    """Stream ``audio`` after ``lead_s`` of silence; the turn's timings once its reply ends."""
    chunk = int(rate * CHUNK_S)
    signal = np.concatenate([np.zeros(int(lead_s * rate), np.float32), audio,
                             np.zeros(int(TAIL_S * rate), np.float32)])

    async def feed() -> None:
        start = time.monotonic()
        for k, i in enumerate(range(0, len(signal), chunk)):
            await asyncio.sleep(max(0.0, start + k * CHUNK_S - time.monotonic()))
            session.push(UserAudio(-1, signal[i:i + chunk], rate))

    feeder = asyncio.create_task(feed(), name="feed")
    result: TurnResult | None = None
    try:
        async with asyncio.timeout(60):
            async for ev in session.events():
                if isinstance(ev, SpeechStarted) and result is None:
                    result = TurnResult(ev.turn)
                if result is None or ev.turn != result.turn:
                    continue
                result.add(ev)
                if isinstance(ev, ReplyAudio):
                    now = time.monotonic()
                    video.first_audio_at = video.first_audio_at or now
                    video.reply_audio_s += ev.duration
                    video.replying_until = video.first_audio_at + video.reply_audio_s
                if isinstance(ev, ReplyEnd | TurnCancelled):
                    break
        await feeder
    except TimeoutError:
        pass
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    if result is None:
        return {"error": "no speech detected"}
    row: dict[str, Any] = dict(result.timings_ms())
    row.setdefault("first_audio_after_speech_end_ms", None)
    row["user_text"], row["reply_text"] = result.user_text, result.reply_text
    row["error"] = "; ".join(result.errors) or result.cancelled
    return row


async def _stream(session: Session, video: _Video) -> None:
    """25 fps as the server's video track: the server's ``IdleFrames`` between replies (idle
    renders in the render lane at BACKGROUND; the last frame again while one is queued), a
    yuv conversion and VP8 encode of every frame in the default executor (as aiortc)."""
    import av
    from aiortc.codecs.vpx import Vp8Encoder

    from avatarchat.server.tracks import IdleFrames

    encoder = Vp8Encoder()
    loop = asyncio.get_running_loop()
    start, k = time.monotonic(), 0
    image: np.ndarray | None = None

    def render(t: float) -> np.ndarray:
        frame = session.idle_frame(start + t)
        assert frame is not None, "bench sched needs an avatar stage"
        return frame

    def encode(picture: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        encoder.encode(frame)

    idle = IdleFrames(render, video.fps)
    try:
        while True:
            k = max(k, int((time.monotonic() - start - MAX_LAG_S) * video.fps))
            await asyncio.sleep(max(0.0, start + k / video.fps - time.monotonic()))
            if image is not None and time.monotonic() < video.replying_until:
                # The last image stands in for the reply's frames: their renders are the
                # avatar stage's, made in the pipeline already.
                idle.discard()
            else:
                image = await idle.get(k)
                video.idle_shown += 1
            await loop.run_in_executor(None, encode, image)
            video.sent += 1
            k += 1
    finally:
        video.repeated = idle.repeated
        idle.close()


async def bench_llm_parallel(config: PipelineConfig, askers: int, rounds: int, progress: Any) -> dict[str, Any]:
    """The local LLM with ``askers`` questions at once: llama.cpp slots (``parallel`` =
    ``askers``, one batch) against one slot (the calls serialized), interleaved rounds.
    Reports time to the first token and to the first clause (what the TTS waits for)."""
    from avatarchat.handlers.llm.local import LocalLLM, LocalLLMOptions

    base = config.stages["llm"]
    if base.handler != "local":
        from avatarchat.cli.errors import UserError

        raise UserError("bench sched --llm compares llama.cpp slots: the config's llm must be `local`")
    assert isinstance(base.options, LocalLLMOptions)
    llms = {}
    for slots in (1, askers):
        llm = LocalLLM(base.options.model_copy(update={"parallel": slots}))
        llm.use_session(config.session)
        await asyncio.to_thread(llm.load)
        llms[f"parallel={slots}"] = llm
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in llms}
    for r in range(rounds):
        for name, llm in llms.items():
            questions = [QUESTIONS[(r + i) % len(QUESTIONS)] for i in range(askers)]
            got = await asyncio.gather(*(_ask(llm, q, config.session.system_prompt) for q in questions))
            rows[name] += got
            progress(f"round {r + 1}/{rounds} {name}: first clause "
                     f"{', '.join(str(g['first_clause_ms']) for g in got)} ms")
    keys = ("first_token_ms", "first_clause_ms", "reply_ms")
    return {
        "benchmark": "sched-llm",
        "askers": askers,
        "rounds": rounds,
        "machine": machine(),
        "summary": {name: {k: summarize(row[k] for row in rs) for k in keys} for name, rs in rows.items()},
    }


async def _ask(llm: Any, question: str, system: str) -> dict[str, float]:
    from avatarchat.engine.handler import SessionInfo

    ctx = llm.create_context(SessionInfo("bench"))
    t0 = time.monotonic()
    first = clause = None
    text = ""
    async for delta in llm.stream(ctx, [{"role": "system", "content": system}, {"role": "user", "content": question}]):
        now = time.monotonic()
        first = first or now
        text += delta
        # The TTS starts on a clause: punctuation, or its first_clause_max_words (8).
        if clause is None and (any(c in delta for c in ".,!?;:") or len(text.split()) >= 8):
            clause = now
    end = time.monotonic()
    return {"first_token_ms": round(((first or end) - t0) * 1000, 1),
            "first_clause_ms": round(((clause or end) - t0) * 1000, 1),
            "reply_ms": round((end - t0) * 1000, 1)}
