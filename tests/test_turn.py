"""TURN REST credentials (server/turn.py): their format, and a real coturn's verdict on them.

The coturn tests run Debian's ``turnserver`` on 127.0.0.1 (tests/coturn.py) and use
aioice's TURN client, the one aiortc uses, to allocate a relay with the credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from aioice import stun, turn

from avatarchat.server.ice import ice_configuration
from avatarchat.server.settings import ServerSettings
from avatarchat.server.turn import ice_servers_for_client, rest_credentials
from tests.coturn import HOST, Coturn

NOW = 1_799_996_400.0  # a fixed clock: 2027-01-15 (any value works)


def turn_settings(secret: str = "north-wind", url: str = "turn:turn.example.org:3478", **more: object) -> ServerSettings:
    return ServerSettings(turn={"urls": [url], "secret": secret, "ttl_s": 3600}, **more)


def test_username_is_the_expiry_then_the_name() -> None:
    username, _ = rest_credentials("north-wind", "alice", 3600, NOW)
    assert username == "1800000000:alice"
    assert rest_credentials("north-wind", "alice", 60, NOW + 0.2)[0] == "1799996461:alice"  # rounded up
    assert rest_credentials("north-wind", "", 3600, NOW)[0] == "1800000000"


def test_credential_is_base64_hmac_sha1_of_the_username() -> None:
    # Computed apart from Python: printf '1800000000:alice' | openssl dgst -sha1 -hmac north-wind -binary | base64
    assert rest_credentials("north-wind", "alice", 3600, NOW) == ("1800000000:alice", "R6z6rGeaBLmRaorIYOAAr4XLbwI=")
    assert rest_credentials("north-wind", "", 3600, NOW)[1] == "BLLRr0aoH9xRCUDCEtHTAkUcRdw="
    assert rest_credentials("other-secret", "alice", 3600, NOW)[1] != "R6z6rGeaBLmRaorIYOAAr4XLbwI="


@pytest.mark.parametrize(("secret", "name", "ttl", "says"), [
    ("", "alice", 60, "secret is empty"),
    ("s", "a:b", 60, "may not contain ':'"),
    ("s", "alice", 0, "must be positive"),
])
def test_bad_arguments_are_refused(secret: str, name: str, ttl: int, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        rest_credentials(secret, name, ttl, NOW)


def test_client_gets_static_servers_then_fresh_turn_credentials() -> None:
    settings = turn_settings(ice_servers=[{"urls": ["stun:stun.example.org:3478"]}])
    servers = ice_servers_for_client(settings, "5f6c442bd3d2", now=NOW)
    assert servers == [
        {"urls": ["stun:stun.example.org:3478"]},  # no username/credential keys: None is left out
        {"urls": ["turn:turn.example.org:3478"], "username": "1800000000:5f6c442bd3d2",
         "credential": rest_credentials("north-wind", "5f6c442bd3d2", 3600, NOW)[1]},
    ]
    later = ice_servers_for_client(settings, "5f6c442bd3d2", now=NOW + 10)
    assert later[1]["username"] == "1800000010:5f6c442bd3d2" and later[1]["credential"] != servers[1]["credential"]
    assert "north-wind" not in repr(servers)


def test_a_name_with_a_separator_or_odd_characters_is_made_safe() -> None:
    servers = ice_servers_for_client(turn_settings(), "bob:1800000000 <x>\n" + "y" * 100, now=NOW)
    username = servers[0]["username"]
    assert username.count(":") == 1 and username.startswith("1800000000:bob_1800000000__x__")
    assert len(username.split(":")[1]) == 64


@pytest.mark.parametrize("turn", [{}, {"urls": ["turn:t.example.org"]}, {"secret": "s"}])
def test_no_turn_entry_unless_urls_and_secret_are_both_set(turn: dict[str, object]) -> None:
    settings = ServerSettings(turn=turn, ice_servers=[{"urls": ["turn:t.example.org"], "username": "u",
                                                       "credential": "c"}])
    assert ice_servers_for_client(settings, "x") == [{"urls": ["turn:t.example.org"], "username": "u", "credential": "c"}]
    assert [s.urls for s in ice_configuration(settings).iceServers or []] == [["turn:t.example.org"]]


def test_server_agent_gets_turn_credentials_first() -> None:
    """aiortc uses only the first TURN server it is given: the managed one goes first."""
    settings = turn_settings(ice_servers=[{"urls": ["turn:static.example.org"], "username": "u", "credential": "c"}])
    servers = ice_configuration(settings, name="srv", now=NOW).iceServers or []
    assert [(s.urls, s.username) for s in servers] == [(["turn:turn.example.org:3478"], "1800000000:srv"),
                                                       (["turn:static.example.org"], "u")]
    assert servers[0].credential == rest_credentials("north-wind", "srv", 3600, NOW)[1]
    assert ice_configuration(ServerSettings()).iceServers == []  # never aiortc's default public STUN


# -- against a real coturn -------------------------------------------------------------


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with Coturn(tmp_path_factory.mktemp("coturn")) as server:
        yield server


class Peer(asyncio.DatagramProtocol):
    """A UDP endpoint that keeps what it receives, with the sender's address."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.lost = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


async def logged(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    """``check()`` on coturn's log, again until it holds or ``timeout`` passes (the log is
    written by coturn's threads, maybe a moment after the answer)."""
    deadline = time.monotonic() + timeout
    while not (ok := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return ok


async def allocate(coturn: Coturn, username: str, password: str) -> tuple[turn.TurnTransport, Peer]:
    return await turn.create_turn_endpoint(Peer, (HOST, coturn.port), username, password)


async def test_coturn_relays_with_fresh_credentials(coturn: Coturn) -> None:
    settings = turn_settings(secret=coturn.secret, url=coturn.url)
    entry = ice_servers_for_client(settings, "relay-check")[-1]
    relay, client = await allocate(coturn, entry["username"], entry["credential"])
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=(HOST, 0))
    try:
        relayed = relay.get_extra_info("sockname")
        assert relayed[0] == HOST and coturn.min_port <= relayed[1] <= coturn.max_port
        relay.sendto(b"ping", peer_transport.get_extra_info("sockname"))
        data, source = await asyncio.wait_for(peer.received.get(), 20)
        assert (data, source) == (b"ping", relayed)  # it came out of the relay
        peer_transport.sendto(b"pong", relayed)
        data, source = await asyncio.wait_for(client.received.get(), 20)
        assert (data, source) == (b"pong", peer_transport.get_extra_info("sockname"))
    finally:
        peer_transport.close()
        relay.close()  # deletes the allocation, then closes the socket
        await asyncio.wait_for(client.lost.wait(), 20)
    assert await logged(lambda: coturn.allocations(entry["username"]) == [entry["username"]]), coturn.log_tail()


@pytest.mark.parametrize("case", ["expired", "wrong secret", "tampered name"])
async def test_coturn_refuses_expired_or_forged_credentials(coturn: Coturn, case: str) -> None:
    now = time.time()
    if case == "expired":  # made two minutes ago, valid for one
        username, password = rest_credentials(coturn.secret, "late", 60, now - 120)
    elif case == "wrong secret":
        username, password = rest_credentials(coturn.secret + "x", "forger", 3600, now)
    else:  # a valid password with someone else's username
        _, password = rest_credentials(coturn.secret, "alice", 3600, now)
        username = rest_credentials(coturn.secret, "mallory", 3600, now)[0]
    with pytest.raises(stun.TransactionFailed) as refused:
        await allocate(coturn, username, password)
    assert refused.value.response.error_code == 401
    assert await logged(lambda: username in coturn.refused()), coturn.log_tail()
    assert coturn.allocations(username) == []
    assert coturn.running
