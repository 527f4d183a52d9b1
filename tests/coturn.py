"""A real coturn TURN server for tests: Debian's ``turnserver`` on a free port of 127.0.0.1.

It checks time-limited REST credentials (``use-auth-secret`` with a ``static-auth-secret``)
and relays between loopback addresses only. Nothing of the system's coturn set-up is read
(``-n``: no config file; its user database, pid file and log live in a temporary folder)
and nothing listens beyond 127.0.0.1: no TLS/DTLS/TCP listener, no CLI, no web admin::

    with Coturn() as turn:            # skips the test when turnserver is not installed
        settings = ServerSettings(turn={"urls": [turn.url], "secret": turn.secret})
        ...
        assert turn.allocations(username)   # the log's successful ALLOCATEs for a username
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pytest

TURNSERVER = "turnserver"
REALM = "avatarchat.test"
HOST = "127.0.0.1"
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_MAGIC = 0x2112A442


def require_turnserver() -> str:
    """The path of ``turnserver``; skips the calling test when it is not installed."""
    path = shutil.which(TURNSERVER)
    if path is None:
        pytest.skip("coturn's turnserver is not installed (Debian: apt-get install coturn); "
                    "the TURN tests run a real one on 127.0.0.1")
    return path


def free_udp_port() -> int:
    """A loopback UDP port nothing is bound to right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stun_answers(port: int, timeout: float = 0.3) -> bool:
    """Whether a STUN server on 127.0.0.1:``port`` answers a Binding request (RFC 8489)."""
    tid = secrets.token_bytes(12)
    request = _BINDING_REQUEST.to_bytes(2, "big") + bytes(2) + _MAGIC.to_bytes(4, "big") + tid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(request, (HOST, port))
        try:
            data = s.recv(2048)
        except OSError:  # timed out, or ICMP port unreachable: not listening yet
            return False
    return len(data) >= 20 and int.from_bytes(data[:2], "big") == _BINDING_SUCCESS and data[8:20] == tid


class Coturn:
    """``turnserver`` started on enter (once it answers STUN) and stopped on exit.

    ``url`` (``turn:127.0.0.1:PORT?transport=udp``), ``secret`` (the static auth secret the
    REST credentials are signed with), ``realm`` and ``log_path`` describe it. Relayed
    ports come from ``min_port..max_port`` on 127.0.0.1; peers on loopback are allowed
    (``--allow-loopback-peers``: tests only, coturn refuses loopback peers by default).
    """

    def __init__(self, workdir: Path | None = None, *, secret: str | None = None,
                 min_port: int = 49200, max_port: int = 49399, startup_timeout: float = 20.0) -> None:
        self.secret = secret or secrets.token_urlsafe(24)
        self.realm = REALM
        self.min_port, self.max_port = min_port, max_port
        self.startup_timeout = startup_timeout
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="coturn-")
            workdir = Path(self._own_dir.name)
        self.workdir = workdir
        self.log_path = workdir / "turnserver.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:{HOST}:{self.port}?transport=udp"

    def command(self, binary: str) -> list[str]:
        d = self.workdir
        return [binary, "-n", "--verbose", f"--listening-ip={HOST}", f"--relay-ip={HOST}",
                f"--listening-port={self.port}", "--use-auth-secret", f"--static-auth-secret={self.secret}",
                f"--realm={self.realm}", "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-tcp",
                "--no-cli", "--no-rfc5780", "--no-software-attribute", "--no-multicast-peers",
                f"--min-port={self.min_port}", f"--max-port={self.max_port}",
                f"--log-file={self.log_path}", "--simple-log", "--no-stdout-log",
                f"--pidfile={d / 'turnserver.pid'}", f"--userdb={d / 'turndb'}"]

    def __enter__(self) -> Coturn:
        binary = require_turnserver()
        for attempt in range(3):
            # The free port may be taken between the check and coturn's bind: then coturn
            # retries that bind for ever, so a port it cannot bind means another port.
            self.port = free_udp_port()
            self.log_path.unlink(missing_ok=True)
            # Its stderr only says it cannot open IPv6 sockets here; the log file has the rest.
            with open(self.workdir / "turnserver.stderr", "wb") as err:
                self._proc = subprocess.Popen(self.command(binary), stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=err, cwd=self.workdir)
            try:
                if self._wait_listening():
                    return self
            except BaseException:
                self.stop()
                raise
            self.stop()
        raise RuntimeError(f"turnserver could not bind a free port in 3 tries; its log ends: {self.log_tail()}")

    def _wait_listening(self) -> bool:
        """True once it answers STUN; False if its port was taken; raises if it exits or
        does not answer within ``startup_timeout``."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        taken = f"Cannot bind DTLS/UDP listener socket to addr {HOST}:{self.port}"
        while not stun_answers(self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"turnserver exited with code {self._proc.returncode} before it "
                                   f"listened; its log ends: {self.log_tail()}")
            if taken in self.log_text():
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"turnserver did not answer STUN on {HOST}:{self.port} within "
                                   f"{self.startup_timeout} s; its log ends: {self.log_tail()}")
        return True

    def stop(self) -> None:
        """Terminate it (kill after 10 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self._own_dir is not None:
            self._own_dir.cleanup()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return os.linesep.join(self.log_text().splitlines()[-lines:])

    def allocations(self, username: str | None = None) -> list[str]:
        """The log's successful ALLOCATE lines (``--verbose`` logs one per allocation), of
        ``username`` only when given; a prefix such as ``"1790000000:"`` is not enough."""
        found = re.findall(r"user <([^>]*)>: incoming packet ALLOCATE processed, success", self.log_text())
        return [u for u in found if username is None or u == username]

    def wait_log(self, check: Callable[[], bool], timeout: float = 20.0) -> bool:
        """Wait until ``check()`` (reading the log) holds, or ``timeout``; returns the last
        result. coturn writes its log from its own threads, a moment after it answers."""
        deadline = time.monotonic() + timeout
        while not (ok := check()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return ok

    def refused(self) -> list[str]:
        """Usernames the log shows refused (``check_stun_auth: Cannot find credentials``)."""
        return re.findall(r"check_stun_auth: Cannot find credentials of user <([^>]*)>", self.log_text())
