"""The packaged TTS conformance cases (``avatarchat.testing.conformance.test_tts_conformance``),
run here on every built-in tts handler."""

from avatarchat.testing.conformance.test_tts_conformance import *  # noqa: F401,F403
