"""The packaged ASR conformance cases (``avatarchat.testing.conformance.test_asr_conformance``),
run here on every built-in asr handler (whisper, and the services' against their local servers)."""

# The stage's handler fixture, beside the ones conftest.py imports from the suite's fixtures.
from avatarchat.testing.conformance.fixtures import asr_handler  # noqa: F401
from avatarchat.testing.conformance.test_asr_conformance import *  # noqa: F401,F403
