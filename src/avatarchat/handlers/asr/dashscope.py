"""``asr: dashscope``: DashScope real-time speech recognition (Paraformer real-time, e.g.
``paraformer-realtime-v2``; ``fun-asr-realtime``) over its WebSocket inference API, driven
by the official ``dashscope`` SDK (``handlers.services.dashscope``).

One recognition task per user turn, connected and started when the user starts speaking
(``SpeechStarted``, on the control lane; else at the turn's first event): the new samples
of each ``SpeechSoFar``/``SpeechPaused``/``SpeechEnded`` go out as 16 kHz PCM16 frames of
100 ms, so the
service hears the utterance while it is spoken, and its intermediate results reach the
page as non-final ``UserTranscript``s. At a ``SpeechPaused`` the latest result (waiting up
to ``pause_wait_ms`` for one after the new audio) is the pause's early transcript, for
the end-of-turn rules. At ``SpeechEnded`` the rest of the audio and ``finish-task`` go
out, and the sentences the service ended make the final transcript. The language hint is
the session's language (or ``language``).

Endpoints: ``wss://dashscope.aliyuncs.com/api-ws/v1/inference`` (mainland China, the
default; Paraformer real-time is offered there), ``wss://dashscope-intl.aliyuncs.com/
api-ws/v1/inference`` (international), or a workspace domain.

Failures: no key, a rejected key, an unknown model, an unreachable endpoint stop ``serve``
at load (a task opened and finished with no audio, ``check``). In a turn a failure (the
connection broke, the service failed the task, no final result within
``first_result_timeout_s``) raises ``DashScopeError`` out of ``handle`` at the turn's end;
the engine says the ASR fallback line, and the next turn opens a new task. A cancelled
turn's task is closed at once and nothing more of it comes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.events import (
    Event,
    SpeechEnded,
    SpeechPaused,
    SpeechSoFar,
    SpeechStarted,
    TimingMark,
    UserTranscript,
)
from avatarchat.engine.handler import Handler, HandlerLoadError, HandlerOptions, SessionInfo, register
from avatarchat.handlers.asr.chinese import is_chinese
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

RATE = 16_000
FRAME = RATE // 10  # samples per binary frame (100 ms, as the reference recommends)


class DashScopeASROptions(HandlerOptions):
    #: The WebSocket inference endpoint (see the module docstring).
    url: str = MAINLAND_URL
    #: "" reads $DASHSCOPE_API_KEY. Never shown: the name ends in "key".
    api_key: str = Field(default="", repr=False)
    model: str = "paraformer-realtime-v2"
    #: The language hint (zh, en, ja, yue, ko, de, fr, ru); None: the session's language.
    language: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0.0)
    #: From the end of the user's speech to the final result (and to the task's start).
    first_result_timeout_s: float = Field(default=10.0, gt=0.0)
    #: At a pause, how long to wait for a result that heard the latest audio.
    pause_wait_ms: int = Field(default=300, ge=0, le=3000)
    #: Open and finish one task at load, so ``serve`` never starts without a working ASR.
    check: bool = True

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        return check_url(value)


@dataclass
class _Stream:
    """One turn's recognition task and what it has heard."""

    turn: int
    task: SdkTask
    sent: int = 0  # samples of the utterance sent so far
    finals: list[str] = field(default_factory=list)  # sentences the service ended
    current: str = ""  # the sentence being heard (intermediate result)
    shown: str = ""  # the last partial given to the page
    error: BaseException | None = None
    ready: bool = False  # task-started came
    closed: bool = False
    cancelled: bool = False  # cancel_turn: nothing more of the turn comes out
    #: Where the newest result's last word ends (ms of the turn's audio); None: no word times.
    heard_ms: float | None = None

    def text(self, joiner: str) -> str:
        return joiner.join(t for t in (*self.finals, self.current) if t).strip()


@dataclass
class DashScopeASRContext:
    language: str
    clock: Clock = REAL_CLOCK
    #: The open tasks by turn: the turn being spoken, and the one before it while its
    #: final result comes (a next turn may start before that).
    streams: dict[int, _Stream] = field(default_factory=dict)


@register
class DashScopeASR(Handler[DashScopeASROptions]):
    """Streams each turn's audio to DashScope; partial transcripts as the service hears
    them, the final one at ``SpeechEnded`` (``asr_start``/``asr_final`` marks around it)."""

    name = "dashscope"
    stage = "asr"
    Options = DashScopeASROptions
    accepts = (SpeechSoFar, SpeechPaused, SpeechEnded)
    #: The user started speaking: the turn's task connects and starts while they speak, so
    #: even a short "yes" (no SpeechSoFar before its end) finds it ready.
    controls = (SpeechStarted,)

    def __init__(self, options: DashScopeASROptions) -> None:
        super().__init__(options)
        self._key = ""

    def load(self) -> None:
        """Resolve the key and, with ``check``, open and finish one empty task: a rejected
        key, an unknown model or an unreachable endpoint raises ``HandlerLoadError``."""
        self._key = api_key(self.options.api_key)
        if self.options.check:
            try:
                run_check(lambda: self._empty_task(self.options.language or self.session_settings.language))
            except DashScopeError as exc:
                raise HandlerLoadError(f"asr dashscope (model {self.options.model!r}): {exc}") from None

    async def _empty_task(self, language: str) -> None:
        task = await self._open(language)
        try:
            await task.call("stop")
            while await self._timed(task.next(), "finish the task") is not None:
                pass
        finally:
            task.close()

    def create_context(self, session: SessionInfo) -> DashScopeASRContext:
        return DashScopeASRContext(self.options.language or session.settings.language, session.clock)

    def _recognition(self, language: str) -> Any:
        o = self.options
        return audio_api(self._key, o.url).asr.recognize(
            model=o.model, format="pcm", sample_rate=RATE, parameters={"language_hints": [language.split("-")[0]]},
            ws_url=o.url, connector=connector(o.connect_timeout_s), timeout=o.first_result_timeout_s + _BACKSTOP_S,
            api_key=self._key)

    async def _open(self, language: str) -> SdkTask:
        if not self._key:
            raise DashScopeError("the dashscope ASR is not loaded")
        task = SdkTask(self._recognition(language), self.options.url)
        try:
            await self._timed(task.start(), "start the recognition task")
        except BaseException:
            task.close()
            raise
        return task

    async def _timed(self, step: Any, what: str) -> Any:
        limit = self.options.first_result_timeout_s
        try:
            return await asyncio.wait_for(step, limit)
        except TimeoutError:
            raise DashScopeError(f"DashScope at {self.options.url} did not {what} within {limit:g} s") from None

    async def handle(self, ctx: DashScopeASRContext, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, SpeechEnded):
            async for out in self._end(ctx, event):
                yield out
            return
        assert isinstance(event, SpeechSoFar | SpeechPaused)
        stream = await self._stream_for(ctx, event.turn)
        if stream.error is None:
            await self._send(stream, event.audio)
            if isinstance(event, SpeechPaused):
                await self._settle(stream)
            self._absorb(stream)
        if stream.cancelled:
            return  # cancelled while it sent
        joiner = "" if is_chinese(ctx.language) else " "
        text = stream.text(joiner) if stream.error is None else ""
        if isinstance(event, SpeechPaused) and _lags(stream):
            # Results of speech long before the pause ("中国的首都是" of "中国的首都是哪里"): end
            # of turn would judge the wrong words (wait the unfinished hangover) and a reply
            # started on them would be dropped, a billed request. No words: the voice decides.
            text = ""
        if isinstance(event, SpeechPaused):
            yield UserTranscript(event.turn, text, final=False, speech_end=event.speech_end)
            yield event  # on to the turn stage, as every ASR passes a pause on
        elif text and text != stream.shown:
            stream.shown = text
            yield UserTranscript(event.turn, text, final=False)

    def on_control(self, ctx: DashScopeASRContext, event: Event) -> list[Event]:
        if isinstance(event, SpeechStarted) and self._key and event.turn not in ctx.streams:
            task = SdkTask(self._recognition(ctx.language), self.options.url)
            task.begin()
            self._keep(ctx, _Stream(event.turn, task))
        return []

    def _keep(self, ctx: DashScopeASRContext, stream: _Stream) -> None:
        """Add ``stream``; close the tasks of turns before the previous one (left open by a
        turn that never ended here)."""
        ctx.streams[stream.turn] = stream
        for turn in sorted(ctx.streams)[:-2]:
            self._close(ctx.streams.pop(turn))

    async def _stream_for(self, ctx: DashScopeASRContext, turn: int) -> _Stream:
        """The turn's task, started (opened now if the turn has none); on failure a stream
        that keeps the error, which the turn's end raises."""
        stream = ctx.streams.get(turn)
        if stream is None:
            try:
                stream = _Stream(turn, await self._open(ctx.language), ready=True)
            except DashScopeError as exc:
                stream = _Stream(turn, _CLOSED, error=exc)
            self._keep(ctx, stream)
        elif not stream.ready and stream.error is None:
            try:
                await self._timed(stream.task.start(), "start the recognition task")
                stream.ready = True
            except DashScopeError as exc:
                stream.error = exc
        return stream

    async def _send(self, stream: _Stream, audio: np.ndarray) -> None:
        """The utterance's samples not sent yet, as 100 ms PCM16 frames."""
        new = np.asarray(audio[stream.sent:], np.float32)
        stream.sent = max(stream.sent, len(audio))
        pcm = (np.clip(new, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        try:
            for start in range(0, len(pcm), 2 * FRAME):
                if stream.closed:
                    return
                await stream.task.call("send_audio_frame", pcm[start:start + 2 * FRAME])
        except DashScopeError as exc:
            stream.error = stream.error or exc

    async def _settle(self, stream: _Stream) -> None:
        """Wait up to ``pause_wait_ms`` for a result after the audio just sent."""
        try:
            frame = await asyncio.wait_for(stream.task.next(), self.options.pause_wait_ms / 1000)
        except TimeoutError:
            return
        except DashScopeError as exc:
            stream.error = stream.error or exc
            return
        if frame is not None:
            _note(stream, frame)

    def _absorb(self, stream: _Stream) -> None:
        """Take in the results that came, without waiting."""
        try:
            for frame in stream.task.poll():
                _note(stream, frame)
        except DashScopeError as exc:
            stream.error = stream.error or exc

    async def _end(self, ctx: DashScopeASRContext, event: SpeechEnded) -> AsyncIterator[Event]:
        yield TimingMark(event.turn, "asr_start", at=ctx.clock.now())
        stream = await self._stream_for(ctx, event.turn)
        try:
            if stream.error is None:
                await self._send(stream, event.audio)
            if stream.error is None and not stream.closed:
                await self._finish(stream)
        finally:
            self._close(stream)
            if ctx.streams.get(event.turn) is stream:
                del ctx.streams[event.turn]
        if stream.cancelled:
            return
        if stream.error is not None:
            raise stream.error
        yield TimingMark(event.turn, "asr_final", at=ctx.clock.now())
        yield UserTranscript(event.turn, stream.text("" if is_chinese(ctx.language) else " "), final=True)

    async def _finish(self, stream: _Stream) -> None:
        """``finish-task``, then every result until ``task-finished``."""
        try:
            await stream.task.call("stop")
            while (frame := await self._timed(stream.task.next(), "send the final transcript")) is not None:
                _note(stream, frame)
        except DashScopeError as exc:
            stream.error = exc

    def _close(self, stream: _Stream) -> None:
        stream.closed = True
        stream.task.close()

    def cancel_turn(self, ctx: DashScopeASRContext, turn: int) -> None:
        stream = ctx.streams.pop(turn, None)
        if stream is not None:
            stream.cancelled = True
            self._close(stream)

    def close_context(self, ctx: DashScopeASRContext) -> None:
        for stream in ctx.streams.values():
            self._close(stream)
        ctx.streams.clear()


#: A pause's transcript whose last word ends this long before the audio sent is stale.
STALE_MS = 500


def _lags(stream: _Stream) -> bool:
    """Whether the newest result has not heard the last words sent (by its word times)."""
    return stream.heard_ms is not None and stream.heard_ms < stream.sent * 1000 / RATE - STALE_MS


def _note(stream: _Stream, frame: Any) -> None:
    """Take one event's result in: an ended sentence joins the finals, an intermediate
    one replaces the sentence being heard."""
    if not isinstance(frame, dict) or frame.get("header", {}).get("event") != "result-generated":
        return
    sentence = ((frame.get("payload") or {}).get("output") or {}).get("sentence") or {}
    if sentence.get("heartbeat"):
        return
    text = str(sentence.get("text") or "").strip()
    times = [w.get("end_time") for w in sentence.get("words") or () if isinstance(w, dict)]
    ends = [float(e) for e in times if isinstance(e, int | float)]
    if ends:
        stream.heard_ms = max(ends)
    if sentence.get("sentence_end") or sentence.get("end_time") is not None:
        if text:
            stream.finals.append(text)
        stream.current = ""
    else:
        stream.current = text


class _ClosedTask:
    """Stands for a task that never opened or was cancelled: sends nothing, hears nothing."""

    async def call(self, method: str, *args: Any) -> None:
        raise DashScopeError("the recognition task is closed")

    async def next(self) -> None:
        return None

    def poll(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass


_CLOSED: Any = _ClosedTask()
