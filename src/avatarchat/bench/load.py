"""``avatarchat bench load``: many real sessions against one real server.

A real ``avatarchat serve`` subprocess on 127.0.0.1 (the config given, with
``server.max_sessions`` and ``max_sessions_per_client`` raised to the largest N and
``server.avatar_mode: auto`` where the server has it) and, per scenario (a mode and an N),
one client process running N aiortc sessions (``bench.load_client``, under ``nice -n 10`` so
the clients yield the CPU to the server). Each scenario:

1. the server's baseline CPU with no session (``baseline_s``);
2. all N connect, one after another, and each asks one warm-up question (not counted),
   ``talkers`` at a time;
3. all N idle for ``idle_s``: the server's CPU per idle session is
   ``(idle CPU - baseline) / N``;
4. ``rounds`` rounds in which ``talkers`` sessions (a different set each round) speak a
   question at the same moment and hear the reply to its end: voice to voice per turn (client
   clock: end of the question as sent -> first audible reply chunk received), video frames
   or face rows received per session, and the server's CPU while they talk: per talking
   session ``(talk CPU - baseline - idle sessions x idle cost) / talkers``.

Server CPU is read from /proc at the client's phase marks, RSS every second. A turn fails when
no audible reply comes within ``turn_timeout_s`` or an ``error`` message concerns it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from avatarchat.audio.io import atomic_write
from avatarchat.bench.harness import ServeProcess, cpu_seconds
from avatarchat.bench.load_watch import ServerWatch, wait_idle_server
from avatarchat.bench.stats import machine, summarize
from avatarchat.cli.errors import UserError
from avatarchat.cli.progress import say
from avatarchat.config import load_config

Progress = Callable[[str], None]
MODES = ("video", "client")
WARMUP_QUESTION = "Hello, can you hear me?"
#: The longest a reply is followed to its end (the default LLM's longest speak ~13 s).
REPLY_CAP_S = 45.0


def default_talkers(n: int) -> int:
    """Sessions asking at once for N connected ones, after the issue's targets: every one of
    one or two, two of four ("4 connected, 2 asking at the same moment"), one of eight or more
    ("8 connected client-rendered, 1 asking at a time")."""
    return n if n <= 2 else 2 if n < 8 else 1


# --- setup ----------------------------------------------------------------------------------------


def speak_questions(folder: Path, texts: Sequence[str], progress: Progress) -> list[dict[str, str]]:
    """Each text spoken by the default voice (hibari) into its own 48 kHz WAV, all at one level."""
    from avatarchat.audio.io import write_wav
    from avatarchat.audio.resample import resample
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

    tts = HibariTTS(HibariOptions())
    tts.load()
    out = []
    for i, text in enumerate(texts):
        samples, _ = tts.synthesize(text)
        speech = resample(samples, tts.sample_rate, 48000).astype(np.float32)
        speech *= 0.5 / max(float(np.abs(speech).max()), 1e-6)
        path = folder / f"q{i}.wav"
        write_wav(path, speech, 48000)
        out.append({"text": text, "wav": str(path)})
    progress(f"spoke {len(texts)} questions with the default voice")
    return out


def serve_config(config: str | None, max_n: int, folder: Path) -> Path:
    """The config with room for ``max_n`` sessions from one address, written beside the
    original (so its relative paths still resolve) or into ``folder`` for the default."""
    from avatarchat.config import DEFAULT_CONFIG

    source = Path(config) if config is not None else DEFAULT_CONFIG
    raw = yaml.safe_load(source.read_text()) or {}
    server = raw.setdefault("server", {}) or {}
    raw["server"] = server
    server["max_sessions"] = max(max_n, int(server.get("max_sessions", 1)))
    server["max_sessions_per_client"] = max(max_n, int(server.get("max_sessions_per_client", 1)))
    server["max_video_sessions"] = max(max_n, int(server.get("max_video_sessions", 0)))  # video mode is measured too
    server["avatar_mode"] = "auto"  # both modes are asked of the same server
    where = folder if config is None else source.parent
    fd, name = tempfile.mkstemp(prefix=".bench-load-", suffix=".yaml", dir=where)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return Path(name)


# --- the client process ---------------------------------------------------------------------------


class ClientProcess:
    """``bench.load_client`` under ``nice -n 10``: the spec goes in on stdin, events come back
    one JSON line each. Closing stdin asks it to hang up; ``stop`` always ends it."""

    def __init__(self, spec: dict[str, Any], log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                ["nice", "-n", "10", sys.executable, "-m", "avatarchat.bench.load_client"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(spec) + "\n").encode())
        self.proc.stdin.flush()
        self._buf = b""

    def events(self, tick: Callable[[], None], deadline: float) -> Any:
        """Yield each event as it comes, calling ``tick`` about once a second meanwhile."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            tick()
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self._buf += chunk
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
        raise RuntimeError("the clients did not finish in time")

    def log_count(self, text: str) -> int:
        try:
            return self.log.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """Hang up (stdin closed), then SIGTERM, then SIGKILL; returns the exit code."""
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        for action in (None, proc.terminate, proc.kill):
            if action is not None:
                action()
            try:
                return proc.wait(15)
            except subprocess.TimeoutExpired:
                continue
        return proc.poll()


# --- one scenario -------------------------------------------------------------------------------------


def run_scenario(server: ServeProcess, spec: dict[str, Any], baseline_s: float, folder: Path,
                 progress: Progress) -> dict[str, Any]:
    """One mode and N: the server's baseline, then the client process's phases, measured."""
    label = f"{spec['mode']} N={spec['sessions']}"
    left = wait_idle_server(server)
    if left:
        progress(f"{label}: the server still holds {left} session(s) from before")
    load_before = machine()["loadavg"]
    t0, c0 = time.monotonic(), cpu_seconds(server.pid)
    time.sleep(baseline_s)
    baseline = _pct(c0, cpu_seconds(server.pid), time.monotonic() - t0)
    watch = ServerWatch(server)
    result: dict[str, Any] = {}
    warmups: list[dict[str, Any]] = []
    error = None
    client = ClientProcess(spec, folder / f"client-{spec['mode']}-{spec['sessions']}.log")
    k = min(spec["talkers"], spec["sessions"])
    budget = spec["sessions"] * 40 + (spec["rounds"] + spec["sessions"] / k) * (
        spec["turn_timeout_s"] + spec["reply_cap_s"] + 5) + spec["idle_s"] + 60
    try:
        for ev in client.events(watch.tick, time.monotonic() + budget):
            watch.mark(ev["event"])
            if ev["event"] == "result":
                result = ev
            elif ev["event"] == "error":
                error = ev["message"]
            elif ev["event"] == "warmup":
                warmups = ev["turns"]
            _progress_line(label, spec, ev, progress)
    except RuntimeError as exc:
        error = f"{exc}; the clients' log ends:\n{client.log_tail()}"
    finally:
        code = client.stop()
    if not result and error is None:
        error = f"the clients exited ({code}) without a result:\n{client.log_tail()}"
    if error:
        progress(f"{label}: FAILED: {error}")
    figures = _figures(spec, baseline, watch.marks, watch.talk, result, warmups)
    figures["client_ice_consent_expired"] = client.log_count("Consent to send expired")
    if error or figures["turns_failed"] or figures["warmup_failed"]:
        figures["server_log"] = watch.log_excerpt()
    return {
        "mode": spec["mode"], "sessions": spec["sessions"], "talkers": k, "rounds": spec["rounds"],
        "idle_s": spec["idle_s"], "error": error, "loadavg_before": load_before, "loadavg_after": machine()["loadavg"],
        **watch.figures(), **figures,
    }


def _progress_line(label: str, spec: dict[str, Any], ev: dict[str, Any], progress: Progress) -> None:
    name = ev["event"]
    if name == "connected":
        progress(f"{label}: {spec['sessions']} connected (server answered {ev['answered']}, "
                 f"mic DTX asked of {ev.get('mic_dtx', 0)}); warming up")
    elif name == "warmup_wave":
        progress(f"{label}: warm-up (not counted) {_v2v_line(ev['turns'])}")
    elif name == "warmup":
        progress(f"{label}: idle {spec['idle_s']:.0f} s")
    elif name == "round_end":
        progress(f"{label}: round {ev['round'] + 1}/{spec['rounds']} {_v2v_line(ev['turns'])}")


def _pct(c0: float | None, c1: float | None, wall: float) -> float | None:
    """CPU seconds over wall seconds, in % of one core."""
    if c0 is None or c1 is None or wall <= 0:
        return None
    return round(100.0 * (c1 - c0) / wall, 1)


def _figures(spec: dict[str, Any], baseline: float | None, marks: dict[str, tuple[float, float | None]],
             talk: list[tuple[float, float]], result: dict[str, Any], warmups: list[dict[str, Any]]) -> dict[str, Any]:
    n, k = spec["sessions"], min(spec["talkers"], spec["sessions"])
    idle_total = None
    if "idle_start" in marks and "idle_end" in marks:
        (a, ca), (b, cb) = marks["idle_start"], marks["idle_end"]
        idle_total = _pct(ca, cb, b - a)
    talk_total = _pct(0.0, sum(c for _, c in talk), sum(w for w, _ in talk)) if talk else None
    idle_each = None if idle_total is None or baseline is None else round((idle_total - baseline) / n, 1)
    talk_each = None
    if talk_total is not None and baseline is not None and idle_each is not None:
        talk_each = round((talk_total - baseline - (n - k) * idle_each) / k, 1)
    turns = result.get("turns", [])
    sessions = result.get("sessions", [])
    talking = [s["talk"] for s in sessions]

    def spread(key: str) -> dict[str, float | None]:
        values = [r[key] for r in talking if r.get(key) is not None]
        return {"min": min(values) if values else None,
                "median": round(float(np.median(values)), 2) if values else None}

    wall = marks.get("result", (0.0, None))[0] - marks.get("connected", (0.0, None))[0]
    return {
        "answered_modes": sorted({str(s["answered_mode"]) for s in sessions}),
        "mic_dtx": sum(bool(s.get("mic_dtx")) for s in sessions),
        "voice_to_voice_ms": summarize(t["voice_to_voice_ms"] for t in turns if not t["failed"]),
        "server_first_audio_after_speech_end_ms": summarize(
            t["server_first_audio_after_speech_end_ms"] for t in turns if not t["failed"]),
        "turns": len(turns),
        "turns_failed": sum(1 for t in turns if t["failed"]),
        "failures": [f"session {t['session']} round {t['round']}: {t['failed']}" for t in turns if t["failed"]],
        "warmup_failed": sum(1 for t in warmups if t["failed"]),
        "video_fps_talking": spread("video_fps"),
        "face_rows_per_s_talking": spread("face_rows_per_s"),
        "face_frames_per_s_talking": spread("face_frames_per_s"),
        "server_cpu_baseline_pct": baseline,
        "server_cpu_idle_pct": idle_total,
        "server_cpu_talking_pct": talk_total,
        "server_cpu_per_idle_session_pct": idle_each,
        "server_cpu_per_talking_session_pct": talk_each,
        "client_cpu_pct": _pct(0.0, result.get("client_cpu_s"), wall) if result else None,
        "client_loop_lag_ms": result.get("client_loop_lag_ms"),
        "per_session": sessions,
        "turn_rows": turns,
    }


def _v2v_line(turns: list[dict[str, Any]]) -> str:
    return ", ".join(f"s{t['session']}: {t['voice_to_voice_ms']} ms" if not t["failed"]
                     else f"s{t['session']}: FAILED ({t['failed']})" for t in turns)


# --- the whole run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """What ``bench load`` runs: every mode for every N, phases of these lengths."""

    sessions: tuple[int, ...] = (1, 2, 4, 8)
    modes: tuple[str, ...] = MODES
    talkers: dict[int, int] = field(default_factory=dict)  # N -> K; default_talkers for the rest
    rounds: int = 4
    idle_s: float = 20.0
    baseline_s: float = 5.0
    turn_timeout_s: float = 30.0
    logs: Path | None = None  # where to copy the server's and the clients' logs


def bench_load(config: str | None, options: LoadOptions, progress: Progress) -> dict[str, Any]:
    """Every (mode, N) scenario against one server; the report (``table`` is its summary)."""
    # SIGTERM unwinds like Ctrl-C, so the server and the clients are stopped either way.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run_all(config, options, progress)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_all(config: str | None, o: LoadOptions, progress: Progress) -> dict[str, Any]:
    from avatarchat.bench.pipeline import QUESTIONS

    scenarios: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="avatarchat-load-") as tmp:
        folder = Path(tmp)
        spoken = speak_questions(folder, [WARMUP_QUESTION, *QUESTIONS], progress)
        config_path = serve_config(config, max(o.sessions), folder)
        try:
            with ServeProcess(config_path, log_path=folder / "serve.log") as server:
                progress(f"server ready at {server.url} (pid {server.pid})")
                for mode in o.modes:
                    for n in o.sessions:
                        spec = {"url": server.url, "sessions": n, "mode": mode,
                                "talkers": o.talkers.get(n, default_talkers(n)), "rounds": o.rounds,
                                "idle_s": o.idle_s, "warmup": spoken[0], "questions": spoken[1:],
                                "turn_timeout_s": o.turn_timeout_s, "reply_cap_s": REPLY_CAP_S, "gap_s": 1.0}
                        scenarios.append(run_scenario(server, spec, o.baseline_s, folder, progress))
                        if server.proc is None or server.proc.poll() is not None:
                            raise RuntimeError(f"the server exited:\n{server.log_tail()}")
        finally:
            config_path.unlink(missing_ok=True)
            if o.logs is not None:
                o.logs.mkdir(parents=True, exist_ok=True)
                for log in folder.glob("*.log"):
                    shutil.copy(log, o.logs / log.name)
    return {
        "benchmark": "load",
        "what": "voice-to-voice = end of the question as the client's mic sent it -> first received reply "
                "chunk with RMS > 0.01 (client clock, aiortc, loopback); CPU in % of one core",
        "machine": machine(),
        "config": config or "(embedded default)",
        "commit": git_head(),
        "scenarios": scenarios,
        "table": [table_row(s) for s in scenarios],
    }


def git_head() -> str | None:
    """The checkout's commit, when the package runs from one (the figures belong to it)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def table_row(s: dict[str, Any]) -> dict[str, Any]:
    """The figures a reader compares, one row per scenario."""
    v2v = s["voice_to_voice_ms"]
    fps, rows = s["video_fps_talking"], s["face_rows_per_s_talking"]
    return {
        "mode": s["mode"] if s["answered_modes"] in ([s["mode"]], []) else f"{s['mode']}->{'/'.join(s['answered_modes'])}",
        "N": s["sessions"], "talkers": s["talkers"],
        "v2v median ms": v2v["median"], "v2v p90 ms": v2v["p90"],
        "fps min/med": f"{fps['min']}/{fps['median']}" if fps["median"] else "-",
        "face rows/s": rows["median"] if rows["median"] else "-",
        "CPU idle/sess %": s["server_cpu_per_idle_session_pct"],
        "CPU talk/sess %": s["server_cpu_per_talking_session_pct"],
        "RSS MB": s["server_rss_mb"],
        "failed": f"{s['turns_failed']}/{s['turns']}" + (" ERR" if s["error"] else ""),
        "load": s["loadavg_before"][0],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain text table of ``table_row`` rows."""
    if not rows:
        return "(no scenarios)"
    keys = list(rows[0])
    cells = [[str(k) for k in keys]] + [["-" if r[k] is None else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    lines = ["  ".join(c[i].rjust(widths[i]) for i in range(len(keys))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------------


def run_from_args(args: argparse.Namespace) -> int:
    """``avatarchat bench load``: check the arguments, run, print the table (and the JSON)."""
    try:
        sessions = [int(x) for x in args.sessions.split(",")]
        talkers = _talkers(args.talkers, sessions)
    except ValueError:
        raise UserError("--sessions is a list like 1,2,4,8 and --talkers K or N:K,N:K") from None
    modes = args.modes.split(",")
    if not sessions or not all(1 <= n <= 64 for n in sessions) or not all(1 <= k for k in talkers.values()):
        raise UserError("--sessions must be between 1 and 64, --talkers at least 1")
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--modes takes {' and '.join(MODES)}, comma-separated")
    if not 1 <= args.rounds <= 50 or not 1.0 <= args.idle <= 600.0 or not 1.0 <= args.baseline <= 60.0:
        raise UserError("--rounds must be 1-50, --idle 1-600 s, --baseline 1-60 s")
    if not 5.0 <= args.turn_timeout <= 120.0:
        raise UserError("--turn-timeout must be between 5 and 120 seconds")
    load_config(args.config)  # a bad config fails here, before the TTS and the server start
    options = LoadOptions(tuple(sessions), tuple(modes), talkers, args.rounds, args.idle, args.baseline,
                          args.turn_timeout, args.logs)
    try:
        report = bench_load(args.config, options, say)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    table = format_table(report["table"])
    if args.json is not None and str(args.json) == "-":
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
        return 0
    if args.json is not None:
        text = json.dumps(report, indent=2)
        atomic_write(args.json, lambda f: f.write(text.encode()))
        say(f"wrote {args.json}")
    print(table)
    return 0


def _talkers(spec: str | None, sessions: list[int]) -> dict[int, int]:
    """``--talkers``: K for every N, or N:K pairs (the N not named get the default)."""
    if spec is None:
        return {}
    if ":" not in spec:
        return {n: int(spec) for n in sessions}
    return {int(n): int(k) for n, k in (pair.split(":") for pair in spec.split(","))}
