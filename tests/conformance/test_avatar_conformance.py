"""The packaged avatar conformance cases (``avatarchat.testing.conformance.test_avatar_conformance``),
run here on every built-in avatar handler."""

from avatarchat.testing.conformance.test_avatar_conformance import *  # noqa: F401,F403
