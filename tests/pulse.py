"""A private, user-mode PulseAudio daemon for the browser tests: one null sink (the
"speaker") and a microphone that hears it ``echo_db`` down (the echo tests play the page's
voice back into its microphone through it). Firefox also needs it just to play: with no
sound server it finds no audio backend, and its AudioContext and WebRTC playout stay
"suspended" (the page then hears silence)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def pulse_volume(db: float) -> int:
    """PulseAudio's software volume for a gain in dB (its volume scale is cubic)."""
    return round(65536 * (10 ** (db / 20)) ** (1 / 3))


class PulseLoop:
    """A user-mode PulseAudio daemon whose default microphone hears its default speaker
    ``echo_db`` down. ``env`` points a client (Chromium, Firefox) at it."""

    def __init__(self, root: Path, echo_db: float) -> None:
        self.root = root
        self.socket = root / "native"
        self.log = root / "pulseaudio.log"
        self.echo_db = echo_db
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"PULSE_SERVER": f"unix:{self.socket}", "XDG_RUNTIME_DIR": str(self.root)}

    def start(self, timeout: float = 10.0) -> PulseLoop:
        script = self.root / "loop.pa"
        script.write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            "load-module module-null-sink sink_name=speaker rate=48000\n"
            "load-module module-remap-source source_name=mic master=speaker.monitor\n"
            "set-default-sink speaker\n"
            "set-default-source mic\n"
            f"set-source-volume mic {pulse_volume(self.echo_db)}\n"
            # Silence played into the speaker all along keeps the null sink running at one
            # latency, so the echo path's delay stays put, as a room's does. Without it the
            # idle sink apparently re-times itself to each new stream (its monitor then hears
            # the page's audio early by a varying amount) and AEC3 leaks: measured here,
            # a fresh browser's first reply then leaked ~100-400 ms at its start (up to -22 dBFS)
            # and was cut in 3 of 6 runs, the page muting it in 5; with it, 0 and 0 of 6.
            "load-module module-null-source source_name=silence rate=48000\n"
            "load-module module-loopback source=silence sink=speaker latency_msec=20\n")
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "XDG_RUNTIME_DIR": str(self.root),
               "PULSE_RUNTIME_PATH": str(self.root / "runtime"), "PULSE_STATE_PATH": str(self.root / "state")}
        # -n: none of the system's default.pa; realtime as a desktop's PulseAudio has (where
        # permitted: root, or rtkit; Chromium's audio threads get it the same way).
        cmd = ["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
               "--system=no", "--realtime=yes", "--high-priority=yes", "--log-target=stderr"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pulseaudio did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
