"""Conformance factories of the ``openai`` TTS and ASR handlers, each against the local
server of OpenAI's audio API (``avatarchat.testing.services.openai_audio``), reached through
the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from avatarchat.engine.handler import Handler
from avatarchat.testing.conformance.factories import ConformanceFactory
from avatarchat.testing.services.base import GOOD_KEY, LocalService
from avatarchat.testing.services.openai_audio import app


@pytest.fixture(scope="module")
def openai_audio_server() -> Iterator[LocalService]:
    """The local OpenAI audio server, for one test module's handlers."""
    with LocalService(app) as svc:
        yield svc


def _tts(request: pytest.FixtureRequest) -> Handler[Any]:
    from avatarchat.handlers.tts.openai_speech import OpenAISpeechOptions, OpenAISpeechTTS

    svc = request.getfixturevalue("openai_audio_server")
    tts = OpenAISpeechTTS(OpenAISpeechOptions(base_url=f"{svc.url}/v1", api_key=GOOD_KEY, model="tts-1"))
    tts.load()
    return tts


def _asr(request: pytest.FixtureRequest) -> Handler[Any]:
    from avatarchat.handlers.asr.openai_transcribe import OpenAITranscribeASR, OpenAITranscribeOptions

    svc = request.getfixturevalue("openai_audio_server")
    # Streamed: its growing transcripts are what "partials are never final" is about.
    asr = OpenAITranscribeASR(OpenAITranscribeOptions(base_url=f"{svc.url}/v1", api_key=GOOD_KEY,
                                                      model="gpt-4o-mini-transcribe", stream=True))
    asr.load()
    return asr


FACTORIES: dict[str, ConformanceFactory] = {
    # Its core is the clause's stream (``synthesize_stream``), found by the suite itself.
    "tts:openai": ConformanceFactory(build=_tts),
    # One upload per utterance, its answer read as it comes (an async generator).
    "asr:openai": ConformanceFactory(build=_asr, core=lambda h: (h, "transcripts")),
}
