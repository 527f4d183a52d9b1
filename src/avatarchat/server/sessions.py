"""The sessions a server holds: capacity, per-client caps, time limits and shutdown.

``SessionManager`` opens sessions of every transport: WebRTC peers through a factory
(``PeerSession.open`` in the server, ``open``), WebSocket sessions (``server.ws``) through
``open_session``, against the same limits. It keeps
at most ``max_sessions`` open or opening (and ``max_sessions_per_client`` per client
address), forgets a peer when it reports itself closed, and closes all on shutdown. From one
asyncio task it closes, each at its own deadline, a peer that has not connected within
``connect_timeout_s`` of its answer, one idle longer than ``idle_timeout_s`` (idle: no
speech the VAD accepted and no valid user message; the peer keeps ``last_activity``), and
one older than ``max_session_s``. So a slot taken by an offer that never completes is free
again ``connect_timeout_s`` later, and no client keeps a slot for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from avatarchat.server.metrics import Metrics
from avatarchat.server.settings import ServerSettings

log = logging.getLogger(__name__)

#: How long shutdown waits for peers to close before forgetting them anyway.
CLOSE_TIMEOUT_S = 5.0


class Peer(Protocol):
    """What the manager needs of a peer session (``avatarchat.server.peer.PeerSession``).

    A peer may also have ``connected: bool`` (its client's media arrived); until it is True
    the connect deadline applies. A peer without the attribute counts as connected. One with
    ``renders_video`` true counts against ``max_video_sessions``.
    """

    id: str

    @property
    def last_activity(self) -> float:
        """The clock's time of the last speech the VAD accepted or valid user message."""

    async def close(self, reason: str = "closed") -> None: ...


#: ``(pipeline, sdp, type_, settings, *, metrics, on_closed) -> (peer, answer_sdp)``
PeerFactory = Callable[..., Awaitable[tuple[Any, str]]]
#: The session ``open_session`` opens, and what it returns besides (a WebRTC peer's answer SDP).
S = TypeVar("S", bound=Peer)
R = TypeVar("R")
#: ``(on_closed) -> (session, extra)``: opens one session of any transport, which calls
#: ``on_closed(session)`` once when it closes (possibly before this returns).
Opener = Callable[[Callable[[Any], None]], Awaitable[tuple[S, R]]]


class ServerFull(Exception):
    """Every session slot is taken; the text is safe to show to the user."""


class ShuttingDown(Exception):
    """The server is closing and takes no new sessions."""


class ClientLimit(Exception):
    """This client address already holds ``max_sessions_per_client`` sessions (connecting or
    live); the text is safe to show to the user."""


def session_log(logger: logging.Logger, session_id: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records carry ``session`` (shown by the server's log format)."""
    return logging.LoggerAdapter(logger, {"session": session_id})


class SessionManager:
    """Open peers within capacity and close them when idle or at shutdown.

    Promises: at most ``settings.max_sessions`` peers are open or being opened at any time;
    after ``close_all`` returns no peer is open and the manager has no task left running.
    The peers count themselves in ``metrics`` (opened, closed, turns, errors): the manager
    only hands ``metrics`` to the factory.
    """

    def __init__(self, settings: ServerSettings, peer_factory: PeerFactory, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._factory = peer_factory
        self._clock = clock
        self._peers: dict[str, Peer] = {}
        self._opening = 0
        self._video_opening = 0  # of those opening, the ones that will render video
        self._clients: dict[str, int] = {}  # client address -> sessions opening or open
        self._client_of: dict[str, str] = {}  # peer id -> client address
        self._opened_at: dict[str, float] = {}  # peer id -> the clock when it was answered
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._idle_task: asyncio.Task[None] | None = None
        self._closing = False

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def held_by(self, client: str) -> int:
        """Sessions (being opened or open) that ``client`` holds now."""
        return self._clients.get(client, 0)

    def rendering_video(self) -> int:
        """Sessions open or opening whose avatar the server renders as video."""
        return sum(1 for p in self._peers.values() if getattr(p, "renders_video", False)) + self._video_opening

    async def open(self, pipeline: Any, sdp: str, type_: str, *, client: str = "",
                   avatar: str = "video", video: bool = False) -> tuple[Peer, str]:
        """Open a WebRTC peer for an SDP offer from ``client`` (its address) and return it
        with its answer, through the factory: ``open_session`` with its limits. ``avatar``
        (``client`` or ``video``) is who draws the avatar; a factory is only told when it
        is not the default. ``video``: the session will render video (``max_video_sessions``)."""
        extra = {} if avatar == "video" else {"avatar": avatar}

        def opener(on_closed: Callable[[Any], None]) -> Awaitable[tuple[Any, str]]:
            return self._factory(pipeline, sdp, type_, self.settings, metrics=self.metrics, on_closed=on_closed,
                                 **extra)

        return await self.open_session(opener, client=client, video=video)

    async def open_session(self, opener: Opener[S, R], *, client: str = "", video: bool = False) -> tuple[S, R]:
        """Open one session of any transport with ``opener`` for ``client`` (its address)
        and return it with what ``opener`` returned besides it.

        An empty ``client`` (unknown, e.g. a test calling the manager directly) has no
        per-client cap. Raises ``ClientLimit`` when ``client`` already holds ``max_sessions_per_client``
        sessions, ``ServerFull`` when no slot is free, ``ShuttingDown`` after ``close_all``, and
        whatever ``opener`` raises (``OfferError`` for a bad offer) with the slot freed.
        """
        async with self._lock:
            # Check and reserve together. The negotiation itself runs outside the lock: ICE
            # gathering with STUN/TURN can take seconds and must not hold up other offers.
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            per_client = self.settings.max_sessions_per_client
            if client and self.held_by(client) >= per_client:
                raise ClientLimit(f"this address already holds {per_client} session(s); close one and try again")
            n, cap = len(self._peers) + self._opening, self.settings.max_sessions
            if n >= cap:
                raise ServerFull(f"the server is full: {cap} of {cap} sessions are in use; try again later")
            video_cap = self.settings.max_video_sessions
            if video and self.rendering_video() >= video_cap:
                raise ServerFull(f"the server renders video for {video_cap} session(s) already "
                                 "(server.max_video_sessions); a browser that draws the avatar itself "
                                 "(WebGL2) can still join")
            self._opening += 1
            self._video_opening += video
            self._clients[client] = self.held_by(client) + 1
        try:
            return await self._open(opener, client)
        except BaseException:
            self._release(client)
            raise
        finally:
            self._video_opening -= video

    def _release(self, client: str) -> None:
        left = self.held_by(client) - 1
        if left > 0:
            self._clients[client] = left
        else:
            self._clients.pop(client, None)

    async def _open(self, opener: Opener[S, R], client: str) -> tuple[S, R]:
        holder: dict[str, Any] = {"peer": None, "closed": False}

        def on_closed(*_: object) -> None:
            # Called by the peer once, possibly before `open` returns it (a failed start).
            holder["closed"] = True
            if holder["peer"] is not None:
                self._forget(holder["peer"])

        try:
            peer, extra = await opener(on_closed)
        finally:
            self._opening -= 1
        if self._closing:
            await peer.close("server stopping")
            raise ShuttingDown("the server is shutting down")
        holder["peer"] = peer
        if holder["closed"]:
            self._release(client)
        else:
            self._peers[peer.id] = peer
            self._client_of[peer.id] = client
            self._opened_at[peer.id] = self._clock()
            session_log(log, peer.id).info("session opened (%d of %d)", len(self._peers), self.settings.max_sessions)
            self._ensure_idle_task()
            self._wake.set()
        return peer, extra

    def _forget(self, peer: Peer) -> None:
        if self._peers.get(peer.id) is peer:
            del self._peers[peer.id]
            self._opened_at.pop(peer.id, None)
            self._release(self._client_of.pop(peer.id, ""))
            session_log(log, peer.id).info("session closed (%d left)", len(self._peers))
            self._wake.set()

    async def _close(self, peer: Peer, reason: str) -> None:
        try:
            await peer.close(reason)
        except Exception:
            session_log(log, peer.id).exception("closing the session failed")
        # A peer that failed to report itself closed must not be retried forever.
        self._forget(peer)

    async def close_all(self, reason: str = "server stopping") -> int:
        """Refuse new sessions, close every open one (waiting up to ``CLOSE_TIMEOUT_S``), stop
        the idle task. Returns how many sessions were open. Safe to call more than once."""
        self._closing = True
        task, self._idle_task = self._idle_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        peers = self.peers
        if peers:
            tasks = [asyncio.create_task(self._close(p, reason), name=f"close-{p.id}") for p in peers]
            # asyncio.wait, not wait_for: a peer that ignores cancellation must not hold the
            # shutdown hostage (wait_for waits for the cancelled close to finish).
            _, late = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            if late:
                log.warning("%d session(s) did not close within %.0f s", len(late), CLOSE_TIMEOUT_S)
                for t in late:
                    t.cancel()
                await asyncio.wait(late, timeout=1.0)
            for p in self.peers:
                self._forget(p)
        return len(peers)

    # -- deadlines ---------------------------------------------------------------------

    def deadline(self, peer: Peer) -> tuple[float, str]:
        """When ``peer`` is to be closed (on the manager's clock) if nothing changes, and why."""
        st = self.settings
        opened = self._opened_at.get(peer.id, peer.last_activity)
        due = [(peer.last_activity + st.idle_timeout_s, "idle"),
               (opened + st.max_session_s, f"the {st.max_session_s:g} s session limit was reached")]
        if not getattr(peer, "connected", True):
            due.append((opened + st.connect_timeout_s, f"not connected within {st.connect_timeout_s:g} s"))
        return min(due)

    def recheck(self) -> None:
        """Look at every deadline again now (a test's virtual clock moved; a peer connected)."""
        self._wake.set()

    def _ensure_idle_task(self) -> None:
        if self._idle_task is None and not self._closing:
            self._idle_task = asyncio.create_task(self._idle_loop(), name="avatarchat-idle-sessions")

    async def _idle_loop(self) -> None:
        """Sleep until the earliest deadline (or a change in sessions), then close the peers
        past theirs. Activity moves a deadline later without waking this task; it is re-read
        on waking, so an active peer only costs an early wake-up."""
        while True:
            self._wake.clear()
            now = self._clock()
            due = {p: self.deadline(p) for p in self._peers.values()}
            expired = [(p, why) for p, (at, why) in due.items() if now >= at]
            if expired:
                for p, why in expired:
                    session_log(log, p.id).info("closing: %s", why)
                await asyncio.gather(*(self._close(p, why) for p, why in expired))
                continue
            if not due:
                await self._wake.wait()
                continue
            nearest = min(at for at, _ in due.values())
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel that
            # lands as the event is set, and close_all would wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, nearest - now) + 0.01):
                    await self._wake.wait()
