"""``avatarchat bench load`` for real at a tiny size: the embedded default config served by a
real ``avatarchat serve``, real aiortc clients in their own niced process, spoken questions.

No performance bound is asserted (the machine is shared): the report must have its shape,
every question must have been heard and answered, and the figures must be ones a working
run gives (positive latencies, finite CPU, frames or face rows received). Everything the
command started must be gone when it returns.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest

ROUNDS = 1


def session_processes(sid: int) -> list[str]:
    """Command lines of the processes still in session ``sid`` (the command's own session)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid:
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run: 1 and 2 sessions in both modes, a short idle phase and one round."""
    out = tmp_path_factory.mktemp("load") / "load.json"
    cmd = [sys.executable, "-m", "avatarchat.cli.main", "bench", "load", "--sessions", "1,2", "--modes", "client,video",
           "--rounds", str(ROUNDS), "--idle", "2", "--baseline", "1", "--json", str(out)]
    # Its own session, so that whatever it leaves running can be found (and is then stopped).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    left = session_processes(proc.pid)
    for line in left:
        print("left running:", line)
    if left:
        os.killpg(proc.pid, 9)
    assert proc.returncode == 0, stderr.decode()[-4000:]
    assert not left, f"bench load left processes running: {left}"
    data = json.loads(out.read_text())
    data["_stdout"], data["_stderr"] = stdout.decode(), stderr.decode()
    return data


def test_the_report_has_a_scenario_per_n_and_a_table(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "load"
    assert [(s["mode"], s["sessions"], s["talkers"]) for s in report["scenarios"]] == [
        ("client", 1, 1), ("client", 2, 2), ("video", 1, 1), ("video", 2, 2)]
    assert [(r["mode"], r["N"]) for r in report["table"]] == [("client", 1), ("client", 2), ("video", 1), ("video", 2)]
    assert "v2v median ms" in report["_stdout"]  # the readable table
    assert "round 1/1" in report["_stderr"]  # progress as it ran
    assert len(report["machine"]["loadavg"]) == 3


def test_every_question_is_heard_and_answered(report: dict[str, Any]) -> None:
    for s in report["scenarios"]:
        assert s["error"] is None
        assert s["turns"] == s["talkers"] * ROUNDS and s["turns_failed"] == 0, s["failures"]
        assert s["warmup_failed"] == 0
        for turn in s["turn_rows"]:
            assert turn["heard"] and turn["reply"], turn
            assert 0 < turn["voice_to_voice_ms"] < 30_000
            # The client's clock adds the network and jitter buffer to the server's own figure.
            assert turn["server_first_audio_after_speech_end_ms"] > 0
        assert s["voice_to_voice_ms"]["n"] == s["turns"]


def test_each_mode_sends_what_it_says(report: dict[str, Any]) -> None:
    for s in report["scenarios"]:
        assert s["answered_modes"] == [s["mode"]]
        if s["mode"] == "video":
            assert s["video_fps_talking"]["min"] > 0  # every session received frames while others talked
            assert s["face_rows_per_s_talking"]["median"] == 0
        else:  # face rows for the page to draw (idle ones too), and no video track at all
            assert s["face_rows_per_s_talking"]["min"] > 0 and s["face_frames_per_s_talking"]["min"] > 0
            assert s["video_fps_talking"]["median"] == 0


def test_cpu_and_memory_figures_are_those_of_a_working_server(report: dict[str, Any]) -> None:
    for s in report["scenarios"]:
        for key in ("server_cpu_baseline_pct", "server_cpu_idle_pct", "server_cpu_talking_pct",
                    "server_cpu_per_idle_session_pct", "server_cpu_per_talking_session_pct", "client_cpu_pct"):
            assert isinstance(s[key], float) and math.isfinite(s[key]), (key, s[key])
        # An idle session is listened to (and, in video mode, rendered for); talking costs more than nothing.
        assert s["server_cpu_idle_pct"] > s["server_cpu_baseline_pct"]
        assert s["server_cpu_talking_pct"] > 0
        assert 100 < s["server_rss_mb"] <= s["server_rss_peak_mb"] + 1
