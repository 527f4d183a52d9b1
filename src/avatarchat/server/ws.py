"""One WebSocket client (``GET /api/ws``): the conversation over a single TCP connection,
for clients whose UDP is blocked and for simple programmatic clients.

The protocol (docs/PROTOCOL.md): the server's first message is ``hello`` (session id, the
mic's ``sample_rate``, the reply's ``reply_sample_rate``, the video mode, the avatar's
``fps``). Up: text frames are the data channel's messages (``text``, ``interrupt``,
``ping``), through the same rate limit and strict parser (``server.channel.MessageGate``);
binary frames are mic audio, 16-bit little-endian mono PCM at ``sample_rate``, a whole
number of samples and at most ``MAX_MIC_S`` a message. Down: the data channel's messages
as text, plus ``frame`` (``video=jpeg``: the avatar as base64 JPEG at its fps, idle frames
too) or ``motion`` (``video=motion``: the mouth curves of a reply); reply audio as binary
frames of 20 ms, 16-bit LE mono PCM at ``reply_sample_rate``, sent in real time while a
reply plays and not at all between replies, so a cut is instant and what was sent is what
was heard.

``WsSession`` is the transport: it owns the socket's three tasks (the writer, the audio
sender, the video sender) and its sink; everything else a client is served (the
conversation, the messages about its turns, the client's messages, activity) is the
``server.client.ClientSession`` it wraps, as WebRTC's peer does. ``close()`` ends them all
and calls ``on_closed`` once.
The route (``server.app``) checks auth and Origin and reserves the slot
(``SessionManager.open_session``) before the upgrade, then reads the socket in
``serve()`` until it closes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiohttp import WSMsgType, web

from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.events import AvatarFrame, AvatarMotion, AvatarPose, Event
from avatarchat.engine.pipeline import Pipeline
from avatarchat.server import protocol
from avatarchat.server.channel import ClientMessage, MessageGate
from avatarchat.server.client import ClientSession
from avatarchat.server.face import face_sender
from avatarchat.server.sessions import session_log
from avatarchat.server.settings import ServerSettings
from avatarchat.server.tracks import FRAME_S, MAX_LAG_S, IdleFrames, MediaClock, Playout

log = logging.getLogger(__name__)

#: The most mic audio one binary message may carry.
MAX_MIC_S = 1.0
#: Mic audio a client may send ahead of real time (a burst), and how fast the allowance
#: refills (a little over real time: a client's clock and the server's drift apart).
MIC_BURST_S = 3.0
MIC_REFILL = 1.25
#: The reply audio's rate when the voice declares none.
REPLY_RATE = 24000


def max_frame_bytes(mic_rate: int) -> int:
    """aiohttp closes the connection (code 1009) on a message bigger than this: twice the
    largest valid one, so a message a little too big still gets an ``error`` and is dropped."""
    return 2 * max(round(MAX_MIC_S * mic_rate) * 2, protocol.MAX_MESSAGE_BYTES)

#: Pings every this many seconds; a client that answers none for half that is gone.
HEARTBEAT_S = 10.0
#: Video frames are dropped, not queued, while this much is waiting to be written (audio
#: and messages never are).
VIDEO_BACKLOG_BYTES = 128 * 1024
#: A client that reads nothing while this much waits to be written is closed.
MAX_BACKLOG_BYTES = 4 * 1024 * 1024
#: mjpeg's quantiser (2 best .. 31 worst): 10 gives ~20 KiB a 512x512 avatar frame.
JPEG_QSCALE = 10
#: How long ``close`` gives the farewell message to leave before the socket closes.
FAREWELL_S = 0.5


class PcmError(ValueError):
    """A binary message that is not valid mic audio; the text is safe to send back."""


def parse_pcm(data: bytes, rate: int) -> np.ndarray:
    """Mic audio from one binary message: s16le mono → float32 in [-1, 1]. Raises
    ``PcmError`` for an odd byte count or more than ``MAX_MIC_S`` of audio."""
    limit = round(MAX_MIC_S * rate) * 2
    if len(data) > limit:
        raise PcmError(f"binary message of {len(data)} bytes is too big: at most {MAX_MIC_S:g} s of "
                       f"16-bit PCM at {rate} Hz ({limit} bytes) per message")
    if len(data) % 2:
        raise PcmError(f"binary message of {len(data)} bytes is not whole 16-bit samples")
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


class MicAllowance:
    """Seconds of mic audio a client may still send: ``MIC_BURST_S``, refilled at
    ``MIC_REFILL`` seconds a second. Audio over it is dropped (it would make the VAD and
    ASR work faster than real time for one client)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._left = MIC_BURST_S
        self._at = clock.now()
        self.told = False

    def take(self, seconds: float) -> bool:
        now = self._clock.now()
        self._left = min(MIC_BURST_S, self._left + max(0.0, now - self._at) * MIC_REFILL)
        self._at = now
        if seconds > self._left:
            return False
        self._left -= seconds
        self.told = False
        return True


class JpegEncoder:
    """RGB frames → JPEG bytes with PyAV's mjpeg encoder (blocking: run it in an executor;
    one frame at a time). The codec context is kept while the frame size stays."""

    def __init__(self, qscale: int = JPEG_QSCALE) -> None:
        self._qscale = qscale
        self._ctx: Any = None
        self._size: tuple[int, int] | None = None

    def encode(self, image: np.ndarray) -> bytes:
        h, w = image.shape[:2]
        if self._size != (w, h):
            ctx = av.CodecContext.create("mjpeg", "w")
            ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuvj420p"
            ctx.time_base = Fraction(1, 25)
            ctx.options = {"qmin": str(self._qscale), "qmax": str(self._qscale)}
            self._ctx, self._size = ctx, (w, h)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        packets = self._ctx.encode(frame.reformat(format="yuvj420p", threads=1))
        return b"".join(bytes(p) for p in packets)


class WsPlayout(Playout):
    """The WebSocket's reply sink: a ``Playout`` at the reply's rate that wakes the sender
    when a reply arrives (it sleeps between replies)."""

    def __init__(self, clock: MediaClock, rate: int) -> None:
        super().__init__(clock, rate=rate)

    def add_frame(self, frame: AvatarFrame | AvatarPose) -> None:
        super().add_frame(frame)
        self.arrived.set()


class WsSession:
    """One WebSocket client and its conversation; see the module docstring.

    ``connected`` is True from the first mic audio or valid message on (until then
    ``connect_timeout_s`` applies); ``last_activity`` moves only on speech the VAD accepts,
    a transcript, or a valid ``text`` or ``interrupt`` message.
    """

    id: str

    def __init__(self, pipeline: Pipeline, settings: ServerSettings, video: protocol.VideoMode,
                 metrics: Any | None, on_closed: Callable[[WsSession], None] | None, *,
                 clock: Clock = REAL_CLOCK, rate_clock: Callable[[], float] = time.monotonic) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.settings = settings
        self.video = video
        self.connected = False
        self.log = session_log(log, self.id)
        self.mic_rate = settings.websocket.sample_rate
        self.ws = web.WebSocketResponse(max_msg_size=max_frame_bytes(self.mic_rate), heartbeat=HEARTBEAT_S,
                                        compress=False)
        self._metrics = metrics
        self._on_closed = on_closed
        self._media = MediaClock(clock)
        self.reply_rate = pipeline.reply_sample_rate or REPLY_RATE
        self.playout = WsPlayout(self._media, self.reply_rate)
        self.client = ClientSession(pipeline, self.playout, self.send, session_id=self.id, logger=self.log,
                                    metrics=metrics, clock=clock,
                                    on_event=self._motion if video == "motion" else None,
                                    avatar_output="params" if video == "params" else "frames")
        self.conversation = self.client.conversation
        self._gate = MessageGate(settings, self._on_message, self.send, self.log, rate_clock)
        self._mic = MicAllowance(clock)
        self._outbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._queued_bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._transport: asyncio.Transport | None = None
        self._closing = False  # close() has begun
        self._closed = False  # nothing more is sent
        self._close_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        #: Video frames dropped because the socket was backed up; frames and bytes sent.
        self.video_dropped = 0
        self.video_sent = 0
        self.video_bytes = 0

    @property
    def last_activity(self) -> float:
        """When the user was last there (``ClientSession.last_activity``)."""
        return self.client.last_activity

    # -- opening ---------------------------------------------------------------------

    @classmethod
    async def open(cls, request: web.Request, pipeline: Pipeline, settings: ServerSettings,
                   video: protocol.VideoMode, *, metrics: Any | None = None,
                   on_closed: Callable[[WsSession], None] | None = None, clock: Clock = REAL_CLOCK) -> WsSession:
        """Start the conversation, upgrade ``request``, send ``hello`` and the state. On
        any failure nothing is left open (no task, the conversation closed) and
        ``on_closed`` has been called."""
        session = cls(pipeline, settings, video, metrics, on_closed, clock=clock)
        try:
            await session.client.start()
            session._transport = request.transport
            await session.ws.prepare(request)
        except BaseException:
            await asyncio.shield(session.close("the upgrade failed"))
            raise
        if metrics is not None:
            metrics.session_opened()
        fps = session.conversation.fps
        early = [session._outbox.get_nowait() for _ in range(session._outbox.qsize())]
        session.send(protocol.hello(session.id, session.mic_rate, session.reply_rate, video, fps))
        for item in early:  # anything said while starting goes after the hello
            session._outbox.put_nowait(item)
        session.client.report.send_state(force=True)
        session._spawn(session._write(), "ws-write")
        session._spawn(session._send_audio(), "ws-audio")
        if video == "jpeg" and fps is not None:
            session._spawn(session._send_video(fps), "ws-video")
        face = face_sender(session.conversation, session.playout, session._media, session.send)
        if video == "params" and face is not None:
            session._spawn(face.run(), "ws-face")
        session.log.info("websocket opened (video %s)", video)
        return session

    # -- reading (the route's task) ----------------------------------------------------

    async def serve(self) -> None:
        """Read the client's messages until the socket closes, then close the session."""
        reason = "connection closed by the client"
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self._gate.receive(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._receive_audio(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    reason = f"connection failed: {type(self.ws.exception()).__name__}"
                    break
        finally:
            await self.close(reason)

    def _receive_audio(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            samples = parse_pcm(data, self.mic_rate)
        except PcmError as exc:
            self._gate.refuse(str(exc))
            return
        if not len(samples):
            return
        if not self._mic.take(len(samples) / self.mic_rate):
            if not self._mic.told:
                self._mic.told = True
                self.send(protocol.error(f"mic audio faster than real time: more than {MIC_BURST_S:g} s ahead "
                                         "was dropped"))
            return
        # Media proves a client (a typed message does too: a text-only client is one).
        self.connected = True
        self.client.push_mic(samples, self.mic_rate)

    def _on_message(self, message: ClientMessage) -> None:
        """A valid client message (``MessageGate`` refused the rest)."""
        if self._closed:
            return
        self.connected = True
        self.client.on_message(message)

    def _motion(self, event: Event) -> None:
        if isinstance(event, AvatarMotion):
            self.send(protocol.motion(event.turn, event.times, event.channels, event.values, event.visemes))

    # -- writing ---------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Queue a protocol message for the client (never blocks, never raises)."""
        text = protocol.encode_or_skip(message, self.log)
        if text is not None:
            self._queue(text)

    @property
    def renders_video(self) -> bool:
        """Whether the server renders this session's avatar as video (``max_video_sessions``)."""
        return self.video == "jpeg" and self.conversation.fps is not None

    def _queue(self, item: str | bytes) -> None:
        if self._closed:
            return
        self._outbox.put_nowait(item)
        self._queued_bytes += len(item)
        if self._queued_bytes > MAX_BACKLOG_BYTES:
            self._close_soon(f"the client read nothing while {MAX_BACKLOG_BYTES // 2**20} MiB waited")

    @property
    def backlog(self) -> int:
        """Bytes queued or in the socket's write buffer, not yet sent."""
        transport = self._transport
        buffered = transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0
        return self._queued_bytes + buffered

    async def _write(self) -> None:
        """The one task that writes to the socket, in order."""
        while True:
            item = await self._outbox.get()
            self._queued_bytes -= len(item)
            try:
                if isinstance(item, bytes):
                    await self.ws.send_bytes(item)
                else:
                    await self.ws.send_str(item)
            except (ConnectionError, RuntimeError) as exc:  # the socket is closing
                self._close_soon(f"connection lost ({type(exc).__name__})")
                return

    async def _send_audio(self) -> None:
        """Reply audio in 20 ms frames on the media clock while a reply plays. Frames are
        never skipped: after a stall they go out back to back (TCP keeps them all)."""
        playout, media = self.playout, self._media
        n = 0
        last = -2  # the last frame index sent
        while True:
            while not playout.busy:
                playout.arrived.clear()
                await playout.arrived.wait()
                n = max(n, math.floor(media.now() / FRAME_S))  # back from idle: now
            await media.sleep_until(n * FRAME_S)
            sounding = playout.sounding(n)
            pcm = playout.audio_frame(n)  # before its start: silence, not sent
            if sounding:
                if self.video == "params" and last != n - 1:  # where a page drawing the face is
                    self.send(protocol.audio_at(n * FRAME_S))
                self._queue(pcm.astype("<i2").tobytes())
                last = n
            n += 1

    async def _send_video(self, fps: int) -> None:
        """The avatar at ``fps`` as JPEG: reply frames from the playout, idle frames
        between replies (rendered ahead in the executor). A frame is dropped, not sent
        late, while the socket is backed up or the sender runs ``MAX_LAG_S`` behind."""
        media, loop = self._media, asyncio.get_running_loop()
        t0 = media.start()

        def render(t: float) -> np.ndarray:
            image = self.conversation.idle_frame(t0 + t)  # in the executor
            return image if image is not None else np.zeros((16, 16, 3), np.uint8)

        idle, encoder = IdleFrames(render, fps), JpegEncoder()
        k = 0
        try:
            while True:
                k = max(k, math.floor((media.now() - MAX_LAG_S) * fps))
                t = k / fps
                await media.sleep_until(t)
                image = self.playout.video_frame(t)
                if image is None:
                    image = await idle.get(k)
                else:
                    idle.discard()
                k += 1
                if self.backlog > VIDEO_BACKLOG_BYTES:
                    self.video_dropped += 1
                    continue
                jpeg = await loop.run_in_executor(None, encoder.encode, image)
                self.video_sent += 1
                self.video_bytes += len(jpeg)
                self.send(protocol.frame(t, base64.b64encode(jpeg).decode("ascii")))
        finally:
            idle.close()  # its render ahead must not outlive the sender

    # -- closing ---------------------------------------------------------------------

    async def close(self, reason: str = "closed") -> None:
        """Tell the client why (unless it left), close the socket, stop the tasks and the
        conversation, call ``on_closed`` once. Idempotent; safe from any task."""
        if self._closing:
            if self._close_task is not None and self._close_task is not asyncio.current_task():
                await asyncio.shield(self._close_task)
            else:
                await self._done.wait()
            return
        self._closing = True
        self.log.info("websocket closing: %s", reason)
        try:
            if not reason.startswith("connection") and not self.ws.closed and self.ws.prepared:
                self.send(protocol.error(f"the session ended: {reason}"))
                await self._drain(FAREWELL_S)
            self._closed = True
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.ws.prepared and not self.ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(), FAREWELL_S)
        finally:
            self._closed = True
            await self.client.close()
            if self._metrics is not None and self.ws.prepared:
                self._metrics.session_closed()
            self._done.set()
            if self._on_closed is not None:
                try:
                    self._on_closed(self)
                except Exception:
                    self.log.exception("on_closed callback failed")

    async def _drain(self, timeout: float) -> None:
        """Wait (bounded) until what is queued has been written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queued_bytes and loop.time() < deadline and not self._outbox.empty():
            await asyncio.sleep(0.01)

    def _close_soon(self, reason: str) -> None:
        """Close from one of the session's own tasks (which close cancels) or a callback."""
        if not self._closing and self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self.close(reason), name=f"ws-close-{self.id}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}-{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        await self._done.wait()
