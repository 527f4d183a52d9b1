"""``avatarchat bench …``: benchmarks that print (or write) JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from avatarchat.audio.io import atomic_write
from avatarchat.cli.errors import UserError
from avatarchat.cli.progress import say as _say
from avatarchat.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmarks (JSON out)")
    bsub = p.add_subparsers(title="benchmarks", metavar="BENCH", required=True)
    pp = bsub.add_parser("pipeline", help="voice turns through VAD → ASR → LLM → TTS, live-paced")
    pp.add_argument("--turns", "-n", type=int, default=8, help="number of turns (default 8)")
    pp.add_argument("--input", "-i", type=Path, action="append", default=[],
                    help="recorded question(s) to use instead of TTS-spoken ones")
    _common(pp)
    pp.set_defaults(run=run_pipeline)
    pa = bsub.add_parser("avatar", help="portrait rendering: fps, CPU %%, first-frame latency")
    pa.add_argument("--seconds", "-s", type=float, default=20.0, help="seconds of spoken reply (default 20)")
    pa.add_argument("--paced", action="store_true", help="feed the reply in real time and measure the steady CPU load")
    _common(pa)
    pa.set_defaults(run=run_avatar)
    ps = bsub.add_parser("asr", help="whisper error rate (words; characters in Chinese) and time per call, "
                                     "per encoder window")
    ps.add_argument("--windows", type=float, nargs="+", default=[12.0, 30.0],
                    help="encoder windows to compare, seconds (default: 12 30)")
    _common(ps)
    ps.set_defaults(run=run_asr)
    pf = bsub.add_parser("first-audio", help="the reply's first audio after the LLM's first token, old and new "
                         "clause rules on the same replies (SmolLM2's own and scripted short openers)")
    pf.add_argument("--slow-rate", type=float, default=26.0, help="tokens/s of the slow pacing (default 26)")
    pf.add_argument("--rounds", type=int, default=1, help="replays of every reply per rule (default 1)")
    _common(pf)
    pf.set_defaults(run=run_first_audio)
    pt = bsub.add_parser("turn", help="end of turn on labelled pauses (complete / mid-sentence): "
                                      "the words rule, Smart Turn, both; accuracy and hangovers")
    pt.add_argument("--doubtful", type=int, nargs="+", default=[500, 600, 700, 800, 900],
                    help="doubtful_ms values to try for words+smart_turn (default: 500 600 700 800 900)")
    pt.add_argument("--threshold", type=float, help="Smart Turn's audio_threshold (default: the config's)")
    pt.add_argument("--limit", type=int, help="only the first N sentences of the set (a quick run)")
    _common(pt)
    pt.set_defaults(run=run_turn)
    pq = bsub.add_parser("quality", help="the LLM on 20 everyday English and 10 Chinese questions: right, "
                                         "on topic, reply length (words, characters, spoken seconds)")
    pq.add_argument("--models", nargs="+", metavar="MODEL",
                    help="local LLM models to compare, each with its own defaults (default: the config's)")
    pq.add_argument("--temperature", type=float, default=0.0,
                    help="sampling temperature (default 0: greedy, so a run repeats)")
    pq.add_argument("--limit", type=int, help="only the first N questions of each language (a quick run)")
    _common(pq)
    pq.set_defaults(run=run_quality)
    pe = bsub.add_parser("e2e", help="spoken turns through the web page in headless Chromium: "
                                     "voice-to-voice latency, fps, server CPU")
    pe.add_argument("--turns", "-n", type=int, default=5, help="spoken questions (default 5)")
    pe.add_argument("--gap", type=float, default=15.0,
                    help="seconds of silence after each question (default 15: the default LLM's longest "
                         "replies speak ~13 s; a reply still playing when the next question ends is "
                         "left out of the latency figures)")
    pe.add_argument("--compare", metavar="CONFIG2", help="also run this config and report both side by side")
    pe.add_argument("--avatar", choices=("client", "video"), default="client",
                    help="who draws the avatar: the page (client, default: what a page does where WebGL2 "
                         "works) or the server (video)")
    pe.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also serve another checkout's code (DIR/src, e.g. a git worktree of an older "
                         "commit) with this venv and its own page, and report both side by side")
    pe.add_argument("--rounds", type=int, default=1,
                    help="run every variant this many times, alternating (default 1; 2 = old,new,old,new)")
    pe.add_argument("--pauses", action="store_true",
                    help="questions with a 0.4-0.8 s pause mid-sentence: counts replies that start in the pause")
    pe.add_argument("--jbt", nargs="+", metavar="MS", default=[],
                    help="also run the page with each reply jitter-buffer target (ms, or 'off': unset)")
    pe.add_argument("--local-services", type=float, metavar="DELAY_MS", nargs="?", const=50.0,
                    help="serve the cloud services' local stand-ins (network delay DELAY_MS each way, default "
                         "50) and point the server at them: for configs/bailian.yaml and the other service configs")
    _common(pe)
    pe.set_defaults(run=run_e2e)
    pl = bsub.add_parser("load", help="N real sessions at once (aiortc clients, niced): voice to voice, fps, "
                                      "server CPU per idle and talking session, RSS, failed turns")
    pl.add_argument("--sessions", default="1,2,4,8", help="connected sessions per scenario (default 1,2,4,8)")
    pl.add_argument("--modes", default="video,client", help="avatar modes, in order (default video,client)")
    pl.add_argument("--talkers", help="sessions asking at the same moment: K for every N, or N:K,... "
                                      "(default: all of 1 or 2, 2 of 4, 1 of 8 or more)")
    pl.add_argument("--rounds", type=int, default=4, help="rounds of questions per scenario (default 4)")
    pl.add_argument("--idle", type=float, default=20.0, help="seconds all sessions stay idle (default 20)")
    pl.add_argument("--baseline", type=float, default=5.0, help="seconds of server CPU with no session (default 5)")
    pl.add_argument("--turn-timeout", type=float, default=30.0, help="seconds to an audible reply before a turn fails (default 30)")
    pl.add_argument("--config", "-c", help="YAML config (default: the embedded default)")
    pl.add_argument("--json", type=Path, help="write the JSON here ('-': to stdout, the table to stderr)")
    pl.add_argument("--logs", type=Path, help="copy the server's and the clients' logs into this folder")
    pl.set_defaults(run=run_load)
    pk = bsub.add_parser("cluster", help="a Ray cluster on this machine (avatarchat cluster local): signaling "
                                         "time through its front door against a single serve, sessions placed "
                                         "per second, RSS of an idle node (needs avatarchat[cluster])")
    pk.add_argument("--nodes", type=int, default=2, help="session nodes (default 2)")
    pk.add_argument("--sessions-per-node", type=int, default=2, help="slots per node (default 2)")
    pk.add_argument("--rounds", "-n", type=int, default=20, help="offers to each server (default 20)")
    pk.add_argument("--bursts", type=int, default=3, help="times every slot is offered at once (default 3)")
    _common(pk)
    pk.set_defaults(run=run_cluster)
    pc = bsub.add_parser("sched", help="in-process sessions, some asking at once, some idle at 25 fps: "
                                       "speech end to first reply audio per scheduler (executor, FIFO, priority, nice)")
    pc.add_argument("--talking", type=int, default=2, help="sessions asking at the same moment (default 2)")
    pc.add_argument("--idle", type=int, default=2, help="sessions that only show the idle avatar (default 2)")
    pc.add_argument("--rounds", type=int, default=6, help="blocks per scheduler, interleaved (default 6)")
    pc.add_argument("--llm", action="store_true", help="instead: the local LLM with --talking questions at once, "
                                                       "llama.cpp slots (parallel) against one slot")
    _common(pc)
    pc.set_defaults(run=run_sched)
    pl = bsub.add_parser("lipsync", help="the audio-driven mouth (old loudness, MFCC vowels) against the "
                                         "phoneme-timed one on the same speech: agreement, A/V lag, cost")
    pl.add_argument("--languages", nargs="+", choices=("en", "zh", "espeak"), default=["en", "zh", "espeak"],
                    help="voices: hibari, the Mandarin add-on (never in the templates' fit), espeak-ng")
    pl.add_argument("--templates", nargs="+", default=[], metavar="NAME=PATH",
                    help="also these templates (a fit's JSON), reported as mfcc@NAME beside the shipped ones")
    pl.add_argument("--no-render", action="store_true", help="curves only: skip the rendered-frames A/V analysis")
    pl.add_argument("--piece-ms", type=float, default=300.0, help="streamed pieces' length (default 300)")
    pl.add_argument("--rounds", type=int, default=3, help="timed passes per mouth for the cost (default 3)")
    pl.add_argument("--json", type=Path, help="also write the JSON to this file")
    pl.set_defaults(run=run_lipsync)
    pv = bsub.add_parser("services", help="each cloud service handler's first audio / transcript / token against "
                                          "its local protocol server with a network delay, beside the embedded "
                                          "handler of its stage")
    pv.add_argument("--rounds", "-n", type=int, default=10, help="calls per handler (default 10)")
    pv.add_argument("--delay-ms", type=float, default=50.0, help="network delay each way (default 50)")
    pv.add_argument("--only", nargs="+", metavar="CASE", help="only these cases (names as in the JSON)")
    pv.add_argument("--json", type=Path, help="also write the JSON to this file")
    pv.set_defaults(run=run_services)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (default: the embedded default)")
    p.add_argument("--json", type=Path, help="also write the JSON to this file")


def run_pipeline(args: argparse.Namespace) -> int:
    from avatarchat.bench.pipeline import bench_pipeline

    if args.turns < 1:
        raise UserError("--turns must be at least 1")
    report = asyncio.run(bench_pipeline(load_config(args.config), args.turns, args.input, _say))
    _emit(report, args.json)
    return 0


def run_avatar(args: argparse.Namespace) -> int:
    from avatarchat.bench.avatar import bench_avatar

    if not 1.0 <= args.seconds <= 600.0:
        raise UserError("--seconds must be between 1 and 600")
    report = asyncio.run(bench_avatar(load_config(args.config), args.seconds, args.paced, _say))
    _emit(report, args.json)
    return 0


def run_asr(args: argparse.Namespace) -> int:
    from avatarchat.bench.asr import bench_asr

    if not all(4.0 <= w <= 30.0 for w in args.windows):
        raise UserError("--windows must be between 4 and 30 seconds")
    config = load_config(args.config) if args.config else None  # None: tiny.en, English
    try:
        report = bench_asr(args.windows, _say, config)
    except ValueError as exc:  # a config without whisper, or Chinese without a voice
        raise UserError(str(exc)) from None
    _emit(report, args.json)
    return 0


def run_first_audio(args: argparse.Namespace) -> int:
    from avatarchat.bench.first_audio import bench_first_audio

    if not 1 <= args.rounds <= 20 or not 1.0 <= args.slow_rate <= 500.0:
        raise UserError("--rounds must be 1-20 and --slow-rate 1-500 tokens/s")
    report = asyncio.run(bench_first_audio(load_config(args.config), args.slow_rate, args.rounds, _say))
    _emit(report, args.json)
    return 0


def run_turn(args: argparse.Namespace) -> int:
    from avatarchat.bench.turn import Rules, bench_turn
    from avatarchat.handlers.vad.silero import SileroOptions

    config = load_config(args.config)
    eot = config.session.end_of_turn
    vad = config.stages.get("vad")
    end_ms = int(getattr(vad.options, "end_ms", 1000)) if vad is not None else 1000
    threshold = eot.audio_threshold if args.threshold is None else args.threshold
    if not 0.0 < threshold < 1.0 or not all(0 <= d <= 10_000 for d in args.doubtful):
        raise UserError("--threshold must be in (0, 1) and --doubtful values 0..10000 ms")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    rules = Rules(eot.complete_ms, eot.unfinished_ms, end_ms)
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    vad_options = vad.options if vad is not None and isinstance(vad.options, SileroOptions) else None
    try:  # a Chinese config runs the Chinese set, with its voice and its whisper
        report = bench_turn(rules, threshold, args.doubtful, thresholds, args.limit, _say, vad_options, config)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _emit(report, args.json)
    return 0


def run_quality(args: argparse.Namespace) -> int:
    from avatarchat.bench.quality import bench_quality

    if not 0.0 <= args.temperature <= 2.0 or (args.limit is not None and args.limit < 1):
        raise UserError("--temperature must be 0..2 and --limit at least 1")
    try:
        report = asyncio.run(bench_quality(load_config(args.config), args.models or [None], args.temperature,
                                           args.limit, _say))
    except ValueError as exc:  # --models with a config whose LLM is not local
        raise UserError(str(exc)) from None
    _emit(report, args.json)
    return 0


def run_e2e(args: argparse.Namespace) -> int:
    from avatarchat.bench.e2e import bench_e2e

    if not 1 <= args.turns <= 50:
        raise UserError("--turns must be between 1 and 50")
    if not 2.0 <= args.gap <= 60.0:
        raise UserError("--gap must be between 2 and 60 seconds")
    if not 1 <= args.rounds <= 10:
        raise UserError("--rounds must be between 1 and 10")
    if not all(v == "off" or (v.isdigit() and int(v) <= 4000) for v in args.jbt):
        raise UserError("--jbt takes milliseconds (0..4000) or 'off'")
    for path in (args.config, args.compare):
        if path is not None:
            load_config(path)  # a bad config fails here, before the TTS and the browser start
    try:
        report = bench_e2e(args.config, args.compare, args.turns, args.gap, _say, avatar=args.avatar,
                           baseline=args.baseline, rounds=args.rounds, pauses=args.pauses, jbt=args.jbt,
                           local_services_ms=args.local_services)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    _emit(report, args.json)
    return 0


def run_lipsync(args: argparse.Namespace) -> int:
    from avatarchat.bench.lipsync import bench_lipsync, load_templates

    if not (20.0 <= args.piece_ms <= 5000.0 and 1 <= args.rounds <= 50):
        raise UserError("--piece-ms must be 20..5000 and --rounds 1..50")
    try:
        templates = load_templates(args.templates)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _emit(bench_lipsync(args.languages, not args.no_render, args.piece_ms, args.rounds, _say, templates), args.json)
    return 0


def run_load(args: argparse.Namespace) -> int:
    from avatarchat.bench.load import run_from_args

    return run_from_args(args)


def run_cluster(args: argparse.Namespace) -> int:
    from avatarchat.bench.cluster import bench_cluster

    if not (1 <= args.nodes <= 8 and 1 <= args.sessions_per_node <= 16 and 1 <= args.rounds <= 500
            and 1 <= args.bursts <= 50):
        raise UserError("--nodes must be 1..8, --sessions-per-node 1..16, --rounds 1..500, --bursts 1..50")
    if args.config:
        load_config(args.config)  # a bad config fails here, before any process starts
    _emit(bench_cluster(args.config, args.nodes, args.sessions_per_node, args.rounds, args.bursts, _say), args.json)
    return 0


def run_sched(args: argparse.Namespace) -> int:
    from avatarchat.bench.sched import MAX_TALKING, bench_llm_parallel, bench_sched

    if not (1 <= args.talking <= MAX_TALKING and 0 <= args.idle <= 16 and 1 <= args.rounds <= 100):
        raise UserError(f"--talking must be 1..{MAX_TALKING}, --idle 0..16, --rounds 1..100")
    if args.llm:
        report = asyncio.run(bench_llm_parallel(load_config(args.config), args.talking, args.rounds, _say))
    else:
        report = asyncio.run(bench_sched(load_config(args.config), args.talking, args.idle, args.rounds, _say))
    _emit(report, args.json)
    return 0


def run_services(args: argparse.Namespace) -> int:
    from avatarchat.bench.services import bench_services

    if not 1 <= args.rounds <= 200 or not 0.0 <= args.delay_ms <= 5000.0:
        raise UserError("--rounds must be 1..200 and --delay-ms 0..5000")
    try:
        report = asyncio.run(bench_services(args.rounds, args.delay_ms, args.only, _say))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _emit(report, args.json)
    return 0


def _emit(report: dict[str, object], path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if path is not None:
        atomic_write(path, lambda f: f.write(text.encode()))
        _say(f"wrote {path}")
    print(text)
