"""``talk``'s reply sink: each reply plays into files instead of a speaker.

A ``ReplySink`` (``engine.sink``) like the WebRTC playout, for the offline CLI: the reply's
audio chunks are placed at their offsets on the reply's own timeline, its frames at their
``pts`` on the same clock, and when the engine ends the reply it is written (in an
executor: encoding takes a few hundred ms) as ``<stem>.wav``, and with frames also as
``<stem>.mp4`` (H.264 + AAC) and ``<stem>.png`` (a contact sheet). Nothing is ever heard
part-way, so ``clear`` returns 0 and writes nothing. Replies of turns nobody ``expect``ed
(the engine's fallback line after a failure) are not written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatarchat.audio.io import write_wav
from avatarchat.engine.events import AvatarFrame, AvatarPose, ReplyAudio
from avatarchat.engine.handler import run_blocking
from avatarchat.engine.sink import PlaybackListener
from avatarchat.engine.turn import place


@dataclass
class SavedReply:
    """What was written for one reply (file names relative to the folder)."""

    audio: str | None = None
    audio_seconds: float = 0.0
    video: str | None = None
    frames: int = 0


@dataclass
class _Reply:
    stem: str
    chunks: list[ReplyAudio] = field(default_factory=list)
    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)


class FileSink:
    """See the module docstring. ``saved(turn)`` waits for a reply's files."""

    def __init__(self, out: Path, fps: int) -> None:
        self.out = out
        self.fps = fps
        self.listener = PlaybackListener()
        self._replies: dict[int, _Reply] = {}
        self._saved: dict[int, asyncio.Future[SavedReply]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def expect(self, turn: int, stem: str) -> None:
        """Write the reply of ``turn`` as ``<stem>.*``."""
        self._replies[turn] = _Reply(stem)
        self._saved[turn] = asyncio.get_running_loop().create_future()

    async def saved(self, turn: int) -> SavedReply:
        return await self._saved[turn]

    # -- the ReplySink protocol -------------------------------------------------------------

    def add_audio(self, chunk: ReplyAudio) -> None:
        reply = self._replies.get(chunk.turn)
        if reply is not None:
            reply.chunks.append(chunk)

    def add_frame(self, frame: AvatarFrame | AvatarPose) -> None:
        reply = self._replies.get(frame.turn)
        if reply is not None and isinstance(frame, AvatarFrame):  # talk always renders
            reply.frames.append((frame.pts, frame.image))

    def end(self, turn: int) -> None:
        reply = self._replies.pop(turn, None)
        if reply is None:
            self.listener.finished(turn, 0.0, False)
            return
        task = asyncio.get_running_loop().create_task(self._write(turn, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def clear(self, turn: int) -> float:
        self._replies.pop(turn, None)
        future = self._saved.get(turn)
        if future is not None and not future.done():
            future.set_result(SavedReply())
        return 0.0

    def duck(self, volume: float) -> None:
        pass

    def restore(self) -> None:
        pass

    @property
    def playing(self) -> int | None:
        return None  # a file is written at once, never heard while the user speaks

    @property
    def turns(self) -> list[int]:
        return sorted(self._replies)

    # -- writing ----------------------------------------------------------------------------

    async def _write(self, turn: int, reply: _Reply) -> None:
        future = self._saved[turn]
        try:
            saved = await run_blocking(self._write_files, reply)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            raise
        if not future.done():
            future.set_result(saved)
        self.listener.finished(turn, saved.audio_seconds, False)

    def _write_files(self, reply: _Reply) -> SavedReply:
        audio = place(reply.chunks)
        rate = reply.chunks[0].sample_rate if reply.chunks else 24000
        saved = SavedReply(frames=len(reply.frames), audio_seconds=round(len(audio) / rate, 3))
        if len(audio):
            saved.audio = f"{reply.stem}.wav"
            write_wav(self.out / saved.audio, audio, rate)
        if reply.frames:
            from avatarchat.avatar.video import contact_sheet, save_png, write_mp4

            saved.video = f"{reply.stem}.mp4"
            write_mp4(self.out / saved.video, reply.frames, self.fps, audio, rate)
            save_png(self.out / f"{reply.stem}.png", contact_sheet(reply.frames))
        return saved
