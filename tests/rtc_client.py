"""A Python aiortc client for tests: a scripted microphone, the ``events`` data channel,
and counters on the avatar's video and audio.

It speaks the documented protocol only, so the same client works against
``PeerSession.open`` directly and against the HTTP app::

    async def offer_fn(sdp: str, type_: str) -> str:   # returns the answer SDP
        ...
    client = RtcTestClient()
    await client.connect(offer_fn)
    client.speak(load_audio("question.wav", 48000))
    msg = await client.wait_message(lambda m: m["type"] == "transcript")
    await client.close()

Loopback: the offer is gathered with a 127.0.0.1 candidate, and with ``loopback_only``
(the default) every other candidate is removed from it, so the test exercises the path of a
machine whose only interface is ``lo`` and no packet is addressed to anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatarchat.audio.io import load_audio
from avatarchat.bench.load_client import send_dtx
from avatarchat.server.ice import gather_with_loopback, ice_gatherers, is_loopback
from avatarchat.server.tracks import first_channel

OfferFn = Callable[[str, str], Awaitable[str]]
RATE = 48000
FRAME = 960


class ScriptedMic(MediaStreamTrack):
    """A microphone that plays queued audio in real time (20 ms frames), then silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, np.float32)
        self._t0: float | None = None
        self._n = 0
        self._echo_gain: float | None = None
        self._echo = np.zeros(0, np.float32)
        #: Digitally silent frames in a row, the newest included (for ``send_dtx``).
        self.silent_frames = 0

    def start_echo(self, gain_db: float, delay_s: float) -> None:
        """From now on, mix what ``hear`` is given into what the mic sends, ``gain_db``
        louder and ``delay_s`` later: a speaker heard by the mic, with no echo cancellation.
        Like a sound card, it plays on a steady clock: the delay grows only if received
        audio comes later than it (an underrun), and jitter below ``delay_s`` is absorbed."""
        self._echo_gain = 10 ** (gain_db / 20)
        self._echo = np.zeros(round(delay_s * RATE), np.float32)

    def hear(self, samples: np.ndarray) -> None:
        """Audio the client's speaker played (mono float32 48 kHz): echoed if echo is on."""
        if self._echo_gain is not None:
            self._echo = np.concatenate([self._echo, samples * self._echo_gain])

    def play(self, samples: np.ndarray) -> float:
        """Queue mono float32 48 kHz samples after what is queued; returns their seconds."""
        self._queue = np.concatenate([self._queue, np.asarray(samples, np.float32).reshape(-1)])
        return len(samples) / RATE

    @property
    def busy(self) -> bool:
        return len(self._queue) > 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        delay = self._t0 + self._n * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk, self._queue = self._queue[:FRAME], self._queue[FRAME:]
        mix = np.zeros(FRAME, np.float32)
        mix[: len(chunk)] = chunk
        echo, self._echo = self._echo[:FRAME], self._echo[FRAME:]
        mix[: len(echo)] += echo
        pcm = (np.clip(mix, -1, 1) * 32767).astype(np.int16)
        self.silent_frames = 0 if pcm.any() else self.silent_frames + 1
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._n * FRAME, Fraction(1, RATE)
        self._n += 1
        return frame


def strip_non_loopback(sdp: str) -> str:
    """Drop every ``a=candidate`` line whose address is not loopback."""
    keep = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and not is_loopback(line.split()[4]):
            continue
        keep.append(line)
    return "\r\n".join(keep) + "\r\n"


class RtcTestClient:
    """One test peer. Everything it receives is kept for assertions:

    ``messages`` (parsed JSON from the data channel, in order), ``video_times`` (arrival of
    each decoded video frame), ``last_frame`` (the latest as [H, W, 3] uint8),
    ``audio`` (mono float32 chunks with their arrival times, ``audio_chunks``).
    """

    def __init__(self, *, loopback_only: bool = True, video: bool = True, data_channel: bool = True,
                 dtx: bool = False) -> None:
        self.loopback_only = loopback_only
        #: Send Opus DTX when the answer asks for it, as a browser does (``send_dtx``).
        self.dtx = dtx
        self.mic = ScriptedMic()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.messages: list[dict[str, Any]] = []
        self.video_times: list[float] = []
        self.audio_chunks: list[tuple[float, np.ndarray]] = []
        self.offer_sdp = ""
        self.answer_sdp = ""
        self._want_video = video
        self._want_channel = data_channel
        self._last_video: av.VideoFrame | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: asyncio.Future[None] | None = None
        self._channel: Any = None
        self._opened = asyncio.Event()

    # -- connecting ------------------------------------------------------------------

    async def connect(self, offer_fn: OfferFn, timeout: float = 20.0) -> None:
        """Offer (mic + receive audio, receive video, ``events`` channel), post it with
        ``offer_fn``, apply the answer, and wait until the data channel is open."""
        pc = self.pc
        mic_sender = pc.addTrack(self.mic)
        if self._want_video:
            pc.addTransceiver("video", direction="recvonly")
        if self._want_channel:
            self._channel = pc.createDataChannel("events")
            self._channel.on("open", self._opened.set)
            self._channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        offer = await pc.createOffer()
        await gather_with_loopback(pc, loopback=True)
        await pc.setLocalDescription(offer)
        sdp = pc.localDescription.sdp
        self.offer_sdp = strip_non_loopback(sdp) if self.loopback_only else sdp
        self.answer_sdp = await offer_fn(self.offer_sdp, "offer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type="answer"))
        if self.dtx and "usedtx=1" in self.answer_sdp:
            assert send_dtx(mic_sender, self.mic)
        if self._want_channel:
            await asyncio.wait_for(self._opened.wait(), timeout)

    def _on_track(self, track: MediaStreamTrack) -> None:
        reader = self._read_video if track.kind == "video" else self._read_audio
        self._tasks.append(asyncio.get_running_loop().create_task(reader(track), name=f"client-{track.kind}"))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.video_times.append(time.monotonic())
                self._last_video = frame
                self._notify()

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                mono = first_channel(frame).astype(np.float32) / 32768.0
                self.audio_chunks.append((time.monotonic(), mono))
                self.mic.hear(mono)

    # -- sending ---------------------------------------------------------------------

    def speak(self, audio: np.ndarray | str | Path) -> float:
        """Queue speech for the mic (a 48 kHz mono array, or any audio file); returns its seconds."""
        samples = load_audio(audio, RATE) if isinstance(audio, str | Path) else audio
        return self.mic.play(samples)

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a protocol message (a dict is JSON-encoded; str and bytes go as they are)."""
        self._channel.send(json.dumps(message) if isinstance(message, dict) else message)

    def send_unchecked(self, message: str | bytes) -> None:
        """Send ``message`` even if it is bigger than the server's advertised SCTP
        max-message-size, as a client that ignores it would (lifts the limit on this
        client's own transport only)."""
        self.pc.sctp._remote_max_message_size = 0
        self._channel.send(message)

    async def send_raw_text(self, payload: bytes) -> None:
        """Send ``payload`` as a text (string) message without encoding it: invalid UTF-8
        reaches the server as a string message, as a hostile client could send it."""
        from aiortc.rtcsctptransport import WEBRTC_STRING

        await self.pc.sctp._send(self._channel.id, WEBRTC_STRING, payload)

    @property
    def channel_state(self) -> str:
        return "none" if self._channel is None else str(self._channel.readyState)

    # -- receiving -------------------------------------------------------------------

    def _on_message(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = {"type": "?raw", "raw": raw}
        message["_at"] = time.monotonic()
        self.messages.append(message)
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def _until(self, check: Callable[[], Any], timeout: float) -> Any:
        async def run() -> Any:
            while True:
                result = check()
                if result:
                    return result
                if self._changed is None or self._changed.done():
                    self._changed = asyncio.get_running_loop().create_future()
                # Shielded: a waiter timing out must not cancel the future others wait on.
                await asyncio.shield(self._changed)

        return await asyncio.wait_for(run(), timeout)

    async def wait_message(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                           start: int = 0) -> dict[str, Any]:
        """The first message from index ``start`` on that satisfies ``predicate``."""
        def check() -> dict[str, Any] | None:
            return next((m for m in self.messages[start:] if predicate(m)), None)
        return await self._until(check, timeout)

    async def wait_video(self, frames: int = 1, timeout: float = 20.0) -> None:
        await self._until(lambda: len(self.video_times) >= frames, timeout)

    def of_type(self, kind: str, turn: int | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind and (turn is None or m.get("turn") == turn)]

    @property
    def last_frame(self) -> np.ndarray | None:
        return None if self._last_video is None else self._last_video.to_ndarray(format="rgb24")

    def fps(self, since: float | None = None) -> float:
        """Video frames per second received (since ``since``, monotonic, else overall)."""
        times = [t for t in self.video_times if since is None or t >= since]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def audio_since(self, since: float, until: float | None = None) -> np.ndarray:
        """Received audio samples that arrived in ``[since, until)``."""
        parts = [s for t, s in self.audio_chunks if t >= since and (until is None or t < until)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def loud_times(self, threshold: float = 0.01) -> list[float]:
        """Arrival times of received 20 ms audio chunks whose RMS is above ``threshold``."""
        return [t for t, s in self.audio_chunks if len(s) and float(np.sqrt(np.mean(s * s))) > threshold]

    # -- ending ----------------------------------------------------------------------

    async def vanish(self) -> None:
        """Drop off the network without a word: stop the ICE transports (no DTLS
        close_notify, no SCTP abort reaches the server). ``close()`` still cleans up."""
        for gatherer in ice_gatherers(self.pc):
            with contextlib.suppress(Exception):
                await gatherer._connection.close()

    async def close(self) -> None:
        """Close the connection and await the reader tasks. Idempotent."""
        self.mic.stop()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
