"""Outgoing media: one clock, the playout schedule (the reply sink), and the WebRTC tracks.

Timing model. ``MediaClock`` is the zero of a connection's outgoing media: it starts at the
first ``recv()`` of either WebRTC track (or the first reply scheduled, or the WebSocket's
first frame, whichever is first). Audio frame ``n`` (20 ms: 960 samples at 48 kHz over
WebRTC, ``rate / 50`` at another rate) is due at ``n * 0.02`` s and carries pts
``n * frame`` in 1/rate; video frame ``k`` is due at ``k / fps`` s and carries pts
``k / fps * 90000`` in 1/90000. Both come from the same zero, so RTP timestamps and RTCP
sender reports of the two tracks agree and the browser can lip-sync them. The clock reads
time from an injectable ``engine.clock.Clock`` (the engine's), so the playout's times and
the engine's marks compare directly.

``Playout`` owns what plays, and is the engine's ``ReplySink`` (engine/sink.py). A reply
is placed on the audio sample timeline when its first audio arrives (at the next 20 ms
boundary after ``now + START_MARGIN_S``, or where the page draws the avatar from rows sent
ahead, in the frame due now if it has not gone yet: ``Playout.client_draws``); its frames
play at ``reply_start + pts``. TTS audio is resampled to the playout's rate as it arrives.
If the reply's audio runs dry before its end (the TTS fell behind) the reply's start moves
later by the gap, so audio and frames stay in step and no word is lost; the user hears a
short pause.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.reformatter import VideoReformatter

from avatarchat.audio.resample import Resampler
from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.events import AvatarFrame, AvatarPose, ReplyAudio
from avatarchat.engine.scheduling import Priority, current_scheduler
from avatarchat.engine.sink import PlaybackListener

AUDIO_RATE = 48000  # WebRTC's (Opus's) rate
AUDIO_FRAME = 960  # samples per 20 ms frame at AUDIO_RATE
#: Audio frames last this long at every rate.
FRAME_S = 0.02
VIDEO_CLOCK = 90000
#: Between a reply's first audio arriving and its first sample playing: room for the first
#: avatar frame (rendered right after the chunk, ~15 ms) to be there when the sound starts.
#: A page that draws the avatar itself needs none (``Playout.client_draws``).
START_MARGIN_S = 0.025
#: A reply bursts (``Playout.burst_s``) only after this much silence: by then the voice is
#: idle in DTX (server/opus.py: SETTLE_FRAMES), and the page's jitter buffer plays comfort noise.
BURST_AFTER_S = 0.2
#: A track called this late (a stalled loop, a slow encoder) jumps ahead instead of
#: sending a burst of stale frames.
MAX_LAG_S = 0.2
FRAME_SIZE = 512
#: A duck or a restore of the reply volume ramps over this long (a step would click).
DUCK_FADE_S = 0.03
#: A stopped reply fades out over this long instead of ending on a click.
STOP_FADE_S = 0.01


def first_channel(frame: av.AudioFrame) -> np.ndarray:
    """The first channel of an audio frame as a 1-D array (packed or planar layouts)."""
    data = frame.to_ndarray()
    if frame.format.is_planar:
        return data[0]
    return data.reshape(-1)[:: len(frame.layout.channels)]


class MediaClock:
    """The shared zero of one connection's outgoing media, in ``clock`` seconds (the
    engine's clock, so its marks and the playout's times compare directly)."""

    def __init__(self, clock: Clock = REAL_CLOCK) -> None:
        self.clock = clock
        self._t0: float | None = None

    def start(self) -> float:
        """Start the clock if it is not running; returns its zero. Idempotent."""
        if self._t0 is None:
            self._t0 = self.clock.now()
        return self._t0

    @property
    def t0(self) -> float:
        return self.start()

    def now(self) -> float:
        """Media seconds since the zero (starts the clock)."""
        return self.clock.now() - self.start()

    async def sleep_until(self, t: float) -> None:
        """Return once media time ``t`` has come."""
        await self.clock.sleep_until(self.start() + t)

    def advance(self, dt: float) -> None:
        """Move media time ``dt`` seconds on at once: what was due until then goes now (see
        ``Playout.burst_s``). Media time only ever moves on; the engine's clock is untouched."""
        self._t0 = self.start() - dt


@dataclass
class _Reply:
    """One turn's reply on the playout schedule. Sample counts are at the playout's rate."""

    turn: int
    rate: int
    start: int | None = None  # absolute sample where reply time 0 plays; None until scheduled
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    written: int = 0  # reply samples available
    pos: int = 0  # reply samples handed out (to the encoder, or the socket)
    resampler: Resampler | None = None
    fed: int = 0  # source-rate samples fed to the resampler
    frames: deque[tuple[float, AvatarFrame | AvatarPose]] = field(default_factory=deque)
    shown: AvatarFrame | AvatarPose | None = None
    ended: bool = False
    started: bool = False
    first_frame: bool = False

    def write(self, samples: np.ndarray) -> None:
        need = self.written + len(samples)
        if need > len(self.audio):
            grown = np.zeros(max(need, 2 * len(self.audio), self.rate), np.float32)
            grown[: self.written] = self.audio[: self.written]
            self.audio = grown
        self.audio[self.written:need] = samples
        self.written = need

    def last_frame_time(self) -> float:
        return self.frames[-1][0] if self.frames else -math.inf

    @property
    def heard_s(self) -> float:
        return min(self.pos, self.written) / self.rate


class Playout:
    """What one connection plays: replies queued in order, one at a time, on the media
    clock, at ``rate`` samples a second in 20 ms frames. The engine's ``ReplySink``.

    Feed it from the engine (``add_audio``, ``add_frame``, ``end``, ``clear``, ``duck``);
    a transport reads it (``audio_frame``, ``video_frame``): the WebRTC tracks at 48 kHz,
    the WebSocket's sender at the TTS's rate. Everything runs on the event loop; nothing
    blocks. A reply that arrives while another plays waits until that one finishes.
    ``listener`` (settable any time) hears, on the loop and in the clock's seconds, when a
    reply's first audio and first frame are handed out and when it finished: once per
    reply, played to its end or cleared (``interrupted``), with the seconds handed out.
    """

    def __init__(self, clock: MediaClock, listener: PlaybackListener | None = None,
                 *, rate: int = AUDIO_RATE) -> None:
        if rate % 50:
            raise ValueError(f"a playout rate must be a whole number of samples per 20 ms, not {rate}")
        self.clock = clock
        self.rate = rate
        self.frame = rate // 50
        self.listener = listener or PlaybackListener()
        self._queue: deque[_Reply] = deque()
        self._by_turn: dict[int, _Reply] = {}
        self._stopped: set[int] = set()
        self._played: dict[int, float] = {}  # seconds heard, kept for finished/stopped turns
        self._next_sample = 0  # the next absolute sample the transport will hand out
        self._gain = 1.0  # reply volume now (barge-in ducks it) …
        self._gain_target = 1.0  # … and where it is ramping to
        self._tail = np.zeros(0, np.float32)  # a stopped reply's fade-out, still to send
        self._silence = np.zeros(self.frame, np.int16)
        self._silence.flags.writeable = False  # handed out again and again
        #: Set whenever reply audio or a frame arrives: a sender that sends nothing between
        #: replies (the WebSocket's, the WebRTC voice's DTX) waits on it.
        self.arrived = asyncio.Event()
        self._wake: Callable[[], None] | None = None  # the WebRTC voice's DTX wait, if any
        #: Between a reply's first audio arriving and its first sample, at least.
        self.start_margin_s = START_MARGIN_S
        #: Where no frame is rendered first (``client_draws``): a reply that starts while the
        #: voice is idle moves media time on by this much, so its first ``burst_s`` of audio
        #: go out at once. A browser's jitter buffer, idle in DTX, plays a packet when its
        #: place on the old timeline comes, or at once when the packets waiting exceed its
        #: target by some 50 ms; either way it then holds a cushion and conceals less.
        #: Moving the clock on (not sending the first packets late) keeps every packet as
        #: early as the last, so the buffer's delay estimate does not grow.
        self.burst_s = 0.0
        self._sounded_until = -self.rate  # sample after the last frame that held reply audio
        self._on_frames: Callable[[float], None] | None = None

    def client_draws(self, on_frames: Callable[[float], None] | None) -> None:
        """The client draws the avatar from rows sent ahead of time (server/face.py), not
        from frames rendered here: no frame has to be ready when the sound starts, so a
        reply's first sample goes out at once in the frame due now where that has not gone
        yet (a voice idle in DTX), else in the next (not ~25-45 ms later), and
        ``on_frames(t)`` hears of frames (poses) of the reply on the schedule as they
        arrive, ``t`` the media time of the earliest, so the sender can pass on those due
        soon at once. ``None`` takes the hook back (the margin stays)."""
        self.start_margin_s = 0.0
        self._on_frames = on_frames

    # -- input (engine side) ------------------------------------------------------------

    def add_audio(self, chunk: ReplyAudio) -> None:
        """Place a TTS chunk at ``chunk.offset`` on its reply (schedules a new reply)."""
        reply = self._reply(chunk.turn)
        if reply is None or reply.ended:
            return
        if reply.resampler is None:
            reply.resampler = Resampler(chunk.sample_rate, self.rate)
        # A gap on the reply timeline (offset beyond what was fed) is silence.
        at = round(chunk.offset * chunk.sample_rate)
        if at > reply.fed:
            reply.write(reply.resampler.process(np.zeros(at - reply.fed, np.float32)))
            reply.fed = at
        reply.write(reply.resampler.process(chunk.samples))
        reply.fed += len(chunk.samples)
        self._schedule_head()
        self.arrived.set()
        if self._wake is not None:
            self._wake()

    def add_frame(self, frame: AvatarFrame | AvatarPose) -> None:
        """Queue an avatar frame (or a pose, for a client that draws the avatar) to show at
        ``reply_start + frame.pts``."""
        reply = self._reply(frame.turn)
        if reply is not None:
            reply.frames.append((frame.pts, frame))
            if reply.start is not None and self._on_frames is not None:
                self._on_frames(reply.start / self.rate + frame.pts)

    def end(self, turn: int) -> None:
        """No more audio or frames for ``turn``; it finishes once all of it was sent."""
        reply = self._by_turn.get(turn)
        if reply is None:
            if turn not in self._stopped and turn not in self._played:
                self._played[turn] = 0.0
                self.listener.finished(turn, 0.0, False)  # a reply without audio: nothing to play
            return
        reply.ended = True
        if reply.resampler is not None:
            reply.write(reply.resampler.flush())
        self._schedule_head()

    def clear(self, turn: int) -> float:
        """Drop everything queued for ``turn`` at once (audio and frames); later input of
        it is ignored. The next audio frame carries only a 10 ms fade-out of what was
        playing (no click), then silence. Returns the seconds handed out: what the user
        heard. A reply still queued or playing finishes with ``interrupted`` true."""
        self._stopped.add(turn)
        reply = self._by_turn.pop(turn, None)
        if reply is not None:
            if reply.start is not None and reply.started and reply is self._queue[0]:
                n = min(round(STOP_FADE_S * self.rate), max(0, reply.written - reply.pos))
                ramp = np.linspace(self._gain, 0.0, n, endpoint=False, dtype=np.float32)
                self._tail = reply.audio[reply.pos:reply.pos + n] * ramp
            self._played[turn] = reply.heard_s
            self._queue.remove(reply)
            self._schedule_head()
            self.listener.finished(turn, reply.heard_s, True)
        return self._played.get(turn, 0.0)

    def duck(self, volume: float) -> None:
        """Fade reply audio to ``volume`` (0..1) over ``DUCK_FADE_S``, from the next frame
        (so within ~50 ms): the avatar audibly yields while a barge-in is being weighed."""
        self._gain_target = min(1.0, max(0.0, volume))

    def restore(self) -> None:
        """Fade reply audio back to full volume over ``DUCK_FADE_S``."""
        self._gain_target = 1.0

    @property
    def volume(self) -> float:
        """The reply volume now (1.0 unless ducked or ramping)."""
        return self._gain

    def played_seconds(self, turn: int) -> float:
        """Seconds of ``turn``'s reply already handed out: what the user has heard (plus,
        over WebRTC, the ~20-100 ms in the network and the browser's jitter buffer)."""
        reply = self._by_turn.get(turn)
        if reply is not None:
            return reply.heard_s
        return self._played.get(turn, 0.0)

    @property
    def busy(self) -> bool:
        """A reply is queued or playing, or a cleared one's fade-out is still to go."""
        return bool(self._queue) or self.fading

    def wake_on_audio(self, fn: Callable[[], None] | None) -> None:
        """Call ``fn`` (on the loop) when reply audio arrives; None stops it."""
        self._wake = fn

    @property
    def turns(self) -> list[int]:
        """The turns with a reply queued or playing, oldest first."""
        return [r.turn for r in self._queue]

    @property
    def playing(self) -> int | None:
        """The turn whose reply is on the schedule now, if any."""
        head = self._queue[0] if self._queue else None
        return head.turn if head is not None and head.start is not None else None

    def _reply(self, turn: int) -> _Reply | None:
        if turn in self._stopped or turn in self._played:
            return None
        reply = self._by_turn.get(turn)
        if reply is None:
            reply = self._by_turn[turn] = _Reply(turn, self.rate)
            self._queue.append(reply)
        return reply

    def _schedule_head(self) -> None:
        """Give the head reply its start once it has audio (or ended without any)."""
        if not self._queue:
            return
        head = self._queue[0]
        if head.start is not None or not (head.written or head.ended):
            return
        now = self.clock.now()
        if self.start_margin_s:
            first = math.ceil((now + self.start_margin_s) / FRAME_S)
        else:
            # Nothing to render first: the frame due now carries the first sound, if it has
            # not gone yet (a voice idle in DTX hands it out at once), not the next one.
            first = math.floor(now / FRAME_S + 1e-6)
            if self.burst_s and first * self.frame - self._sounded_until >= BURST_AFTER_S * self.rate:
                self.clock.advance(self.burst_s)
        head.start = max(first * self.frame, self._next_sample)
        if head.frames and self._on_frames is not None:  # a queued reply's frames came first
            self._on_frames(head.start / self.rate + head.frames[0][0])

    def head_start_frame(self) -> int | None:
        """The audio frame the head reply starts in, once it is scheduled."""
        head = self._queue[0] if self._queue else None
        return None if head is None or head.start is None else head.start // self.frame

    # -- output (transport side) -------------------------------------------------------

    @property
    def fading(self) -> bool:
        """A cleared reply's fade-out is still to be handed out."""
        return len(self._tail) > 0

    def sounding(self, index: int) -> bool:
        """Whether audio frame ``index`` carries reply audio: a reply has started by its
        end, or a cleared reply's fade-out is still to go (a sender that sends nothing
        between replies asks this first)."""
        head = self._queue[0] if self._queue else None
        started = head is not None and head.start is not None and (index + 1) * self.frame > head.start
        return started or self.fading

    def audio_frame(self, index: int) -> np.ndarray:
        """The ``frame`` s16 samples of absolute audio frame ``index`` (silence when idle)."""
        sample = index * self.frame
        self._next_sample = sample + self.frame
        head = self._queue[0] if self._queue else None
        if (head is None or head.start is None) and not len(self._tail) and self._gain == self._gain_target:
            return self._silence  # between replies, 50 times a second: nothing to mix
        self._sounded_until = sample + self.frame
        out = np.zeros(self.frame, np.float32)
        if head is not None and head.start is not None and sample + self.frame > head.start:
            self._fill(head, sample, out)
            self._maybe_finish(head, sample + self.frame)
        self._apply_gain(out)
        if len(self._tail):
            out[: len(self._tail)] += self._tail
            self._tail = self._tail[:0]
        return (np.clip(out, -1.0, 1.0) * 32767.0).astype(np.int16)

    def _apply_gain(self, out: np.ndarray) -> None:
        """Scale ``out`` by the reply volume, ramping linearly toward its target."""
        if self._gain == self._gain_target == 1.0:
            return
        step = 1.0 / (DUCK_FADE_S * self.rate)
        delta = self._gain_target - self._gain
        ramp = self._gain + np.sign(delta) * step * np.arange(1, len(out) + 1, dtype=np.float32)
        ramp = np.minimum(ramp, self._gain_target) if delta > 0 else np.maximum(ramp, self._gain_target)
        out *= ramp
        self._gain = float(ramp[-1])

    def _fill(self, reply: _Reply, sample: int, out: np.ndarray) -> None:
        assert reply.start is not None
        lo = max(sample, reply.start)
        p = lo - reply.start  # reply position of the first sample of this frame it covers
        n = sample + self.frame - lo
        have = max(0, min(n, reply.written - p))
        out[lo - sample: lo - sample + have] = reply.audio[p:p + have]
        if have and not reply.started:
            reply.started = True
            self.listener.started(reply.turn, self.clock.clock.now())
        if have < n and not reply.ended:
            # Underrun: the rest of this frame is a pause and the reply moves later by it.
            reply.start += n - have
        reply.pos = p + (n if reply.ended else have)

    def _maybe_finish(self, reply: _Reply, now_sample: int) -> None:
        assert reply.start is not None
        if not reply.ended or reply.pos < reply.written:
            return
        if (reply.start / self.rate + reply.last_frame_time()) > now_sample / self.rate:
            return  # the closing frames after the last word still have to show
        heard = self._played[reply.turn] = reply.written / self.rate
        self._queue.popleft()
        self._by_turn.pop(reply.turn, None)
        self._schedule_head()
        self.listener.finished(reply.turn, heard, False)

    def video_frame(self, t: float) -> np.ndarray | None:
        """The reply frame to show at media time ``t`` (the latest whose time is ≤ t), or
        None when no reply is on screen (show the idle animation)."""
        shown = self.show(t)
        return shown.image if isinstance(shown, AvatarFrame) else None

    def pose_ahead(self, t: float) -> tuple[float, ...] | None:
        """The pose a reply will show at media time ``t`` (now or later), as far as it is
        known now: None where no reply is on screen then (the idle face). Changes nothing:
        a reply that starts, slips (an underrun) or is cleared changes the answer."""
        head = self._queue[0] if self._queue else None
        if head is None or head.start is None:
            return None
        rt = t - head.start / self.rate
        if rt < 0 or (head.ended and rt > head.last_frame_time() + FRAME_S):
            return None
        candidate = head.shown
        for pts, frame in head.frames:
            if pts > rt:
                break
            candidate = frame
        return candidate.values if isinstance(candidate, AvatarPose) else None

    def show(self, t: float) -> AvatarFrame | AvatarPose | None:
        """What of the head reply is on screen at media time ``t`` (the latest frame whose
        time is ≤ t; the first one tells the listener), or None (idle)."""
        head = self._queue[0] if self._queue else None
        if head is None or head.start is None:
            return None
        rt = t - head.start / self.rate
        if rt < 0:
            return None
        while head.frames and head.frames[0][0] <= rt:
            head.shown = head.frames.popleft()[1]
        if head.shown is not None and not head.first_frame:
            head.first_frame = True
            self.listener.first_frame(head.turn, self.clock.clock.now())
        # Before the reply's first frame arrives (a slow render) the idle face stays up;
        # after, a late frame leaves the previous one on screen rather than flicker to idle.
        return head.shown


class IdleFrames:
    """Images for when no reply is on screen, rendered one frame ahead off the loop.

    ``render(t)`` is blocking (an idle avatar render at media time ``t``, ~10 ms); it runs
    in the scheduler's ``render`` lane at ``BACKGROUND`` priority (engine/scheduling.py), so
    a face nobody is talking to waits for every session's turn-critical work and reply
    frames. While its render is still queued, ``get`` gives the last idle frame again
    instead of waiting: a busy machine lowers the idle face's frame rate, never the video's
    or anyone's reply. None gives a static dark frame.
    """

    def __init__(self, render: Callable[[float], np.ndarray] | None, fps: int) -> None:
        self._render = render
        self._fps = fps
        self._pending: asyncio.Future[np.ndarray] | None = None
        self._last: np.ndarray | None = None
        self._static = np.full((FRAME_SIZE, FRAME_SIZE, 3), 16, np.uint8)
        self.repeated = 0  # frames given again because the render lane was busy

    async def get(self, k: int) -> np.ndarray:
        if self._render is None:
            return self._static
        pending = self._pending or self._start(k)
        self._pending = pending
        if not pending.done() and self._last is not None:
            self.repeated += 1
            return self._last
        image = await pending
        self._last = image
        self._pending = self._start(k + 1)
        return image

    def _start(self, k: int) -> asyncio.Future[np.ndarray]:
        assert self._render is not None
        # A future, not a task: cancelling it takes a render that has not started out of
        # the queue, and a session's task count stays what it was.
        return current_scheduler().submit(self._render, k / self._fps, lane="render", priority=Priority.BACKGROUND)

    def discard(self) -> None:
        """Forget the idle frames (a reply is showing: they would be stale when it ends)."""
        self.close()
        self._last = None

    def close(self) -> None:
        """Drop the render ahead (a queued one never runs)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


class AvatarVideoTrack(MediaStreamTrack):
    """The avatar at ``fps``: reply frames from the playout, idle frames between replies.

    ``recv`` sleeps until frame ``k`` is due on the clock and never blocks the loop (idle
    renders run in the executor, one frame ahead). If called late by more than
    ``MAX_LAG_S`` it skips to the current frame.
    """

    kind = "video"

    def __init__(self, clock: MediaClock, playout: Playout, idle: IdleFrames, fps: int = 25) -> None:
        super().__init__()
        self._clock, self._playout, self._idle, self._fps = clock, playout, idle, fps
        self._next = 0
        self.frames_sent = 0
        # Frames leave as yuv420p, converted by one scaler kept for the track's life. Given
        # rgb24, aiortc's VP8 encoder calls ``frame.reformat`` on each frame: a new swscale
        # context per frame, whose slice threads start and exit with it (~50 threads a
        # second at 25 fps). That churn cycled glibc's malloc arenas and the server's RSS
        # grew ~1 MiB per turn; in-use memory did not.
        self._yuv = VideoReformatter()

    def stop(self) -> None:
        super().stop()
        self._idle.close()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._clock.start()
        k = max(self._next, math.floor((self._clock.now() - MAX_LAG_S) * self._fps))
        t = k / self._fps
        await self._clock.sleep_until(t)
        image = self._playout.video_frame(t)
        if image is None:
            image = await self._idle.get(k)
        else:
            self._idle.discard()
        self._next = k + 1
        # In an executor, as aiortc ran the conversion before: ~1-2 ms a frame off the loop.
        frame = await asyncio.get_running_loop().run_in_executor(None, self._to_yuv, image)
        frame.pts = round(t * VIDEO_CLOCK)
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        self.frames_sent += 1
        return frame

    def _to_yuv(self, image: np.ndarray) -> av.VideoFrame:
        """``image`` (rgb24) as a yuv420p frame, what VP8 encodes (~1-2 ms at 512x512; the
        encoder did the same conversion per frame). One thread: slice threads would only
        add idle threads here."""
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        return self._yuv.reformat(rgb, format="yuv420p", threads=1)


class AvatarAudioTrack(MediaStreamTrack):
    """The avatar's voice: 20 ms frames of mono s16 from the playout at its rate (48 kHz
    for WebRTC; Opus-encoded by aiortc), silence between replies. Paced by the clock like
    the video track.

    ``on_sent(samples, at)``, if given, is called with every frame handed to the encoder
    (the s16 samples, as sent) and the clock's time it was (the echo guard's reference).
    """

    kind = "audio"

    def __init__(self, clock: MediaClock, playout: Playout,
                 on_sent: Callable[[np.ndarray, float], None] | None = None) -> None:
        super().__init__()
        self._clock, self._playout = clock, playout
        self._on_sent = on_sent
        self._next = 0

    async def recv(self) -> av.AudioFrame:
        n, samples = await self.next_samples()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._playout.rate
        frame.pts = n * self._playout.frame
        frame.time_base = Fraction(1, self._playout.rate)
        return frame

    @property
    def replying(self) -> bool:
        """A reply is queued or playing (or a cut one still fading out)."""
        return self._playout.busy

    async def wait_idle(self, frames: int) -> None:
        """Between replies: let up to ``frames`` frames go unsent, returning early when a
        reply arrives. The next frame handed out is then the one due now (no catch-up)."""
        playout = self._playout
        if not playout.busy:
            # One future and one timer, no tasks: this waits most of an idle session's life.
            woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake() -> None:
                if not woken.done():
                    woken.set_result(None)

            t0 = self._clock.start()
            timer = self._clock.clock.call_at(t0 + (self._next + frames) * FRAME_S, wake)
            playout.wake_on_audio(wake)
            try:
                await woken
            finally:
                timer.cancel()
                playout.wake_on_audio(None)
        # (A frame due exactly now must not read as the one before: float time.)
        due = math.floor(self._clock.now() / FRAME_S + 1e-6)
        # A reply placed before now (its burst: ``Playout.burst_s``) is sent from its start.
        start = self._playout.head_start_frame()
        if start is not None and due - start <= MAX_LAG_S / FRAME_S:
            due = min(due, start)
        self._next = max(self._next, due)

    async def next_samples(self) -> tuple[int, np.ndarray]:
        """The next frame's index and its s16 samples, when it is due."""
        if self.readyState != "live":
            raise MediaStreamError
        self._clock.start()
        playout = self._playout
        # The first frame is always frame 0, even if the clock started a while ago (a page
        # drawing the avatar took the clock first): its RTP timestamp is then media time 0,
        # which is how such a page maps what it hears onto the face's rows.
        n = 0 if self._next == 0 else max(self._next, math.floor((self._clock.now() - MAX_LAG_S) / FRAME_S))
        await self._clock.sleep_until(n * FRAME_S)
        samples = playout.audio_frame(n)
        if self._on_sent is not None:
            self._on_sent(samples, self._clock.clock.now())
        self._next = n + 1
        return n, samples
