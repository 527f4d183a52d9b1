"""The packaged ASR conformance cases (``avatarchat.testing.conformance.test_asr_conformance``),
run here on every built-in asr handler (whisper, and the services' against their local servers)."""

from avatarchat.testing.conformance.test_asr_conformance import *  # noqa: F401,F403
