"""``ClusterDoor``: what ``avatarchat serve --cluster`` plugs into the aiohttp app.

A front door holds no session state another needs: a session id is ``<node>-<peer>`` (the
first 12 hex digits of the node's Ray id), and a node's host is a named Ray actor
(``avatarchat-node-<node id>``), so any front door finds any session's host. Front doors
start a host on every node that advertises ``avatarchat_session`` and has none (at start and
every ``discover_every_s``). Hosts are detached actors: a front door that stops or restarts
takes no session with it.

The page's event stream (``GET /api/session/<id>/events``, server-sent events) keeps one
``wait_closed`` call pending on the session's host: when that node dies the call fails
within seconds and the page gets ``{"type": "error", "message": ...}``; that door then
places no new session on the node (``suspect_s``), before Ray itself marks it dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from aiohttp import web

from avatarchat.cluster import (
    GROUP_PREFIX,
    NAMESPACE,
    RESOURCE,
    ClusterUnavailable,
    host_name,
    import_ray,
    init_options,
    split_session_id,
)
from avatarchat.cluster.metrics import merge_metrics
from avatarchat.cluster.placement import ClusterFull, Offer, PlacementFailed, place

log = logging.getLogger(__name__)

NODE_STOPPED = "the server running this session stopped; reconnect"
#: A session group not placed within this long: the cluster is full (503). Not 1 s: Ray
#: hands a removed group's slot back to its scheduler ~1 s later (measured here: every 4th
#: place-and-remove on 4 slots waited 0.95 s), so near capacity 1 s refused sessions a slot
#: was about to take.
PLACE_TIMEOUT_S = 2.0
#: A comment line this often keeps proxies and load balancers from closing an idle stream.
KEEPALIVE_S = 15.0


class ClusterDoor:
    """A front door onto the Ray cluster at ``address`` (``auto``: the local one).

    ``start`` (the app's loader) connects, starts the hosts and waits for one to load;
    ``offer``, ``events``, ``metrics_text`` and ``health`` serve the routes; ``close``
    disconnects (the hosts and their sessions stay). Doors of one process share its Ray
    connection, which the last one to close ends."""

    _drivers = 0  # doors of this process connected to Ray

    def __init__(self, address: str, config: Any, *, place_timeout_s: float = PLACE_TIMEOUT_S,
                 discover_every_s: float = 2.0, suspect_s: float = 30.0) -> None:
        self.address = address
        self.config = config
        self.place_timeout_s = place_timeout_s
        self.discover_every_s = discover_every_s
        self.suspect_s = suspect_s
        self.client_avatar: Any = None
        self._hosts: dict[str, Any] = {}  # node id -> host handle
        self._loads: dict[str, asyncio.Future[Any]] = {}  # node id -> its ready() call
        self._suspect: dict[str, float] = {}  # node id -> when its host was seen dead
        # node id -> its session groups' ids, from its host's status (every discovery) and
        # this door's own placements since (id -> when placed): removed at once if it dies
        self._node_groups: dict[str, set[str]] = {}
        self._own_groups: dict[str, dict[str, float]] = {}
        self._slots = (0, 0)  # (total, free), refreshed by discovery
        self._placed = 0
        self._failures: dict[str, int] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()
        self._connected = False

    # -- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        """Connect, start a host on every node with slots, wait until one has loaded.
        Raises ``ClusterUnavailable`` (one line) when Ray is missing, the cluster cannot be
        reached, no node advertises ``avatarchat_session``, or every host failed to load."""
        options = init_options(self.address)  # before the import: see LOOPBACK_ENV
        ray = import_ray()
        try:
            await asyncio.to_thread(ray.init, **options, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterUnavailable(f"cannot reach the Ray cluster at {self.address}: {_line(exc)}") from None
        self._connected = True
        ClusterDoor._drivers += 1
        await self.discover()
        if not self._hosts:
            raise ClusterUnavailable(f"no node of the cluster advertises the {RESOURCE} resource "
                                     f"(ray start --resources='{{\"{RESOURCE}\": N}}')")
        status = await self._first_ready()
        self.client_avatar = await self._hosts[status["node"]].client_avatar.remote()
        self._loop_task = asyncio.get_running_loop().create_task(self._discover_loop(), name="avatarchat-discover")

    async def _first_ready(self) -> dict[str, Any]:
        pending = set(self._loads.values())
        errors = []
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                status = None if fut.exception() else fut.result()
                if status is not None and status["state"] == "ready":
                    return dict(status)
                errors.append(status["error"] if status else _line(fut.exception()))
        raise ClusterUnavailable("no node host loaded the pipeline: " + "; ".join(map(str, errors)))

    async def close(self) -> None:
        """Stop discovering and disconnect from Ray (the hosts keep running)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for fut in [*self._loads.values(), *self._cleanups]:
            fut.cancel()
        await asyncio.gather(*self._loads.values(), *self._cleanups, return_exceptions=True)
        if self._connected:
            self._connected = False
            ClusterDoor._drivers -= 1
            if ClusterDoor._drivers == 0:  # Ray has one driver connection per process
                await asyncio.to_thread(import_ray().shutdown)

    # -- nodes -------------------------------------------------------------------------

    async def _discover_loop(self) -> None:
        while True:
            await asyncio.sleep(self.discover_every_s)
            try:
                await self.discover()
                await self._refresh_groups()
            except Exception:
                log.warning("looking at the cluster's nodes failed", exc_info=True)

    async def discover(self) -> None:
        """Start a host on each live node with slots that has none; forget dead nodes."""
        ray = import_ray()
        nodes = await asyncio.to_thread(ray.nodes)
        alive = {n["NodeID"]: int(n.get("Resources", {}).get(RESOURCE, 0)) for n in nodes if n.get("Alive")}
        alive = {node: cap for node, cap in alive.items() if cap >= 1}
        now = time.monotonic()
        for node in list(self._hosts):
            stale = node in self._suspect and now - self._suspect[node] > self.suspect_s
            if node not in alive or stale:
                if node not in alive and node not in self._suspect:
                    self._schedule_removal(node)  # no event stream saw it die: Ray did
                self._hosts.pop(node, None)
                fut = self._loads.pop(node, None)
                if fut is not None:
                    fut.cancel()
                if node not in alive:
                    self._suspect.pop(node, None)
        for node, capacity in alive.items():
            if node not in self._hosts and node not in self._suspect:
                self._hosts[node] = await asyncio.to_thread(self._host_for, node, capacity)
                self._loads[node] = asyncio.ensure_future(_awaited(self._hosts[node].ready.remote()))
        total = await asyncio.to_thread(ray.cluster_resources)
        free = await asyncio.to_thread(ray.available_resources)
        self._slots = (int(total.get(RESOURCE, 0)), int(free.get(RESOURCE, 0)))

    def _host_for(self, node: str, capacity: int) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from avatarchat.cluster.host import remote_host_class

        # Detached: a host outlives the front door that started it (another may be serving
        # its sessions' event streams); it goes with its node.
        return remote_host_class().options(
            name=host_name(node), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(self.config, node, capacity)

    async def _host_of(self, node: str) -> Any:
        if node not in self._hosts and node not in self._suspect:
            await self.discover()
        return self._hosts.get(node)

    def mark_dead(self, node: str) -> None:
        """This door saw ``node``'s host die: no placement there for ``suspect_s``, and the
        node's session groups are removed now (see ``_remove_groups_of``)."""
        if node not in self._suspect:
            log.warning("node %s stopped: no new sessions there", node[:12])
            self._schedule_removal(node)
        self._suspect[node] = time.monotonic()

    def _schedule_removal(self, node: str) -> None:
        known = self._node_groups.pop(node, set()) | set(self._own_groups.pop(node, {}))
        task = asyncio.get_running_loop().create_task(self._remove_groups_of(node, known),
                                                      name="avatarchat-dead-groups")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _remove_groups_of(self, node: str, known: set[str]) -> None:
        """Remove the session groups of a dead node: those its host last reported and this
        door placed there (``known``), wherever they are now, and any other still on it.
        Ray moves a dead node's detached groups to live nodes within seconds (here before
        the door saw the death: one CREATED on the live node, one RESCHEDULING), where they
        would take slots no session uses until that node's host removes them as orphans."""
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        ray = import_ray()
        try:
            table = await asyncio.to_thread(placement_group_table)
            ids = set(known)
            for pg_id, info in table.items():
                on_node = info.get("bundles_to_node_id", {}).get(0) == node
                if on_node and str(info.get("name", "")).startswith(GROUP_PREFIX):
                    ids.add(pg_id)
            for pg_id in ids:
                if table.get(pg_id, {}).get("state") == "REMOVED":
                    continue
                group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))
                with contextlib.suppress(Exception):  # already gone
                    await asyncio.to_thread(remove_placement_group, group)
            log.info("removed %d session group(s) of the dead node %s", len(ids), node[:12])
        except Exception:
            log.warning("removing the groups of node %s failed", node[:12], exc_info=True)

    async def _refresh_groups(self, keep_own_s: float = 30.0) -> None:
        """Each live host's group ids (its ``status``), so a node's groups are known when it
        dies; this door's own placements stay known ``keep_own_s`` (until a status has them)."""
        hosts = dict(self._hosts)
        results = await asyncio.gather(*(asyncio.wait_for(_awaited(h.status.remote()), 2.0) for h in hosts.values()),
                                       return_exceptions=True)
        now = time.monotonic()
        for node, status in zip(hosts, results):
            if isinstance(status, dict) and node in self._hosts:
                self._node_groups[node] = set(status.get("groups", ()))
                own = self._own_groups.get(node, {})
                self._own_groups[node] = {g: t for g, t in own.items() if now - t < keep_own_s}

    def _node_of(self, prefix: str) -> str | None:
        return next((n for n in self._hosts if n.startswith(prefix)), None)

    # -- routes ------------------------------------------------------------------------

    async def offer(self, sdp: str, type_: str, avatar: str, client: str) -> web.Response:
        """Place a session and relay the node's answer: 200 ``{"sdp", "type", "session_id",
        "avatar", "node", "answer_ms", "door_ms"}`` (the node's time to answer, and this
        door's from placing to relaying); 400 for an offer the node refused; 503 ``{"error", "capacity"}``
        when no node has a free slot."""
        now = started = time.monotonic()
        suspect = frozenset(n for n, t in self._suspect.items() if now - t <= self.suspect_s)
        try:
            answer = await place(Offer(sdp, type_, avatar, client), self._host_of, self.mark_dead,
                                 timeout_s=self.place_timeout_s, suspect=suspect)
        except (ClusterFull, PlacementFailed) as exc:
            self._count_failure("full" if isinstance(exc, ClusterFull) else "failed")
            body = {"error": f"the cluster is full: {exc}; try again later", "capacity": await self.capacity()}
            return web.json_response(body, status=503, headers={"Retry-After": "5"})
        refused = answer.get("refused")
        if refused is not None:
            self._count_failure(str(refused))
            if refused == "offer":
                return web.json_response({"error": answer["message"]}, status=400)
            return web.json_response({"error": answer["message"], "capacity": await self.capacity()}, status=503,
                                     headers={"Retry-After": "5"})
        self._placed += 1
        group_id = answer.pop("group", None)
        if group_id:
            self._own_groups.setdefault(answer["node"], {})[group_id] = time.monotonic()
        answer["door_ms"] = round((time.monotonic() - started) * 1000, 1)
        logging.LoggerAdapter(log, {"session": answer["session_id"]}).info(
            "placed on node %s for %s in %.0f ms (the node answered in %.0f ms)", answer["node"][:12], client,
            answer["door_ms"], answer.get("answer_ms", 0))
        return web.json_response(answer)

    async def capacity(self) -> dict[str, Any]:
        """``{"nodes", "slots", "free", "draining"}`` of the cluster now."""
        ray = import_ray()
        total = await asyncio.to_thread(ray.cluster_resources)
        free = await asyncio.to_thread(ray.available_resources)
        self._slots = (int(total.get(RESOURCE, 0)), int(free.get(RESOURCE, 0)))
        statuses = await self.statuses()
        return {"nodes": len(statuses), "slots": self._slots[0], "free": self._slots[1],
                "draining": sum(1 for s in statuses if s.get("draining"))}

    async def statuses(self, timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """Each live host's ``status`` (hosts that do not answer in time are left out)."""
        hosts = list(self._hosts.values())
        results = await asyncio.gather(*(asyncio.wait_for(_awaited(h.status.remote()), timeout_s) for h in hosts),
                                       return_exceptions=True)
        return [r for r in results if isinstance(r, dict)]

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/session/<id>/events``: server-sent events for one session: ``session``
        at once, then ``closed`` when it ends, or ``error`` when its node stops."""
        session_id = request.match_info["session_id"]
        parts = split_session_id(session_id)
        if parts is None:
            return web.json_response({"error": "not a session id of this cluster"}, status=400)
        node = self._node_of(parts[0])
        if node is None:
            await self.discover()
            node = self._node_of(parts[0])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        if node is None or node in self._suspect:
            await _send(resp, {"type": "error", "message": NODE_STOPPED})
            return resp
        ref = self._hosts[node].wait_closed.remote(session_id)
        waiter = asyncio.ensure_future(_awaited(ref))
        try:
            await _send(resp, {"type": "session", "session_id": session_id, "node": node})
            await self._watch(resp, waiter, node, session_id)
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(Exception):
                    import_ray().cancel(ref)
            await asyncio.gather(waiter, return_exceptions=True)
        return resp

    async def _watch(self, resp: web.StreamResponse, waiter: asyncio.Future[Any], node: str, session_id: str) -> None:
        from ray.exceptions import RayActorError

        while True:
            done, _ = await asyncio.wait({waiter}, timeout=KEEPALIVE_S)
            if not done:
                await resp.write(b": keepalive\n\n")
                continue
            try:
                outcome = waiter.result()
            except RayActorError:
                self.mark_dead(node)
                logging.LoggerAdapter(log, {"session": session_id}).warning("node %s stopped", node[:12])
                await _send(resp, {"type": "error", "message": NODE_STOPPED})
                return
            await _send(resp, {"type": "closed", "known": outcome != "unknown"})
            return

    async def metrics_text(self) -> str:
        """Every node's metrics, each sample labelled ``node``, then the door's own."""
        hosts = dict(self._hosts)
        texts = await asyncio.gather(*(asyncio.wait_for(_awaited(h.metrics.remote()), 2.0) for h in hosts.values()),
                                     return_exceptions=True)
        parts = {node[:12]: t for node, t in zip(hosts, texts) if isinstance(t, str)}
        own = [
            "# HELP avatarchat_cluster_nodes Nodes with a session host, as this front door sees them.",
            "# TYPE avatarchat_cluster_nodes gauge", f"avatarchat_cluster_nodes {len(hosts)}",
            "# HELP avatarchat_cluster_slots Session slots of the cluster (avatarchat_session).",
            "# TYPE avatarchat_cluster_slots gauge", f"avatarchat_cluster_slots {self._slots[0]}",
            "# HELP avatarchat_cluster_slots_free Session slots free.",
            "# TYPE avatarchat_cluster_slots_free gauge", f"avatarchat_cluster_slots_free {self._slots[1]}",
            "# HELP avatarchat_cluster_placed_total Sessions this front door placed.",
            "# TYPE avatarchat_cluster_placed_total counter", f"avatarchat_cluster_placed_total {self._placed}",
            "# HELP avatarchat_cluster_refused_total Offers this front door could not place, by reason.",
            "# TYPE avatarchat_cluster_refused_total counter",
            *(f'avatarchat_cluster_refused_total{{reason="{r}"}} {n}' for r, n in sorted(self._failures.items())),
        ]
        return merge_metrics(parts) + "\n".join(own) + "\n"

    def health(self) -> dict[str, Any]:
        """``/healthz``'s body once ready (``sessions`` and ``max_sessions`` over the cluster)."""
        total, free = self._slots
        return {"status": "ready", "cluster": True, "nodes": len(self._hosts), "sessions": max(0, total - free),
                "max_sessions": total}

    def _count_failure(self, reason: str) -> None:
        self._failures[reason] = self._failures.get(reason, 0) + 1


async def _awaited(ref: Any) -> Any:
    return await ref


async def _send(resp: web.StreamResponse, message: dict[str, Any]) -> None:
    await resp.write(f"data: {json.dumps(message)}\n\n".encode())


def _line(exc: BaseException | None) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def create_front_door(address: str, config: Any = None, *, settings: Any = None,
                      **door_options: Any) -> web.Application:
    """The aiohttp app of ``serve --cluster address`` (for tests and embedding): the page, the
    relayed ``/api/offer``, the events stream, ``/healthz`` and ``/metrics``. ``config``: an
    ``avatarchat.config.Config`` (default: the embedded one), shipped to the node hosts this
    door starts; ``settings``: its ``server:`` section by default. The door connects when
    the app starts (``/healthz`` says ``loading`` until a node has loaded) and disconnects
    at cleanup; ``app[STATE].cluster`` is the ``ClusterDoor``."""
    from avatarchat.config import load_config
    from avatarchat.server.app import create_app

    config = config if config is not None else load_config(None)
    door = ClusterDoor(address, config, **door_options)
    return create_app(door.start, settings or config.server, session=config.session, cluster=door)
