"""``avatarchat bench cluster``: what a Ray cluster's front door costs, on this machine.

In one run, with one config:

1. ``avatarchat cluster local`` (a Ray head and ``nodes`` session nodes on 127.0.0.1), a
   front door on it (``avatarchat serve --cluster``) and a single ``avatarchat serve``.
2. Signaling: ``rounds`` offers to each server, alternating, one at a time. Each is timed on
   the client's clock from the POST of the offer to the answer's JSON (what the page waits
   for), then connected (data channel open) and hung up. The door's extra time is Ray's
   placement (a one-bundle placement group, its table) and the relay to the node's host;
   the door's answer says its own share (``door_ms`` less the node's ``answer_ms``).
3. Placement: every slot of the cluster offered at once, ``bursts`` times: sessions placed per
   second = slots / (last answer - first offer).
4. RSS of an idle node: once every session has ended, each node's processes (its raylet and
   everything under it: Ray's agents and the host that holds the models), and the head's.

An offer answered 503 because a slot freed a moment ago is not yet given back is offered
again after 0.5 s; those retries are counted (``retried_503``) and left in the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from avatarchat.bench.harness import ServeProcess
from avatarchat.bench.load import serve_config
from avatarchat.bench.stats import machine, summarize

Progress = Callable[[str], None]
RETRY_S = 0.5


class LocalClusterProcess:
    """``avatarchat cluster local`` as a subprocess; ``address`` once it says ready.
    ``stop`` sends SIGTERM (as Ctrl-C would), then kills, by pid, anything of it still alive."""

    def __init__(self, nodes: int, sessions: int, log: Path) -> None:
        self.log = log
        self.address = ""
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "avatarchat.cli.main", "cluster", "local", "--nodes", str(nodes),
                 "--sessions-per-node", str(sessions)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self._pids: set[int] = set()

    def wait_ready(self, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"cluster ready at (\S+)", self.log.read_text(errors="replace"))
            if found:
                self.address = found.group(1)
                self.processes()
                return self.address
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"avatarchat cluster local did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def processes(self) -> list[Any]:
        """Every process under it now (psutil.Process)."""
        import psutil

        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        self._pids.update(p.pid for p in found)
        return list(found)

    def stop(self, timeout: float = 30.0) -> None:
        import psutil

        self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        left = []
        for pid in self._pids:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                p.kill()
                left.append(p)
        psutil.wait_procs(left, timeout=5)


async def _offer_once(http: aiohttp.ClientSession, url: str) -> tuple[float, int, dict[str, Any]]:
    """One session: offer, answer (timed), connect, hang up. ``(answer ms, 503s retried,
    the answer's JSON)``."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack

    from avatarchat.server.ice import gather_with_loopback, is_loopback

    retried = 0
    while True:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTrack(AudioStreamTrack())  # silence, as a muted microphone sends
            pc.addTransceiver("video", direction="recvonly")
            channel = pc.createDataChannel("events")
            opened = asyncio.Event()
            channel.on("open", opened.set)
            offer = await pc.createOffer()
            await gather_with_loopback(pc, loopback=True)
            await pc.setLocalDescription(offer)
            sdp = "\r\n".join(ln for ln in pc.localDescription.sdp.splitlines()
                              if not (ln.startswith("a=candidate:") and not is_loopback(ln.split()[4]))) + "\r\n"
            t0 = time.perf_counter()
            async with http.post(url + "api/offer", json={"sdp": sdp, "type": "offer", "avatar": "client"}) as resp:
                body = await resp.json(content_type=None)
            ms = (time.perf_counter() - t0) * 1000
            if resp.status == 503 and retried < 20:
                retried += 1
                await asyncio.sleep(RETRY_S)
                continue
            if resp.status != 200:
                raise RuntimeError(f"offer refused ({resp.status}): {body.get('error')}")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
            await asyncio.wait_for(opened.wait(), 30)
            return ms, retried, body
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 10)


async def _signaling(door: str, single: str, rounds: int, progress: Progress) -> dict[str, Any]:
    times: dict[str, list[float]] = {"door": [], "single": []}
    retried = {"door": 0, "single": 0}
    inside: dict[str, list[float]] = {"node_answer_ms": [], "door_own_ms": []}
    async with aiohttp.ClientSession() as http:
        for i in range(rounds):
            order = (("door", door), ("single", single)) if i % 2 == 0 else (("single", single), ("door", door))
            for name, url in order:
                ms, again, body = await _offer_once(http, url)
                times[name].append(ms)
                retried[name] += again
                if name == "door" and isinstance(body.get("door_ms"), int | float) \
                        and isinstance(body.get("answer_ms"), int | float):
                    # The door's own share: placing the group and relaying, less the node's answer.
                    inside["node_answer_ms"].append(float(body["answer_ms"]))
                    inside["door_own_ms"].append(float(body["door_ms"]) - float(body["answer_ms"]))
                await asyncio.sleep(0.3)  # the hung-up session's slot goes back
        progress(f"signaling: {rounds} offers to each server")
    door_s, single_s = summarize(times["door"]), summarize(times["single"])
    added = {k: _minus(door_s[k], single_s[k]) for k in ("median", "p90")}
    return {"door_ms": door_s, "single_ms": single_s, "added_ms": added, "retried_503": retried,
            **{k: summarize(v) for k, v in inside.items()}}


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 1) if a is not None and b is not None else None


async def _placement(door: str, slots: int, bursts: int, progress: Progress) -> dict[str, Any]:
    rates = []
    async with aiohttp.ClientSession() as http:
        for _ in range(bursts):
            t0 = time.perf_counter()
            await asyncio.gather(*(_offer_once(http, door) for _ in range(slots)))
            rates.append(slots / (time.perf_counter() - t0))
            await asyncio.sleep(2.0)  # every slot back before the next burst
    progress(f"placement: {bursts} burst(s) of {slots} sessions")
    return {"slots": slots, "sessions_per_s": summarize(rates)}


def _node_memory(cluster: LocalClusterProcess) -> list[dict[str, Any]]:
    """Per raylet: the RSS of it and everything under it, and of the models' host in it."""
    import psutil

    rows = []
    for raylet in (p for p in cluster.processes() if p.name() == "raylet"):
        with contextlib.suppress(psutil.Error):
            tree = [raylet, *raylet.children(recursive=True)]
            hosts = [p for p in tree if "NodeHost" in " ".join(p.cmdline())]
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
            rows.append({"role": "session node" if hosts else "head", "processes": len(tree),
                         "rss_mb": round(rss / 2**20, 1),
                         "host_rss_mb": round(sum(p.memory_info().rss for p in hosts) / 2**20, 1) if hosts else None})
    return rows


def bench_cluster(config: str | None, nodes: int, sessions: int, rounds: int, bursts: int,
                  progress: Progress) -> dict[str, Any]:
    """The report (module docstring). Every process it starts is stopped before it returns."""
    folder = Path(tempfile.mkdtemp(prefix="avatarchat-bench-cluster-"))
    path = serve_config(config, nodes * sessions + 2, folder)
    cluster = LocalClusterProcess(nodes, sessions, folder / "cluster.log")
    try:
        t0 = time.monotonic()
        address = cluster.wait_ready()
        started_s = time.monotonic() - t0
        progress(f"cluster of {nodes} node(s) ready at {address} in {started_s:.1f} s")
        t0 = time.monotonic()
        with ServeProcess(config=path, extra_args=["--cluster", address],
                          log_path=folder / "door.log") as door_proc:
            door_s = time.monotonic() - t0
            progress(f"front door ready in {door_s:.1f} s")
            with ServeProcess(config=path, log_path=folder / "single.log") as single:
                signaling = asyncio.run(_signaling(door_proc.url, single.url, rounds, progress))
            placement = asyncio.run(_placement(door_proc.url, nodes * sessions, bursts, progress))
            time.sleep(3.0)  # the last sessions end on the nodes
            memory = _node_memory(cluster)
    finally:
        cluster.stop()
        if path.parent == folder or path.name.startswith(".bench-"):
            path.unlink(missing_ok=True)
    return {"bench": "cluster", "machine": machine(), "config": config or "(embedded default)",
            "nodes": nodes, "sessions_per_node": sessions, "cluster_start_s": round(started_s, 1),
            "door_ready_s": round(door_s, 1), "signaling": signaling, "placement": placement, "memory": memory,
            "logs": str(folder), "pid": os.getpid()}
