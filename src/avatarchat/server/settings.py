"""The ``server:`` section of a config: how `avatarchat serve` listens and connects peers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from avatarchat.engine.handler import HandlerOptions


class IceServer(HandlerOptions):
    """A STUN or TURN server, given to both the server's and the browser's ICE agent."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None


class BargeInSettings(HandlerOptions):
    """``server.barge_in``: the page's side of barge-in. When the user's voice takes the
    floor is the engine's business (``session.barge_in``: enabled, min_speech_ms,
    duck_volume); this is what the browser does before the server has decided.
    """

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

    def client(self, enabled: bool = True) -> dict[str, bool | int | float]:
        """What the page needs (``/api/config``'s ``barge_in``), with ``enabled`` from
        ``session.barge_in``: where voice may not cut a reply, the page does not mute one
        for it either."""
        return {"enabled": enabled, **self.model_dump(include=_CLIENT_KEYS)}


_CLIENT_KEYS = {"client_mute", "client_onset_ms", "client_grace_ms", "client_echo_ratio", "client_min_rms"}


class WebSocketSettings(HandlerOptions):
    """``server.websocket``: the ``/api/ws`` transport."""

    #: The rate of the mic PCM a client sends (told in ``hello``).
    sample_rate: Literal[8000, 16000, 24000, 48000] = 16000


class AuthSettings(HandlerOptions):
    """``server.auth``: signed, expiring access tokens (``avatarchat token``; HS256).

    Off while ``secret`` is empty. On a loopback bind that is the default; on any other bind
    ``serve`` refuses to start without a secret unless ``--no-auth`` is given."""

    #: Shared secret that signs and checks tokens: ``${AVATARCHAT_SECRET}``, 32+ characters.
    secret: str | None = None
    #: Longest lifetime ``avatarchat token --ttl`` may give a token.
    max_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)


class TurnSettings(HandlerOptions):
    """``server.turn``: a TURN server with time-limited REST credentials, made per session
    (coturn's ``use-auth-secret``: username ``expiry:name``, password HMAC-SHA1 of it), so the
    page never sees a long-lived password."""

    #: ``turn:`` or ``turns:`` URLs (aiortc silently ignores any other scheme).
    urls: list[str] = Field(default_factory=list)
    #: coturn's ``static-auth-secret``: ``${TURN_SECRET}``.
    secret: str | None = None
    #: How long the credentials a session gets stay valid.
    ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    #: Ask the page to use relayed candidates only (``iceTransportPolicy: "relay"``).
    relay_only: bool = False

    @field_validator("urls")
    @classmethod
    def _turn_scheme(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"{url[:80]!r} is not a TURN URL (turn:HOST:PORT or turns:HOST:PORT)")
        return urls


class MessageRate(HandlerOptions):
    """``server.message_rate``: a token bucket per session for data-channel messages."""

    per_s: float = Field(default=5.0, gt=0)
    burst: int = Field(default=20, ge=1)


class HttpLimits(HandlerOptions):
    """``server.http``: what one slow or idle HTTP client may hold."""

    #: A request's headers must arrive whole within this long of the connection, or of the
    #: first byte of the next request on a kept-alive connection.
    header_timeout_s: float = Field(default=10.0, gt=0)
    #: A request's body must arrive whole within this long of its headers.
    body_timeout_s: float = Field(default=10.0, gt=0)
    #: An idle kept-alive connection is closed after this long.
    keepalive_timeout_s: float = Field(default=15.0, gt=0)
    #: Open HTTP connections at once; more are closed at once.
    max_connections: int = Field(default=256, ge=1)


class ServerSettings(HandlerOptions):
    host: str = "127.0.0.1"
    port: int = Field(default=8282, ge=1, le=65535)
    #: Sessions at once; one more gets HTTP 503 with a message the page shows. 8 on the
    #: 2-core machine `bench load` measured with pages drawing the avatar: 8 connected, one
    #: asking at a time, answered in 0.84 s (docs/PERFORMANCE.md).
    max_sessions: int = Field(default=8, ge=1, le=64)
    #: Of those, sessions whose avatar the server renders and encodes as video (a browser
    #: without WebGL2, ``?avatar=video``, a WebSocket's ``video=jpeg``): each takes ~35 % of a
    #: core. One more gets HTTP 503; a page that draws the avatar itself still gets in.
    max_video_sessions: int = Field(default=2, ge=0, le=64)
    #: A session with no speech the VAD accepts and no valid user message for this long is
    #: closed (noise, pings and bad messages do not count).
    idle_timeout_s: float = Field(default=300.0, gt=0)
    #: A session whose client has not connected (no media) this long after the answer is
    #: closed, freeing its slot.
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: The longest a session may last, whatever it does.
    max_session_s: float = Field(default=1800.0, gt=0)
    #: Sessions (connecting or live) one client address may hold at once.
    max_sessions_per_client: int = Field(default=2, ge=1)
    #: Addresses of reverse proxies whose ``X-Forwarded-For`` names the real client.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: Origins (``https://example.org``) allowed to call the API besides the page's own; on a
    #: loopback bind their host names are also accepted as Host (a reverse proxy on this machine).
    allowed_origins: list[str] = Field(default_factory=list)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    message_rate: MessageRate = Field(default_factory=MessageRate)
    http: HttpLimits = Field(default_factory=HttpLimits)
    #: Empty by default: no STUN, nothing leaves the machine (LAN and loopback work).
    ice_servers: list[IceServer] = Field(default_factory=list)
    video_codec: Literal["vp8", "h264"] = "vp8"
    #: Who draws the avatar. ``client``: the page, with WebGL, from the face's parameters the
    #: server sends (~1 % of a core per session, where a server-rendered video costs ~40 %);
    #: ``video``: the server renders and encodes it; ``auto``: what each page asks for (the
    #: page asks for ``client`` where WebGL works). Without an avatar stage it changes nothing.
    avatar_mode: Literal["auto", "client", "video"] = "auto"
    #: HTTPS: a certificate and key (PEM), or `self_signed: true` to generate one.
    certfile: str | None = None
    keyfile: str | None = None
    self_signed: bool = False
    #: The mic's receive buffer (server/jitter.py): 0 releases each packet as soon as those
    #: before it are out; N > 0 is aiortc's own buffer, releasing a packet once N newer ones
    #: arrived (aiortc: 4, 80 ms of delay on all the user says; it also falls 280 ms behind
    #: for good after one lost packet).
    mic_prefetch_packets: int = Field(default=0, ge=0, le=8)
    #: Between replies the avatar's voice sends one Opus DTX packet every 200 ms instead of
    #: 50 silent packets a second (server/opus.py): most of what an idle session costs.
    voice_dtx: bool = True
    #: Where the page draws the avatar: a reply's first this many ms of voice go out at once
    #: when the voice was idle (``Playout.burst_s``), so the browser's jitter buffer holds a
    #: cushion from the first word. bench e2e, against 0: concealed audio 0.08 / 0.40 % and
    #: 0.07 / 0.54 % (120 and 160 ms), sent -> heard 11-12 ms sooner (median), 8-52 (p90).
    #: 0: sent in real time.
    voice_burst_ms: int = Field(default=120, ge=0, le=200)
    #: Ask the browser for Opus DTX on the microphone: ~5 packets a second instead of 50
    #: while the user says nothing; the server puts the silence back on the wall clock, so
    #: turns end on time (server/micgaps.py).
    mic_dtx: bool = True
    #: Largest HTTP request body accepted (the SDP offer), bytes.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    barge_in: BargeInSettings = Field(default_factory=BargeInSettings)
    websocket: WebSocketSettings = Field(default_factory=lambda: WebSocketSettings())
    #: Remove the avatar's own voice from the mic before the VAD hears it (clients without
    #: echo cancellation): see server/echo.py. Off by default: through Opus both ways it
    #: removes only ~7 dB, and the VAD still hears the rest (tests/test_peer_bargein.py, xfail).
    echo_guard: bool = False


AvatarOutput = Literal["client", "video"]


def avatar_output(mode: Literal["auto", "client", "video"], asked: AvatarOutput) -> AvatarOutput:
    """What a connection gets: ``asked`` where ``server.avatar_mode`` is ``auto``, else the
    mode the server is set to."""
    return asked if mode == "auto" else mode
