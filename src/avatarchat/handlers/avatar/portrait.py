"""``avatar: portrait``: a talking portrait rendered frame by frame as the reply is spoken.

Per ``ReplyAudio`` chunk it renders the frames whose times ``k / fps`` on the reply clock
fall inside the chunk, ``[offset, offset + duration)``, and the chunk goes on to the client
untouched (so audio and frames share the reply clock). A chunk without phoneme timings
under ``audio_mouth="mfcc"`` holds its last ``anticipation`` + 36 ms of frames (their
mouth reads audio past the chunk's end) until the next chunk or the ``ReplyEnd``. After
the last chunk (``ReplyEnd``) it renders the mouth closing back to idle (``CLOSE_S``),
then passes the ``ReplyEnd`` on.
Frames are rendered faster than real time: the client plays them by their ``pts``.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from avatarchat.avatar.animator import Animator
from avatarchat.avatar.lipsync import CHANNELS
from avatarchat.avatar.params import FaceParams
from avatarchat.engine.events import (
    NO_TURN,
    AvatarFrame,
    AvatarMotion,
    AvatarPose,
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyInterrupted,
    SpeechStarted,
    TimingMark,
)
from avatarchat.engine.handler import (
    AvatarHandler,
    HandlerLoadError,
    HandlerOptions,
    SessionInfo,
    register,
)
from avatarchat.engine.scheduling import Priority, run_model

#: The order of an ``AvatarPose``'s values: FaceParams' fields.
POSE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(FaceParams))


def pose_values(params: FaceParams) -> tuple[float, ...]:
    return tuple(float(getattr(params, name)) for name in POSE_NAMES)


#: Frames rendered per executor call after the first: small enough to keep the first
#: frames of a chunk prompt, large enough that the executor hops cost nothing.
BATCH = 5


class PortraitOptions(HandlerOptions):
    avatar: str = "default"  # a built-in avatar's name or a prepared avatar folder
    fps: int = Field(default=25, ge=1, le=60)
    #: Lips move before the sound they make is heard.
    anticipation_ms: float = Field(default=50.0, ge=0.0, le=200.0)
    #: How far the TTS audio runs ahead of its phoneme timings (hibari: ~50 ms).
    timing_lead_ms: float = Field(default=50.0, ge=-200.0, le=200.0)
    #: The mouth of a reply chunk that comes without phoneme timings (a network voice that
    #: sends audio only): "mfcc", the MFCC vowel classifier of ``avatar.audio_visemes``
    #: (which vowel shape opens, from the spectrum; loudness opens the jaw), or "loudness",
    #: the older mouth from loudness and spectral brightness alone.
    audio_mouth: Literal["mfcc", "loudness"] = "mfcc"
    #: Also send the mouth curves (AvatarMotion), for clients that animate themselves.
    emit_motion: bool = True


@dataclass
class _Turn:
    """What the stage holds for one reply being animated."""

    next_index: int = 0  # the next frame index to render (frames are never rendered twice)
    first_frame_sent: bool = False
    cancelled: bool = False
    held_from: float | None = None  # the last chunk's frames from here on wait for the next


@dataclass
class PortraitContext:
    """Per-session state. ``clock0`` is where the face's own timeline starts on the
    session's clock (``session.clock``)."""

    session: SessionInfo
    animator: Animator
    clock0: float = 0.0
    turns: dict[int, _Turn] = field(default_factory=dict)
    #: The turn the animator shows (turn ids only grow; an older reply is not resumed).
    current: int = NO_TURN
    #: The turn whose user speech switched the listening look on.
    listening_turn: int = NO_TURN
    # The animator belongs to the event loop; `idle_frame` may be called from a transport
    # thread, so both take this lock around the (cheap) parameter computation.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        """Seconds on the face's timeline (from ``clock0``)."""
        return self.session.clock.now() - self.clock0


@register
class PortraitHandler(AvatarHandler[PortraitOptions]):
    """Renders AvatarFrames for each ReplyAudio chunk.

    Promises, per turn: before the first frame a ``TimingMark(turn, "avatar_first_frame")``;
    per chunk (and for the closing tail), one ``AvatarMotion`` (if ``emit_motion``) then its frames, indices
    consecutive from 0 and ``pts == index / fps``; the first frame of a reply is rendered
    alone, at once, so it trails its audio chunk by one render (~10–15 ms); the rest in
    batches of ``BATCH`` in the executor (the event loop never waits on a render). After
    ``cancel_turn`` no frame of that turn comes out.
    """

    name: ClassVar[str] = "portrait"
    stage: ClassVar[str] = "avatar"
    Options: ClassVar[type[HandlerOptions]] = PortraitOptions
    accepts: ClassVar[tuple[type[Event], ...]] = (ReplyAudio, ReplyEnd)
    # The audio goes on to the client.
    forwards: ClassVar[tuple[type[Event], ...]] = (ReplyAudio,)
    # At once, not behind the frames being rendered: the user speaking switches on the
    # listening look; a cut reply closes the mouth from the frame on screen.
    controls: ClassVar[tuple[type[Event], ...]] = (SpeechStarted, ReplyInterrupted)

    def __init__(self, options: PortraitOptions) -> None:
        super().__init__(options)
        self.asset: Any = None
        self.renderer: Any = None  # anything with render(FaceParams) -> [H, W, 3] uint8
        self._client_assets: tuple[dict[str, Any], bytes] | None = None

    def load(self) -> None:
        from avatarchat.avatar.asset import AvatarAssetError, load_avatar

        try:
            self.asset = load_avatar(self.options.avatar)
        except AvatarAssetError as exc:
            raise HandlerLoadError(str(exc)) from None
        try:
            from avatarchat.avatar.render import PortraitRenderer

            self.renderer = PortraitRenderer(self.asset)
            self.renderer.render(FaceParams())  # first-call costs at load, not on frame 0
        except AvatarAssetError as exc:
            raise HandlerLoadError(str(exc)) from None

    @property
    def fps(self) -> int:
        return self.options.fps

    def create_context(self, session: SessionInfo) -> PortraitContext:
        seed = zlib.crc32(session.session_id.encode())
        animator = Animator(seed, self.options.anticipation_ms / 1000.0, self.options.timing_lead_ms / 1000.0,
                            audio_mouth=self.options.audio_mouth)
        return PortraitContext(session, animator, clock0=session.clock.now())

    # -- events ---------------------------------------------------------------------------

    def on_control(self, ctx: PortraitContext, event: Event) -> list[Event]:
        if isinstance(event, SpeechStarted):
            with ctx.lock:
                ctx.listening_turn = max(ctx.listening_turn, event.turn)
                ctx.animator.idle.set_listening(True, ctx.now())
        elif isinstance(event, ReplyInterrupted) and event.on_screen:
            self.halt(ctx, event.turn, event.heard_s)
        return []

    async def handle(self, ctx: PortraitContext, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, ReplyAudio):
            async for out in self._chunk(ctx, event):
                yield out
            return
        assert isinstance(event, ReplyEnd)
        state = ctx.turns.get(event.turn)
        if state is not None:
            with ctx.lock:
                closed = ctx.animator.finish()
            # Up to the first frame with the mouth fully closed: idle frames go on from it.
            indices = self._indices(state, 0.0, closed + 1.0 / self.fps)
            if self._emits_motion(ctx) and indices:
                yield self._motion(ctx, event.turn, indices)
            async for out in self._render(ctx, state, event.turn, indices):
                yield out
            ctx.turns.pop(event.turn, None)
        # Passed on even when a newer reply took the face: the turn still has to end (a
        # cancelled turn's ReplyEnd is dropped by the session).
        self._stop_listening(ctx, event.turn)  # a reply with no audio ends the listening too
        yield event

    async def _chunk(self, ctx: PortraitContext, chunk: ReplyAudio) -> AsyncIterator[Event]:
        if chunk.turn < ctx.current:
            return  # a newer reply has the face; this one's audio still goes on
        state = ctx.turns.get(chunk.turn)
        if state is None:
            # A new reply: its time 0 is now on the session clock, so idle motion goes on
            # from where the idle frames left it. One reply is animated at a time.
            for old in ctx.turns.values():
                old.cancelled = True
            ctx.turns.clear()
            state = ctx.turns[chunk.turn] = _Turn()
            ctx.current = chunk.turn
            with ctx.lock:
                ctx.animator.begin(ctx.now())
            self._stop_listening(ctx, chunk.turn)
        with ctx.lock:
            ctx.animator.speak(chunk)
            # A mouth read from the audio ahead of each frame: the chunk's last frames wait
            # for the next piece (the next chunk or the ReplyEnd renders them).
            settled = ctx.animator.settled(chunk)
        start = chunk.offset if state.held_from is None else min(chunk.offset, state.held_from)
        end = chunk.offset + chunk.duration
        state.held_from = settled if settled < end else None
        indices = self._indices(state, start, settled)
        if self._emits_motion(ctx) and indices:
            yield self._motion(ctx, chunk.turn, indices)
        async for out in self._render(ctx, state, chunk.turn, indices):
            yield out

    @staticmethod
    def _stop_listening(ctx: PortraitContext, turn: int) -> None:
        # Only the reply to what was heard ends the look: not an older reply finishing
        # while the user has started speaking again.
        if turn >= ctx.listening_turn:
            with ctx.lock:
                ctx.animator.idle.set_listening(False, ctx.now())

    def _indices(self, state: _Turn, start: float, end: float) -> list[int]:
        """Frame indices with ``k / fps`` in ``[start, end)`` not rendered yet."""
        first = max(state.next_index, math.ceil(start * self.fps - 1e-9))
        return list(range(first, math.ceil(end * self.fps - 1e-9)))

    def _motion(self, ctx: PortraitContext, turn: int, indices: Sequence[int]) -> AvatarMotion:
        times = np.asarray(indices, np.float64) / self.fps
        with ctx.lock:
            curves = ctx.animator.motion(times)
        return AvatarMotion(
            turn,
            times=tuple(float(t) for t in times),
            channels=CHANNELS,
            values=tuple(tuple(round(float(v), 4) for v in row) for row in curves.values),
            visemes=curves.visemes,
        )

    def _emits_motion(self, ctx: PortraitContext) -> bool:
        # A client sent poses has everything the mouth curves would tell it.
        return self.options.emit_motion and ctx.session.avatar_output == "frames"

    async def _render(self, ctx: PortraitContext, state: _Turn, turn: int,
                      indices: list[int]) -> AsyncIterator[Event]:
        if ctx.session.avatar_output == "params":
            for out in self._poses(ctx, state, turn, indices):
                yield out
            return
        pos = 0
        while pos < len(indices) and not state.cancelled:
            size = 1 if not state.first_frame_sent else BATCH
            batch = indices[pos:pos + size]
            with ctx.lock:
                params = ctx.animator.params([k / self.fps for k in batch])
            # The render lane, after turn-critical work and before idle frames (engine/scheduling).
            images = await run_model(self._render_batch, params, lane="render", priority=Priority.NORMAL)
            # Cancelled while the executor worked: its frames are dropped.
            if state.cancelled:
                return
            if not state.first_frame_sent:
                state.first_frame_sent = True
                yield TimingMark(turn, "avatar_first_frame")
            for k, image in zip(batch, images):
                yield AvatarFrame(turn, image, index=k, pts=k / self.fps)
            state.next_index = batch[-1] + 1
            pos += size

    def _poses(self, ctx: PortraitContext, state: _Turn, turn: int, indices: list[int]) -> list[Event]:
        """The frames' parameters instead of their images: no render, so all at once
        (~0.1 ms a frame)."""
        if not indices or state.cancelled:
            return []
        with ctx.lock:
            params = ctx.animator.params([k / self.fps for k in indices])
        out: list[Event] = []
        if not state.first_frame_sent:
            state.first_frame_sent = True
            out.append(TimingMark(turn, "avatar_first_frame"))
        out += [AvatarPose(turn, index=k, pts=k / self.fps, names=POSE_NAMES, values=pose_values(p))
                for k, p in zip(indices, params)]
        state.next_index = indices[-1] + 1
        return out

    def _render_batch(self, params: list[FaceParams]) -> list[np.ndarray]:
        if self.renderer is None:
            raise RuntimeError("PortraitHandler.load() was not called")
        return [self.renderer.render(p) for p in params]

    # -- lifecycle ------------------------------------------------------------------------

    def cancel_turn(self, ctx: PortraitContext, turn: int) -> None:
        state = ctx.turns.pop(turn, None)
        if state is None:
            return
        state.cancelled = True
        with ctx.lock:
            # The idle frames that follow show the mouth closing from where it was.
            ctx.animator.stop(ctx.now() - ctx.animator.origin)

    def halt(self, ctx: PortraitContext, turn: int, shown: float) -> None:
        """(``ReplyInterrupted``, on the control lane.) The transport cut ``turn``'s reply while reply time ``shown`` was on screen:
        stop rendering it, and let the idle frames close the mouth smoothly from that frame
        (``CLOSE_S``) instead of from where rendering had got to (rendering runs ahead of
        playout, and a reply whose rendering finished is no longer a turn of this stage).
        Safe to call after ``cancel_turn``; a turn that is not the face's is ignored."""
        state = ctx.turns.pop(turn, None)
        if state is not None:
            state.cancelled = True
        if turn != ctx.current:
            return
        with ctx.lock:
            if ctx.animator.speaking:
                ctx.animator.stop_at(shown, ctx.now())

    def close_context(self, ctx: PortraitContext) -> None:
        for state in ctx.turns.values():
            state.cancelled = True
        ctx.turns.clear()

    # -- for transports ---------------------------------------------------------------------

    def idle_params(self, ctx: PortraitContext, t: float) -> FaceParams:
        """The face at session time ``t`` between replies (cheap, any thread)."""
        with ctx.lock:
            return ctx.animator.idle_params(t)

    pose_names: ClassVar[tuple[str, ...]] = POSE_NAMES

    def client_assets(self) -> tuple[dict[str, Any], bytes] | None:
        """The rig document and the portrait PNG a page draws this avatar with (web/avatar/)."""
        if self.renderer is None:
            return None
        if self._client_assets is None:
            from avatarchat.avatar.rig_export import portrait_png, rig_document

            self._client_assets = (rig_document(self.renderer), portrait_png(self.renderer))
        return self._client_assets

    def idle_pose(self, ctx: PortraitContext, t: float) -> tuple[float, ...]:
        """The idle face's parameters at time ``t`` of the session's clock (cheap)."""
        return pose_values(self.idle_params(ctx, t - ctx.clock0))

    def idle_frame(self, ctx: PortraitContext, t: float) -> np.ndarray:
        """Blocking (~one render, ~10 ms): the idle animation at time ``t`` of the session's
        clock. Safe from any thread; run it in an executor."""
        return self._render_batch([self.idle_params(ctx, t - ctx.clock0)])[0]
