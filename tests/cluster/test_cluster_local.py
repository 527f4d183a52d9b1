"""``avatarchat cluster local``: a user's one-machine cluster. It runs in the foreground,
prints the address for ``serve --cluster``, ``--cluster auto`` / ``--address auto`` finds it,
and Ctrl-C (SIGINT) or SIGTERM stops every process it started.

Each run gets its own ``RAY_TMPDIR`` (where Ray writes the current cluster's address), so
``auto`` here finds this test's cluster and nothing else on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cluster.conftest import require_ray


class LocalRun:
    """``avatarchat cluster local`` as a subprocess with its own RAY_TMPDIR."""

    def __init__(self, tmp: Path, nodes: int, sessions: int) -> None:
        (tmp / "ray").mkdir()
        self.env = {**os.environ, "RAY_TMPDIR": str(tmp)}
        self.log = tmp / "local.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "avatarchat.cli.main", "cluster", "local", "--nodes", str(nodes),
                 "--sessions-per-node", str(sessions)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        self.seen: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_address(self, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"cluster ready at (\S+)", self.output())
            if found:
                return found.group(1)
            assert self.proc.poll() is None, f"cluster local exited with {self.proc.returncode}:\n{self.output()}"
            time.sleep(0.2)
        raise AssertionError(f"cluster local printed no address in {timeout:.0f} s:\n{self.output()}")

    def descendants(self) -> set[int]:
        try:
            self.seen |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.Error:
            pass
        return set(self.seen)

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "avatarchat.cli.main", *args], capture_output=True, text=True,
                              timeout=90, env=self.env)
        assert done.returncode == 0, f"avatarchat {' '.join(args)} -> {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def kill_all(self) -> None:
        """What the test must never need: the process and anything left of it, by pid."""
        for pid in self.descendants() | {self.proc.pid}:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        self.proc.wait(10)


def name(pid: int) -> str:
    try:
        return str(psutil.Process(pid).name())
    except psutil.Error:
        return ""


def alive(pids: set[int]) -> list[int]:
    def up(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    return [p for p in pids if up(p)]


@pytest.fixture
def local_run(request: pytest.FixtureRequest) -> Iterator[LocalRun]:
    require_ray()
    nodes, sessions = request.param
    # Short: Ray's Unix sockets go under it (at most 107 bytes a path).
    tmp = Path(tempfile.mkdtemp(prefix="acloc-", dir="/tmp"))
    run = LocalRun(tmp, nodes, sessions)
    try:
        yield run
    finally:
        if run.proc.poll() is None or alive(run.descendants()):
            run.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("local_run", [(2, 2)], indirect=True)
def test_cluster_local_prints_its_address_auto_finds_it_and_sigterm_stops_every_process(local_run: LocalRun) -> None:
    address = local_run.wait_address()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", address), address
    assert f"serve --cluster {address}" in local_run.output()
    rows = json.loads(local_run.cli("cluster", "status", "--address", "auto", "--json"))
    assert sorted(r["capacity"] for r in rows) == [2, 2]
    assert all(r["ip"] == "127.0.0.1" and r["live"] == 0 for r in rows), rows
    started = local_run.descendants()
    assert sum(name(p) == "raylet" for p in started) == 3  # the head and two nodes

    local_run.proc.send_signal(signal.SIGTERM)
    assert local_run.proc.wait(60) == 0, local_run.output()
    assert not alive(started), f"still running after SIGTERM: {alive(started)}"


@pytest.mark.parametrize("local_run", [(1, 1)], indirect=True)
def test_two_local_clusters_run_side_by_side_and_ctrl_c_stops_every_process_of_one(local_run: LocalRun) -> None:
    # A second cluster beside the first: no port of its own is fixed (Ray's dashboard and
    # agent ports would be), and stopping one leaves the other whole.
    tmp = Path(tempfile.mkdtemp(prefix="acloc-", dir="/tmp"))
    other = LocalRun(tmp, 1, 1)
    try:
        first, second = local_run.wait_address(), other.wait_address()
        assert first != second
        started = local_run.descendants()
        assert started
        local_run.proc.send_signal(signal.SIGINT)
        assert local_run.proc.wait(60) == 0, local_run.output()
        assert not alive(started), f"still running after Ctrl-C: {alive(started)}"

        rows = json.loads(other.cli("cluster", "status", "--address", "auto", "--json"))
        assert [r["capacity"] for r in rows] == [1], rows
        theirs = other.descendants()
        other.proc.send_signal(signal.SIGINT)
        assert other.proc.wait(60) == 0, other.output()
        assert not alive(theirs), f"still running after Ctrl-C: {alive(theirs)}"
    finally:
        if other.proc.poll() is None or alive(other.descendants()):
            other.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)
