"""The built-in handlers' conformance factories, and the suite's fixtures for the thin
modules here that run the packaged cases (``avatarchat.testing.conformance``).

What lives here and not in the package: what needs this repository's test tools (the
local OpenAI-compatible server of ``tests/llm_server.py``) or speeds the built-ins up.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avatarchat.engine.handler import Handler
from avatarchat.testing.conformance.factories import ConformanceFactory, Factories
# The suite's fixtures and hooks, but not its avatarchat_factories: this file gives its own.
from avatarchat.testing.conformance.fixtures import (  # noqa: F401
    asr_handler,
    avatar_handler,
    llm_handler,
    no_leaked_tasks,
    pytest_configure,
    pytest_generate_tests,
    speech,
    tts_handler,
)
from tests.llm_server import serve_llm


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
    # One executor call renders a batch of frames (the first frame alone, then BATCH at a
    # time); the third call is the second full batch, well into the reply.
    "portrait": ConformanceFactory(core=lambda h: (h, "_render_batch"), fail_at=3),
}


def _service_factories() -> None:
    """Merge the factories (and the fixtures they pull: local protocol servers) of each
    ``factories_*.py`` beside this file: one module per service's handlers."""
    for path in sorted(Path(__file__).parent.glob("factories_*.py")):
        module = importlib.import_module(f"tests.conformance.{path.stem}")
        FACTORIES.update(module.FACTORIES)
        for name, value in vars(module).items():
            if hasattr(value, "_pytestfixturefunction") or type(value).__name__ == "FixtureFunctionDefinition":
                globals()[name] = value


_service_factories()


@pytest.fixture(scope="session")
def avatarchat_factories() -> Factories:
    return FACTORIES


@pytest.fixture(scope="module")
def llm_server() -> Iterator[str]:
    """A local OpenAI-compatible server (xllamacpp on SmolLM2) for ``openai_compatible``."""
    with serve_llm() as url:
        yield url
