"""``NodeHost``: the Ray actor that runs one node's sessions.

One per node, named ``avatarchat-node-<node id>``, pinned to its node (hard node affinity)
and taking no CPU from Ray's accounting (its sessions' capacity is the node's
``avatarchat_session`` resource). It loads the pipeline once and answers offers with the
server's own ``SessionManager`` and ``PeerSession``: media flows between the browser and this
node. Its event loop is the actor's (an async actor).

Placement groups: every offer arrives with the one-bundle placement group that reserved its
slot. The host owns it from then on: it is removed when the session ends, or at once when the
offer is refused; while the host drains (or is still loading) it keeps the group instead, so
that slot stays reserved and Ray places the next session elsewhere. Groups of this node that
no host knows (their front door died mid-offer, or Ray moved one here from a dead node) are
removed after ``ORPHAN_AFTER_S``; a session group Ray is rescheduling (its node died, its
session with it) is removed by the first host that sees it. The front doors remove a dead
node's groups sooner, by id (cluster/door.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from avatarchat.cluster import GROUP_PREFIX, NODE_PREFIX_LEN
from avatarchat.server.metrics import Metrics

log = logging.getLogger(__name__)

#: A placement group of this node that no session holds is removed once unknown this long.
ORPHAN_AFTER_S = 15.0
ORPHAN_CHECK_S = 5.0


class NodeHost:
    """One node's sessions. Every method is safe to call at any time; refusals are
    returned (``{"refused": kind, "message": ...}``), never raised, so the front door
    tells a refusal from the host's death (a ``RayActorError``)."""

    def __init__(self, config: Any, node_id: str, capacity: int) -> None:
        from avatarchat.cli.serve import limit_malloc_arenas

        limit_malloc_arenas()
        self.node_id = node_id
        self.short = node_id[:NODE_PREFIX_LEN]
        self.capacity = max(1, int(capacity))
        self._config = config
        self._metrics = Metrics()
        self._pipeline: Any = None
        self._load_task: asyncio.Task[None] | None = None
        self._load_error: str | None = None
        self._manager: Any = None
        self.draining = False
        self._groups: dict[str, Any] = {}  # session id -> its placement group
        self._held: list[Any] = []  # groups kept so Ray places elsewhere (draining, loading)
        self._unknown_since: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.started = time.time()
        _log_with_node(self.short)

    # -- loading ---------------------------------------------------------------------

    async def ready(self) -> dict[str, Any]:
        """Load the pipeline (once; later calls wait for the same load) and return ``status``.
        ``status["error"]`` says why it failed to load."""
        if self._load_task is None:
            self._load_task = asyncio.get_running_loop().create_task(self._load(), name="avatarchat-host-load")
        await asyncio.shield(self._load_task)
        return await self.status()

    async def _load(self) -> None:
        from avatarchat.engine.pipeline import Pipeline
        from avatarchat.server.peer import PeerSession
        from avatarchat.server.sessions import SessionManager

        settings = self._config.server.model_copy(update={"max_sessions": min(64, self.capacity)})
        try:
            self._pipeline = await Pipeline.load(self._config, progress=log.info)
        except Exception as exc:
            self._load_error = " ".join(str(exc).split()) or type(exc).__name__
            log.exception("node %s: the pipeline failed to load", self.short)
            return
        self._manager = SessionManager(settings, PeerSession.open, self._metrics)
        self._reaper = asyncio.get_running_loop().create_task(self._reap_orphans(), name="avatarchat-host-reaper")
        log.info("node %s ready: %d session(s)", self.short, self.capacity)
        if not self.draining:
            await self._release_held()

    async def client_avatar(self) -> Any:
        """The avatar as a page draws it (``server.avatar_http.ClientAvatar``), or None."""
        from avatarchat.server.avatar_http import ClientAvatar

        await self.ready()
        return None if self._pipeline is None else ClientAvatar.loaded(self._pipeline)

    # -- sessions --------------------------------------------------------------------

    async def open_session(self, sdp: str, type_: str, avatar: str, client: str, group: Any) -> dict[str, Any]:
        """Answer an offer on this node: ``{"sdp", "type", "session_id", "avatar", "node",
        "answer_ms"}`` (``answer_ms``: the node's own time to answer),
        or ``{"refused": "draining" | "loading" | "full" | "offer" | "error", "message"}``.
        ``group`` is the placement group that reserved this slot (see the module docstring)."""
        from avatarchat.server.avatar_http import has_avatar
        from avatarchat.server.peer import OfferError
        from avatarchat.server.sessions import ClientLimit, ServerFull, ShuttingDown

        if self.draining or self._manager is None:
            if self._load_error is not None:
                await self._remove(group)
                return {"refused": "error", "message": "this node's models failed to load"}
            self._held.append(group)
            kind = "draining" if self.draining else "loading"
            return {"refused": kind, "message": f"node {self.short} is {kind}"}
        video = avatar == "video" and has_avatar(self._pipeline)
        started = time.perf_counter()
        try:
            peer, answer = await self._manager.open(self._pipeline, sdp, type_, client=client, avatar=avatar,
                                                    video=video)
        except (OfferError, ServerFull, ClientLimit, ShuttingDown) as exc:
            await self._remove(group)
            kind = "offer" if isinstance(exc, OfferError) else "full"
            plain = exc.__context__ is None and exc.__cause__ is None
            return {"refused": kind, "message": " ".join(str(exc).split()) if plain else "the offer cannot be answered"}
        except Exception:
            await self._remove(group)
            log.exception("node %s: opening a session failed", self.short)
            self._metrics.error("signaling")
            return {"refused": "error", "message": f"node {self.short} could not start the session"}
        session_id = f"{self.short}-{peer.id}"
        self._groups[session_id] = group
        peer.log.info("session %s opened on node %s for %s", session_id, self.short, client)
        asyncio.get_running_loop().create_task(self._release_when_closed(peer, session_id), name=f"release-{peer.id}")
        return {"sdp": answer, "type": "answer", "session_id": session_id, "avatar": avatar, "node": self.node_id,
                "answer_ms": round((time.perf_counter() - started) * 1000, 1)}

    async def _release_when_closed(self, peer: Any, session_id: str) -> None:
        await peer.wait_closed()
        group = self._groups.pop(session_id, None)
        if group is None:
            return
        if self.draining:
            self._held.append(group)  # the slot stays reserved: nothing new lands here
        else:
            await self._remove(group)

    async def wait_closed(self, session_id: str) -> str:
        """Return once that session has ended (``"closed"``), at once ``"unknown"`` for a
        session this host does not hold. The front door keeps one call pending per event
        stream: when this node dies, the call fails, and the page is told."""
        peer = self._peer(session_id)
        if peer is None:
            return "unknown"
        await peer.wait_closed()
        return "closed"

    async def close_session(self, session_id: str, reason: str = "closed by the operator") -> bool:
        """Close one session; False if this host does not hold it."""
        peer = self._peer(session_id)
        if peer is None:
            return False
        await peer.close(reason)
        return True

    def _peer(self, session_id: str) -> Any:
        node, _, peer_id = session_id.partition("-")
        if node != self.short or self._manager is None:
            return None
        return next((p for p in self._manager.peers if p.id == peer_id), None)

    # -- lifecycle -------------------------------------------------------------------

    async def drain(self, on: bool = True) -> dict[str, Any]:
        """Stop (``on``) or resume taking sessions; live sessions carry on either way.
        Draining, every free slot this node is offered is kept reserved (see module
        docstring); resuming gives them back to Ray."""
        self.draining = on
        log.info("node %s %s", self.short, "draining" if on else "taking sessions again")
        if not on and self._manager is not None:
            await self._release_held()
        return await self.status()

    async def status(self) -> dict[str, Any]:
        """``{"node", "capacity", "live", "sessions", "groups", "held", "draining", "state", "error",
        "started", "pid", "rss_mb"}`` (``groups``: the ids of the placement groups it holds;
        ``rss_mb``: the host process's resident memory)."""
        live = sorted(self._groups)
        state = "failed" if self._load_error else "ready" if self._manager is not None else "loading"
        groups = [g.id.hex() for g in [*self._groups.values(), *self._held]]
        return {"node": self.node_id, "capacity": self.capacity, "live": len(live), "sessions": live,
                "groups": groups, "held": len(self._held), "draining": self.draining, "state": state,
                "error": self._load_error, "started": self.started, "pid": os.getpid(), "rss_mb": _rss_mb()}

    async def metrics(self) -> str:
        """This node's metrics, Prometheus text (``server.metrics``)."""
        return self._metrics.render()

    async def shutdown(self) -> int:
        """Close every session (each page is told why); returns how many were open."""
        n = await self._manager.close_all("the node is stopping") if self._manager is not None else 0
        if self._reaper is not None:
            self._reaper.cancel()
        return int(n)

    # -- placement groups ------------------------------------------------------------

    async def _release_held(self) -> None:
        held, self._held = self._held, []
        for group in held:
            await self._remove(group)

    @staticmethod
    async def _remove(group: Any) -> None:
        import ray

        with contextlib.suppress(Exception):  # already gone
            await asyncio.to_thread(ray.util.remove_placement_group, group)

    async def _reap_orphans(self) -> None:
        while True:
            await asyncio.sleep(ORPHAN_CHECK_S)
            try:
                await self._reap_once(time.monotonic())
            except Exception:
                log.warning("node %s: checking placement groups failed", self.short, exc_info=True)

    async def _reap_once(self, now: float) -> None:
        import ray
        from ray.util.placement_group import PlacementGroup

        table = await asyncio.to_thread(ray.util.placement_group_table)
        known = {g.id.hex() for g in [*self._groups.values(), *self._held]}
        seen: set[str] = set()
        for pg_id, info in table.items():
            if not str(info.get("name", "")).startswith(GROUP_PREFIX):
                continue
            if info.get("state") == "RESCHEDULING":
                # Its node died, and its session with it: Ray would give it the next free
                # slot anywhere. Any host may remove it (a second one finds it gone).
                log.info("node %s: removing placement group %s of a dead node", self.short, info.get("name"))
                await self._remove(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
                continue
            mine = info.get("bundles_to_node_id", {}).get(0) == self.node_id
            if not mine or info.get("state") != "CREATED":
                continue
            if pg_id in known:
                continue
            seen.add(pg_id)
            first = self._unknown_since.setdefault(pg_id, now)
            if now - first >= ORPHAN_AFTER_S:
                log.info("node %s: removing orphan placement group %s", self.short, info.get("name"))
                await self._remove(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        self._unknown_since = {k: v for k, v in self._unknown_since.items() if k in seen}


def _rss_mb() -> float | None:
    """This process's resident memory in MB (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


class _NodeField(logging.Filter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        if not hasattr(record, "session"):
            record.session = "-"
        return True


def _log_with_node(node: str) -> None:
    """Log lines of this worker carry the node and the session (``[node/session]``)."""
    logger = logging.getLogger("avatarchat")
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler()
    handler.addFilter(_NodeField(node))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(node)s/%(session)s] %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


def remote_host_class() -> Any:
    """``NodeHost`` as a Ray actor class (Ray is imported here, not at module import)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(NodeHost)
