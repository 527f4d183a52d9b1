"""How the conformance suite builds, loads and breaks each handler it tests.

A handler whose default options work and whose blocking core is the standard one of its
base class (``ChatLLM.stream``, ``StreamingTTS.synthesize``) needs nothing here. Anything
else (options, a server to talk to, the call that does one unit of blocking work) goes in
a ``ConformanceFactory`` under the handler's registered name (or ``"STAGE:NAME"``), in the
dict the ``avatarchat_factories`` fixture returns (``--avatarchat-factories MODULE[:ATTR]``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from avatarchat.engine.handler import Handler, handlers_for
from avatarchat.handlers.tts.base import StreamingTTS

HINT = ("Give the suite a ConformanceFactory for it (avatarchat.testing.conformance.factories) "
        "in the dict named by --avatarchat-factories MODULE[:ATTR].")

#: The stages the suite has cases for.
STAGES = ("asr", "llm", "tts", "avatar")

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


Factories = Mapping[str, ConformanceFactory]


def load_factories(spec: str | None) -> Factories:
    """The factories named by ``MODULE[:ATTR]`` (``ATTR`` defaults to ``FACTORIES``); none
    for ``None``. A bad name is a usage error that says what was looked for."""
    if not spec:
        return {}
    module_name, _, attr = spec.partition(":")
    attr = attr or "FACTORIES"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise pytest.UsageError(f"--avatarchat-factories {spec}: cannot import {module_name!r}: {exc}") from exc
    factories = getattr(module, attr, None)
    if callable(factories):
        factories = factories()
    if not isinstance(factories, Mapping) or not all(isinstance(f, ConformanceFactory) for f in factories.values()):
        raise pytest.UsageError(
            f"--avatarchat-factories {spec}: {module_name}.{attr} must be a dict (or a function returning one) "
            "from handler name to ConformanceFactory"
        )
    return factories


def selected(stage: str, choices: list[str] | None) -> list[str]:
    """The names of the ``stage`` handlers to test: those of ``choices`` (``STAGE:NAME``
    strings) for that stage, or, with no choices, every registered one, sorted."""
    registered = handlers_for(stage)
    if not choices:
        return sorted(registered)
    names = []
    for choice in choices:
        want_stage, sep, name = choice.partition(":")
        if not sep or want_stage not in STAGES or not name:
            raise pytest.UsageError(
                f"--avatarchat-handler {choice!r}: give STAGE:NAME with STAGE one of {', '.join(STAGES)}"
            )
        if want_stage != stage:
            continue
        if name not in registered:
            raise pytest.UsageError(
                f"--avatarchat-handler {choice}: no {stage} handler named {name!r} is registered "
                f"(registered: {', '.join(sorted(registered)) or 'none'}). Is its package installed, with an "
                "entry point in the 'avatarchat.handlers' group?"
            )
        names.append(name)
    return names


def factory_for(stage: str, name: str, factories: Factories) -> ConformanceFactory:
    """The factory of handler ``name`` of ``stage``: under ``"STAGE:NAME"`` (where two
    stages have handlers of one name) or ``"NAME"``; the default one if neither."""
    return factories.get(f"{stage}:{name}") or factories.get(name) or ConformanceFactory()


def _loaded(handler: Handler[Any]) -> Handler[Any]:
    handler.load()
    return handler


def build_handler(stage: str, name: str, request: pytest.FixtureRequest, factories: Factories) -> Handler[Any]:
    """The registered handler ``name`` of ``stage``, loaded, as its factory says."""
    cls = handlers_for(stage)[name]
    make = factory_for(stage, name, factories).build
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


def core_of(handler: Handler[Any], factories: Factories) -> tuple[object, str]:
    """Where ``handler`` does one unit of blocking work (see ``ConformanceFactory.core``)."""
    core = factory_for(handler.stage, handler.name, factories).core
    if core is not None:
        return core(handler)
    if isinstance(handler, StreamingTTS):
        # A network voice streams each clause (an async generator) instead of synthesizing it.
        streams = type(handler).synthesize_stream is not StreamingTTS.synthesize_stream
        return handler, "synthesize_stream" if streams else "synthesize"
    pytest.fail(
        f"{handler.stage} handler {handler.name!r} has no known blocking core to count and break. {HINT} "
        "(ConformanceFactory.core)",
        pytrace=False,
    )
