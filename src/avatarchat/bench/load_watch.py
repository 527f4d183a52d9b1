"""The server of ``avatarchat bench load`` seen from outside, as a scenario runs: CPU seconds
and memory from /proc, how late its event loop answers ``/healthz``, the machine's UDP drops,
and its log's lines about session ends and errors."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from avatarchat.bench.harness import ServeProcess, cpu_seconds
from avatarchat.bench.stats import summarize


def rss_mb(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of ``pid`` in MB, from /proc."""
    found: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = round(int(value.split()[0]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return found.get("VmRSS"), found.get("VmHWM")


def wait_idle_server(server: ServeProcess, timeout: float = 30.0) -> int | None:
    """Wait until the server holds no session; returns the count it still holds, if any."""
    deadline, count = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(server.url + "healthz", timeout=2) as resp:
                count = int(json.loads(resp.read()).get("sessions", 0))
        except (OSError, ValueError):
            count = None
        if count == 0:
            return 0
        time.sleep(0.5)
    return count


def udp_drops() -> int | None:
    """UDP datagrams this machine dropped for full receive buffers so far (all processes)."""
    try:
        with open("/proc/net/snmp", encoding="ascii") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


def healthz_ms(server: ServeProcess) -> float | None:
    """One ``GET /healthz`` round trip in ms (None if it failed): the server's event loop's lateness."""
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(server.url + "healthz", timeout=5) as resp:
            resp.read()
    except OSError:
        return None
    return round(1000 * (time.perf_counter() - t), 1)


class ServerWatch:
    """What the server does during one scenario, seen from outside: its CPU at each phase mark
    of the clients, its RSS and ``/healthz`` round trip about once a second, the machine's UDP
    drops and the server's log lines about session ends and errors."""

    def __init__(self, server: ServeProcess) -> None:
        self.server = server
        self.marks: dict[str, tuple[float, float | None]] = {}  # event -> (monotonic, server CPU s)
        self.talk: list[tuple[float, float]] = []  # (wall, CPU) seconds per round
        self.rss: list[float] = []
        self.health: list[float | None] = []  # how late the server's event loop answers
        self._log_from = server.log_path.stat().st_size if server.log_path.exists() else 0
        self._drops = udp_drops()

    def tick(self) -> None:
        """Called about once a second; raises if the server is gone."""
        if self.server.proc is None or self.server.proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{self.server.log_tail()}")
        now = rss_mb(self.server.pid)[0]
        if now is not None:
            self.rss.append(now)
        self.health.append(healthz_ms(self.server))

    def mark(self, event: str) -> None:
        """The server's CPU at a phase mark; a round's end closes its talking window."""
        now = (time.monotonic(), cpu_seconds(self.server.pid))
        self.marks[event] = now
        if event == "round_start":
            self.marks["round"] = now
        elif event == "round_end" and "round" in self.marks:
            (a, ca), (b, cb) = self.marks["round"], now
            if ca is not None and cb is not None:
                self.talk.append((b - a, cb - ca))

    def figures(self) -> dict[str, Any]:
        drops = udp_drops()
        return {
            "server_rss_mb": max(self.rss) if self.rss else None,
            "server_rss_peak_mb": rss_mb(self.server.pid)[1],
            "server_healthz_ms": summarize(self.health),
            # Loopback packets lost to a full socket buffer (the machine's count: other programs' too).
            "udp_rcvbuf_drops": None if drops is None or self._drops is None else drops - self._drops,
        }

    def log_excerpt(self) -> list[str]:
        return _log_excerpt(self.server.log_path, self._log_from)


def _log_excerpt(path: Path, start: int, lines: int = 40) -> list[str]:
    """The server's warnings, errors and session ends logged since byte ``start`` (the last ``lines``)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    keep = [ln for ln in text.splitlines() if any(w in ln for w in ("WARNING", "ERROR", "closed", "closing", "ended"))]
    return keep[-lines:]
