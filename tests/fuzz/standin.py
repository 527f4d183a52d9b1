"""The HTTP fuzz cases' peer factory: a STAND-IN for ``PeerSession`` (no WebRTC), as in
tests/test_server_http.py. The HTTP front door is under test here; the real factory is
fuzzed with SDP in test_fuzz_sdp.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any


class StandInPeer:
    """Opens for any offer that reaches it; closing calls ``on_closed`` once."""

    def __init__(self, on_closed: Callable[..., None] | None) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.last_activity = time.monotonic()
        self.closed = False
        self._on_closed = on_closed

    async def close(self, reason: str = "closed") -> None:
        if not self.closed:
            self.closed = True
            if self._on_closed is not None:
                self._on_closed(self)


class StandInFactory:
    """``peer_factory`` for ``create_app``; remembers the peers it opened."""

    def __init__(self) -> None:
        self.opened: list[StandInPeer] = []

    async def __call__(self, pipeline: Any, sdp: str, type_: str, settings: Any, *,
                       on_closed: Callable[..., None] | None = None, **_: Any) -> tuple[StandInPeer, str]:
        assert isinstance(sdp, str) and type_ == "offer"
        peer = StandInPeer(on_closed)
        self.opened.append(peer)
        return peer, "v=0 stand-in answer"

    async def close_all(self) -> None:
        for peer in self.opened:
            await peer.close("test")
