"""The harness the e2e benchmark and the browser tests share: ``avatarchat serve`` as a
subprocess on a free 127.0.0.1 port, Debian's headless Chromium with the flags that work
here (WebRTC on loopback, a fake microphone), a small polling helper, and CPU use of
processes read from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


#: The browser the tests and the benchmark drive (Debian's package; never `playwright install`).
CHROMIUM = Path("/usr/bin/chromium")


# --- the server -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``avatarchat serve`` as a subprocess on a free 127.0.0.1 port.

    ``start()`` returns once ``GET /healthz`` answers 200 (models loaded) and raises
    ``RuntimeError`` with the end of the server's log if it exits or is not ready in time.
    ``stop()`` sends SIGINT (as Ctrl-C would), then SIGTERM, then SIGKILL; it is idempotent.
    Used as a context manager it starts and always stops. ``env`` is added to this process's
    environment for the server (``{"PYTHONPATH": "<other checkout>/src"}`` serves another
    checkout's code with this venv: ``bench e2e --baseline``).
    """

    def __init__(self, config: str | os.PathLike[str] | None = None, log_path: Path | None = None,
                 extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        self.config = str(config) if config is not None else None
        self.env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.extra_args = list(extra_args)
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="avatarchat-serve-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> ServeProcess:
        cmd = [sys.executable, "-m", "avatarchat.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.config:
            cmd += ["--config", self.config]
        cmd += self.extra_args
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env} if self.env else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"avatarchat serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.health() == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"avatarchat serve was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def health(self) -> int | None:
        """The HTTP status of ``/healthz`` (None if nothing answers)."""
        try:
            with urllib.request.urlopen(self.url + "healthz", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                proc.send_signal(sig)
                try:
                    proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._own_log and proc is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the browser ------------------------------------------------------------------------------


def chromium_args(fake_audio: Path | None = None, fake_ui: bool = True, loop: bool = False) -> list[str]:
    """The Chromium flags verified here for WebRTC on loopback with a fake microphone.

    ``fake_ui`` auto-accepts the microphone prompt; leave it off to test a denial.
    ``fake_audio`` is played as the microphone from the moment capture opens, once unless
    ``loop`` (Chromium loops it by default; ``%noloop`` asks it not to).
    """
    args = [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
        # Without this, ICE gathering never completes on a loopback-only machine.
        "--allow-loopback-in-peer-connection",
    ]
    if fake_ui:
        args.append("--use-fake-ui-for-media-stream")
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}{'' if loop else '%noloop'}")
    return args


def launch_chromium(playwright: Any, fake_audio: Path | None = None, fake_ui: bool = True,
                    loop: bool = False) -> Any:
    """Headless Debian Chromium through playwright's sync API (fresh, empty profile)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=chromium_args(fake_audio, fake_ui, loop)
    )


def open_page(browser: Any, url: str, raw: bool = True, avatar: str | None = "video", **context_options: Any) -> Any:
    """A page of the app in a new browser context (``raw``: the mic without DSP, for tests).

    ``avatar="video"`` (``?avatar=video``, unless the URL says ``avatar=`` itself) asks for the
    server's video, which the tests and ``bench e2e`` written before the page could draw the
    avatar measure; ``None`` leaves the choice to the page (it draws where WebGL2 works)."""
    context = browser.new_context(viewport={"width": 1200, "height": 860}, **context_options)
    page = context.new_page()
    query = [q for q in ("raw=1" if raw else "", f"avatar={avatar}" if avatar and "avatar=" not in url else "") if q]
    page.goto(url + ("&" if "?" in url else "?") + "&".join(query) if query else url)
    page.wait_for_function("() => window.avatarchat !== undefined")
    return page


def wait_for(page: Any, expression: str, timeout: float = 30.0, arg: Any = None) -> Any:
    """Poll a JS expression (a function of ``arg``) until it is truthy; returns its value."""
    handle = page.wait_for_function(expression, arg=arg, timeout=timeout * 1000, polling=100)
    return handle.json_value()


# --- process CPU from /proc -----------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (walks /proc; processes may come and go meanwhile)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


class CpuMeter:
    """CPU use of a set of processes between ``start()`` and ``stop()``, in % of one core."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self._t0 = 0.0
        self._c0: dict[int, float] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = {p: c for p in self._pids() if (c := cpu_seconds(p)) is not None}

    def stop(self) -> float:
        wall = time.monotonic() - self._t0
        used = 0.0
        for pid, c0 in self._c0.items():
            c1 = cpu_seconds(pid)
            if c1 is not None:
                used += c1 - c0
        return round(100.0 * used / wall, 1) if wall > 0 else 0.0


def browser_pids(server_pid: int) -> list[int]:
    """Chromium's processes: our descendants except the server (playwright's node included)."""
    return [p for p in _children(os.getpid()) if p != server_pid and p not in _children(server_pid)]
