"""``LocalCluster``: a Ray head and N session nodes on this machine, on 127.0.0.1.

Built on Ray's own test utility (``ray.cluster_utils.Cluster``: one raylet per node, each
with its own ports). The head advertises no session slot (it runs Ray's control plane and
the front doors' drivers connect to it); each node advertises ``sessions_per_node``. The
head writes Ray's current-cluster file, so ``ray.init("auto")`` (``serve --cluster auto``)
finds it. ``stop`` ends every process it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from avatarchat.bench.harness import free_port
from avatarchat.cluster import LOOPBACK_ENV, RESOURCE, import_ray

#: Death detection on this machine: Ray marks a node dead after 3 missed 1 s health checks
#: (its defaults, 5 x 3 s, took ~12 s here). The front doors notice a dead node's sessions
#: sooner, from their pending calls (cluster/door.py).
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


class LocalCluster:
    """Start with ``start()`` (or ``with LocalCluster(...) as c``); ``address`` is what
    ``serve --cluster`` takes; ``nodes`` are the session nodes' Ray ids, in order."""

    def __init__(self, nodes: int = 2, sessions_per_node: int = 2, *, cpus_per_node: int = 1) -> None:
        if nodes < 1 or sessions_per_node < 1:
            raise ValueError("a local cluster needs at least one node of at least one session")
        self.n_nodes = nodes
        self.sessions_per_node = sessions_per_node
        self.cpus_per_node = cpus_per_node
        self._cluster: Any = None
        self._nodes: list[Any] = []

    def start(self) -> str:
        """Start the head and the nodes (seconds); returns the address. Its processes
        listen on 127.0.0.1 only."""
        # Before Ray is imported: the nodes (this process's children) and this process's
        # drivers keep 127.0.0.1; no usage report; no 30 s drain when stopped.
        for key, value in {**LOOPBACK_ENV, **QUIET}.items():
            os.environ.setdefault(key, value)
        import_ray()
        from ray.cluster_utils import Cluster

        # The head's dashboard and its agent default to fixed ports (8265, 52365): free ones,
        # so that two local clusters (two users, a test beside a dev cluster) run side by side.
        self._cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
            "num_cpus": 1, "resources": {RESOURCE: 0}, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(),
            "_system_config": SYSTEM_CONFIG})
        for _ in range(self.n_nodes):
            self.add_node()
        return self.address

    def add_node(self, sessions: int | None = None) -> str:
        """One more session node; returns its id."""
        node = self._cluster.add_node(num_cpus=self.cpus_per_node, node_ip_address="127.0.0.1",
                                      resources={RESOURCE: sessions or self.sessions_per_node})
        self._nodes.append(node)
        return str(node.node_id)

    @property
    def address(self) -> str:
        return str(self._cluster.address)

    @property
    def nodes(self) -> list[str]:
        return [str(n.node_id) for n in self._nodes]

    def kill_node(self, node_id: str) -> None:
        """Kill that node's raylet and every process under it (SIGKILL), as a crashed
        machine would go (a worker whose raylet dies alone can outlive it for a while)."""
        node = next(n for n in self._nodes if str(n.node_id) == node_id)
        raylet = node.all_processes["raylet"][0].process.pid
        under = _descendants({raylet})
        node.kill_raylet()
        for pid in under:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def remove_node(self, node_id: str) -> None:
        """Stop every process of that node."""
        node = next(n for n in self._nodes if str(n.node_id) == node_id)
        self._cluster.remove_node(node, allow_graceful=False)
        self._nodes.remove(node)

    def stop(self) -> None:
        """Stop every process this cluster started; forget Ray's current-cluster file if it
        names this cluster. Safe to call twice. A driver of this process still connected
        (a front door in a test) is disconnected first: Ray refuses to stop its node."""
        cluster, self._cluster = self._cluster, None
        if cluster is None:
            return
        ray = import_ray()
        if ray.is_initialized():
            ray.shutdown()
        address = str(cluster.address)
        # Ray's agents and workers are the raylets' children: a raylet that dies leaves them
        # running. Noted now, ended after the nodes stop if they have not gone with them.
        started = _descendants({os.getpid()})
        for node in [*cluster.worker_nodes, cluster.head_node]:
            with contextlib.suppress(Exception):
                cluster.remove_node(node, allow_graceful=True)
        for pid in started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self._nodes.clear()
        _forget_address(address)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _forget_address(address: str) -> None:
    from ray._private.utils import get_ray_address_file

    path = get_ray_address_file(None)
    with contextlib.suppress(OSError):
        with open(path) as f:
            if f.read().strip() == address:
                os.remove(path)


def _descendants(roots: set[int]) -> list[int]:
    """Every process descended from ``roots`` now (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
