"""A session: one conversation, a chain of stages joined by asyncio queues.

Each stage has one worker task. It takes events from its input queue; those its handler
accepts are handled (one at a time, in order), all others are passed on. The output of the
last stage is the session's output, read with ``events()``.

The control lane. An event of a ``CONTROL`` type that a stage emits goes on down the
pipeline, and at the same moment to every stage whose handler lists its type in
``controls`` (through the stage's control queue and control task, ahead of queued data; the
worker also drains that queue before each event it handles, so a control event is never
overtaken by data sent after it) and to the engine's listeners (``listen``: turn-taking,
end of turn). ``signal`` puts an engine-made control event on the lane (``EndOfTurnHint``,
``ReplyInterrupted``; the latter also comes out of ``events()``).

Cancelling a turn is an engine operation: ``cancel_turn`` marks the turn dead, stops the
handler calls working on it in every stage at once (their worker is cancelled and picks up
the next event), asks each handler to drop what it buffered, and emits ``TurnCancelled``.
Events of a dead turn still in a queue are dropped where they are found, so nothing of it
comes out afterwards.

A reply started at a pause (``engine.speculation``, ``session.end_of_turn.speculate``) runs as
a hidden turn of its own: its output is held here until the user's turn ends with the same
words (it then comes out as that turn's reply) or dropped unheard; its id never leaves the
session (``cancel_turn``, ``signal`` and ``events()`` translate).

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
import collections
import dataclasses
import logging
from contextlib import aclosing
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from avatarchat.engine.endofturn import EndOfTurn
from avatarchat.engine.speculation import SPECULATION_DROPPED, Speculations, Speculator
from avatarchat.engine.events import (
    CONTROL,
    NO_TURN,
    EndOfTurnHint,
    ErrorEvent,
    Event,
    ReplyEnd,
    ReplyInterrupted,
    ReplyText,
    SpeechOngoing,
    SpeechPaused,
    SpeechSoFar,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.handler import AvatarHandler, Handler, SessionInfo, run_blocking

log = logging.getLogger(__name__)


Listener = Callable[[Event], None]
#: Put on the output queue to wake ``events()`` for what is ready; never comes out.
_WAKE = Event(NO_TURN)


@dataclass
class _Stage:
    handler: Handler[Any]
    ctx: Any
    inbox: asyncio.Queue[Event]
    outbox: asyncio.Queue[Event]
    control: asyncio.Queue[Event]
    worker: asyncio.Task[None] | None = None
    steer: asyncio.Task[None] | None = None
    #: The turn of the event the worker is handling (NO_TURN between events).
    busy_turn: int = NO_TURN
    #: ``cancel_turn`` cancelled the worker to stop ``busy_turn``: it goes on afterwards.
    stopping: bool = False


class Session:
    """One user's conversation over shared handlers. Use ``async with`` or ``start``/``close``."""

    def __init__(self, handlers: Sequence[Handler[Any]], info: SessionInfo) -> None:
        self.info = info
        info.new_turn = self.new_turn
        self._handlers = list(handlers)
        self._stages: list[_Stage] = []
        self._output: asyncio.Queue[Event] = asyncio.Queue()
        self._ready: collections.deque[Event] = collections.deque()  # out next, as they are
        self._spec = Speculations()
        self.speculator: Speculator | None = None
        self._cancelled: set[int] = set()
        self._open_turns: set[int] = set()
        self._last_turn = 0
        self._closed = False
        self._listeners: list[tuple[tuple[type[Event], ...], Listener]] = []
        eot = info.settings.end_of_turn
        if eot.complete_ms or eot.unfinished_ms:
            voice = any(h.stage == "turn" for h in self._handlers)
            self.listen(EndOfTurn.WATCHES, EndOfTurn(self.signal, eot, voice=voice, language=info.settings.language).on_event)
        if eot.speculate:
            self.speculator = Speculator(self, language=info.settings.language)
            self.listen(Speculator.WATCHES, self.speculator.on_event)

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
            stage = _Stage(handler, ctx, inbox, outbox, asyncio.Queue())
            stage.worker = asyncio.create_task(self._work(stage), name=f"stage-{handler.stage}")
            stage.steer = asyncio.create_task(self._steer(stage), name=f"control-{handler.stage}")
            self._stages.append(stage)
            inbox = outbox

    async def close(self) -> None:
        """Stop every stage task and close the handler contexts. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for s in self._stages for t in (s.worker, s.steer) if t is not None]
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
        """Everything the session emits, in order, without events of cancelled turns and
        with none of a speculation that was not adopted (``engine.speculation``)."""
        while True:
            while self._ready:
                event = self._ready.popleft()
                if isinstance(event, ReplyEnd | TurnCancelled):
                    self._open_turns.discard(event.turn)
                yield event
            raw = await self._output.get()
            if raw is not _WAKE:
                self._ready.extend(self._outward(raw))

    def _outward(self, event: Event) -> list[Event]:
        if self._is_dead(event):
            return []
        if isinstance(event, ReplyEnd) and event.turn in self._spec.alias:
            self._open_turns.discard(event.turn)  # the adopted speculation's own id
        return self._spec.outward(event)

    # -- speculation (engine.speculation) --------------------------------------------

    def speculate(self, turn: int, text: str) -> int:
        """Start a hidden turn answering ``text`` for the user's ``turn``; returns its id.
        Its output is held until ``adopt``; ``cancel_turn`` drops it unheard."""
        spec = self.new_turn()
        self._spec.start(spec, turn)
        words = UserTranscript(spec, text, final=True)
        # Straight to the first stage that answers words (the LLM): the stages before it
        # would only pass it on, after whatever they are busy with (Smart Turn's ~60 ms).
        stage = next((st for st in self._stages if isinstance(words, st.handler.accepts)), None)
        if stage is None:
            self.push(words)
        else:
            stage.inbox.put_nowait(words)
        return spec

    def adopt(self, spec: int, final: UserTranscript) -> None:
        """The user's turn ended with the words ``spec`` answers: ``final`` comes out now,
        then what ``spec`` made so far and will make, as ``final``'s turn."""
        if spec not in self._spec.hidden or spec in self._cancelled:
            return
        # What already left the last stage goes first, judged before the adoption.
        while not self._output.empty():
            raw = self._output.get_nowait()
            if raw is not _WAKE:
                self._ready.extend(self._outward(raw))
        self._ready.extend(self._spec.adopt(spec, final, self.info.clock.now()))
        self._output.put_nowait(_WAKE)

    def listen(self, types: tuple[type[Event], ...], callback: Listener) -> None:
        """Call ``callback(event)`` the moment an event of ``types`` is emitted by a stage,
        made by ``cancel_turn`` or ``signal``led: for engine parts that must not wait behind
        a stage busy with a reply (turn-taking, end of turn), and for tests.
        Called on the loop, in order, never for events of cancelled turns (except their
        ``TurnCancelled``); the callback must not block, and what it raises is logged."""
        self._listeners.append((types, callback))

    def signal(self, event: Event) -> None:
        """Put an engine-made control event on the lane (``EndOfTurnHint``,
        ``ReplyInterrupted``); a ``ReplyInterrupted`` also comes out of ``events()``."""
        if self._closed:
            return
        if isinstance(event, ReplyInterrupted):
            self._output.put_nowait(event)
            # The stages made the reply as its speculation's turn, if it was one.
            event = dataclasses.replace(event, turn=self._spec.inner(event.turn))
        self._broadcast(event)

    def _broadcast(self, event: Event) -> None:
        """A control event to the stages that react to it, and to the listeners."""
        for stage in self._stages:
            if isinstance(event, stage.handler.controls):
                stage.control.put_nowait(event)
        self._tell(event)

    def _tell(self, event: Event) -> None:
        for types, callback in self._listeners:
            if isinstance(event, types):
                try:
                    callback(event)
                except Exception:
                    log.exception("listener of %s failed", type(event).__name__)

    # -- cancellation ----------------------------------------------------------------

    def cancel_turn(self, turn: int, reason: str = "interrupted") -> bool:
        """Stop ``turn`` in every stage at once. Returns False if it had already ended.
        An adopted speculation's id cancels its user turn; a hidden one goes silently."""
        turn = self._spec.outer(turn)
        if turn in self._cancelled or turn not in self._open_turns:
            return False
        if turn in self._spec.hidden:
            self._spec.drop(turn)
            self._stop(turn, SPECULATION_DROPPED, quiet=True)  # the LLM forgets it
            return True
        spec = self._spec.pairs.get(turn)
        if spec is not None and spec not in self._cancelled:
            self._spec.forget(spec, turn)
            self._stop(spec, reason, quiet=True)
        self._stop(turn, reason)
        return True

    def _stop(self, turn: int, reason: str, quiet: bool = False) -> None:
        """``cancel_turn``'s work; ``quiet``: a turn the outside never knew (no output)."""
        self._cancelled.add(turn)
        if quiet:
            self._open_turns.discard(turn)
        current = asyncio.current_task()
        for stage in self._stages:
            # Not the worker that is calling (a handler failing, a listener acting on what
            # the stage just emitted): it is past its awaits, and its outputs are now dead.
            if stage.busy_turn == turn and stage.worker not in (None, current) and not stage.stopping:
                stage.stopping = True
                stage.worker.cancel()  # type: ignore[union-attr]
            try:
                stage.handler.cancel_turn(stage.ctx, turn)
            except Exception:
                log.exception("%s.cancel_turn failed", stage.handler.name)
        cancelled = TurnCancelled(turn, reason)
        if not quiet:
            # Straight to the output: it must not wait behind the dead turn's queued events.
            self._output.put_nowait(cancelled)
        self._broadcast(cancelled)

    def interrupt(self, reason: str = "interrupted") -> list[int]:
        """Cancel every turn still in flight (barge-in, the interrupt button)."""
        # A speculation goes with its user's turn (the speculator drops it).
        return [t for t in sorted(self.open_turns) if self.cancel_turn(t, reason)]

    def context(self, stage: str) -> Any:
        """The handler context of ``stage`` (None if the pipeline has no such stage), for
        tests and diagnostics that inspect a handler's state (an LLM's history). A transport
        never needs it: what it may ask of a handler is in the handler contract."""
        return next((s.ctx for s in self._stages if s.handler.stage == stage), None)

    @property
    def avatar(self) -> AvatarHandler[Any] | None:
        """The pipeline's avatar handler, if it has one."""
        return next((s.handler for s in self._stages if isinstance(s.handler, AvatarHandler)), None)

    def idle_frame(self, t: float) -> np.ndarray | None:
        """Blocking (run it in an executor): the avatar between replies at time ``t`` of
        the session's clock; None without an avatar stage. Valid after ``start()``."""
        stage = next((s for s in self._stages if isinstance(s.handler, AvatarHandler)), None)
        if stage is None:
            return None
        return cast(AvatarHandler[Any], stage.handler).idle_frame(stage.ctx, t)

    def idle_pose(self, t: float) -> tuple[float, ...] | None:
        """Cheap, any thread: the avatar's parameters between replies at time ``t`` of the
        session's clock; None without an avatar stage or poses. Valid after ``start()``."""
        stage = next((s for s in self._stages if isinstance(s.handler, AvatarHandler)), None)
        if stage is None:
            return None
        return cast(AvatarHandler[Any], stage.handler).idle_pose(stage.ctx, t)

    def running(self, turn: int) -> bool:
        """Whether ``turn`` is still being worked on (neither ended nor cancelled)."""
        return turn in self._open_turns and turn not in self._cancelled

    @property
    def open_turns(self) -> frozenset[int]:
        """Turns in flight, as the outside knows them (no speculation's own id)."""
        spec = self._spec
        return frozenset(t for t in self._open_turns if t not in spec.hidden and t not in spec.alias)

    def _is_dead(self, event: Event) -> bool:
        return event.turn in self._cancelled and not isinstance(event, TurnCancelled | ErrorEvent | ReplyInterrupted)

    # -- the stage loop --------------------------------------------------------------

    async def _work(self, stage: _Stage) -> None:
        handler = stage.handler
        while True:
            event = await stage.inbox.get()
            if self._is_dead(event):
                continue
            accepted = isinstance(event, handler.accepts) and not self._answered(event)
            if not accepted or isinstance(event, handler.forwards):
                stage.outbox.put_nowait(event)  # on the lane already, if it is a control event
            if not accepted:
                continue
            self._drain_control(stage)
            if self._is_dead(event):
                continue
            stage.busy_turn = event.turn
            try:
                await self._handle(stage, event)
            except asyncio.CancelledError:
                if not stage.stopping or self._closed:
                    raise
            finally:
                stage.busy_turn = NO_TURN
            if self._closed:
                return
            if stage.stopping:
                # cancel_turn stopped this event's turn, not the stage: take the cancel back.
                stage.stopping = False
                task = asyncio.current_task()
                while task is not None and task.cancelling():
                    task.uncancel()

    def _answered(self, event: Event) -> bool:
        """A user turn's final transcript whose reply is an adopted speculation: only passed on."""
        return isinstance(event, UserTranscript) and event.final and event.turn in self._spec.answered

    async def _steer(self, stage: _Stage) -> None:
        """The stage's control task: control events as they come, even while its worker
        is busy handling data."""
        while True:
            self._control(stage, await stage.control.get())

    def _drain_control(self, stage: _Stage) -> None:
        while not stage.control.empty():
            self._control(stage, stage.control.get_nowait())

    def _control(self, stage: _Stage, event: Event) -> None:
        try:
            outputs = stage.handler.on_control(stage.ctx, event)
        except Exception:
            log.exception("%s handler %r failed on a %s control event", stage.handler.stage,
                          stage.handler.name, type(event).__name__)
            return
        for out in outputs:
            self._emit(stage, out)

    async def _handle(self, stage: _Stage, event: Event) -> None:
        try:
            # ``handle`` is an async generator (the handler contract), so it has ``aclose``.
            outputs_gen = cast(AsyncGenerator[Event, None], stage.handler.handle(stage.ctx, event))
            async with aclosing(outputs_gen) as outputs:
                async for out in outputs:
                    self._emit(stage, out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(stage, event, exc)

    def _emit(self, stage: _Stage, event: Event) -> None:
        """``event`` leaves ``stage``: down the pipeline, and on the lane if it is control."""
        if self._is_dead(event):
            return
        stage.outbox.put_nowait(event)
        if isinstance(event, CONTROL):
            self._broadcast(event)
        elif self._listeners:
            self._tell(event)

    def _failed(self, stage: _Stage, event: Event, exc: Exception) -> None:
        """The error path: log under an id, tell the consumer, end the turn, say the fallback."""
        name, where = stage.handler.name, stage.handler.stage
        error = ErrorEvent(event.turn, where, f"{where} ({name}): {type(exc).__name__}: {exc}")
        if event.turn in self._spec.hidden:
            log.warning("[error %s] %s handler %r failed on speculation %s; the turn will be answered "
                        "when it ends", error.error_id, where, name, event.turn, exc_info=exc)
            self.cancel_turn(event.turn, reason="error")
            return
        if _provisional(event):
            log.warning("[error %s] %s handler %r failed on a provisional %s of turn %s; the turn goes on",
                        error.error_id, where, name, type(event).__name__, event.turn, exc_info=exc)
            return
        log.error("[error %s] %s handler %r failed on turn %s", error.error_id, where, name, event.turn,
                  exc_info=exc)
        error = dataclasses.replace(error, turn=self._spec.outer(event.turn))
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
