"""Conformance factories of the DashScope handlers, ``tts: cosyvoice`` and ``asr: dashscope``
(Paraformer real-time), against the local DashScope server
(``avatarchat.testing.services.dashscope``), reached through the official ``dashscope`` SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from avatarchat.engine.handler import Handler
from avatarchat.testing.conformance.factories import ConformanceFactory
from avatarchat.testing.services.base import GOOD_KEY, LocalService
from avatarchat.testing.services.dashscope import PATH, server


@pytest.fixture(scope="module")
def dashscope_inference_server() -> Iterator[LocalService]:
    """The local DashScope WebSocket inference server (recognizing with the embedded
    whisper), for one test module's handlers."""
    with LocalService(server()) as svc:
        yield svc


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    svc = request.getfixturevalue("dashscope_inference_server")
    return {"url": f"{svc.ws_url}{PATH}", "api_key": GOOD_KEY}


def _cosyvoice(request: pytest.FixtureRequest) -> Handler[Any]:
    from avatarchat.handlers.tts.cosyvoice import CosyVoiceTTS

    tts = CosyVoiceTTS(CosyVoiceTTS.Options(**_options(request)))
    tts.load()
    return tts


def _paraformer(request: pytest.FixtureRequest) -> Handler[Any]:
    from avatarchat.handlers.asr.dashscope import DashScopeASR

    asr = DashScopeASR(DashScopeASR.Options(**_options(request)))
    asr.load()
    return asr


FACTORIES: dict[str, ConformanceFactory] = {
    # Its core is the clause's stream (``synthesize_stream``): one task per clause.
    "tts:cosyvoice": ConformanceFactory(build=_cosyvoice, core=lambda h: (h, "synthesize_stream")),
    # One utterance's final transcript: ``finish-task`` and the results up to
    # ``task-finished`` (a coroutine, once per SpeechEnded).
    "asr:dashscope": ConformanceFactory(build=_paraformer, core=lambda h: (h, "_finish")),
}
