"""``avatarchat bench e2e``: spoken turns through the web page, measured in the browser.

A real ``avatarchat serve`` subprocess and Debian's headless Chromium (driven by playwright,
never a downloaded browser). Chromium's fake microphone plays a WAV of questions spoken by
the TTS with long silences between them (``e2e_mic``); the page (``window.avatarchat``)
records RMS envelopes of the outgoing microphone and the incoming avatar voice in its own
``performance.now()`` clock, so voice-to-voice latency is the time from the end of the user's
speech leaving the page to the first audible reply sample arriving at it: network, jitter
buffers and decoding included, nothing taken from the server's own clock. Each turn is
split into end of speech -> decision -> first audio sent -> heard (``e2e_turns``). A
question spoken over a playing reply (a barge-in: ``--gap`` shorter than the replies) is
timed from its onset to the avatar falling silent twice: as the user hears it and as the
server's cut arrives in the incoming audio.

Several variants can be measured in one run, alternated round by round on the same file:
the config, a second config (``--compare``), another checkout's code (``--baseline DIR``:
its server and its own page, this venv) and page options (``--jbt``: the reply's jitter
buffer target). The server, browser and CPU plumbing it shares with the browser tests is in
``harness``.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from avatarchat.bench.e2e_mic import FAKE_MIC_RATE, QUESTIONS_ZH, paused_questions, questions_wav
from avatarchat.bench.e2e_turns import (
    AUDIBLE_RMS,
    SERVER_METRICS,
    barge_in_stops,
    concealment,
    page_detections,
    pause_counts,
    speculations,
    turn_rows,
)
from avatarchat.bench.harness import (
    CHROMIUM,
    CpuMeter,
    ServeProcess,
    browser_pids,
    launch_chromium,
    open_page,
    wait_for,
)
from avatarchat.bench.stats import machine, summarize, summarize_rows

__all__ = ["FAKE_MIC_RATE", "Variant", "bench_e2e", "source_env", "variants"]

Progress = Callable[[str], None]
AvatarMode = Literal["client", "video"]
#: Mic segments: gaps shorter than this are one question (--pauses: longer than any pause).
MIC_HANGOVER_MS = {False: 400, True: 1000}


@dataclass(frozen=True)
class Variant:
    """What one measured run serves and how its page is opened."""

    label: str
    config: str | None = None
    #: Another checkout (its ``src`` is put first on the server's PYTHONPATH), or None: this code.
    source: Path | None = None
    #: Extra query of the page's URL (``jbt=20``).
    query: str = ""


def source_env(source: Path, meta: Path) -> dict[str, str]:
    """The environment that serves checkout ``source`` with this venv: its ``src`` first on
    PYTHONPATH, then ``meta``, where the checkout's own package metadata is written (its
    handlers are entry points: the installed metadata names this checkout's modules, which
    an older one may lack; importlib takes the first ``avatarchat`` found on the path)."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    info = meta / f"avatarchat-{project.get('version', '0')}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: avatarchat\nVersion: {project.get('version', '0')}\n")
    lines = []
    for group, points in project.get("entry-points", {}).items():
        lines += [f"[{group}]", *(f"{name} = {target}" for name, target in points.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return {"PYTHONPATH": f"{source / 'src'}:{meta}"}


def variants(config: str | None, compare: str | None = None, baseline: Path | None = None,
             jbt: Sequence[str] = ()) -> list[Variant]:
    """The variants of one run, in the order each round runs them: the baseline checkout
    first (old, new), the config, the second config, the config with each jitter target."""
    name = config or "(embedded default)"
    out = []
    if baseline is not None:
        out.append(Variant(f"baseline {_commit(baseline) or baseline}", config, source=baseline))
    out.append(Variant(f"current {_commit(Path(__file__).parent) or ''}".strip() if baseline is not None else name,
                       config))
    if compare is not None:
        out.append(Variant(compare, compare))
    out += [Variant(f"{name} jbt={v}", config, query=f"jbt={v}") for v in jbt]
    return out


def _commit(path: Path) -> str | None:
    """The short commit of the checkout at ``path`` (with ``+`` if it has changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


# --- one measured run ------------------------------------------------------------------------------


def run_variant(variant: Variant, wav: Path, wav_seconds: float, questions: Sequence[str], avatar: AvatarMode,
                pauses: bool, progress: Progress, services_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Serve ``variant`` (with ``services_env``: the local services' URLs and keys), talk to
    it through its page for the whole WAV, and measure."""
    with tempfile.TemporaryDirectory(prefix="avatarchat-e2e-meta-") as meta:
        env = source_env(variant.source, Path(meta)) if variant.source is not None else {}
        return _run_served(variant, {**(services_env or {}), **env}, wav, wav_seconds, questions, avatar, pauses,
                           progress)


def _run_served(variant: Variant, env: dict[str, str], wav: Path, wav_seconds: float, questions: Sequence[str],
                avatar: AvatarMode, pauses: bool, progress: Progress) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    label = variant.label
    with ServeProcess(variant.config, env=env) as server, sync_playwright() as pw:
        progress(f"{label}: server ready at {server.url} (pid {server.pid})")
        idle = CpuMeter(lambda: [server.pid])
        idle.start()
        time.sleep(2.0)
        server_idle_cpu = idle.stop()
        browser = launch_chromium(pw, fake_audio=wav)
        try:
            url = server.url + (f"?{variant.query}" if variant.query else "")
            page = open_page(browser, url, raw=True, avatar="video" if avatar == "video" else None)
            rec = _talk(page, server, label, wav_seconds, pauses, progress)
            rec["server_idle_cpu"] = server_idle_cpu
            page.click("#stop")
        finally:
            browser.close()
    return _report_run(variant, rec, questions, avatar, pauses, progress)


def _talk(page: Any, server: ServeProcess, label: str, wav_seconds: float, pauses: bool,
          progress: Progress) -> dict[str, Any]:
    """Start the page, let the fake microphone play, and read back what the page recorded."""
    server_cpu = CpuMeter(lambda: [server.pid])
    browser_cpu = CpuMeter(lambda: browser_pids(server.pid))
    server_cpu.start()
    browser_cpu.start()
    page.click("#start")
    wait_for(page, "() => avatarchat.state().connection === 'connected'", 30)
    # Video: the first frame on the <video>; the page drawing: its first frame drawn.
    wait_for(page, "() => avatarchat.marks().firstFrame || (avatarchat.avatar && avatarchat.avatar().framesDrawn > 0)", 30)
    rec: dict[str, Any] = {"t0": page.evaluate("avatarchat.now()"), "s0": page.evaluate("avatarchat.stats()"),
                           "drawn0": _drawn(page)}
    rec["mode"] = page.evaluate("avatarchat.state().avatar")
    progress(f"{label}: connected (avatar {rec['mode']}); playing {wav_seconds:.0f} s of questions")
    # The whole file, then until the last reply is over (or 30 s more at most).
    time.sleep(wav_seconds)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and page.evaluate("avatarchat.state().conversation") != "listening":
        time.sleep(0.5)
    time.sleep(1.0)
    rec.update(t1=page.evaluate("avatarchat.now()"), s1=page.evaluate("avatarchat.stats()"), drawn1=_drawn(page))
    rec["marks"] = page.evaluate("avatarchat.marks()")
    hangover = MIC_HANGOVER_MS[pauses]
    rec["mic"] = page.evaluate(f"avatarchat.segments('mic', {{threshold: {AUDIBLE_RMS}, hangoverMs: {hangover}, minMs: 300}})")
    rec["remote"] = page.evaluate(f"avatarchat.segments('remote', {{threshold: {AUDIBLE_RMS}, hangoverMs: 250, minMs: 60}})")
    rec["messages"] = page.evaluate("avatarchat.messages")
    rec["mic_envelope"] = page.evaluate("avatarchat.envelope('mic')") if pauses else None
    rec["remote_envelope"] = page.evaluate("avatarchat.envelope('remote')")
    rec["heard_envelope"] = page.evaluate("avatarchat.envelope('heard')")
    rec["gate"] = page.evaluate("avatarchat.bargeIn()")
    rec["server_cpu"] = server_cpu.stop()
    rec["browser_cpu"] = browser_cpu.stop()
    return rec


def _drawn(page: Any) -> int:
    return int(page.evaluate("avatarchat.avatar ? (avatarchat.avatar().framesDrawn || 0) : 0"))


def _report_run(variant: Variant, rec: dict[str, Any], questions: Sequence[str], avatar: AvatarMode,
                pauses: bool, progress: Progress) -> dict[str, Any]:
    span_s = (rec["t1"] - rec["t0"]) / 1000
    s0, s1, mic, marks = rec["s0"], rec["s1"], rec["mic"], rec["marks"]
    rows = turn_rows(mic, rec["remote"], rec["messages"], questions, rec["mic_envelope"])
    for r in rows:
        progress(f"{variant.label}: {r['heard']!r} -> voice-to-voice {r['voice_to_voice_ms']} ms "
                 f"(decision {r['end_to_decision_ms']}, sent +{r['decision_to_sent_ms']}, "
                 f"heard +{r['sent_to_heard_ms']})"
                 + (f"; pause {r['pause_ms']} ms, answered in it: {r['answered_during_pause']}" if pauses else ""))
    summary = summarize_rows(rows)
    stops = barge_in_stops(mic, rec["remote_envelope"], rec["heard_envelope"])
    server_stops = barge_in_stops(mic, rec["remote_envelope"])
    detections = page_detections(mic, rec["remote_envelope"], rec["gate"])
    summary["barge_in_stop_ms"] = summarize(stops)
    summary["barge_in_server_stop_ms"] = summarize(server_stops)
    summary["barge_in_page_detect_ms"] = summarize(detections)
    decoded = (s1["video"] or {}).get("framesDecoded", 0) - (s0["video"] or {}).get("framesDecoded", 0)
    rate = lambda n: round(n / span_s, 2) if span_s > 0 else None  # noqa: E731
    return {
        "variant": variant.label,
        "config": variant.config or "(embedded default)",
        "source": str(variant.source) if variant.source is not None else None,
        "page_query": variant.query or None,
        "avatar_asked": avatar,
        "avatar": rec["mode"],  # what the page did: "client" (drew it) or "video"
        "turns_heard": len(mic),
        "turns_answered": sum(1 for r in rows if r["reply"]),
        "turns_overlapped": sum(1 for r in rows if r["overlapped_reply"]),
        **speculations(rec["messages"]),
        **(pause_counts(rows) if pauses else {}),
        "click_to_connected_ms": round(marks["connected"] - marks["startClick"], 1),
        "click_to_first_frame_ms": round(marks["firstFrame"] - marks["startClick"], 1) if "firstFrame" in marks else None,
        "received_fps_getstats": rate(decoded),
        "received_fps_rendered": rate(s1["rvfc"]["frames"] - s0["rvfc"]["frames"]),
        "drawn_fps": rate(rec["drawn1"] - rec["drawn0"]),
        "video": s1["video"],
        "audio_codec": (s1["audio"] or {}).get("codec"),
        # The incoming voice over the measured span: concealed samples (glitches) and the
        # jitter buffer's delay (part of voice-to-voice), target and minimum.
        "audio": concealment(s0["audio"], s1["audio"]),
        "server_cpu_percent_one_session": rec["server_cpu"],
        "server_cpu_percent_idle": rec["server_idle_cpu"],
        "browser_cpu_percent": rec["browser_cpu"],
        "measured_seconds": round(span_s, 1),
        # Questions spoken over a playing reply: onset -> the avatar silent to the user (its
        # voice times the page's volume: the page mutes on its own, web/bargein.js) ...
        "barge_in_stop_ms": stops,
        # ... and -> the avatar's voice arriving silent (the server's cut, jitter buffer included).
        "barge_in_server_stop_ms": server_stops,
        # Onset -> the page's gate muting for it.
        "barge_in_page_detect_ms": detections,
        "barge_in_client_mute": rec["gate"].get("settings", {}).get("clientMute"),
        "summary": summary,
        "turns": rows,
    }


# --- the benchmark -----------------------------------------------------------------------------


def config_language(config: str | None) -> str:
    """The ``session.language`` of a serve config (the embedded default's: English)."""
    if config is None:
        return "en"
    from avatarchat.engine.config import read_config

    raw = read_config(config)
    session = raw.get("session") if isinstance(raw, dict) else None
    return str(session.get("language", "en")) if isinstance(session, dict) else "en"


def bench_e2e(config: str | None, compare: str | None, turns: int, gap_s: float, progress: Progress, *,
              avatar: AvatarMode = "client", baseline: Path | None = None, rounds: int = 1,
              pauses: bool = False, jbt: Sequence[str] = (), local_services_ms: float | None = None) -> dict[str, Any]:
    """Run the page against every variant (``variants``), ``rounds`` times in turn, and report
    each run, the turns of each variant pooled, and the variants side by side.

    ``local_services_ms``: serve every cloud service's local stand-in with that network
    delay each way, for the whole run, and point the servers at them (``configs/bailian.yaml``
    and the other service configs read their URLs and keys from the environment)."""
    from avatarchat.bench.pipeline import QUESTIONS

    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does)")
    if baseline is not None and not (baseline / "src" / "avatarchat").is_dir():
        raise RuntimeError(f"--baseline {baseline}: no src/avatarchat there (give a checkout, e.g. a git worktree)")
    language = config_language(config)
    chinese = language.lower().startswith("zh")
    if pauses and chinese:
        raise RuntimeError("--pauses has English questions only (bench turn measures Chinese pauses)")
    questions = QUESTIONS_ZH if chinese else QUESTIONS
    asked: list[str | tuple[str, str, float]]
    asked = list(paused_questions(turns)) if pauses else [questions[i % len(questions)] for i in range(turns)]
    order = variants(config, compare, baseline, jbt)
    lead_s = 4.0  # covers getUserMedia -> connected: the file starts when capture opens
    with tempfile.TemporaryDirectory(prefix="avatarchat-e2e-") as tmp, ExitStack() as stack:
        services_env = None
        if local_services_ms is not None:
            from avatarchat.bench.services import local_services

            progress(f"serving the local service stand-ins ({local_services_ms:g} ms each way) …")
            services_env = local_services(stack, local_services_ms)
        wav = Path(tmp) / "questions.wav"
        spoken = questions_wav(wav, asked, lead_s, gap_s, progress, language)
        wav_seconds = spoken[-1].end + gap_s
        texts = [s.text for s in spoken]
        runs = []
        for r in range(rounds):
            for v in order:
                run = run_variant(v, wav, wav_seconds, texts, avatar, pauses, progress, services_env)
                runs.append({"round": r + 1, "load_at_start": machine()["loadavg"][0], **run})
    pooled = {v.label: _pool([r for r in runs if r["variant"] == v.label], pauses) for v in order}
    report: dict[str, Any] = {
        "benchmark": "e2e",
        "what": "voice-to-voice = end of the question in the page's outgoing mic envelope -> first "
                "audible reply sample in its incoming audio envelope (page clock); split: end of speech -> "
                "decision (server vad_hangover_ms) -> first audio sent (server) -> heard (page voice-to-voice "
                "less the server's first_audio_sent_ms: includes the microphone's trip to the server)",
        "machine": machine(),
        "turns_requested": turns,
        "local_services_delay_ms": local_services_ms,
        "gap_s": gap_s,
        "language": language,
        "avatar": avatar,
        "pauses": [s.as_dict() for s in spoken] if pauses else None,
        "order": [v.label for v in order],
        "rounds": rounds,
        "runs": runs,
        "pooled": pooled,
    }
    if len(order) > 1:
        report["side_by_side"] = side_by_side(pooled)
    return report


#: Per-run counts summed over a variant's runs.
COUNTS = ("turns_heard", "turns_answered", "turns_overlapped", "speculations_used", "speculations_dropped",
          "paused_questions", "answers_during_pause", "replies_before_end", "questions_cut_at_pause", "half_answered")
#: Per-run figures listed (one value per run) for a variant.
PER_RUN = ("avatar", "load_at_start", "server_cpu_percent_one_session", "browser_cpu_percent", "drawn_fps",
           "received_fps_getstats", "click_to_connected_ms")
#: The incoming voice's per-run figures listed for a variant.
AUDIO = ("concealed_share", "audible_concealed_share", "concealmentEvents", "jitter_buffer_ms",
         "jitter_buffer_target_ms", "jitter_buffer_target_asked")


def _pool(runs: list[dict[str, Any]], pauses: bool) -> dict[str, Any]:
    """A variant's runs together: the turns' summaries pooled, counts summed (None where no
    run had the figure), per-run figures listed."""
    rows = [row for r in runs for row in r["turns"]]
    out: dict[str, Any] = {"runs": len(runs), "summary": summarize_rows(rows)}
    for k in COUNTS:
        values = [r[k] for r in runs if r.get(k) is not None]
        out[k] = sum(values) if values else None
    for k in PER_RUN:
        out[k] = [r.get(k) for r in runs]
    for k in AUDIO:
        out[f"audio_{k}"] = [r["audio"].get(k) for r in runs]
    received = sum(r["audio"].get("totalSamplesReceived") or 0 for r in runs)
    concealed = [r["audio"].get("concealedSamples") for r in runs]
    out["audio_concealed_share_pooled"] = (round(sum(concealed) / received, 5)
                                           if received and None not in concealed else None)
    return out


def side_by_side(pooled: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The variants' pooled figures, one key per figure, the variants' values beside each other."""
    keys = ["voice_to_voice_ms", "end_to_decision_ms", "decision_to_sent_ms", "sent_to_heard_ms",
            "server_ready_to_sent_ms", "barge_in_stop_ms", *(f"server_{k}" for k in SERVER_METRICS)]
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        for stat in ("median", "p90"):
            out[f"{k} ({stat})"] = {label: (p["summary"].get(k) or {}).get(stat) for label, p in pooled.items()}
    for k in (*COUNTS, "audio_concealed_share_pooled", "audio_jitter_buffer_ms", "audio_jitter_buffer_target_ms",
              "server_cpu_percent_one_session", "browser_cpu_percent", "avatar", "load_at_start"):
        out[k] = {label: p.get(k) for label, p in pooled.items()}
    return out
