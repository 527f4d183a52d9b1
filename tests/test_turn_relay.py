"""Relay-only WebRTC through a real coturn, with per-session TURN REST credentials.

coturn (tests/coturn.py) runs on 127.0.0.1 with ``use-auth-secret``; the server's config
has ``server.turn`` with its URL and secret. A client that may use relayed candidates only
(``iceTransportPolicy: "relay"``) must still reach the avatar: its media and data channel
go through coturn, on credentials the server made for it.

- An aiortc client against a real ``PeerSession`` (the embedded pipeline).
- Headless Chromium against ``avatarchat serve``: the page's ``iceTransportPolicy`` and its
  TURN credentials come from ``/api/config``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)

from avatarchat.engine.pipeline import Pipeline
from avatarchat.server.ice import candidate_addresses, ice_gatherers, is_loopback
from avatarchat.server.settings import ServerSettings
from avatarchat.server.turn import ice_servers_for_client
from tests.browser import CONNECTED, ServeProcess, wait_for
from tests.configs import greedy_default
from tests.coturn import Coturn
from tests.peer_harness import Server, pipeline, reply_done  # the fixture registers by its import
from tests.rtc_client import OfferFn, RtcTestClient, strip_non_loopback

pytestmark = pytest.mark.slow
__all__ = ["pipeline"]


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with Coturn(tmp_path_factory.mktemp("coturn")) as server:
        yield server


def relay_settings(coturn: Coturn) -> ServerSettings:
    return ServerSettings(turn={"urls": [coturn.url], "secret": coturn.secret, "relay_only": True})


def candidate_types(sdp: str) -> set[str]:
    return {line.split(" typ ")[1].split()[0] for line in sdp.splitlines() if line.startswith("a=candidate:")}


class RelayClient(RtcTestClient):
    """The test client with a relay-only ICE agent: the ICE servers a browser would get from
    ``/api/config``, and ``iceTransportPolicy`` relay, so it gathers nothing but TURN
    allocations and every packet it sends goes through the TURN server.

    The answer's candidates are cut to loopback ones before they are applied (the server
    also offers its host addresses), so no packet is addressed beyond 127.0.0.1.
    """

    def __init__(self, ice_servers: list[dict[str, Any]]) -> None:
        super().__init__(loopback_only=False)
        # The parent's peer connection is replaced before anything used it.
        # One bundled transport from the start, as browsers do: one allocation, not three.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice_servers],
                                                     iceTransportPolicy=RTCIceTransportPolicy.RELAY,
                                                     bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))

    async def connect(self, offer_fn: OfferFn, timeout: float = 30.0) -> None:
        pc = self.pc
        pc.addTrack(self.mic)
        pc.addTransceiver("video", direction="recvonly")
        self._channel = pc.createDataChannel("events")
        self._channel.on("open", self._opened.set)
        self._channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())  # gathers: one allocation per transport
        self.offer_sdp = pc.localDescription.sdp
        self.answer_sdp = await offer_fn(self.offer_sdp, "offer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=strip_non_loopback(self.answer_sdp), type="answer"))
        await self._until(self._opened.is_set, timeout)

    def selected_pair(self) -> Any:
        """aioice's nominated candidate pair of the (bundled) transport."""
        (gatherer,) = ice_gatherers(self.pc)
        return gatherer._connection._nominated[1]


@pytest.fixture
async def relay_server(pipeline: Pipeline, coturn: Coturn) -> AsyncIterator[Server]:
    srv = Server(pipeline, relay_settings(coturn))
    yield srv
    await srv.shutdown()


async def test_relay_only_client_talks_to_the_avatar_through_coturn(relay_server: Server, coturn: Coturn) -> None:
    servers = ice_servers_for_client(relay_server.settings, "relay-client")
    username = servers[-1]["username"]
    client = RelayClient(servers)
    try:
        await client.connect(relay_server.offer_fn)
        # The client offered relayed candidates only, on coturn's loopback relay.
        assert candidate_types(client.offer_sdp) == {"relay"}, client.offer_sdp
        assert all(is_loopback(a) for a in candidate_addresses(client.offer_sdp))
        # The server got a relay of its own too, on the REST credentials it made itself.
        assert "relay" in candidate_types(client.answer_sdp), client.answer_sdp
        pair = client.selected_pair()
        assert pair.local_candidate.type == "relay", pair
        assert coturn.min_port <= pair.local_candidate.port <= coturn.max_port

        client.send({"type": "text", "text": "Say hello."})
        said = await client.wait_message(lambda m: m["type"] == "transcript", 60)
        final = await client.wait_message(reply_done(said["turn"]), 90)
        assert final["text"].strip()
        await client.wait_message(lambda m: m["type"] == "metrics" and m["turn"] == said["turn"], 60)
        # At least 200 ms of the reply's voice comes through the relay.
        await client._until(lambda: len(client.loud_times()) > 10, 30)
        await client.wait_video(1)
    finally:
        await client.close()
    assert coturn.wait_log(lambda: coturn.allocations(username) != []), coturn.log_tail()
    server_users = [u for u in coturn.allocations() if u.endswith(":avatarchat-server")]
    assert server_users, "the server's own agent made no allocation"


# -- the page in Chromium ----------------------------------------------------------------

#: Keeps every RTCPeerConnection the page makes, so the test can read its configuration and
#: getStats (test instrumentation in the browser; the page itself is unchanged).
RECORD_PEERS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__peers = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.__peers.push(this); }
  };
})();
"""

#: The selected candidate pair's local and remote candidate types, by getStats.
SELECTED_PAIR = """async () => {
  const pc = window.__peers[window.__peers.length - 1];
  const report = await pc.getStats();
  let pair = null;
  report.forEach((r) => { if (r.type === "transport" && r.selectedCandidatePairId) pair = report.get(r.selectedCandidatePairId); });
  if (!pair) return null;
  const local = report.get(pair.localCandidateId), remote = report.get(pair.remoteCandidateId);
  return { policy: pc.getConfiguration().iceTransportPolicy, local: local.candidateType,
           localAddress: local.address, localPort: local.port, remote: remote.candidateType };
}"""


def keep_loopback_candidates(route: Any) -> None:
    """Let ``POST /api/offer`` through, but cut its answer to loopback candidates: the server
    also offers its host addresses, and no packet may be addressed beyond 127.0.0.1."""
    response = route.fetch()
    body = response.json()
    if "sdp" in body:
        body["sdp"] = strip_non_loopback(body["sdp"])
    route.fulfill(response=response, json=body)


def write_serve_config(folder: Path, coturn: Coturn) -> Path:
    config = yaml.safe_load(greedy_default(folder).read_text())
    config.setdefault("server", {})["turn"] = {"urls": [coturn.url], "secret": coturn.secret, "relay_only": True}
    path = folder / "relay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class TestPage:
    @pytest.fixture(autouse=True)
    def no_leaked_tasks(self) -> None:
        """Replaces conftest's asyncio check for these synchronous tests: playwright's sync API
        runs its own loop in this thread (as in tests/test_browser.py)."""

    def test_page_connects_relay_only_through_coturn(self, quiet_browser: Any, coturn: Coturn,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
        pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")
        config = write_serve_config(tmp_path_factory.mktemp("relay-config"), coturn)
        with ServeProcess(config=config) as serve:
            context = quiet_browser.new_context()
            try:
                context.add_init_script(RECORD_PEERS)
                page = context.new_page()
                page.route("**/api/offer", keep_loopback_candidates)
                # The page asks for /api/config on load (its language) and again at Start: each
                # answer carries fresh credentials, whose names differ once a second has passed
                # between them (a busy CI machine), so every answer's are kept.
                configs: list[Any] = []
                page.on("response", lambda r: configs.append(r) if r.url.endswith("/api/config") and r.ok else None)
                page.goto(serve.url + "?raw=1&avatar=video")  # the server's video through the relay
                page.wait_for_function("() => window.avatarchat !== undefined")
                page.click("#start")
                wait_for(page, CONNECTED, 40)
                sent = [r.json() for r in configs]
                assert sent and all(c.get("ice_transport_policy") == "relay" for c in sent), sent
                usernames = {c["ice_servers"][-1]["username"] for c in sent}
                pair = page.evaluate(SELECTED_PAIR)
                assert pair is not None and pair["policy"] == "relay", pair
                assert pair["local"] == "relay", pair
                print(f"\nChromium's selected pair: {pair}; coturn users {sorted(usernames)}")
                assert coturn.wait_log(lambda: any(coturn.allocations(u) for u in usernames)), coturn.log_tail()
                page.fill("#text", "Say hello.")
                page.click("#send")
                wait_for(page, "() => document.querySelector('#log .msg.avatar[data-final]')", 60)
                frames = page.evaluate("avatarchat.frames().count")
                assert frames > 0, "no video came through the relay"
            finally:
                context.close()
