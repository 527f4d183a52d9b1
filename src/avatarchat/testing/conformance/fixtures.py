"""The conformance suite's fixtures and hooks; a ``conftest.py`` imports them all.

The package's own ``conftest.py`` does, for ``pytest --pyargs avatarchat.testing.conformance``;
so does this repository's ``tests/conformance/conftest.py``, which then overrides
``avatarchat_factories`` with the built-in handlers' factories.

The handler fixtures (``asr_handler``, ``llm_handler``, ``tts_handler``, ``avatar_handler``)
are parametrized over the chosen handlers of their stage (``factories.selected``). Each is built and loaded
once per test module and reused by all its cases: a loaded handler is a plain object that
must serve sessions on any event loop (each test runs on its own loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from avatarchat.engine.events import PhonemeTiming
from avatarchat.engine.handler import Handler
from avatarchat.testing.conformance.factories import STAGES, Factories, build_handler, load_factories, selected

__all__ = [
    "Speech",
    "asr_handler",
    "avatar_handler",
    "avatarchat_factories",
    "llm_handler",
    "no_leaked_tasks",
    "pytest_configure",
    "pytest_generate_tests",
    "speech",
    "tts_handler",
]

#: How long the tasks that close abandoned async generators get before the leak check.
_FINALIZER_GRACE_S = 0.2


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: loads real models (seconds)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each case runs once per chosen handler of its stage (``--avatarchat-handler``)."""
    choices = metafunc.config.getoption("avatarchat_handler", default=None)
    for stage in STAGES:
        fixture = f"{stage}_handler"
        if fixture in metafunc.fixturenames:
            names = selected(stage, choices)
            metafunc.parametrize(fixture, names, indirect=True, scope="module", ids=names)


@pytest.fixture(scope="session")
def avatarchat_factories(pytestconfig: pytest.Config) -> Factories:
    """Handler name → ``ConformanceFactory``: from ``--avatarchat-factories``, or none.
    A repository's own conftest may override this fixture instead."""
    return load_factories(pytestconfig.getoption("avatarchat_factories", default=None))


@pytest.fixture(scope="module")
def asr_handler(request: pytest.FixtureRequest, avatarchat_factories: Factories) -> Handler[Any]:
    return build_handler("asr", request.param, request, avatarchat_factories)


@pytest.fixture(scope="module")
def llm_handler(request: pytest.FixtureRequest, avatarchat_factories: Factories) -> Handler[Any]:
    return build_handler("llm", request.param, request, avatarchat_factories)


@pytest.fixture(scope="module")
def tts_handler(request: pytest.FixtureRequest, avatarchat_factories: Factories) -> Handler[Any]:
    return build_handler("tts", request.param, request, avatarchat_factories)


@pytest.fixture(scope="module")
def avatar_handler(request: pytest.FixtureRequest, avatarchat_factories: Factories) -> Handler[Any]:
    return build_handler("avatar", request.param, request, avatarchat_factories)


@pytest_asyncio.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fails a case that leaves an asyncio task running (a handler's stray generation).

    The tasks asyncio makes to close abandoned async generators get up to 0.2 s first: the
    openai SDK stops reading its SSE iterator at ``[DONE]`` and leaves a chain of async
    generators (httpx ``aiter_bytes`` and the decoder's) to the garbage collector, and the
    loop closes each with an ``aclose()`` task a few loop turns after the reply ended.
    """
    before = set(asyncio.all_tasks())
    yield
    # Two loop turns first: the loop's finalizer hook only schedules the creation of its
    # aclose() task (call_soon), and cancelled tasks need a turn to finish unwinding.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    deadline = time.monotonic() + _FINALIZER_GRACE_S
    while time.monotonic() < deadline and any(_is_asyncgen_finalizer(t) for t in _new_tasks(before)):
        await asyncio.sleep(0.005)
    leaked = _new_tasks(before)
    for t in leaked:
        t.cancel()
    assert not leaked, f"the case leaked asyncio tasks: {[f'{t.get_name()} ({t.get_coro()!r})' for t in leaked]}"


def _new_tasks(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]


def _is_asyncgen_finalizer(task: asyncio.Task[Any]) -> bool:
    # The loop's asyncgen finalizer hook runs ``agen.aclose()`` as a task; its coroutine
    # is an ``async_generator_athrow`` object.
    return type(task.get_coro()).__name__ == "async_generator_athrow"


@dataclass(frozen=True)
class Speech:
    """One clause of real speech, as a TTS stage would hand it to the avatar."""

    samples: np.ndarray
    sample_rate: int
    phonemes: tuple[PhonemeTiming, ...]
    text: str

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@pytest.fixture(scope="module")
def speech() -> list[Speech]:
    """Three short clauses spoken by espeak-ng (fast to load; real phoneme timings)."""
    from avatarchat.handlers.tts.espeak import EspeakOptions, EspeakTTS

    tts = EspeakTTS(EspeakOptions())
    tts.load()
    clauses = ("Hello there.", "How are you doing today?", "I am fine, thank you very much.")
    out = []
    for text in clauses:
        samples, phonemes = tts.synthesize(text)
        out.append(Speech(samples, tts.sample_rate, phonemes, text))
    return out
