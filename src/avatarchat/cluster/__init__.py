"""Sessions across a Ray cluster (``avatarchat serve --cluster``, ``avatarchat cluster``).

Everything that imports ``ray`` lives in this package, and imports it lazily: ``serve``
without ``--cluster`` never loads Ray (``pip install 'avatarchat[cluster]'`` adds it).

- ``host.NodeHost``: one Ray actor per node (named ``avatarchat-node-<node id>``) that loads
  the pipeline once and runs that node's WebRTC sessions with the server's own code.
- ``placement``: a new session reserves ``{"avatarchat_session": 1}`` through a one-bundle
  placement group; Ray picks the node, whose host answers the offer.
- ``door.ClusterDoor``: what ``serve --cluster`` plugs into the aiohttp app (offer relay,
  per-session event stream, aggregated metrics, health).
- ``admin``: ``status`` and ``drain`` as functions (behind ``avatarchat cluster``).
- ``local.LocalCluster``: a head and N nodes on this machine (``avatarchat cluster local``).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The custom resource each node advertises: how many sessions it holds.
RESOURCE = "avatarchat_session"
#: The Ray namespace of the node hosts and the session placement groups.
NAMESPACE = "avatarchat"
#: Prefix of the placement groups' names (one per session, or held while a node drains).
GROUP_PREFIX = "avatarchat-session-"
#: Characters of the node id a session id starts with (``<node>-<peer>``).
NODE_PREFIX_LEN = 12


def host_name(node_id: str) -> str:
    """The Ray actor name of a node's host."""
    return f"avatarchat-node-{node_id}"


def split_session_id(session_id: str) -> tuple[str, str] | None:
    """``(node id prefix, peer id)`` of a cluster session id, or None if it is not one."""
    node, sep, peer = session_id.partition("-")
    ok = sep and len(node) == NODE_PREFIX_LEN and 0 < len(peer) <= 32
    if not ok or not all(c in "0123456789abcdef" for c in node + peer):
        return None
    return node, peer


class ClusterUnavailable(Exception):
    """Ray is not installed, or the cluster cannot be reached; the text says which."""


#: Ray's switch that keeps loopback addresses as they are (a single-machine cluster): without
#: it a driver given ``127.0.0.1:PORT`` looks for the head at this machine's LAN address,
#: where a cluster started on 127.0.0.1 does not listen. Read by Ray when it is imported.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def init_options(address: str) -> dict[str, object]:
    """``ray.init`` options to join ``address`` as a driver. Call before Ray is imported in
    this process: for a cluster on 127.0.0.1 (``cluster local``, the tests) it sets
    ``LOOPBACK_ENV`` (see there)."""
    if _is_loopback(address):
        for key, value in LOOPBACK_ENV.items():
            os.environ.setdefault(key, value)
    return {"address": address, "namespace": NAMESPACE, "log_to_driver": False, "ignore_reinit_error": True}


def _is_loopback(address: str) -> bool:
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address:
            # Where `ray start` and ray.cluster_utils write the current cluster's address.
            path = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
            try:
                address = path.read_text().strip()
            except OSError:
                return False
    return address.startswith(("127.", "localhost:", "[::1]:"))


def import_ray():  # type: ignore[no-untyped-def]
    """``ray``, or ``ClusterUnavailable`` with the install line."""
    try:
        import ray
    except ImportError:
        raise ClusterUnavailable("Ray is not installed: pip install 'avatarchat[cluster]'") from None
    return ray
