"""Test tools for avatarchat and for third-party handlers.

- ``avatarchat.testing.conformance``: the behaviour every LLM, TTS and avatar handler must
  show, as a pytest suite a handler's own repository runs
  (``pytest -p avatarchat.testing.plugin --pyargs avatarchat.testing.conformance``;
  see that package's docstring).
- ``run_pipeline_test``: send events, typed text or audio through a session built from
  handler instances and get the output events back (pipecat's ``run_test`` style).
- ``FakeClock``: virtual time for the engine's ``Clock``; ``FakeSink``: a ``ReplySink``
  that plays replies on it.
- Fakes for fast engine tests: ``ScriptedVAD``/``UserSpeech`` (a scripted user),
  ``FakeASR``, ``FakeLLM``, ``FakeTTS``.
"""

from avatarchat.testing.clock import FakeClock
from avatarchat.testing.fakes import FakeLLM, FakeTTS, FakeTTSOptions, speech_seconds
from avatarchat.testing.harness import Audio, Wait, pipeline_of, run_pipeline_test
from avatarchat.testing.reading import ended, of_turn, summary
from avatarchat.testing.sink import FakeSink, SinkRecord
from avatarchat.testing.user import FakeASR, FakeTurnModel, ScriptedVAD, ScriptedVADOptions, UserSpeech

__all__ = [
    "Audio",
    "FakeASR",
    "FakeClock",
    "FakeLLM",
    "FakeSink",
    "FakeTurnModel",
    "FakeTTS",
    "FakeTTSOptions",
    "ScriptedVAD",
    "ScriptedVADOptions",
    "SinkRecord",
    "UserSpeech",
    "Wait",
    "ended",
    "of_turn",
    "pipeline_of",
    "run_pipeline_test",
    "speech_seconds",
    "summary",
]
