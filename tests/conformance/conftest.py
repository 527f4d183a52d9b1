"""How the conformance suite builds, loads and breaks each registered handler.

The handler fixtures (``llm_handler``, ``tts_handler``, ``avatar_handler``) are parametrized
over ``handlers_for(stage)``, so every registered handler — built in or from an entry
point — runs every case of its stage. Each is built and loaded once per test module and
reused by all its cases: a loaded handler is a plain object that must serve sessions on
any event loop (each test runs on its own loop).

A handler whose default options work and whose blocking core is the standard one of its
base class (``ChatLLM.stream``, ``StreamingTTS.synthesize``) needs nothing here. Anything
else — options, a server to talk to, the call that does one unit of blocking work — goes
into ``FACTORIES`` under the handler's registered name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from avatarchat.engine.events import PhonemeTiming
from avatarchat.engine.handler import Handler, handlers_for
from avatarchat.handlers.tts.base import StreamingTTS
from tests.llm_server import serve_llm

HINT = "register a conformance factory in tests/conformance/conftest.py"

#: Builds a loaded handler; may pull other fixtures (a server) from the request.
Build = Callable[[pytest.FixtureRequest], Handler[Any]]
#: Where a handler does one unit of blocking work: ``(owner, attribute)``, called per unit.
Core = Callable[[Handler[Any]], tuple[object, str]]


@dataclass(frozen=True)
class ConformanceFactory:
    """What the suite needs to know about one handler beyond its registration.

    ``build``: returns the handler, loaded (default: ``cls(cls.Options())`` then ``load()``).
    ``core``: the blocking call made once per unit of work (a TTS clause, an avatar frame
    batch); the cases count its calls and make it fail. Default for TTS handlers:
    ``StreamingTTS.synthesize``. LLM handlers have ``ChatLLM.stream`` wrapped instead.
    ``fail_at``: which call of ``core`` the error case breaks (1-based; 2 = the second unit).
    """

    build: Build | None = None
    core: Core | None = None
    fail_at: int = 2


def _loaded(handler: Handler[Any]) -> Handler[Any]:
    handler.load()
    return handler


def _local_llm(request: pytest.FixtureRequest) -> Handler[Any]:
    from avatarchat.handlers.llm.local import LocalLLM

    # A short cap keeps the cases quick; 32 tokens still leave a long turn to cancel.
    return _loaded(LocalLLM(LocalLLM.Options(max_tokens=32)))


def _openai_compatible(request: pytest.FixtureRequest) -> Handler[Any]:
    from avatarchat.handlers.llm.openai_compatible import OpenAICompatibleLLM

    url = request.getfixturevalue("llm_server")
    return _loaded(OpenAICompatibleLLM(OpenAICompatibleLLM.Options(api_url=f"{url}/v1", model="smollm2", max_tokens=32)))


FACTORIES: dict[str, ConformanceFactory] = {
    "local": ConformanceFactory(build=_local_llm),
    # Its default api_url points at an Ollama that is not there: talk to the test server.
    "openai_compatible": ConformanceFactory(build=_openai_compatible),
    "hibari": ConformanceFactory(),
    "espeak": ConformanceFactory(),
    # One executor call renders a batch of frames (the first frame alone, then BATCH at a
    # time); the third call is the second full batch, well into the reply.
    "portrait": ConformanceFactory(core=lambda h: (h, "_render_batch"), fail_at=3),
}


def factory(name: str) -> ConformanceFactory:
    return FACTORIES.get(name, ConformanceFactory())


def build_handler(stage: str, name: str, request: pytest.FixtureRequest) -> Handler[Any]:
    """The registered handler ``name`` of ``stage``, loaded, as its factory says."""
    cls = handlers_for(stage)[name]
    make = factory(name).build
    if make is not None:
        return make(request)
    try:
        return _loaded(cls(cls.Options()))
    except Exception as exc:
        pytest.fail(
            f"{stage} handler {name!r} ({cls.__module__}.{cls.__qualname__}) has no conformance factory "
            f"and cannot be built with default options: {type(exc).__name__}: {exc}. {HINT}",
            pytrace=False,
        )


def core_of(handler: Handler[Any]) -> tuple[object, str]:
    """Where ``handler`` does one unit of blocking work (see ``ConformanceFactory.core``)."""
    core = factory(handler.name).core
    if core is not None:
        return core(handler)
    if isinstance(handler, StreamingTTS):
        return handler, "synthesize"
    pytest.fail(
        f"{handler.stage} handler {handler.name!r} has no known blocking core to count and break; {HINT} "
        "(ConformanceFactory.core)",
        pytrace=False,
    )


@pytest.fixture(autouse=True)
async def settle_async_generator_finalizers() -> AsyncIterator[None]:
    """Give asyncio's finalizer tasks of abandoned async generators up to 0.2 s to finish
    before ``tests/conftest.py`` checks for leaked tasks (its teardown runs after this one).

    Why: the openai SDK stops reading its SSE iterator at ``[DONE]`` and leaves a chain of
    async generators (httpx ``aiter_bytes`` and the decoder's) to the garbage collector;
    the loop closes each with an ``aclose()`` task, a few loop turns after the reply ended.
    Only those tasks get the grace; any other task left running still fails the test.
    """
    yield
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        finalizers = [t for t in asyncio.all_tasks() if not t.done() and _is_asyncgen_finalizer(t)]
        if not finalizers:
            return
        await asyncio.sleep(0.005)


def _is_asyncgen_finalizer(task: asyncio.Task[Any]) -> bool:
    # The loop's asyncgen finalizer hook runs ``agen.aclose()`` as a task; its coroutine
    # is an ``async_generator_athrow`` object.
    return type(task.get_coro()).__name__ == "async_generator_athrow"


# --- the handlers, once per module each ----------------------------------------------------


@pytest.fixture(scope="module", params=sorted(handlers_for("llm")))
def llm_handler(request: pytest.FixtureRequest) -> Handler[Any]:
    return build_handler("llm", request.param, request)


@pytest.fixture(scope="module", params=sorted(handlers_for("tts")))
def tts_handler(request: pytest.FixtureRequest) -> Handler[Any]:
    return build_handler("tts", request.param, request)


@pytest.fixture(scope="module", params=sorted(handlers_for("avatar")))
def avatar_handler(request: pytest.FixtureRequest) -> Handler[Any]:
    return build_handler("avatar", request.param, request)


@pytest.fixture(scope="module")
def llm_server() -> Iterator[str]:
    """A local OpenAI-compatible server (xllamacpp on SmolLM2) for ``openai_compatible``."""
    with serve_llm() as url:
        yield url


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
