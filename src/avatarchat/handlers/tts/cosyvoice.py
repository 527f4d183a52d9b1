"""``tts: cosyvoice``: Alibaba Cloud Bailian's CosyVoice voices through DashScope's WebSocket
inference API, driven by the official ``dashscope`` SDK (``handlers.services.dashscope``).

Each clause the reply's text splitter cuts is one synthesis task: ``run-task`` (model,
voice, 16-bit PCM at 24 kHz, word timestamps), ``continue-task`` with the clause,
``finish-task``; the audio streams back in binary frames, gathered here into pieces of
``piece_ms`` that go out as they come (the avatar starts talking before the clause is
synthesized). With ``word_timestamps`` the service sends each word's start and end
(``sentence.words``, ms); an English word is spread into its phonemes by hibari's G2P,
so the mouth follows phonemes as with the embedded voice; in other languages the pieces
carry no timings and the avatar's audio-driven mouth follows the sound.

Endpoints: ``wss://dashscope.aliyuncs.com/api-ws/v1/inference`` (mainland China, the
default), ``wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference`` (international,
Singapore), or a workspace domain ``wss://{WorkspaceId}.cn-beijing.maas.aliyuncs.com/...``.

Failures: no key, a rejected key, an unknown model or voice, an unreachable endpoint stop
``serve`` at load (one small synthesis, ``check``); in a turn they raise
``DashScopeError`` out of ``handle`` (the engine shows the fallback line). Nothing waits
longer than ``connect_timeout_s`` for the handshake or ``first_audio_timeout_s`` for the
first audio and between frames. A cancelled turn closes the socket at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from avatarchat.engine.events import Event, PhonemeTiming, ReplyText, UserTranscript
from avatarchat.engine.handler import HandlerLoadError, register
from avatarchat.handlers.services.dashscope import (
    MAINLAND_URL,
    DashScopeError,
    SdkTask,
    api_key,
    audio_api,
    check_url,
    connector,
    run_check,
)

#: The socket's own read timeout lies past ours, so that ours (which names the step) fires first.
_BACKSTOP_S = 5.0
from avatarchat.handlers.tts.base import StreamingTTS, Synthesis, TTSContext, TTSOptions

RATE = 24_000
#: A piece quieter than this (peak) is a pause: it goes out with the piece before it.
_QUIET_PEAK = 0.01
#: A spare task unused this long is closed: the service ends a task that has had no text
#: for 23 s (the CosyVoice reference's continue-task limit).
_SPARE_S = 15.0


class CosyVoiceOptions(TTSOptions):
    #: The WebSocket inference endpoint (see the module docstring for the regions).
    url: str = MAINLAND_URL
    #: "" reads $DASHSCOPE_API_KEY. Never shown: the name ends in "key".
    api_key: str = Field(default="", repr=False)
    #: cosyvoice-v1, cosyvoice-v2, cosyvoice-v3-flash, cosyvoice-v3-plus…
    model: str = "cosyvoice-v2"
    #: A system voice of that model (e.g. longxiaochun_v2) or a cloned one.
    voice: str = "longxiaochun_v2"
    #: The synthesis language hint (zh, en, …); None: the session's language.
    language: str | None = None
    speech_rate: float = Field(default=1.0, ge=0.5, le=2.0)
    volume: int = Field(default=50, ge=0, le=100)
    #: Ask for word timestamps (system voices marked for it and cloned v2/v3 voices).
    word_timestamps: bool = True
    #: Audio gathered into one ReplyAudio piece (the first goes out once the second begins).
    piece_ms: int = Field(default=240, ge=110, le=2000)
    connect_timeout_s: float = Field(default=5.0, gt=0.0)
    #: From the request to the first audio, and the longest silence after it.
    first_audio_timeout_s: float = Field(default=10.0, gt=0.0)
    #: One tiny synthesis at load, so ``serve`` never starts with a voice that cannot speak.
    check: bool = True
    #: While the reply is written, keep a task connected and started for its next clause:
    #: its first audio then waits one round trip instead of the handshakes (TCP, TLS,
    #: WebSocket) and run-task. False: connect per clause only.
    warm_task: bool = True

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        return check_url(value)


@register
class CosyVoiceTTS(StreamingTTS[CosyVoiceOptions]):
    """Streams each clause from CosyVoice: 24 kHz pieces of ``piece_ms``, with phoneme
    timings from the service's word timestamps where it gives them (English)."""

    name = "cosyvoice"
    Options = CosyVoiceOptions
    sample_rate: ClassVar[int] = RATE
    #: The user's final words: a reply is coming, so a task is readied for its first clause.
    controls: ClassVar[tuple[type[Event], ...]] = (UserTranscript,)

    def __init__(self, options: CosyVoiceOptions) -> None:
        super().__init__(options)
        self._key = ""
        self._g2p: Any = None
        self._g2p_lock = threading.Lock()
        #: A task connected and started ahead of the next clause (and when it was opened):
        #: the clause's first audio then costs one round trip, not a handshake or three.
        self._spare: tuple[SdkTask, float] | None = None

    def models(self) -> list[Any]:
        return []

    def close_context(self, ctx: TTSContext) -> None:
        super().close_context(ctx)
        spare, self._spare = self._spare, None
        if spare is not None:
            spare[0].close()

    @property
    def language(self) -> str:
        return self.options.language or self.session_settings.language

    def load(self) -> None:
        """Resolve the key and, with ``check``, say "Hi." once: a rejected key, an unknown
        voice or model or an unreachable endpoint raises ``HandlerLoadError`` (one line)."""
        self._key = api_key(self.options.api_key)
        if self.options.word_timestamps and self.language.startswith("en"):
            from hibari.g2p import G2P

            self._g2p = G2P(british=False)
        if self.options.check:
            try:
                run_check(lambda: self._say_all("Hi."))
            except DashScopeError as exc:
                raise HandlerLoadError(f"tts cosyvoice (voice {self.options.voice!r}, model "
                                       f"{self.options.model!r}): {exc}") from None

    async def _say_all(self, text: str) -> None:
        async for _ in self.synthesize_stream(text, first=True):
            pass

    def _session(self) -> Any:
        o = self.options
        parameters = {"word_timestamp_enabled": True} if o.word_timestamps else None
        return audio_api(self._key, o.url).tts.connect(
            model=o.model, voice=o.voice, format="pcm", sample_rate=RATE, volume=o.volume, rate=o.speech_rate,
            language_hints=[self.language.split("-")[0]], parameters=parameters, ws_url=o.url,
            connector=connector(o.connect_timeout_s), timeout=o.first_audio_timeout_s + _BACKSTOP_S,
            api_key=self._key)

    async def handle(self, ctx: TTSContext, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, ReplyText) and self._key and self.options.warm_task:
            # The reply is being written: have a task ready for its next clause.
            self._prepare()
        async for out in super().handle(ctx, event):
            yield out

    def on_control(self, ctx: TTSContext, event: Event) -> list[Event]:
        if isinstance(event, UserTranscript) and event.final and self._key and self.options.warm_task:
            self._prepare()
        return []

    def _prepare(self) -> None:
        """Open a spare task (connect, run-task) unless a usable one is waiting."""
        if self._spare is not None:
            task, opened = self._spare
            if task.usable and time.monotonic() - opened < _SPARE_S:
                return
            task.close()
        task = SdkTask(self._session(), self.options.url, cancel="cancel")
        task.begin()
        self._spare = (task, time.monotonic())
        asyncio.get_running_loop().call_later(_SPARE_S, self._expire, task)

    def _expire(self, task: SdkTask) -> None:
        if self._spare is not None and self._spare[0] is task:
            self._spare = None
            task.close()

    def _take_spare(self) -> SdkTask | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        task, opened = spare
        if task.usable and time.monotonic() - opened < _SPARE_S:
            return task
        task.close()
        return None

    async def synthesize_stream(self, text: str, first: bool) -> AsyncGenerator[Synthesis, None]:
        """One task per clause (the spare one if it is ready); pieces of ``piece_ms`` as
        the frames come. Raises ``DashScopeError`` on any failure; closing the generator
        closes the socket."""
        if not self._key:
            raise DashScopeError("the cosyvoice voice is not loaded")
        task = self._take_spare() or SdkTask(self._session(), self.options.url, cancel="cancel")
        pieces = _Pieces(int(self.options.piece_ms * RATE / 1000))
        words: dict[tuple[int, int], tuple[str, float, float]] = {}
        try:
            await self._timed(task.start(), "connect and start the task")
            await task.call("send_text", text)
            await task.call("stop")
            while (frame := await self._timed(task.next(), "send audio")) is not None:
                if isinstance(frame, bytes):
                    for at, piece in pieces.add(frame):
                        yield piece, self._timings(words, at, piece)
                else:
                    _note_words(frame, words)
            for at, piece in pieces.finish():
                yield piece, self._timings(words, at, piece)
        finally:
            task.close()

    async def _timed(self, step: Any, what: str) -> Any:
        limit = self.options.first_audio_timeout_s
        try:
            return await asyncio.wait_for(step, limit)
        except TimeoutError:
            raise DashScopeError(f"DashScope at {self.options.url} did not {what} within {limit:g} s") from None

    def _timings(self, words: dict[tuple[int, int], tuple[str, float, float]], at: int,
                 piece: np.ndarray) -> tuple[PhonemeTiming, ...]:
        """The phonemes of the words that start inside ``piece`` (its first sample ``at``
        samples into the task's audio), in seconds from its first sample; () without G2P
        or word timestamps."""
        if self._g2p is None or not words:
            return ()
        start = at / RATE
        end = start + len(piece) / RATE
        out: list[PhonemeTiming] = []
        for text, begin, stop in sorted(words.values(), key=lambda w: w[1]):
            if start <= begin < end:
                out.extend(self._spread(text, begin - start, min(stop, end) - start))
        return tuple(out)

    def _spread(self, word: str, start: float, end: float) -> list[PhonemeTiming]:
        """``word``'s phonemes (hibari's G2P) spread evenly over ``start..end``."""
        with self._g2p_lock:
            phonemes = [c for c in self._g2p(word) if c.isalpha() and c not in "ˈˌː"]
        if not phonemes or end <= start:
            return []
        step = (end - start) / len(phonemes)
        return [PhonemeTiming(p, start + i * step, start + (i + 1) * step) for i, p in enumerate(phonemes)]


def _note_words(event: Any, words: dict[tuple[int, int], tuple[str, float, float]]) -> None:
    """Keep the word timestamps (``payload.output.sentence.words``, ms from the task's
    first sample) of a ``result-generated`` event, keyed by sentence and start."""
    output = ((event or {}).get("payload") or {}).get("output") or {}
    sentence = output.get("sentence") or {}
    for word in sentence.get("words") or ():
        try:
            begin, end = float(word["begin_time"]) / 1000, float(word["end_time"]) / 1000
        except (KeyError, TypeError, ValueError):
            continue  # a word without times says nothing about the mouth
        words[(int(sentence.get("index") or 0), int(begin * 1000))] = (str(word.get("text", "")), begin, end)


class _Pieces:
    """Gathers PCM16 frames into float32 pieces of at least ``size`` samples. A piece goes
    out when the next one is full, so the clause's last piece (with any short rest) is
    never tiny; a quiet piece (a pause) joins the one before it, so no piece is silence."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = bytearray()
        self._held: np.ndarray | None = None
        self._taken = 0  # samples of the pieces given out so far

    def add(self, frame: bytes) -> list[tuple[int, np.ndarray]]:
        """The pieces ready after ``frame``: (first sample from the task's start, samples)."""
        self._buf.extend(frame)
        out: list[tuple[int, np.ndarray]] = []
        while len(self._buf) >= 2 * self.size:
            chunk = np.frombuffer(bytes(self._buf[: 2 * self.size]), "<i2").astype(np.float32) / 32768.0
            del self._buf[: 2 * self.size]
            out.extend(self._hold(chunk))
        return out

    def _hold(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if self._held is None or float(np.abs(chunk).max(initial=0.0)) < _QUIET_PEAK:
            self._held = chunk if self._held is None else np.concatenate([self._held, chunk])
            return []
        out, self._held = self._held, chunk
        return [self._release(out)]

    def _release(self, piece: np.ndarray) -> tuple[int, np.ndarray]:
        at, self._taken = self._taken, self._taken + len(piece)
        return at, piece

    def finish(self) -> list[tuple[int, np.ndarray]]:
        rest = np.frombuffer(bytes(self._buf[: len(self._buf) // 2 * 2]), "<i2").astype(np.float32) / 32768.0
        self._buf.clear()
        last = rest if self._held is None else np.concatenate([self._held, rest])
        self._held = None
        return [self._release(last)] if len(last) else []
