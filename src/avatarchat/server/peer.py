"""One browser (or other WebRTC client) connected to one engine session.

``PeerSession.open`` answers the client's offer (no trickle: the answer carries every
candidate). Everything that is not WebRTC (the engine conversation with its turn-taking
and cuts, the protocol messages, the client's messages, activity) is the transport-
independent ``server.client.ClientSession``; the peer adds the media and the wire:

* the client's microphone → the conversation (48 kHz mono float32);
* the conversation's replies → ``Playout`` (the engine's ``ReplySink`` here), sent by the
  tracks of ``server.tracks`` on one media clock; idle video between replies;
* the ``events`` data channel (``server.channel``: rate-limited, strictly parsed; its SCTP
  transport bounded by ``server.sctpguard``) ↔ the protocol messages;
* the connection's life → ``close()`` when it fails, closes, or the client vanishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import av
import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.session import Session
from avatarchat.engine.turntaking import TurnTaking
from avatarchat.server import protocol
from avatarchat.server.channel import ClientMessage, EventsChannel
from avatarchat.server.client import ClientSession
from avatarchat.server.echo import EchoGuard
from avatarchat.server.errors import client_message, log_error
from avatarchat.server.ice import (
    OfferError,
    check_offer,
    gather_with_loopback,
    ice_configuration,
    negotiated_codec,
    prefer_video_codec,
    wants_loopback,
)
from avatarchat.server.jitter import set_audio_buffer
from avatarchat.server.micgaps import RATE as MIC_GAPS_RATE
from avatarchat.server.micgaps import MicGaps, ask_for_mic_dtx
from avatarchat.server.opus import OpusVoice, send_from
from avatarchat.server.sctpguard import SctpGuard
from avatarchat.server.face import face_sender
from avatarchat.server.settings import AvatarOutput, ServerSettings
from avatarchat.server.tracks import (
    AvatarAudioTrack,
    AvatarVideoTrack,
    IdleFrames,
    MediaClock,
    Playout,
    first_channel,
)

__all__ = ["OfferError", "PeerSession"]

log = logging.getLogger(__name__)

#: The answer's ``a=max-message-size``, and the most SCTP reassembles of one message: twice
#: the protocol's limit, so a message a little too big still reaches the parser (its sender
#: hears why, where a browser's send() would throw), and a bigger one is dropped on the way.
SCTP_MAX_MESSAGE_BYTES = 2 * protocol.MAX_MESSAGE_BYTES


class _SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Every record carries ``session``; the log format prints it (see cli/serve.py)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


class PeerSession:
    """One client's WebRTC connection and its engine session.

    Ownership: the peer owns its RTCPeerConnection, its engine session, its tracks and every
    task it starts (the engine pump, the mic reader); ``close()`` ends all of them, awaits
    them, and calls ``on_closed`` exactly once. It is safe to call from anywhere, any
    number of times; the peer also closes itself when the connection fails or closes, when
    no mic audio arrives within ``settings.connect_timeout_s`` of the answer, or for
    ``disconnect_timeout_s`` after that (a vanished client: aiortc has no "disconnected"
    state and ICE consent takes ~30 s to fail).

    ``connected`` is True from the first mic frame on: media proves the client finished ICE,
    DTLS and SRTP, which a half-open offer never does. ``last_activity`` moves only on speech
    the VAD accepts, a transcript, or a valid ``text`` or ``interrupt`` message.
    """

    #: No mic frame for this long after the first one: the client is gone.
    disconnect_timeout_s: float = 5.0

    id: str

    def __init__(self, pipeline: Pipeline, settings: ServerSettings, metrics: Any | None,
                 on_closed: Callable[[PeerSession], None] | None,
                 clock: Callable[[], float] = time.monotonic, avatar: AvatarOutput = "video") -> None:
        self.id = uuid.uuid4().hex[:12]
        #: Who draws the avatar: the server (``video``) or the page (``client``).
        self.avatar: AvatarOutput = avatar
        self.connected = False
        self.settings = settings
        self.video_codec: str | None = None
        self.log = _SessionLog(log, {"session": self.id})
        self._pipeline = pipeline
        self._metrics = metrics
        self._on_closed = on_closed
        self._pc = RTCPeerConnection(ice_configuration(settings))
        self._clock = MediaClock()
        self._playout = Playout(self._clock)
        self._client = ClientSession(pipeline, self._playout, self._send, session_id=self.id, logger=self.log,
                                     metrics=metrics, avatar_output="params" if avatar == "client" else "frames")
        self._events = EventsChannel(settings, self._on_message, self._channel_opened, self.log, clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._tracks: list[MediaStreamTrack] = []
        self._mic_started = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._echo = EchoGuard() if settings.echo_guard else None
        self._guard: SctpGuard | None = None
        self._face_started = False
        self._mic_gaps: MicGaps | None = None  # with DTX asked of the mic (server.mic_dtx)

    # -- opening ---------------------------------------------------------------------

    @classmethod
    async def open(cls, pipeline: Pipeline, sdp: str, type_: str, settings: ServerSettings, *,
                   metrics: Any | None = None, on_closed: Callable[[PeerSession], None] | None = None,
                   clock: Callable[[], float] = time.monotonic,
                   avatar: AvatarOutput = "video") -> tuple[PeerSession, str]:
        """Answer ``sdp``: returns the peer and the answer SDP with all its candidates.

        Raises ``OfferError`` for an offer that is not SDP, lacks an audio m-line, or that
        aiortc refuses or fails to answer; nothing is left open then (no task, every handler
        context closed), and the error's text names no internals. ``clock`` times the
        message rate limit (tests pass a virtual one). Takes ~50-200 ms (session contexts,
        candidate gathering, DTLS certificate).
        """
        check_offer(sdp, type_)
        peer = cls(pipeline, settings, metrics, on_closed, clock, avatar)
        try:
            answer = await peer._answer(sdp)
        except BaseException as exc:
            await asyncio.shield(peer._teardown())
            if isinstance(exc, OfferError | asyncio.CancelledError):
                raise
            error_id = log_error(peer.log, "offer refused: %s: %s", type(exc).__name__, exc, level=logging.INFO,
                                 exc_info=False)
            raise OfferError(client_message("the offer cannot be answered", error_id)) from None
        if metrics is not None:
            metrics.session_opened()
        peer.log.info("peer opened (avatar: %s, video %s)", peer.avatar, peer.video_codec)
        return peer, answer

    async def _answer(self, sdp: str) -> str:
        await self._client.start()
        self._add_tracks()
        pc = self._pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not any(t.kind == "audio" and t.receiver.track is not None for t in pc.getTransceivers()):
            raise OfferError("the offer has no audio: the page must send the microphone")
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                set_audio_buffer(transceiver.receiver, self.settings.mic_prefetch_packets)
        if pc.sctp is not None:  # before the answer: it advertises the guard's message size
            self._guard = SctpGuard(pc.sctp, SCTP_MAX_MESSAGE_BYTES, self._events.oversize, self.log)
        await gather_with_loopback(pc, loopback=wants_loopback(sdp))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        self.video_codec = negotiated_codec(answer, "video")
        if (negotiated_codec(answer, "audio") or "").lower() == "opus":
            for sender in pc.getSenders():
                if isinstance(sender.track, AvatarAudioTrack):
                    send_from(sender, OpusVoice(sender.track, dtx=self.settings.voice_dtx))
            if self.avatar == "client":  # no video to keep in step with the voice
                self._playout.burst_s = self.settings.voice_burst_ms / 1000
            if self.settings.mic_dtx:
                self._mic_gaps = MicGaps()
                answer = ask_for_mic_dtx(answer)
        return answer

    def _add_tracks(self) -> None:
        """The avatar's tracks go in before the offer is applied: the video transceiver's
        codec preference only counts if it exists when aiortc intersects the codecs."""
        conversation = self._client.conversation
        audio = AvatarAudioTrack(self._clock, self._playout, None if self._echo is None else self._echo.played)
        self._tracks.append(audio)
        self._pc.addTrack(audio)
        if self.avatar == "client":
            return  # the page draws the avatar from the face rows (server/face.py): no video
        fps = conversation.fps or 25
        render: Callable[[float], np.ndarray] | None = None
        if conversation.fps is not None:
            clock = self._clock

            def render(t: float) -> np.ndarray:  # type: ignore[misc]
                # In the executor. Media time → the engine clock (the media clock is running
                # by then: the video track's recv started it).
                frame = conversation.idle_frame(t + clock.t0)
                assert frame is not None
                return frame

        video = AvatarVideoTrack(self._clock, self._playout, IdleFrames(render, fps), fps)
        self._tracks.append(video)
        self._pc.addTrack(video)
        video_transceiver = next(t for t in self._pc.getTransceivers() if t.sender.track is video)
        prefer_video_codec(video_transceiver, self.settings.video_codec)

    # -- closing ---------------------------------------------------------------------

    async def close(self, reason: str = "closed") -> None:
        """Stop tracks, tasks, the connection and the engine session; call ``on_closed``
        once. Idempotent: a second call waits for the first to finish."""
        if self._closed:
            if self._close_task is not None and self._close_task is not asyncio.current_task():
                await asyncio.shield(self._close_task)
            else:
                await self._done.wait()
            return
        self._closed = True
        self.log.info("peer closing: %s", reason)
        try:
            await self._farewell(reason)
            await self._teardown()
        finally:
            if self._metrics is not None:
                self._metrics.session_closed()
            self._done.set()
            if self._on_closed is not None:
                try:
                    self._on_closed(self)
                except Exception:
                    self.log.exception("on_closed callback failed")

    async def _farewell(self, reason: str) -> None:
        """Tell the client why the session ends (a session ended by the connection itself
        has no one to tell)."""
        if not reason.startswith("connection"):
            await self._events.farewell(f"the session ended: {reason}")

    async def _teardown(self) -> None:
        """Stop everything the peer started. Each step runs even if one before it failed:
        a stage task or handler context left open would outlive the peer."""
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            for track in self._tracks:
                track.stop()
            await self._pc.close()
        except Exception:
            self.log.exception("closing the connection failed")
        finally:
            await self._client.close()

    def _close_soon(self, reason: str) -> None:
        """Close from a callback or from one of the peer's own tasks (which close cancels)."""
        if not self._closed and self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self.close(reason), name=f"close-{self.id}")

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        await self._done.wait()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}-{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        self.log.info("connection %s", state)
        if state in ("failed", "closed"):
            self._close_soon(f"connection {state}")

    # -- microphone ------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self._mic_started:
            self._mic_started = True
            self._spawn(self._read_mic(track), "mic")
        else:
            # An unexpected track (a camera, a second mic) is read and dropped: aiortc
            # queues incoming frames without bound until someone reads them.
            self._spawn(self._drain(track), "drain")

    async def _read_mic(self, track: MediaStreamTrack) -> None:
        """Mic frames (48 kHz s16, usually stereo interleaved) → one channel, float32 →
        the engine, with the silences of DTX put back (``server.micgaps``). Closes the peer
        when no frame arrives in time."""
        loop = asyncio.get_running_loop()
        patience = self.settings.connect_timeout_s
        heard = loop.time()
        while True:
            gaps = self._mic_gaps  # set with the answer, which may come after this task starts
            wake = gaps.wake_at() if gaps is not None else None
            give_up = heard + patience
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # races a frame's arrival, and teardown then waited its full 5 s.
                async with asyncio.timeout_at(give_up if wake is None else min(wake, give_up)):
                    # aiortc types recv() as any frame or packet; an audio track gives AudioFrames.
                    frame = cast(av.AudioFrame, await track.recv())
            except MediaStreamError:
                return
            except TimeoutError:
                now = loop.time()
                if now < give_up:
                    assert gaps is not None
                    if (silence := gaps.fill(now)) is not None:
                        self._push_mic(silence, MIC_GAPS_RATE, now)
                    continue
                self._close_soon(f"no audio from the client for {patience:g} s")
                return
            heard, patience = loop.time(), self.disconnect_timeout_s
            self.connected = True
            samples = first_channel(frame).astype(np.float32) / 32768.0
            if gaps is not None and frame.pts is not None and frame.sample_rate == MIC_GAPS_RATE:
                samples = gaps.frame(int(frame.pts), samples, heard)
            self._push_mic(samples, frame.sample_rate, heard)

    def _push_mic(self, samples: np.ndarray, rate: int, now: float) -> None:
        if self._echo is not None:  # the avatar's own voice coming back must not barge in
            samples = self._echo.process(samples, rate, now)
        self._client.push_mic(samples, rate)

    @staticmethod
    async def _drain(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    # -- data channel ----------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self._events.attach(channel)

    def _channel_opened(self) -> None:
        self._client.report.send_state(force=True)
        if self.avatar == "client" and not self._closed and not self._face_started:
            self._face_started = True
            sender = face_sender(self._client.conversation, self._playout, self._clock, self._send)
            if sender is not None:
                self._spawn(sender.run(), "face")

    def _send(self, message: dict[str, Any]) -> None:
        self._events.send(message)

    def _on_message(self, message: ClientMessage) -> None:
        if not self._closed:  # arrived while closing: the engine session may be gone already
            self._client.on_message(message)

    # -- for tests and the app ---------------------------------------------------------

    @property
    def renders_video(self) -> bool:
        """Whether the server renders this session's avatar as video (``max_video_sessions``)."""
        return self.avatar == "video" and self._client.conversation.fps is not None

    @property
    def playout(self) -> Playout:
        return self._playout

    @property
    def last_activity(self) -> float:
        """When the user last spoke (speech the VAD accepted, a transcript) or sent a valid
        ``text`` or ``interrupt`` (monotonic seconds)."""
        return self._client.last_activity

    @property
    def session(self) -> Session:
        return self._client.conversation.session

    @property
    def turntaking(self) -> TurnTaking:
        return self._client.conversation.turntaking

    @property
    def messages_dropped(self) -> int:
        """Data-channel messages dropped over the rate limit so far."""
        return self._events.dropped

    @property
    def echo(self) -> EchoGuard | None:
        return self._echo

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState

