"""The client side of ``avatarchat bench load``: N aiortc sessions in one process.

Run by ``bench.load`` as ``nice -n 10 python -m avatarchat.bench.load_client`` (niced, so the
clients do not take the server's CPU unfairly). The scenario comes as one JSON line on stdin
(``ClientSpec``); the process reports on stdout, one JSON object a line, each with
``"event"`` and ``"t"`` (its ``time.monotonic()``): ``connected``, ``warmup``,
``idle_start``, ``idle_end``, ``round_start``, ``round_end``, then ``result`` (or ``error``).
The parent reads the server's CPU at those marks. When stdin closes (the parent is gone or
gives up) the clients hang up and the process exits.

Each session speaks the documented protocol only (docs/PROTOCOL.md): ``POST /api/offer``
with ``"avatar": "video" | "client"``, a microphone sending 20 ms Opus frames in real time
(silence, or a queued question), the ``events`` data channel. Times are the client's own:
voice to voice is from the moment the frame holding the question's last audible sample is
handed to the sender to the arrival of the first received 20 ms audio chunk whose RMS is
over ``AUDIBLE_RMS`` (after the receiver's jitter buffer and Opus decoding).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal, Protocol

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from pydantic import BaseModel, ConfigDict, Field

from avatarchat.audio.io import load_audio
from avatarchat.server.ice import gather_with_loopback, ice_gatherers, is_loopback
from avatarchat.server.tracks import first_channel

RATE = 48000
FRAME = 960  # 20 ms
#: Bytes of receive buffer per UDP socket of a client (see ``deepen_receive_buffers``).
RECEIVE_BUFFER = 4 * 1024 * 1024
#: RMS over this (about -40 dBFS) counts as audible, as in ``bench e2e``.
AUDIBLE_RMS = 0.01
#: Opus DTX as Chromium sends it when the answer asks (``usedtx=1``; measured: it stops
#: ~380 ms after the speech, then 4-6 packets a second): after ``DTX_AFTER`` silent frames,
#: one in ``DTX_EVERY``.
DTX_AFTER = 19
DTX_EVERY = 10


class Question(BaseModel):
    """A spoken question: a WAV file and what it says."""

    model_config = ConfigDict(extra="forbid")
    text: str
    wav: str


class ClientSpec(BaseModel):
    """One scenario, as the parent sends it."""

    model_config = ConfigDict(extra="forbid")
    url: str
    sessions: int = Field(ge=1, le=64)
    mode: Literal["video", "client"]
    talkers: int = Field(ge=1)
    rounds: int = Field(ge=1)
    idle_s: float = Field(gt=0)
    warmup: Question
    questions: list[Question] = Field(min_length=1)
    turn_timeout_s: float = 30.0
    reply_cap_s: float = 45.0
    gap_s: float = 1.0
    connect_timeout_s: float = 30.0


def emit(event: str, **fields: Any) -> None:
    """One report line on stdout for the parent."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class Mic(MediaStreamTrack):
    """A microphone on a steady 20 ms clock: queued audio, then silence. ``play`` returns a
    future that resolves to the monotonic time the frame holding a chosen sample was sent."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, np.float32)
        self._marks: list[tuple[int, asyncio.Future[float]]] = []  # (queue offset, when sent)
        self._t0: float | None = None
        self._n = 0
        #: Digitally silent frames in a row, the newest included.
        self.silent_frames = 0

    def play(self, samples: np.ndarray, mark: int) -> asyncio.Future[float]:
        """Queue ``samples`` (mono float32, 48 kHz) now; the future gets the send time of ``mark``."""
        sent = asyncio.get_running_loop().create_future()
        self._marks.append((len(self._queue) + mark, sent))
        self._queue = np.concatenate([self._queue, samples.astype(np.float32)])
        return sent

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        delay = self._t0 + self._n * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk, self._queue = self._queue[:FRAME], self._queue[FRAME:]
        now, pending = time.monotonic(), []
        for offset, sent in self._marks:
            if offset < FRAME:
                if not sent.done():
                    sent.set_result(now)
            else:
                pending.append((offset - FRAME, sent))
        self._marks = pending
        pcm = np.zeros(FRAME, np.int16)
        pcm[: len(chunk)] = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)
        self.silent_frames = 0 if pcm.any() else self.silent_frames + 1
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._n * FRAME, Fraction(1, RATE)
        self._n += 1
        return frame


class SilenceCounter(Protocol):
    #: Digitally silent frames in a row, up to the one its ``recv`` gave last.
    silent_frames: int


def send_dtx(sender: Any, mic: SilenceCounter) -> bool:
    """Make aiortc's ``sender`` of ``mic`` keep quiet as a browser's Opus DTX does: of a
    silence longer than ``DTX_AFTER`` frames, one frame in ``DTX_EVERY`` goes out (its RTP
    timestamp tells the gap). False where this aiortc has no such step."""
    step = getattr(sender, "_next_encoded_frame", None)
    if step is None:
        return False

    async def next_encoded_frame(codec: Any) -> Any:
        while True:
            frame = await step(codec)
            run = mic.silent_frames
            if frame is None or run <= DTX_AFTER or (run - DTX_AFTER) % DTX_EVERY == 0:
                return frame

    sender._next_encoded_frame = next_encoded_frame
    return True


def speech_end(samples: np.ndarray) -> int:
    """The index just past the last audible 10 ms of ``samples`` (TTS output ends in silence)."""
    win = RATE // 100
    n = len(samples) // win
    rms = np.sqrt(np.mean(samples[: n * win].reshape(n, win) ** 2, axis=1))
    loud = np.nonzero(rms > AUDIBLE_RMS)[0]
    return int((loud[-1] + 1) * win) if len(loud) else len(samples)


class LoadSession:
    """One client session: what it received, with arrival times, kept for the report."""

    def __init__(self, index: int, mode: str) -> None:
        self.index = index
        self.mode = mode
        self.answered_mode: str | None = None
        self.mic = Mic()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.messages: list[dict[str, Any]] = []  # everything but face rows, with "_at"
        self.video_times: list[float] = []
        self.levels: list[tuple[float, float]] = []  # (arrival, RMS) per received audio chunk
        self.face: list[tuple[float, int, int]] = []  # (arrival, k0, rows)
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: asyncio.Future[None] | None = None
        self._open = asyncio.Event()
        self._channel: Any = None
        self.states: list[tuple[float, str]] = []  # the peer connection's state changes
        self.dtx = False  # the mic sends Opus DTX (the server asked for it)

    async def connect(self, http: aiohttp.ClientSession, url: str, timeout: float) -> None:
        """Offer (mic, receive video, ``events``), post it, and wait for the channel and the
        first face (a video frame, or a face message in client mode)."""
        pc = self.pc
        mic_sender = pc.addTrack(self.mic)
        pc.addTransceiver("video", direction="recvonly")  # as the page offers, in both modes
        self._channel = pc.createDataChannel("events")
        self._channel.on("open", self._open.set)
        self._channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", lambda: self.states.append((time.monotonic(), pc.connectionState)))
        offer = await pc.createOffer()
        await gather_with_loopback(pc, loopback=True)  # aioice finds no candidate on a lo-only machine
        deepen_receive_buffers(pc)
        await pc.setLocalDescription(offer)
        body = {"sdp": _loopback_only(pc.localDescription.sdp), "type": "offer", "avatar": self.mode}
        async with http.post(url + "api/offer", json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"session {self.index}: offer refused ({resp.status}): {answer.get('error')}")
        self.answered_mode = answer.get("avatar", "video")  # a server without client mode says nothing
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        # The server asks for DTX as the answer's Opus parameter, and a browser honours it.
        self.dtx = "usedtx=1" in answer["sdp"] and send_dtx(mic_sender, self.mic)
        await asyncio.wait_for(self._open.wait(), timeout)
        await self.until(lambda: self.video_times or self.face, timeout)

    def _on_track(self, track: MediaStreamTrack) -> None:
        reader = self._read_video if track.kind == "video" else self._read_audio
        self._tasks.append(asyncio.get_running_loop().create_task(reader(track)))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.video_times.append(time.monotonic())
                if len(self.video_times) == 1:
                    self._notify()

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                mono = first_channel(frame).astype(np.float32) / 32768.0
                rms = float(np.sqrt(np.mean(mono * mono))) if len(mono) else 0.0
                self.levels.append((time.monotonic(), rms))
                if rms > AUDIBLE_RMS:
                    self._notify()

    def _on_message(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return
        now = time.monotonic()
        if message.get("type") == "face":
            self.face.append((now, int(message.get("k0", -1)), len(message.get("rows", []))))
            if len(self.face) > 1:
                return
        else:
            message["_at"] = now
            self.messages.append(message)
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def until(self, check: Callable[[], Any], timeout: float) -> Any:
        """Wait (on events, not a timer) until ``check()`` is truthy; returns it, or None on timeout."""
        async def run() -> Any:
            while not (result := check()):
                if self._changed is None or self._changed.done():
                    self._changed = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._changed)
            return result

        try:
            return await asyncio.wait_for(run(), timeout)
        except TimeoutError:
            return None

    async def ask(self, question: Question, audio: np.ndarray, spec: ClientSpec, cut: bool = False) -> dict[str, Any]:
        """Speak ``audio`` now and follow its turn to the reply's end (or a timeout); with
        ``cut``, interrupt the reply once it is heard (a warm-up needs no more)."""
        first, seen = len(self.messages), len(self.levels)
        end = speech_end(audio)
        try:  # the mic stops being read if the connection drops
            t_end = await asyncio.wait_for(self.mic.play(audio, end), end / RATE + spec.turn_timeout_s)
        except TimeoutError:
            return self._turn_row(question, first, None, None, False, "the microphone stopped sending")

        def heard() -> float | None:
            nonlocal seen
            for t, rms in self.levels[seen:]:
                if t > t_end and rms > AUDIBLE_RMS:
                    return t
            seen = len(self.levels)
            return None

        onset = await self.until(heard, spec.turn_timeout_s)
        if onset is not None and cut:
            with contextlib.suppress(Exception):  # a channel closed meanwhile: the turn says so
                self._channel.send(json.dumps({"type": "interrupt"}))
        final = next((m for m in self.messages[first:] if m.get("type") == "transcript" and m.get("final")), {})
        turn = final.get("turn")

        def finished() -> bool:
            return any((m.get("type") == "metrics" and m.get("turn") == turn)
                       or (m.get("type") == "state" and m.get("state") == "listening" and m["_at"] > onset)
                       or (m.get("type") == "error" and m.get("turn") == turn) for m in self.messages[first:])

        ended = onset is not None and bool(await self.until(finished, spec.reply_cap_s))
        failed = None if onset is not None else f"no audible reply within {spec.turn_timeout_s:.0f} s"
        return self._turn_row(question, first, t_end, onset, ended, failed)

    def _turn_row(self, question: Question, first: int, t_end: float | None, onset: float | None,
                  ended: bool, failed: str | None) -> dict[str, Any]:
        """One turn's report from the messages received since index ``first``."""
        of_turn = self.messages[first:]
        final = next((m for m in of_turn if m.get("type") == "transcript" and m.get("final")), {})
        turn = final.get("turn")
        errors = [m.get("message") for m in of_turn if m.get("type") == "error"]
        metrics = next((m for m in of_turn if m.get("type") == "metrics" and m.get("turn") == turn), {})
        reply = next((m.get("text") for m in of_turn if m.get("type") == "reply" and m.get("final")
                      and m.get("turn") == turn), None)
        if failed is None and errors:
            failed = "error: " + "; ".join(str(e) for e in errors)
        return {
            "session": self.index, "question": question.text, "heard": final.get("text"), "reply": reply,
            "t_speech_end": None if t_end is None else round(t_end, 3),
            "t_reply_onset": None if onset is None else round(onset, 3),
            "voice_to_voice_ms": None if onset is None or t_end is None else round(1000 * (onset - t_end), 1),
            "server_first_audio_after_speech_end_ms": metrics.get("first_audio_after_speech_end_ms"),
            "reply_ended": ended, "errors": errors, "failed": failed,
        }

    def rates(self, windows: list[tuple[float, float]]) -> dict[str, float | None]:
        """Video frames, face rows and newly covered face frames per second over ``windows``."""
        span = sum(b - a for a, b in windows)
        if span <= 0:
            return {"video_fps": None, "face_rows_per_s": None, "face_frames_per_s": None}

        def inside(t: float) -> bool:
            return any(a <= t < b for a, b in windows)

        frames = sum(1 for t in self.video_times if inside(t))
        rows = sum(n for t, _, n in self.face if inside(t))
        top, new = -1, 0
        for t, k0, n in self.face:  # a later row for the same k replaces it: count each k once
            if inside(t) and k0 + n - 1 > top:
                new += k0 + n - 1 - max(top, k0 - 1)
            top = max(top, k0 + n - 1)
        return {"video_fps": round(frames / span, 2), "face_rows_per_s": round(rows / span, 2),
                "face_frames_per_s": round(new / span, 2)}

    async def close(self) -> None:
        self.mic.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 10)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def deepen_receive_buffers(pc: RTCPeerConnection, size: int = RECEIVE_BUFFER) -> None:
    """Give ``pc``'s UDP sockets a receive buffer of ``size`` bytes (the kernel caps it at
    net.core.rmem_max). The clients are niced: on a busy machine their process may not run for
    a second, and the default ~200 KB overflows in that time under a 512x512 video stream; the
    ICE consent answers lost with it then end the session after 30 s. A deep buffer lets the
    client catch up later (as a browser on its own machine would never need to), at no CPU cost
    to the server."""
    for gatherer in ice_gatherers(pc):
        for protocol in gatherer._connection._protocols:  # aioice keeps its sockets private
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _loopback_only(sdp: str) -> str:
    """The offer with every non-loopback candidate removed: nothing leaves 127.0.0.1."""
    lines = [ln for ln in sdp.splitlines() if not (ln.startswith("a=candidate:") and not is_loopback(ln.split()[4]))]
    return "\r\n".join(lines) + "\r\n"


async def probe_lag(lags: list[float], every: float = 0.1) -> None:
    """How late this process's event loop wakes (ms): a starved client (it is niced) shows here,
    and its figures (arrival times, the mic's pace, answers to ICE checks) are that late."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(every)
        lags.append(1000 * (time.monotonic() - t - every))


async def run_scenario(spec: ClientSpec) -> None:
    """Connect, warm up, idle, talk in rounds; report each phase on stdout."""
    warm = load_audio(spec.warmup.wav, RATE)
    clips = [load_audio(q.wav, RATE) for q in spec.questions]
    k = min(spec.talkers, spec.sessions)
    sessions = [LoadSession(i, spec.mode) for i in range(spec.sessions)]
    lags: list[float] = []
    probe = asyncio.ensure_future(probe_lag(lags))
    try:
        async with aiohttp.ClientSession() as http:
            for s in sessions:  # one at a time: connecting is not what is measured
                await s.connect(http, spec.url, spec.connect_timeout_s)
        emit("connected", answered=[s.answered_mode for s in sessions], mic_dtx=sum(s.dtx for s in sessions))
        warmups: list[dict[str, Any]] = []
        for start in range(0, spec.sessions, k):  # not counted: each session's first turn
            wave = sessions[start:start + k]
            wave_turns = await asyncio.gather(*(s.ask(spec.warmup, warm, spec, cut=True) for s in wave))
            emit("warmup_wave", turns=wave_turns)
            warmups += wave_turns
        emit("warmup", turns=warmups)
        await asyncio.sleep(spec.gap_s)
        t0 = time.monotonic()
        emit("idle_start")
        await asyncio.sleep(spec.idle_s)
        emit("idle_end")
        idle = [(t0, time.monotonic())]
        windows: list[tuple[float, float]] = []
        turns: list[dict[str, Any]] = []
        for r in range(spec.rounds):
            picks = [(r * k + j) % spec.sessions for j in range(k)]
            qs = [(r * k + j) % len(spec.questions) for j in range(k)]
            emit("round_start", round=r, sessions=picks)
            a = time.monotonic()
            done = await asyncio.gather(*(sessions[i].ask(spec.questions[q], clips[q], spec) for i, q in zip(picks, qs)))
            windows.append((a, time.monotonic()))
            for row in done:
                row["round"] = r
            turns += done
            emit("round_end", round=r, turns=done)
            await asyncio.sleep(spec.gap_s)
        per_session = [{"session": s.index, "answered_mode": s.answered_mode, "mic_dtx": s.dtx, "talk": s.rates(windows),
                        "idle": s.rates(idle), "connection": [(round(t, 3), st) for t, st in s.states],
                        "errors": [m.get("message") for m in s.messages if m.get("type") == "error"]}
                       for s in sessions]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        emit("result", sessions=per_session, turns=turns, talk_windows=windows,
             client_cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
             client_loop_lag_ms={"p50": round(float(np.percentile(lags, 50)), 1),
                                 "p99": round(float(np.percentile(lags, 99)), 1), "max": round(max(lags), 1)})
    finally:
        probe.cancel()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


async def main(spec: ClientSpec) -> int:
    scenario = asyncio.ensure_future(run_scenario(spec))
    loop = asyncio.get_running_loop()

    def on_stdin() -> None:  # any further input is ignored; EOF means the parent wants us gone
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            scenario.cancel()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        await scenario
    except asyncio.CancelledError:
        emit("error", message="cancelled: the parent closed stdin")
        return 1
    except Exception as exc:  # noqa: BLE001 - the parent reports it; the traceback goes to stderr
        emit("error", message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    # aioice says on stderr (the parent's log of this process) when an ICE consent check fails.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aioice.ice").setLevel(logging.INFO)
    # The spec is the first line; read unbuffered so nothing after it is swallowed.
    raw = b""
    while not raw.endswith(b"\n") and (chunk := os.read(sys.stdin.fileno(), 1)):
        raw += chunk
    sys.exit(asyncio.run(main(ClientSpec.model_validate_json(raw))))
