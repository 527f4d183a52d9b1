"""The packaged LLM conformance cases (``avatarchat.testing.conformance.test_llm_conformance``),
run here on every built-in llm handler."""

from avatarchat.testing.conformance.test_llm_conformance import *  # noqa: F401,F403
