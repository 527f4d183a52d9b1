"""Placing one session: a one-bundle placement group on ``avatarchat_session``, then the
offer to the host of the node Ray chose.

Ray's own scheduler picks the node (``STRICT_PACK`` on one bundle: any node with a free
slot). The group is detached, so a front door that stops does not free its sessions' slots;
the node's host removes it when the session ends. Retries: a node that is draining or still
loading keeps the group (its slot stays taken) and the offer is placed again; a node whose
host died is set aside for the rest of this offer (its group held, then removed) and the
offer placed again. No group ready within ``timeout_s`` (no free slot anywhere) is
``ClusterFull``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from avatarchat.cluster import GROUP_PREFIX, RESOURCE

log = logging.getLogger(__name__)

#: Placements one offer may try (draining nodes, dead hosts) before it gives up.
MAX_TRIES = 8


class ClusterFull(Exception):
    """No node has a free slot within the placement timeout."""


class PlacementFailed(Exception):
    """Every try landed on a node that could not take the session; the text says why."""


@dataclass
class Offer:
    sdp: str
    type: str
    avatar: str
    client: str


#: ``node id -> the host actor handle`` (None when no host runs there).
HostLookup = Callable[[str], Awaitable[Any]]
#: Called with a node id whose host died during an offer.
OnDead = Callable[[str], None]


async def place(offer: Offer, host_of: HostLookup, on_dead: OnDead, *, timeout_s: float = 1.0,
                suspect: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Reserve a slot and open the session there: the host's answer dict (``session_id``,
    ``sdp``, ``node``), or its refusal (``refused`` in ``offer`` or ``full``: the client's
    fault or a node's own limit). Raises ``ClusterFull`` or ``PlacementFailed``.
    ``suspect``: nodes whose hosts are known dead (their groups are set aside, not used)."""
    from ray.exceptions import RayActorError
    from ray.util.placement_group import placement_group, placement_group_table

    aside: list[Any] = []
    reasons: list[str] = []
    dead = set(suspect)
    try:
        for _ in range(MAX_TRIES):
            name = GROUP_PREFIX + uuid.uuid4().hex[:16]
            group = await asyncio.to_thread(placement_group, [{RESOURCE: 1}], strategy="STRICT_PACK",
                                            lifetime="detached", name=name)
            if not await _placed(group, timeout_s):
                await _remove(group)
                raise ClusterFull("no node has a free session slot")
            table = await asyncio.to_thread(placement_group_table, group)
            node = table["bundles_to_node_id"][0]
            host = None if node in dead else await host_of(node)
            if host is None:
                aside.append(group)
                reasons.append(f"node {node[:12]} has no live host")
                continue
            try:
                answer: dict[str, Any] = await host.open_session.remote(offer.sdp, offer.type, offer.avatar,
                                                                        offer.client, group)
            except RayActorError:
                log.warning("the host of node %s died during an offer; placing again", node[:12])
                dead.add(node)
                on_dead(node)
                aside.append(group)
                reasons.append(f"node {node[:12]} stopped")
                continue
            refused = answer.get("refused")
            if refused in ("draining", "loading", "error"):
                reasons.append(answer.get("message", refused))
                continue  # the host kept (or removed) the group itself
            answer["group"] = group.id.hex()  # the door keeps it, to remove it if the node dies
            return answer
        raise PlacementFailed("; ".join(dict.fromkeys(reasons)) or "no node took the session")
    finally:
        for group in aside:
            await _remove(group)


#: The longest a group may stay pending while the cluster still shows a free slot: Ray's
#: scheduler being slow on a loaded machine is no full cluster.
SLOW_LIMIT_S = 15.0


async def _placed(group: Any, timeout_s: float) -> bool:
    """Whether ``group`` was placed: within ``timeout_s``, or later while the cluster still
    has a free ``RESOURCE`` (up to ``SLOW_LIMIT_S``). False: the cluster is full."""
    import ray

    waiting = asyncio.ensure_future(group.ready())
    deadline = time.monotonic() + SLOW_LIMIT_S
    wait_s = timeout_s
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=wait_s)
        if done:
            waiting.result()  # a failed placement raises
            return True
        free = (await asyncio.to_thread(ray.available_resources)).get(RESOURCE, 0)
        if free < 1 or time.monotonic() >= deadline:
            waiting.cancel()
            return False
        wait_s = 0.5


async def _remove(group: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    try:
        await asyncio.to_thread(remove_placement_group, group)
    except Exception:
        log.debug("removing a placement group failed", exc_info=True)
