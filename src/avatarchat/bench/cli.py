"""``avatarchat bench …``: benchmarks that print (or write) JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from avatarchat.audio.io import atomic_write
from avatarchat.engine.config import load_config

_T0 = time.perf_counter()


def _say(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.2f}s] {message}", file=sys.stderr, flush=True)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmarks (JSON out)")
    bsub = p.add_subparsers(title="benchmarks", metavar="BENCH", required=True)
    pp = bsub.add_parser("pipeline", help="voice turns through VAD → ASR → LLM → TTS, live-paced")
    pp.add_argument("--turns", "-n", type=int, default=8, help="number of turns (default 8)")
    pp.add_argument("--input", "-i", type=Path, action="append", default=[],
                    help="recorded question(s) to use instead of TTS-spoken ones")
    _common(pp)
    pp.set_defaults(run=run_pipeline)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (default: the embedded default)")
    p.add_argument("--json", type=Path, help="also write the JSON to this file")


def run_pipeline(args: argparse.Namespace) -> int:
    from avatarchat.bench.pipeline import bench_pipeline
    from avatarchat.cli.main import UserError

    if args.turns < 1:
        raise UserError("--turns must be at least 1")
    report = asyncio.run(bench_pipeline(load_config(args.config), args.turns, args.input, _say))
    _emit(report, args.json)
    return 0


def _emit(report: dict[str, object], path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if path is not None:
        atomic_write(path, lambda f: f.write(text.encode()))
        _say(f"wrote {path}")
    print(text)
