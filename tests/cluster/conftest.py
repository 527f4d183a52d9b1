"""Fixtures of the cluster tests: a real local Ray cluster (tests/cluster/ray_nodes.py), one
per module, stopped at the end with every process it started."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import psutil
import pytest

from tests.cluster.ray_nodes import RayNodes


def require_ray() -> None:
    # find_spec, not import: the test process never loads Ray itself.
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install '.[cluster]'; scripts/install.sh --test installs it)")
    if importlib.util.find_spec("avatarchat.cluster") is None:
        pytest.skip("this checkout has no avatarchat.cluster package")


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[RayNodes]:
    """A head with no session capacity and two nodes advertising ``avatarchat_session: 2``,
    all on 127.0.0.1. At the end it is stopped, and no process it started may outlive it;
    its temp dir (Ray's logs: the nodes' hosts log there) is removed unless
    AVATARCHAT_KEEP_RAY_LOGS is set."""
    require_ray()
    nodes = RayNodes(nodes=2, sessions=2).start()
    try:
        yield nodes
    finally:
        started = set(nodes.started_pids())
        nodes.stop(keep_logs=bool(os.environ.get("AVATARCHAT_KEEP_RAY_LOGS")))
        alive = [p for p in started if _alive(p)]
        assert not alive, f"processes of the Ray cluster outlived it: {alive}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
