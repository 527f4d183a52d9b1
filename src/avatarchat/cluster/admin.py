"""``status`` and ``drain``: the operator's view of the cluster, as plain (blocking) functions.

``avatarchat cluster status|drain`` call these; tests may too (from a thread, when they run
inside an event loop). Each connects to ``address`` if this process is not connected yet.
"""

from __future__ import annotations

import logging
from typing import Any

from avatarchat.cluster import NAMESPACE, RESOURCE, ClusterUnavailable, host_name, import_ray, init_options

#: How long a host may take to answer a status or drain call.
CALL_TIMEOUT_S = 10.0


def connect(address: str = "auto") -> None:
    """Join the cluster at ``address`` as a driver (once per process)."""
    options = init_options(address)  # before the import: see LOOPBACK_ENV
    ray = import_ray()
    if ray.is_initialized():
        return
    try:
        ray.init(**options, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnavailable(f"cannot reach the Ray cluster at {address}: {' '.join(str(exc).split())}") from None


def status(address: str = "auto") -> list[dict[str, Any]]:
    """One dict per live node that advertises session slots: ``node`` (id), ``ip``,
    ``capacity``, ``live`` (sessions), ``sessions`` (their ids), ``held`` (slots kept
    reserved while draining), ``draining``, ``state`` (``ready``, ``loading``, ``failed``,
    ``no host`` before a front door started one, ``not answering``)."""
    connect(address)
    ray = import_ray()
    rows = []
    for node in ray.nodes():
        capacity = int(node.get("Resources", {}).get(RESOURCE, 0))
        if not node.get("Alive") or capacity < 1:
            continue
        row: dict[str, Any] = {"node": node["NodeID"], "ip": node.get("NodeManagerAddress"), "capacity": capacity,
                               "live": 0, "sessions": [], "held": 0, "draining": False, "state": "no host"}
        host = _host(node["NodeID"])
        if host is not None:
            try:
                row.update(ray.get(host.status.remote(), timeout=CALL_TIMEOUT_S))
                row["capacity"] = capacity
            except Exception:
                row["state"] = "not answering"
        rows.append(row)
    return rows


def drain(node: str, address: str = "auto", *, on: bool = True) -> dict[str, Any]:
    """Stop (``on``) or resume new sessions on ``node`` (its id, or a unique prefix of it);
    live sessions carry on. Returns the host's status. ``ClusterUnavailable`` when no such
    node runs a host."""
    connect(address)
    ray = import_ray()
    full = resolve_node(node)
    host = _host(full)
    if host is None:
        raise ClusterUnavailable(f"node {node} runs no avatarchat host (start a front door first)")
    result: dict[str, Any] = ray.get(host.drain.remote(on), timeout=CALL_TIMEOUT_S)
    return result


def resolve_node(prefix: str) -> str:
    """The full id of the live node whose id starts with ``prefix``."""
    ray = import_ray()
    ids = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"].startswith(prefix.strip().lower())]
    if len(ids) != 1:
        what = "no live node" if not ids else f"{len(ids)} nodes"
        raise ClusterUnavailable(f"{what} with an id starting {prefix!r} (see `avatarchat cluster status`)")
    return str(ids[0])


def _host(node_id: str) -> Any:
    ray = import_ray()
    try:
        return ray.get_actor(host_name(node_id), namespace=NAMESPACE)
    except ValueError:
        return None
