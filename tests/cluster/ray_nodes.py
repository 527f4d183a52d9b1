"""A real multi-node Ray cluster on this machine, for the cluster tests: a head that
advertises no session capacity and worker nodes that advertise ``avatarchat_session``.

Run as a program (``python -m tests.cluster.ray_nodes --nodes 2 --sessions 2``) it starts
the nodes with Ray's own test utility (``ray.cluster_utils.Cluster``: one raylet per node,
each with its own ports and temp dir), prints one JSON line (the address and, per node, its
id, raylet pid and capacity) and holds them until SIGTERM, SIGINT or its stdin closes; then
it stops every process it started.

Why not ``ray start``: it turns ``--node-ip-address 127.0.0.1`` into the machine's routable
address (ray/_private/services.py ``resolve_ip_for_localhost``), and its servers then listen
on every interface. Here every node's address is 127.0.0.1, and Ray's GCS, raylets and
agents listen on 127.0.0.1 only (checked with ``ss -ltnp``). A driver given ``127.0.0.1:PORT`` makes the same
substitution unless Ray's single-machine switch is set (``avatarchat.cluster.LOOPBACK_ENV``,
which the front door and ``avatarchat cluster`` set themselves).

``RayNodes`` runs that program from a test, and stops it, and anything it left, at the end.
The pytest process itself never imports ray.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatarchat.bench.harness import free_port

RESOURCE = "avatarchat_session"
#: Ray's smallest object store (it refuses less); the sessions put nothing in it.
OBJECT_STORE_BYTES = 80 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
#: No usage reporting (nothing leaves the machine) and no 30 s drain on SIGTERM at the end
#: (RAY_TMPDIR, set per cluster, keeps its address file out of the shared /tmp/ray).
QUIET_RAY = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


@dataclass
class NodeInfo:
    """One worker node as the launcher saw it start."""

    node_id: str
    raylet_pid: int
    capacity: int


class RayNodes:
    """The launcher as a subprocess. ``start()`` returns once every node is alive in the
    GCS (RuntimeError with the launcher's log if not within ``timeout``); ``stop()`` ends it
    and then kills, by pid, any process it started that is still alive. Idempotent."""

    def __init__(self, nodes: int = 2, sessions: int = 2, cpus: int = 1, env: dict[str, str] | None = None) -> None:
        self.n_nodes, self.sessions, self.cpus = nodes, sessions, cpus
        self.env = dict(env or {})
        self.address = ""
        self.nodes: list[NodeInfo] = []
        self.start_s = 0.0
        self.tmp = Path(tempfile.mkdtemp(prefix="acray-", dir="/tmp"))  # short: Unix socket paths
        (self.tmp / "ray").mkdir()  # RAY_TMPDIR/ray: where Ray writes the address file
        self.log_path = self.tmp / "launcher.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._pids: set[int] = set()

    def start(self, timeout: float = 120.0) -> RayNodes:
        src = str(ROOT / "src")
        path = os.pathsep.join(p for p in (src, str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, **QUIET_RAY, "RAY_TMPDIR": str(self.tmp), **self.env}
        out = self.tmp / "ready.json"
        cmd = [sys.executable, "-m", "tests.cluster.ray_nodes", "--nodes", str(self.n_nodes),
               "--sessions", str(self.sessions), "--cpus", str(self.cpus), "--dir", str(self.tmp),
               "--ready", str(out)]
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=ROOT, start_new_session=True)
        while not out.exists():
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"the Ray nodes did not start within {timeout:.0f} s:\n{tail}")
            time.sleep(0.1)
        info = json.loads(out.read_text())
        self.start_s = time.monotonic() - t0
        self.address = info["address"]
        self.nodes = [NodeInfo(**n) for n in info["nodes"]]
        self._remember()
        return self

    def _remember(self) -> None:
        """Every process this cluster started that is alive now: those under the launcher,
        and any whose command line names this cluster's own temp dir (a process orphaned
        by a launcher that failed half-way). The raylets' workers start their own sessions,
        so a process-group kill alone would miss them."""
        import psutil

        if self.proc is not None:
            with contextlib.suppress(psutil.Error):
                self._pids.update(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True))
        mine = str(self.tmp)
        for p in psutil.process_iter(["cmdline"]):
            if any(mine in arg for arg in p.info["cmdline"] or ()):
                self._pids.add(p.pid)

    def started_pids(self) -> list[int]:
        """Every process of this cluster alive now (the launcher, the nodes' processes)."""
        self._remember()
        return sorted(self._pids | ({self.proc.pid} if self.proc is not None else set()))

    def kill_raylet(self, node_id: str) -> None:
        """SIGKILL that node's raylet, as a machine failure would end it."""
        self._remember()
        pid = next(n.raylet_pid for n in self.nodes if n.node_id == node_id)
        os.kill(pid, signal.SIGKILL)

    def other(self, node_id: str) -> str:
        """A worker node that is not ``node_id``."""
        return next(n.node_id for n in self.nodes if n.node_id != node_id)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0, keep_logs: bool = False) -> None:
        """End the launcher, kill what is left of it, and remove its temp dirs (Ray's logs
        among them) unless ``keep_logs``."""
        import psutil

        self._remember()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        survivors = []
        for pid in self._pids:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                p.kill()
                survivors.append(p)
        psutil.wait_procs(survivors, timeout=5)
        self._pids.clear()
        if not keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> RayNodes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the launcher program --------------------------------------------------------------------


def _raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def _set_at_eof(event: threading.Event) -> None:
    sys.stdin.read()
    event.set()


def _launch(args: argparse.Namespace) -> None:
    # Ray's test utility; imported here, in the launcher process only.
    from ray.cluster_utils import Cluster

    from avatarchat.cluster.local import SYSTEM_CONFIG

    base: dict[str, Any] = {"node_ip_address": "127.0.0.1", "object_store_memory": OBJECT_STORE_BYTES,
            "min_worker_port": 0, "max_worker_port": 0}
    # The head's dashboard and agent ports default to fixed numbers (8265, 52365): free ones,
    # so that this cluster starts beside any other on the machine.
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
        **base, "num_cpus": 0, "resources": {RESOURCE: 0}, "include_dashboard": False,
        "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(),
        "_system_config": SYSTEM_CONFIG,  # death detection as `avatarchat cluster local` sets it
        "temp_dir": str(args.dir / "head")})
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        nodes = [cluster.add_node(**base, num_cpus=args.cpus, resources={RESOURCE: args.sessions},
                                  temp_dir=str(args.dir / f"node{i}"))
                 for i in range(args.nodes)]
        cluster.wait_for_nodes()
        info = {"address": cluster.address,
                "nodes": [{"node_id": n.node_id, "raylet_pid": _raylet_pid(n), "capacity": args.sessions}
                          for n in nodes]}
        tmp = args.ready.with_suffix(".part")
        tmp.write_text(json.dumps(info))
        tmp.rename(args.ready)
        print(json.dumps(info), flush=True)
        threading.Thread(target=_set_at_eof, args=(stopping,), daemon=True).start()
        stopping.wait()
    finally:
        for node in list(cluster.worker_nodes):
            with contextlib.suppress(Exception):
                cluster.remove_node(node, allow_graceful=False)
        if cluster.head_node is not None:
            with contextlib.suppress(Exception):
                cluster.remove_node(cluster.head_node, allow_graceful=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--sessions", type=int, default=2, help="avatarchat_session per worker node")
    p.add_argument("--cpus", type=int, default=1, help="CPUs each worker node advertises")
    p.add_argument("--dir", type=Path, required=True, help="temp dirs go under here")
    p.add_argument("--ready", type=Path, required=True, help="the JSON line is also written here")
    _launch(p.parse_args())


if __name__ == "__main__":
    main()
