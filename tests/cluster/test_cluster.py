"""Sessions across a real local Ray cluster: a head with no session slot and two nodes of 2
slots each (tests/cluster/ray_nodes.py), one ``avatarchat serve --cluster`` front door, and
real aiortc clients (tests/rtc_client.py) speaking real questions to the embedded models
(voice only: no avatar, to keep four sessions affordable on two cores).

One cluster serves the whole module; each test leaves every slot free, except the last,
which kills a node. Waits are bounded and generous (the machine may be loaded); the one
timing the issue names, a dead node's sessions told within 5 s, is measured and reported
(``node_death_error_s``), and asserted only against a generous bound.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from avatarchat.bench.harness import ServeProcess
from avatarchat.bench.load import speak_questions
from tests.cluster.door import Door, EventStream, Refused
from tests.cluster.ray_nodes import RayNodes
from tests.configs import greedy_default
from tests.rtc_client import RtcTestClient

#: Spoken questions, each with a word no other one has (whisper hears it, the others not).
QUESTIONS = [("What is the capital of France?", "france"), ("How many legs does a spider have?", "spider"),
             ("Why is the sky blue?", "sky"), ("Tell me about the moon.", "moon")]
TURN_S = 180.0  # a whole turn on a loaded 2-core machine, four sessions at once
NODE_STOPPED = "the server running this session stopped; reconnect"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


@pytest.fixture(scope="module")
def questions(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    texts = [q for q, _ in QUESTIONS]
    return speak_questions(tmp_path_factory.mktemp("questions"), texts, lambda _: None)


@pytest.fixture(scope="module")
def front_door(ray_nodes: RayNodes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """``avatarchat serve --cluster ADDRESS`` with the embedded models at temperature 0,
    short replies and no avatar; yielded once both nodes' hosts have loaded."""
    folder = tmp_path_factory.mktemp("config")
    path = greedy_default(folder, without=("avatar",))
    config = yaml.safe_load(path.read_text())
    config["llm"]["max_tokens"] = 24
    config.setdefault("server", {}).update(max_sessions=8, max_sessions_per_client=8)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with ServeProcess(config=path, extra_args=["--cluster", ray_nodes.address],
                      log_path=folder / "door.log") as door:
        rows = wait_status(ray_nodes.address, lambda rows: len(rows) == 2 and all(r["state"] == "ready" for r in rows))
        assert sorted(r["capacity"] for r in rows) == [2, 2]
        yield door


# -- helpers ---------------------------------------------------------------------------------


def cli(*args: str, timeout: float = 60.0) -> str:
    """``avatarchat ARGS`` as a user runs it; its stdout (AssertionError with its output if it fails)."""
    done = subprocess.run([sys.executable, "-m", "avatarchat.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"avatarchat {' '.join(args)} -> {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def metric(text: str, name: str, node: str) -> float | None:
    """The value of the sample ``name{node="NODE"...}`` in Prometheus text (None if absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'node="{node}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def status(address: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(cli("cluster", "status", "--address", address, "--json"))
    return rows


def wait_status(address: str, check: Any, timeout: float = 240.0) -> list[dict[str, Any]]:
    """``cluster status`` rows once ``check(rows)`` holds (AssertionError with the last rows if not in time)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = status(address)
        if check(rows):
            return rows
        assert time.monotonic() < deadline, f"cluster status never got there: {rows}"
        time.sleep(1.0)


async def wait_health(door: Door, check: Any, timeout: float = 60.0) -> dict[str, Any]:
    """The front door's ``/healthz`` body once ``check(body)`` holds (ended sessions give
    their slots back asynchronously, and a dead node's go when Ray marks it dead)."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = await door.get_json("healthz")
        if code == 200 and check(body):
            return dict(body)
        assert time.monotonic() < deadline, f"/healthz never got there: {code} {body}"
        await asyncio.sleep(0.5)


async def wait_free(door: Door, slots: int) -> None:
    """Until no session holds any of the ``slots``."""
    await wait_health(door, lambda h: h.get("sessions") == 0 and h.get("max_sessions") == slots)


async def connect_when_placed(door: Door, timeout: float) -> tuple[RtcTestClient, dict[str, Any], list[Any]]:
    """Connect, offering again every 2 s while the door answers 503 (a slot freed a moment
    ago may not be offered yet); the client, its answer and the 503 bodies it got first."""
    deadline = time.monotonic() + timeout
    refused: list[Any] = []
    while True:
        try:
            client, answer = await door.connect()
            return client, answer, refused
        except Refused as exc:
            assert exc.status == 503 and time.monotonic() < deadline, exc
            refused.append(exc.body)
            await asyncio.sleep(2.0)


async def ask(client: RtcTestClient, wav: str, timeout: float = TURN_S) -> tuple[dict[str, Any], dict[str, Any]]:
    """Speak one question; its final transcript and final reply."""
    start = len(client.messages)
    client.speak(wav)
    said = await client.wait_message(lambda m: m["type"] == "transcript" and m["final"], timeout, start=start)
    reply = await client.wait_message(lambda m: m["type"] == "reply" and m["final"] and m["turn"] == said["turn"],
                                      timeout, start=start)
    return said, reply


async def close_all(clients: list[RtcTestClient], streams: list[EventStream] = ()) -> None:  # type: ignore[assignment]
    for stream in streams:
        await stream.close()
    for client in clients:
        await client.close()


# -- the tests -------------------------------------------------------------------------------


async def test_four_sessions_are_placed_two_per_node_each_hears_its_own_question_and_a_fifth_gets_503(
        ray_nodes: RayNodes, front_door: ServeProcess, questions: list[dict[str, str]]) -> None:
    clients: list[RtcTestClient] = []
    async with Door(front_door.url) as door:
        try:
            placed = []
            for _ in range(4):
                client, answer = await door.connect()
                clients.append(client)
                placed.append(answer)
            per_node = Counter(a["node"] for a in placed)
            assert per_node == {n.node_id: 2 for n in ray_nodes.nodes}, per_node
            assert len({a["session_id"] for a in placed}) == 4

            with pytest.raises(Refused) as full:
                await door.connect()
            assert full.value.status == 503
            assert "error" in full.value.body
            assert full.value.body["capacity"]["slots"] == 4 and full.value.body["capacity"]["free"] == 0

            turns = await asyncio.gather(*(ask(c, q["wav"]) for c, q in zip(clients, questions)))
            for (said, reply), (_, own) in zip(turns, QUESTIONS):
                heard = words(said["text"])
                others = {w for _, w in QUESTIONS if w != own}
                assert own in heard and not heard & others, (said["text"], own)
                assert reply["text"].strip(), reply
            for client, (said, _) in zip(clients, turns):
                # Nothing of another session reached this one: one question, one transcript.
                assert [m["text"] for m in client.of_type("transcript") if m["final"]] == [said["text"]]

            # The door's /metrics holds every node's own: two live sessions and (once their
            # replies have played out) two turns each.
            nodes = [n.node_id[:12] for n in ray_nodes.nodes]
            deadline = time.monotonic() + 60
            while True:
                code, text = await door.get_text("metrics")
                assert code == 200
                if all(metric(text, "avatarchat_turns_total", n) == 2 for n in nodes) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
            for node in nodes:
                assert metric(text, "avatarchat_turns_total", node) == 2, text
                assert metric(text, "avatarchat_sessions_active", node) == 2, text
        finally:
            await close_all(clients)
        await wait_free(door, 4)


async def test_a_drained_node_takes_no_new_session_and_its_live_one_finishes(
        ray_nodes: RayNodes, front_door: ServeProcess, questions: list[dict[str, str]]) -> None:
    clients: list[RtcTestClient] = []
    async with Door(front_door.url) as door:
        try:
            first, answer = await door.connect()
            clients.append(first)
            drained = answer["node"]
            other = ray_nodes.other(drained)
            # In a thread: the clients' connections live on this loop.
            await asyncio.to_thread(cli, "cluster", "drain", drained[:12], "--address", ray_nodes.address)
            rows = {r["node"]: r for r in await asyncio.to_thread(status, ray_nodes.address)}
            assert rows[drained]["draining"] and not rows[other]["draining"], rows
            assert rows[drained]["sessions"] == [answer["session_id"]], rows

            for _ in range(2):  # the other node's two slots
                client, placed = await door.connect()
                clients.append(client)
                assert placed["node"] == other
            with pytest.raises(Refused) as full:  # the drained node's free slot is not offered
                await door.connect()
            assert full.value.status == 503 and full.value.body["capacity"]["draining"] == 1

            said, reply = await ask(first, questions[0]["wav"])
            assert "france" in words(said["text"]) and reply["text"].strip()

            await asyncio.to_thread(cli, "cluster", "drain", drained[:12], "--address", ray_nodes.address, "--undo")
            client, placed = await door.connect()
            clients.append(client)
            assert placed["node"] == drained
        finally:
            await close_all(clients)
        await wait_free(door, 4)


async def test_killing_a_nodes_raylet_tells_its_sessions_and_the_next_session_lands_on_the_live_node(
        ray_nodes: RayNodes, front_door: ServeProcess, questions: list[dict[str, str]],
        record_property: Any) -> None:
    clients: list[RtcTestClient] = []
    streams: list[EventStream] = []
    async with Door(front_door.url) as door:
        try:
            placed = []
            for _ in range(4):
                client, answer = await door.connect()
                clients.append(client)
                placed.append(answer)
                streams.append(door.events(answer["session_id"]))
            for stream in streams:
                await stream.wait(lambda e: e["type"] == "session", 30)
            victim = placed[0]["node"]
            live = ray_nodes.other(victim)
            on_victim = [i for i, a in enumerate(placed) if a["node"] == victim]
            on_live = [i for i, a in enumerate(placed) if a["node"] == live]
            assert len(on_victim) == len(on_live) == 2

            killed_at = time.monotonic()
            ray_nodes.kill_raylet(victim)
            errors = [await streams[i].wait(lambda e: e["type"] == "error", 60) for i in on_victim]
            assert all(e["message"] == NODE_STOPPED for e in errors)
            told_s = max(e["_at"] for e in errors) - killed_at
            record_property("node_death_error_s", round(told_s, 2))
            print(f"\nsessions of the killed node told in {told_s:.2f} s")

            # The live node's sessions carry on: a whole turn, and no error on their streams.
            said, reply = await ask(clients[on_live[0]], questions[1]["wav"])
            assert "spider" in words(said["text"]) and reply["text"].strip()
            assert not [e for i in on_live for e in streams[i].events if e["type"] == "error"]

            await clients[on_live[1]].close()  # a slot on the live node for the next session
            await streams[on_live[1]].wait(lambda e: e["type"] == "closed", 60)
            freed_at = time.monotonic()
            # The dead node's groups are removed when the door sees it die (Ray would have
            # moved them onto the live node's free slots): 0.7 s measured, idle; was 37.5 s.
            client, answer, refused = await connect_when_placed(door, 60.0)
            clients.append(client)
            assert answer["node"] == live
            placed_s = time.monotonic() - freed_at
            record_property("next_session_after_free_slot_s", round(placed_s, 1))
            print(f"the next session was placed {placed_s:.1f} s after a slot was freed, "
                  f"{time.monotonic() - killed_at:.1f} s after the kill; 503s first: {refused}")
        finally:
            await close_all(clients, streams)
