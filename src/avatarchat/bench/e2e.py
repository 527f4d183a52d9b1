"""``avatarchat bench e2e``: spoken turns through the web page, measured in the browser.

A real ``avatarchat serve`` subprocess and Debian's headless Chromium (driven by playwright,
never a downloaded browser). Chromium's fake microphone plays a WAV of questions spoken by
the TTS with long silences between them; the page (``window.avatarchat``) records RMS
envelopes of the outgoing microphone and the incoming avatar voice in its own
``performance.now()`` clock, so voice-to-voice latency is the time from the end of the user's
speech leaving the page to the first audible reply sample arriving at it: network, jitter
buffers and decoding included, nothing taken from the server's own clock. A question
spoken over a playing reply (a barge-in: ``--gap`` shorter than the replies) is timed from
its onset to the avatar falling silent twice: as the user hears it (the incoming voice times
the page's playback volume, which the page's own barge-in gate drops at once) and as the
server's cut arrives in the incoming audio.

The server, browser and CPU plumbing it shares with the browser tests is in ``harness``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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

#: Sample rate of the fake-microphone WAVs written here (Chromium's capture rate).
FAKE_MIC_RATE = 48000
#: RMS above this (about -40 dBFS) counts as audible in the page's envelopes.
AUDIBLE_RMS = 0.01

#: The server's per-turn timings (the "metrics" message) reported beside the page's own.
SERVER_METRICS = ("first_audio_after_speech_end_ms", "first_audio_sent_ms", "first_frame_sent_ms",
                  "vad_hangover_ms", "asr_early_ms", "asr_ms", "llm_first_token_ms", "tts_first_audio_ms", "avatar_first_frame_ms")

Progress = Callable[[str], None]


# --- the fake microphone ------------------------------------------------------------------------


def questions_wav(path: Path, questions: Sequence[str], lead_s: float, gap_s: float,
                  progress: Progress) -> list[tuple[float, float]]:
    """Speak ``questions`` with hibari into one 48 kHz WAV: ``lead_s`` of silence, then each
    question followed by ``gap_s`` of silence. Returns each question's (start, end) in the file.
    """
    from avatarchat.audio.resample import resample
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

    tts = HibariTTS(HibariOptions())
    tts.load()
    parts: list[np.ndarray] = [np.zeros(int(lead_s * FAKE_MIC_RATE), np.float32)]
    spans, clock = [], lead_s
    for q in questions:
        samples, _ = tts.synthesize(q)
        speech = resample(samples, tts.sample_rate, FAKE_MIC_RATE).astype(np.float32)
        speech *= 0.5 / max(float(np.abs(speech).max()), 1e-6)  # the same level for every question
        spans.append((round(clock, 3), round(clock + len(speech) / FAKE_MIC_RATE, 3)))
        clock += len(speech) / FAKE_MIC_RATE + gap_s
        parts += [speech, np.zeros(int(gap_s * FAKE_MIC_RATE), np.float32)]
    from avatarchat.audio.io import write_wav

    write_wav(path, np.concatenate(parts), FAKE_MIC_RATE)
    progress(f"fake microphone: {len(questions)} questions, {clock:.1f} s -> {path}")
    return spans


# --- one measured run ------------------------------------------------------------------------------


def _turn_rows(mic: list[dict[str, float]], remote: list[dict[str, float]],
               messages: list[dict[str, Any]], questions: Sequence[str]) -> list[dict[str, Any]]:
    """One row per question heard in the mic envelope.

    Voice-to-voice: from the end of the question in the outgoing envelope to the start of the
    first incoming voiced stretch after it. A reply still playing when the question ended
    (the gap was too short) would be counted wrongly, so such a turn is flagged and left out.
    The server's messages are matched by the turn number of the question's final transcript.
    """
    ins = [m for m in messages if m["dir"] == "in"]
    rows = []
    for i, seg in enumerate(mic):
        end = seg["end"]
        nxt = mic[i + 1]["start"] if i + 1 < len(mic) else float("inf")
        overlapped = any(r["start"] < end < r["end"] for r in remote)
        onset = next((r for r in remote if end < r["start"] < nxt), None)
        said: dict[str, Any] = next((m["msg"] for m in ins if seg["start"] <= m["t"] < nxt
                                     and m["msg"].get("type") == "transcript" and m["msg"].get("final")), {})
        turn = said.get("turn")
        of_turn = [m["msg"] for m in ins if turn is not None and m["msg"].get("turn") == turn]
        reply = next((m.get("text") for m in of_turn if m.get("type") == "reply" and m.get("final")), None)
        metrics: dict[str, Any] = next((m for m in of_turn if m.get("type") == "metrics"), {})
        speaking = next((m["t"] for m in ins if end < m["t"] < nxt
                         and m["msg"].get("type") == "state" and m["msg"].get("state") == "speaking"), None)
        # The reply's audible length: its stretches up to the next question.
        played = [r for r in remote if onset is not None and onset["start"] <= r["start"] < nxt]
        rows.append({
            "question": questions[i] if i < len(questions) else None,
            "heard": said.get("text"),
            "reply": reply,
            "speech_s": round((seg["end"] - seg["start"]) / 1000, 2),
            "overlapped_reply": overlapped,
            "voice_to_voice_ms": round(onset["start"] - end, 1) if onset is not None and not overlapped else None,
            "reply_audio_s": round((played[-1]["end"] - played[0]["start"]) / 1000, 2) if played else None,
            "speaking_state_after_speech_end_ms":
                round(speaking - end, 1) if speaking is not None and not overlapped else None,
            **{f"server_{k}": metrics.get(k) for k in SERVER_METRICS},
            # The reply's first frame against its first audio, as the server sent them: frames
            # are placed on the audio schedule, so this is the encoder's lag (tests do not bound it).
            "server_av_start_skew_ms": _skew(metrics),
        })
    return rows


def _skew(metrics: dict[str, Any]) -> float | None:
    frame, audio = metrics.get("first_frame_sent_ms"), metrics.get("first_audio_sent_ms")
    return round(frame - audio, 1) if isinstance(frame, int | float) and isinstance(audio, int | float) else None


def barge_in_stops(mic: list[dict[str, float]], remote: dict[str, list[float]],
                   heard: dict[str, list[float]] | None = None, quiet_s: float = 1.0) -> list[float]:
    """For each question that starts while the avatar is audible (a barge-in), the time from
    its onset in the outgoing mic envelope to the avatar falling silent.

    A barge-in is told from the incoming ``remote`` envelope (the avatar was audible in the
    300 ms before the onset). Silence is looked for in ``heard`` when given (the incoming
    voice times the page's playback volume: what the user hears, page-side mute included),
    else in ``remote`` itself (the server stopping the reply, as it arrives in the page).

    "Silent" is the start of the first stretch below ``AUDIBLE_RMS`` lasting ``quiet_s``: the
    reply's own pauses between clauses are shorter, while a cut reply stays silent until the
    next answer, which takes longer than that.
    """
    t, rms = np.asarray(remote["t"]), np.asarray(remote["rms"])
    listen = heard if heard is not None else remote
    lt, lrms = np.asarray(listen["t"]), np.asarray(listen["rms"])
    stops = []
    for seg in mic:
        onset = seg["start"]
        before = rms[(t >= onset - 300) & (t < onset)]
        if len(before) == 0 or before.max() < AUDIBLE_RMS:
            continue  # nothing was playing: an ordinary turn
        quiet_at = _first_quiet(lt[lt >= onset], lrms[lt >= onset] < AUDIBLE_RMS, quiet_s * 1000)
        if quiet_at is not None:
            stops.append(round(float(quiet_at - onset), 1))
    return stops


def _first_quiet(times: np.ndarray, quiet: np.ndarray, min_ms: float) -> float | None:
    """The start of the first run of ``quiet`` samples lasting ``min_ms``."""
    run_start = None
    for ti, q in zip(times, quiet):
        if not q:
            run_start = None
        elif run_start is None:
            run_start = ti
        elif ti - run_start >= min_ms:
            return float(run_start)
    return None


def page_detections(mic: list[dict[str, float]], remote: dict[str, list[float]],
                    gate: dict[str, Any]) -> list[float]:
    """For each barge-in (as in ``barge_in_stops``), the time from its onset in the mic
    envelope to the page's barge-in gate muting the avatar for it (web/bargein.js)."""
    t, rms = np.asarray(remote["t"]), np.asarray(remote["rms"])
    mutes = [e["t"] for e in gate.get("events", []) if e.get("what") == "mute" and e.get("reason") == "voice"]
    out = []
    for i, seg in enumerate(mic):
        before = rms[(t >= seg["start"] - 300) & (t < seg["start"])]
        if len(before) == 0 or before.max() < AUDIBLE_RMS:
            continue
        nxt = mic[i + 1]["start"] if i + 1 < len(mic) else float("inf")
        # The gate may fire a little before the envelope's segment starts (its own threshold).
        hit = next((m for m in mutes if seg["start"] - 100 <= m < min(nxt, seg["end"])), None)
        if hit is not None:
            out.append(round(float(hit - seg["start"]), 1))
    return out


def run_config(config: str | None, wav: Path, wav_seconds: float, questions: Sequence[str],
               progress: Progress) -> dict[str, Any]:
    """Serve ``config``, talk to it through the page for the whole WAV, and measure."""
    from playwright.sync_api import sync_playwright

    label = config or "(embedded default)"
    with ServeProcess(config) as server, sync_playwright() as pw:
        progress(f"{label}: server ready at {server.url} (pid {server.pid})")
        idle = CpuMeter(lambda: [server.pid])
        idle.start()
        time.sleep(2.0)
        server_idle_cpu = idle.stop()
        browser = launch_chromium(pw, fake_audio=wav)
        try:
            page = open_page(browser, server.url, raw=True)
            server_cpu = CpuMeter(lambda: [server.pid])
            browser_cpu = CpuMeter(lambda: browser_pids(server.pid))
            server_cpu.start()
            browser_cpu.start()
            page.click("#start")
            wait_for(page, "() => avatarchat.state().connection === 'connected'", 30)
            wait_for(page, "() => avatarchat.marks().firstFrame", 30)
            t0, s0 = page.evaluate("avatarchat.now()"), page.evaluate("avatarchat.stats()")
            progress(f"{label}: connected; playing {wav_seconds:.0f} s of questions")
            # The whole file, then until the last reply is over (or 30 s more at most).
            time.sleep(wav_seconds)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and page.evaluate("avatarchat.state().conversation") != "listening":
                time.sleep(0.5)
            time.sleep(1.0)
            t1, s1 = page.evaluate("avatarchat.now()"), page.evaluate("avatarchat.stats()")
            marks = page.evaluate("avatarchat.marks()")
            mic = page.evaluate("avatarchat.segments('mic', {threshold: %f, hangoverMs: 400, minMs: 300})" % AUDIBLE_RMS)
            remote = page.evaluate("avatarchat.segments('remote', {threshold: %f, hangoverMs: 250, minMs: 60})" % AUDIBLE_RMS)
            messages = page.evaluate("avatarchat.messages")
            remote_envelope = page.evaluate("avatarchat.envelope('remote')")
            heard_envelope = page.evaluate("avatarchat.envelope('heard')")
            gate = page.evaluate("avatarchat.bargeIn()")
            cpu = server_cpu.stop()
            bcpu = browser_cpu.stop()
            page.click("#stop")
        finally:
            browser.close()

    span_s = (t1 - t0) / 1000
    rows = _turn_rows(mic, remote, messages, questions)
    decoded = (s1["video"] or {}).get("framesDecoded", 0) - (s0["video"] or {}).get("framesDecoded", 0)
    for r in rows:
        progress(f"{label}: {r['heard']!r} -> voice-to-voice {r['voice_to_voice_ms']} ms "
                 f"(server says {r['server_first_audio_after_speech_end_ms']} ms)")
    summary = summarize_rows(rows)
    summary["click_to_first_frame_ms"] = summarize([marks["firstFrame"] - marks["startClick"]])
    stops = barge_in_stops(mic, remote_envelope, heard_envelope)
    server_stops = barge_in_stops(mic, remote_envelope)
    detections = page_detections(mic, remote_envelope, gate)
    summary["barge_in_stop_ms"] = summarize(stops)
    summary["barge_in_server_stop_ms"] = summarize(server_stops)
    summary["barge_in_page_detect_ms"] = summarize(detections)
    return {
        "config": label,
        "turns_heard": len(mic),
        "turns_answered": sum(1 for r in rows if r["reply"]),
        "turns_overlapped": sum(1 for r in rows if r["overlapped_reply"]),
        "click_to_connected_ms": round(marks["connected"] - marks["startClick"], 1),
        "click_to_first_frame_ms": round(marks["firstFrame"] - marks["startClick"], 1),
        "received_fps_getstats": round(decoded / span_s, 2) if span_s > 0 else None,
        "received_fps_rendered": round((s1["rvfc"]["frames"] - s0["rvfc"]["frames"]) / span_s, 2) if span_s > 0 else None,
        "video": s1["video"],
        "audio_codec": (s1["audio"] or {}).get("codec"),
        # Chromium's mean jitter-buffer delay over the session: part of voice-to-voice.
        "audio_jitter_buffer_ms": _mean_jitter_ms(s1["audio"]),
        "video_jitter_buffer_ms": _mean_jitter_ms(s1["video"]),
        "server_cpu_percent_one_session": cpu,
        "server_cpu_percent_idle": server_idle_cpu,
        "browser_cpu_percent": bcpu,
        "measured_seconds": round(span_s, 1),
        # Questions spoken over a playing reply: onset -> the avatar silent to the user (its
        # voice times the page's volume: the page mutes on its own, web/bargein.js) ...
        "barge_in_stop_ms": stops,
        # ... and -> the avatar's voice arriving silent (the server's cut, jitter buffer included).
        "barge_in_server_stop_ms": server_stops,
        # Onset -> the page's gate muting for it.
        "barge_in_page_detect_ms": detections,
        "barge_in_client_mute": gate.get("settings", {}).get("clientMute"),
        "summary": summary,
        "turns": rows,
    }


def _mean_jitter_ms(stats: dict[str, Any] | None) -> float | None:
    if not stats or not stats.get("jitterBufferEmittedCount"):
        return None
    return round(1000.0 * stats["jitterBufferDelay"] / stats["jitterBufferEmittedCount"], 1)


def bench_e2e(config: str | None, compare: str | None, turns: int, gap_s: float,
              progress: Progress) -> dict[str, Any]:
    """Run the page against ``config`` (and ``compare``, one after the other) and report."""
    from avatarchat.bench.pipeline import QUESTIONS

    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does)")
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(turns)]
    lead_s = 4.0  # covers getUserMedia -> connected: the file starts when capture opens
    with tempfile.TemporaryDirectory(prefix="avatarchat-e2e-") as tmp:
        wav = Path(tmp) / "questions.wav"
        spans = questions_wav(wav, questions, lead_s, gap_s, progress)
        wav_seconds = spans[-1][1] + gap_s
        configs = [config] if compare is None else [config, compare]
        runs = [run_config(c, wav, wav_seconds, questions, progress) for c in configs]
    report: dict[str, Any] = {
        "benchmark": "e2e",
        "what": "voice-to-voice = end of the question in the page's outgoing mic envelope -> first "
                "audible reply sample in its incoming audio envelope (page clock)",
        "machine": machine(),
        "turns_requested": turns,
        "gap_s": gap_s,
        "runs": runs,
    }
    if len(runs) == 2:
        report["side_by_side"] = _side_by_side(runs)
    return report


def _side_by_side(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = ["voice_to_voice_ms", "barge_in_stop_ms", "barge_in_server_stop_ms",
            *(f"server_{k}" for k in SERVER_METRICS)]
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        out[f"{k} (median)"] = {r["config"]: (r["summary"].get(k) or {}).get("median") for r in runs}
    for k in ["turns_overlapped", "click_to_first_frame_ms", "received_fps_getstats", "received_fps_rendered",
              "audio_jitter_buffer_ms", "server_cpu_percent_one_session", "browser_cpu_percent"]:
        out[k] = {r["config"]: r[k] for r in runs}
    return out
