"""Blocking model work shared by every session, run turn-critical first.

Each shared model or resource is a *lane* ("vad", "asr", "tts", "render") with a fixed
number of worker threads and one priority queue: lower ``Priority`` first, first come
first served within a priority. So when several sessions share the cores, one session's
ASR final or first TTS chunk waits for at most the job already running in its lane, never
behind another session's partial transcripts or idle frames.

Usage, from a coroutine::

    text = await run_model(model.transcribe, audio, lane="asr", priority=Priority.CRITICAL)

Promises:

- a lane runs at most ``workers`` jobs at once; a job queued in it starts before every job
  of a lower priority (a larger number) and after the earlier ones of its own priority;
- cancelling the awaiting task (a barge-in) removes a job that has not started, so it
  never runs; a job already running finishes in its thread and its result is dropped;
- an exception of the job is raised from ``run_model``;
- with ``background_nice`` > 0 (Linux), ``BACKGROUND`` jobs of a lane with two or more
  workers run on threads of their own with that nice value, so the kernel also prefers
  every other lane's work to them, and they never hold the lane's last worker: a job of
  higher priority never waits for a niced thread (a niced whisper call took 719 ms
  median instead of 201 on 2 busy cores, so a 1-worker lane is not niced). The threads
  are niced once, for life: an unprivileged thread cannot lower its nice again.
- a lane the scheduler does not know runs in the event loop's default executor, as
  ``engine.handler.run_blocking`` does (unbounded, FIFO).

Which scheduler: ``current_scheduler()``: the one ``use_scheduler`` set for the current
context (tasks inherit it from where they were created), else the process's default,
made on first use with ``default_lanes()``. Worker threads start on a lane's first job
and wait on a condition between jobs (no polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Priority(IntEnum):
    """How soon a job should run; lower first."""

    #: Decides how soon someone hears an answer: VAD, ASR final, the LLM's first clause,
    #: the first TTS chunk of a reply.
    CRITICAL = 0
    #: The rest of a reply being spoken: its later TTS chunks, its frames.
    NORMAL = 1
    #: Can wait: partial transcripts, idle frames, frames nobody watches closely.
    BACKGROUND = 2


def default_lanes(cpus: int | None = None) -> dict[str, int]:
    """Workers per lane for a machine with ``cpus`` cores (default: this one's).

    One ASR at a time (whisper uses 2 threads itself; two calls at once only halve each
    other's speed), one end-of-turn model call at a time (~65 ms, 1 thread), one voice per 2 cores, renders on every core: idle frames run niced,
    so they take what the turn-critical work leaves (``bench sched``, 2 cores: 2 render
    workers gave both shorter waits and more fps than 1)."""
    n = cpus or os.cpu_count() or 1
    half = max(1, n // 2)
    return {"vad": half, "turn": 1, "asr": 1, "tts": half, "render": n}


@dataclass(order=True)
class _Job:
    """One queued call. Ordered by (priority, seq): the heap's head runs next."""

    priority: int
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    background: bool = field(compare=False)
    state: Literal["queued", "running", "done", "dropped"] = field(default="queued", compare=False)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while it ran: the result is dropped
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Lane:
    """A priority queue and its worker threads. Thread-safe; jobs come from any loop."""

    def __init__(self, name: str, workers: int, nice: int) -> None:
        if workers < 1:
            raise ValueError(f"lane {name!r} needs at least 1 worker, not {workers}")
        self.name, self.workers = name, workers
        self.nice = nice if workers > 1 else 0
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._running = 0
        self._background_running = 0  # on niced threads
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the scheduler is closed (lane {self.name!r})")
            if not self._threads:
                self._start_threads()
            heapq.heappush(self._heap, job)
            self._cond.notify_all()

    def drop(self, job: _Job) -> None:
        """Take ``job`` out of the queue if it has not started (its future was cancelled)."""
        with self._cond:
            if job.state != "queued":
                return
            job.state = "dropped"
            self._heap.remove(job)
            heapq.heapify(self._heap)
            self._cond.notify_all()  # the new head may be for the other kind of thread

    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    def running(self) -> int:
        with self._cond:
            return self._running

    def _start_threads(self) -> None:
        kinds = [(False, self.workers), (True, self.workers - 1)] if self.nice > 0 else [(None, self.workers)]
        for background, count in kinds:
            for i in range(count):
                tag = "-bg" if background else ""
                t = threading.Thread(target=self._serve, args=(background,), daemon=True,
                                     name=f"lane-{self.name}{tag}-{i}")
                t.start()
                self._threads.append(t)

    def _serve(self, background: bool | None) -> None:
        """A worker: takes the queue's head when a slot is free and the head is of its
        kind (``None``: any kind; True: background jobs, on a niced thread)."""
        if background:
            _nice_this_thread(self.nice)
        while True:
            with self._cond:
                while not self._closed and not self._takes_head(background):
                    self._cond.wait()
                if self._closed:
                    return
                job = heapq.heappop(self._heap)
                job.state = "running"
                self._running += 1
                self._background_running += bool(background)
            try:
                result, error = job.fn(), None
            except BaseException as exc:  # handed to the awaiting task, which raises it
                result, error = None, exc
            finally:
                with self._cond:
                    self._running -= 1
                    self._background_running -= bool(background)
                    job.state = "done"
                    self._cond.notify_all()
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody awaits it
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            del job, result, error  # do not hold the last result while waiting

    def _takes_head(self, background: bool | None) -> bool:
        if not self._heap or self._running >= self.workers:
            return False
        if background is None:
            return True
        if background:  # niced: never the last free worker
            return self._heap[0].background and self._background_running < self.workers - 1
        return not self._heap[0].background

    def close(self, wait: bool) -> list[_Job]:
        """Stop the workers after their running jobs (``wait``: until they have stopped);
        returns the jobs never started."""
        with self._cond:
            self._closed = True
            left, self._heap = self._heap, []
            for job in left:
                job.state = "dropped"
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()
        return left


def _nice_this_thread(nice: int) -> None:
    # Linux: a thread id is a process id for setpriority, so this nices one thread only.
    if not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.warning("could not nice a background worker thread: %s", exc)


class Scheduler:
    """Lanes of blocking work for one process or app. Close it (or use ``with``) to stop
    its threads; the process default is never closed (its threads are daemons).

    ``prioritize=False`` makes every lane plain FIFO (for comparisons); ``background_nice``
    is the nice value of the threads that run ``BACKGROUND`` jobs in lanes of two or more
    workers (0: no separate threads).
    """

    def __init__(self, lanes: Mapping[str, int] | None = None, *, prioritize: bool = True,
                 background_nice: int = 10) -> None:
        self.prioritize = prioritize
        self.background_nice = max(0, background_nice)
        spec = default_lanes() if lanes is None else lanes
        self._lanes = {name: _Lane(name, n, self.background_nice) for name, n in spec.items()}
        self._seq = itertools.count()

    @property
    def lanes(self) -> dict[str, int]:
        """Workers per lane."""
        return {name: lane.workers for name, lane in self._lanes.items()}

    def submit(self, fn: Callable[..., T], *args: Any, lane: str,
               priority: Priority = Priority.NORMAL) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` in ``lane``; the future gets its result. Cancelling the future
        before the job starts removes it from the queue. Call from the event loop."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args)
        target = self._lanes.get(lane)
        if target is None:
            return loop.run_in_executor(None, call)
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(int(priority) if self.prioritize else 0, next(self._seq), call, future, loop,
                   background=priority >= Priority.BACKGROUND)

        def on_done(f: asyncio.Future[T]) -> None:
            if f.cancelled():
                target.drop(job)

        future.add_done_callback(on_done)
        target.submit(job)
        return future

    async def run(self, fn: Callable[..., T], *args: Any, lane: str,
                  priority: Priority = Priority.NORMAL) -> T:
        """``await`` form of ``submit``: cancelling the caller drops a job not yet started."""
        return await self.submit(fn, *args, lane=lane, priority=priority)

    def queued(self, lane: str) -> int:
        """Jobs waiting in ``lane`` (not running)."""
        return self._lanes[lane].queued()

    def running(self, lane: str) -> int:
        """Jobs running in ``lane`` now."""
        return self._lanes[lane].running()

    def close(self, wait: bool = True) -> None:
        """Stop every lane: queued jobs are cancelled, running ones finish first (``wait``:
        block until they have). Idempotent. Submitting afterwards raises RuntimeError."""
        for lane in self._lanes.values():
            for job in lane.close(wait):
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(job.future.cancel)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_current: contextvars.ContextVar[Scheduler | None] = contextvars.ContextVar("avatarchat_scheduler", default=None)
_default: Scheduler | None = None
_default_lock = threading.Lock()


def current_scheduler() -> Scheduler:
    """The scheduler in use here: ``use_scheduler``'s, else the process default."""
    chosen = _current.get()
    if chosen is not None:
        return chosen
    global _default
    with _default_lock:
        if _default is None:
            _default = Scheduler()
        return _default


@contextlib.contextmanager
def use_scheduler(scheduler: Scheduler) -> Iterator[Scheduler]:
    """Within the block (and in tasks created in it), model calls go to ``scheduler``:
    for tests and benchmarks that compare schedulers, or an app with lanes of its own."""
    token = _current.set(scheduler)
    try:
        yield scheduler
    finally:
        _current.reset(token)


async def run_model(fn: Callable[..., T], *args: Any, lane: str,
                    priority: Priority = Priority.NORMAL) -> T:
    """Run the blocking ``fn(*args)`` in ``lane`` of the current scheduler (see the module
    docstring for the promises). Pass keyword arguments with ``functools.partial``."""
    return await current_scheduler().run(fn, *args, lane=lane, priority=priority)
