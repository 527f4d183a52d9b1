"""The handler conformance suite: behaviour every ASR, LLM, TTS and avatar handler must show.

Each case runs every handler registered for its stage (built in or from an
``avatarchat.handlers`` entry point), or those chosen with ``--avatarchat-handler``. A
third-party handler's repository runs it on its own handler with::

    pip install avatarchat pytest pytest-asyncio
    pip install -e .                       # registers the handler's entry point
    pytest -p avatarchat.testing.plugin --pyargs avatarchat.testing.conformance \
        --avatarchat-handler tts:myvoice \
        --avatarchat-factories myvoice.conformance

``-p avatarchat.testing.plugin`` adds the two options. ``--avatarchat-handler STAGE:NAME``
(repeatable) picks the handlers to test; without it every registered handler of every
stage runs. ``--avatarchat-factories MODULE[:ATTR]`` names a dict (``FACTORIES`` unless
``ATTR`` says otherwise) from handler name to ``ConformanceFactory``: how to build a
handler whose default options do not work, where its blocking core is (``core``) and which
call of it the error cases break (``fail_at``). A handler built by ``cls(cls.Options())``
whose core is the standard one of its base class (``ChatLLM.stream``,
``StreamingTTS.synthesize``) needs no factory. The cases run in pytest-asyncio's strict
mode as well as its auto mode; they mark themselves.

This repository runs the same cases from ``tests/conformance``, whose ``conftest.py``
supplies the built-in handlers' factories by overriding the ``avatarchat_factories``
fixture. This module holds the helpers the cases share: reading a session's output, and
spies that record what a handler yields and how often its blocking core runs.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, cast

import pytest

from avatarchat.engine.events import Event
from avatarchat.engine.handler import Handler
from avatarchat.testing.reading import ended, of_turn, summary

#: Seconds a case keeps reading after a turn ended, to catch anything of it that comes late.
DRAIN_S = 0.5

__all__ = [
    "DRAIN_S", "CoreSpy", "InjectedFailure", "OutputSpy", "drain", "ended", "of_turn", "read_until", "summary",
    "until_ended", "wait_for_zero",
]


class InjectedFailure(RuntimeError):
    """Raised by a test double in place of a model failure that cannot be provoked on demand."""


async def read_until(
    session: Any,
    done: Callable[[list[Event]], bool],
    timeout: float = 30.0,
    per_event: Callable[[Event], Any] | None = None,
) -> list[Event]:
    """Every event the session emits, until ``done(events so far)``; fails after ``timeout``.

    ``per_event`` (a coroutine function) runs after each event is read: a slow consumer.
    Each call reads through a fresh ``session.events()`` so a timeout loses no event.
    """
    out: list[Event] = []
    try:
        async with asyncio.timeout(timeout):
            async for event in session.events():
                out.append(event)
                if per_event is not None:
                    await per_event(event)
                if done(out):
                    return out
    except TimeoutError:
        raise AssertionError(f"no end after {timeout:g} s; got {summary(out)}") from None
    raise AssertionError("the session's output ended")  # events() never ends on its own


async def until_ended(session: Any, *turns: int, timeout: float = 30.0,
                      per_event: Callable[[Event], Any] | None = None) -> list[Event]:
    """Everything the session emits until each of ``turns`` has ended."""
    return await read_until(session, lambda evs: all(ended(evs, t) for t in turns), timeout, per_event)


async def drain(session: Any, seconds: float = DRAIN_S) -> list[Event]:
    """Everything the session emits in the next ``seconds``."""
    out: list[Event] = []
    try:
        async with asyncio.timeout(seconds):
            async for event in session.events():
                out.append(event)
    except TimeoutError:
        pass
    return out


async def wait_for_zero(read: Callable[[], int], within: float) -> float:
    """Poll ``read()`` until it is 0; returns the seconds it took (``inf`` if it never was)."""
    t0 = time.monotonic()
    while read():
        if time.monotonic() - t0 > within:
            return float("inf")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


class OutputSpy:
    """Records every event ``handler.handle`` yields, with when, before the engine sees it.

    The session drops events of a cancelled turn, which would hide a handler that goes on
    producing them; this spy sees what the handler itself yields.
    """

    def __init__(self, handler: Handler[Any], monkeypatch: pytest.MonkeyPatch) -> None:
        self.outputs: list[tuple[float, Event]] = []
        real = handler.handle

        async def handle(ctx: Any, event: Event) -> AsyncIterator[Event]:
            # ``handle`` is an async generator (the handler contract), so it has ``aclose``.
            async with aclosing(cast(AsyncGenerator[Event, None], real(ctx, event))) as outs:
                async for out in outs:
                    self.outputs.append((time.monotonic(), out))
                    yield out

        monkeypatch.setattr(handler, "handle", handle)

    def events(self, turn: int | None = None) -> list[Event]:
        return [e for _, e in self.outputs if turn is None or e.turn == turn]

    def after(self, turn: int, t: float) -> list[Event]:
        """What the handler yielded for ``turn`` after monotonic time ``t``."""
        return [e for at, e in self.outputs if e.turn == turn and at > t]


class CoreSpy:
    """Wraps a handler's core (``getattr(owner, attr)``, one call per unit of work):
    counts calls started and running, and can raise ``InjectedFailure`` on call ``fail_at``
    (counted from 1, once only, so the turn after the failure works again). The core is a
    blocking function (run on executor threads) or an async generator function (a network
    voice's stream), which is running until it is exhausted or closed."""

    def __init__(self, owner: object, attr: str, monkeypatch: pytest.MonkeyPatch,
                 fail_at: int | None = None) -> None:
        self.starts: list[float] = []
        self.running = 0
        self._lock = threading.Lock()  # the core runs on executor threads
        self._attr = attr
        self._fail_at = fail_at
        real = getattr(owner, attr)

        def core(*args: Any, **kwargs: Any) -> Any:
            self._start()
            try:
                return real(*args, **kwargs)
            finally:
                self._stop()

        async def stream(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
            self._start()
            try:
                async with aclosing(real(*args, **kwargs)) as pieces:
                    async for piece in pieces:
                        yield piece
            finally:
                self._stop()

        monkeypatch.setattr(owner, attr, stream if inspect.isasyncgenfunction(real) else core)

    def _start(self) -> None:
        with self._lock:
            self.starts.append(time.monotonic())
            n = len(self.starts)
            self.running += 1
        if n == self._fail_at:
            self._stop()
            raise InjectedFailure(f"injected failure of {self._attr} call {n}")

    def _stop(self) -> None:
        with self._lock:
            self.running -= 1

    @property
    def calls(self) -> int:
        return len(self.starts)

    def started_after(self, t: float) -> int:
        return sum(1 for s in self.starts if s > t)

    def active(self) -> int:
        with self._lock:
            return self.running
