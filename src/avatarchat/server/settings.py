"""The ``server:`` section of a config: how `avatarchat serve` listens and connects peers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from avatarchat.engine.handler import HandlerOptions


class IceServer(HandlerOptions):
    """A STUN or TURN server, given to both the server's and the browser's ICE agent."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None


class BargeInSettings(HandlerOptions):
    """``server.barge_in``: the user's voice taking the floor from the avatar's reply."""

    enabled: bool = True
    #: Speech must last this long from its onset to stop the reply (shorter: a cough, a
    #: click, an "mm-hm"); a transcript with real words stops it sooner.
    min_speech_ms: int = Field(default=300, ge=0, le=5000)
    #: Reply volume while a possible barge-in is weighed (0..1).
    duck_volume: float = Field(default=0.2, ge=0.0, le=1.0)
    #: Remove the avatar's own voice from the mic before the VAD hears it (clients without
    #: echo cancellation): see server/echo.py. Off by default: through Opus both ways it
    #: removes only ~7 dB, and the VAD still hears the rest (tests/test_peer_bargein.py, xfail).
    echo_guard: bool = False
    #: The page mutes the avatar itself the moment it hears the user start to speak over a
    #: reply (web/bargein.js), before this server has even received the speech; it keeps the
    #: reply muted once the server cuts it, or fades it back up after ``client_grace_ms``.
    #: Sent to the page by ``GET /api/config``.
    client_mute: bool = True
    #: Speech-level energy the page needs in the mic before it mutes (a click is shorter).
    client_onset_ms: int = Field(default=50, ge=10, le=500)
    #: How long the page keeps the reply muted waiting for the server to cut it (while the
    #: user goes on speaking, up to three times as long: a busy server cuts late).
    client_grace_ms: int = Field(default=800, ge=100, le=5000)
    #: Echo-aware double-talk rule: the mic must also exceed this fraction of the avatar's
    #: loudest recent level, so its own voice leaking past echo cancellation is not the
    #: user (0: off; raise it for loud speakers or weak echo cancellation).
    client_echo_ratio: float = Field(default=0.15, ge=0.0, le=4.0)
    #: The quietest mic RMS (0..1, after the browser's processing) that may count as speech.
    client_min_rms: float = Field(default=0.01, gt=0.0, le=1.0)

    def client(self) -> dict[str, bool | int | float]:
        """What the page needs (``/api/config``'s ``barge_in``). ``enabled`` comes along: where
        voice may not cut a reply, the page does not mute one for it either."""
        return {"enabled": self.enabled, **self.model_dump(include=_CLIENT_KEYS)}


_CLIENT_KEYS = {"client_mute", "client_onset_ms", "client_grace_ms", "client_echo_ratio", "client_min_rms"}


class ServerSettings(HandlerOptions):
    host: str = "127.0.0.1"
    port: int = Field(default=8282, ge=1, le=65535)
    #: Sessions at once; one more gets HTTP 503 with a message the page shows.
    max_sessions: int = Field(default=2, ge=1, le=64)
    #: A session with no audio, text or data-channel message for this long is closed.
    idle_timeout_s: float = Field(default=300.0, gt=0)
    #: Empty by default: no STUN, nothing leaves the machine (LAN and loopback work).
    ice_servers: list[IceServer] = Field(default_factory=list)
    video_codec: Literal["vp8", "h264"] = "vp8"
    #: HTTPS: a certificate and key (PEM), or `self_signed: true` to generate one.
    certfile: str | None = None
    keyfile: str | None = None
    self_signed: bool = False
    #: The mic's receive buffer releases a packet once this many newer ones arrived. aiortc
    #: uses 4 (80 ms of delay on all the user says); the order is kept either way.
    mic_prefetch_packets: int = Field(default=1, ge=1, le=8)
    #: Largest HTTP request body accepted (the SDP offer), bytes.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    barge_in: BargeInSettings = Field(default_factory=BargeInSettings)
