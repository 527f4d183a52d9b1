"""A session: one conversation, a chain of stages joined by asyncio queues.

Each stage runs as one task. It takes events from its input queue; those its handler
accepts are handled (one at a time, in order), all others are passed on. The output of
the last stage is the session's output, read with ``events()``.

Cancelling a turn is an engine operation: ``cancel_turn`` marks the turn dead, cancels the
handler calls working on it in every stage at once, asks each handler to drop what it
buffered, and emits ``TurnCancelled``. Events of a dead turn still in a queue are dropped
where they are found, so nothing of it comes out afterwards.

A handler that raises ends its turn with an ``ErrorEvent`` (with an error id, logged with
the traceback under the same id) and a ``TurnCancelled``; the session and its other turns
go on. The avatar then answers with a short fallback line (``SessionSettings.fallback_for``
the failed stage) as a reply of a new turn, entering the pipeline right after the stage that
failed: after the ASR or the LLM it is spoken and animated, after the voice it is only
shown. What was heard of a reply that failed mid-stream stays heard; nothing more of it is
said, and the fallback follows (like an interruption). The fallback is not the model's:
no LLM history holds it. A failure on a provisional event (speech so far, a pause, a
partial transcript) only loses a head start: it is logged and the turn goes on.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from avatarchat.engine.events import (
    NO_TURN,
    EndOfTurnHint,
    ErrorEvent,
    Event,
    ReplyEnd,
    ReplyText,
    SpeechOngoing,
    SpeechPaused,
    SpeechSoFar,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.handler import Handler, SessionInfo, run_blocking

log = logging.getLogger(__name__)


@dataclass
class _Stage:
    handler: Handler[Any]
    ctx: Any
    inbox: asyncio.Queue[Event]
    outbox: asyncio.Queue[Event]
    task: asyncio.Task[None] | None = None
    busy_turn: int = NO_TURN
    busy: asyncio.Task[None] | None = None


class Session:
    """One user's conversation over shared handlers. Use ``async with`` or ``start``/``close``."""

    def __init__(self, handlers: Sequence[Handler[Any]], info: SessionInfo) -> None:
        self.info = info
        info.new_turn = self.new_turn
        self._handlers = list(handlers)
        self._stages: list[_Stage] = []
        self._output: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled: set[int] = set()
        self._open_turns: set[int] = set()
        self._last_turn = 0
        self._closed = False
        self._observers: list[tuple[tuple[type[Event], ...], Callable[[Event], None]]] = []

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        inbox: asyncio.Queue[Event] = asyncio.Queue()
        self._input = inbox
        for i, handler in enumerate(self._handlers):
            last = i == len(self._handlers) - 1
            outbox: asyncio.Queue[Event] = self._output if last else asyncio.Queue()
            # In an executor: a context may load a small model (the VAD's ONNX session took
            # 45-65 ms), which would stall every other session's loop.
            ctx = await run_blocking(handler.create_context, self.info)
            stage = _Stage(handler, ctx, inbox, outbox)
            stage.task = asyncio.create_task(self._run(stage), name=f"stage-{handler.stage}")
            self._stages.append(stage)
            inbox = outbox

    async def close(self) -> None:
        """Stop every stage task and close the handler contexts. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for s in self._stages for t in (s.busy, s.task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stage in self._stages:
            try:
                stage.handler.close_context(stage.ctx)
            except Exception:  # a broken close must not keep the other contexts open
                log.exception("closing %s context failed", stage.handler.name)

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- input -------------------------------------------------------------------------

    def new_turn(self) -> int:
        """Allocate the id of a new user turn."""
        self._last_turn += 1
        self._open_turns.add(self._last_turn)
        return self._last_turn

    def push(self, event: Event) -> None:
        """Feed an event to the first stage (microphone audio, a typed message…)."""
        if self._closed:
            raise RuntimeError("session is closed")
        self._input.put_nowait(event)

    def say(self, text: str) -> int:
        """Start a turn from typed text (skips VAD and ASR); returns its id."""
        turn = self.new_turn()
        self.push(UserTranscript(turn, text, final=True))
        return turn

    # -- output ------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Everything the session emits, in order, without events of cancelled turns."""
        while True:
            event = await self._output.get()
            if self._is_dead(event):
                continue
            if isinstance(event, ReplyEnd | TurnCancelled):
                self._open_turns.discard(event.turn)
            yield event

    def observe(self, types: tuple[type[Event], ...], callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` the moment any stage emits an event of ``types``.

        For turn-taking, which must not wait behind a stage busy with a reply (a stage
        handles its events one at a time, so a ``SpeechStarted`` reaches ``events()`` only
        after the LLM, TTS and avatar have finished what they were doing). The event still
        goes down the pipeline as usual. Called on the loop, in emission order, never for
        events of cancelled turns; the callback must not block, and what it raises is
        logged and ignored.
        """
        self._observers.append((types, callback))

    def _notify(self, event: Event) -> None:
        for types, callback in self._observers:
            if isinstance(event, types):
                try:
                    callback(event)
                except Exception:
                    log.exception("observer of %s failed", type(event).__name__)

    # -- cancellation ----------------------------------------------------------------

    def cancel_turn(self, turn: int, reason: str = "interrupted") -> bool:
        """Stop ``turn`` in every stage at once. Returns False if it had already ended."""
        if turn in self._cancelled or turn not in self._open_turns:
            return False
        self._cancelled.add(turn)
        for stage in self._stages:
            if stage.busy is not None and stage.busy_turn == turn:
                stage.busy.cancel()
            try:
                stage.handler.cancel_turn(stage.ctx, turn)
            except Exception:
                log.exception("%s.cancel_turn failed", stage.handler.name)
        # Straight to the output: it must not wait behind the dead turn's queued events.
        self._output.put_nowait(TurnCancelled(turn, reason))
        return True

    def interrupt(self, reason: str = "interrupted") -> list[int]:
        """Cancel every turn still in flight (barge-in, the interrupt button)."""
        return [t for t in sorted(self._open_turns) if self.cancel_turn(t, reason)]

    def context(self, stage: str) -> Any:
        """The handler context of ``stage`` in this session (for transports that render
        between turns, e.g. the avatar's idle frames); None if the pipeline has no such
        stage. Valid after ``start()`` until ``close()``."""
        return next((s.ctx for s in self._stages if s.handler.stage == stage), None)

    @property
    def open_turns(self) -> frozenset[int]:
        return frozenset(self._open_turns)

    def _is_dead(self, event: Event) -> bool:
        return event.turn in self._cancelled and not isinstance(event, TurnCancelled | ErrorEvent)

    # -- the stage loop --------------------------------------------------------------

    async def _run(self, stage: _Stage) -> None:
        handler = stage.handler
        while True:
            event = await stage.inbox.get()
            if self._is_dead(event):
                continue
            if not isinstance(event, handler.accepts) or isinstance(event, handler.forwards):
                stage.outbox.put_nowait(event)
            if not isinstance(event, handler.accepts):
                continue
            stage.busy_turn = event.turn
            stage.busy = asyncio.create_task(self._handle(stage, event))
            try:
                # asyncio.wait does not raise when `busy` alone is cancelled by cancel_turn.
                await asyncio.wait({stage.busy})
            finally:
                stage.busy, stage.busy_turn = None, NO_TURN

    async def _handle(self, stage: _Stage, event: Event) -> None:
        try:
            # ``handle`` is an async generator (the handler contract), so it has ``aclose``.
            outputs_gen = cast(AsyncGenerator[Event, None], stage.handler.handle(stage.ctx, event))
            async with aclosing(outputs_gen) as outputs:
                async for out in outputs:
                    if not self._is_dead(out):
                        stage.outbox.put_nowait(out)
                        if self._observers:
                            self._notify(out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(stage, event, exc)

    def _failed(self, stage: _Stage, event: Event, exc: Exception) -> None:
        """The error path: log under an id, tell the consumer, end the turn, say the fallback."""
        name, where = stage.handler.name, stage.handler.stage
        error = ErrorEvent(event.turn, where, f"{where} ({name}): {type(exc).__name__}: {exc}")
        if _provisional(event):
            log.warning("[error %s] %s handler %r failed on a provisional %s of turn %s; the turn goes on",
                        error.error_id, where, name, type(event).__name__, event.turn, exc_info=exc)
            return
        log.error("[error %s] %s handler %r failed on turn %s", error.error_id, where, name, event.turn,
                  exc_info=exc)
        self._output.put_nowait(error)
        if event.turn == NO_TURN or not self.cancel_turn(event.turn, reason="error"):
            return  # nobody waits for a reply (or the turn had already ended)
        line = self.info.settings.fallback_for(where).strip()
        if line and not self._closed:
            # A turn of its own: the failed one is cancelled, so nothing of it (deltas still
            # queued downstream, the rest of its audio) comes out after the fallback starts.
            turn = self.new_turn()
            stage.outbox.put_nowait(ReplyText(turn, line))
            stage.outbox.put_nowait(ReplyEnd(turn, line))


def _provisional(event: Event) -> bool:
    """Whether ``event`` only gives a stage a head start (the turn's final event follows)."""
    if isinstance(event, UserTranscript):
        return not event.final
    return isinstance(event, SpeechSoFar | SpeechPaused | SpeechOngoing | EndOfTurnHint)
