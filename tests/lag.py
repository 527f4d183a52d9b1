"""The loop-lag budget of the repo's tests: the packaged one (``avatarchat.testing.lag``),
which the conformance suite uses too."""

from avatarchat.testing.lag import MAX_LOOP_LAG_S, assert_responsive, idle_lag

__all__ = ["MAX_LOOP_LAG_S", "assert_responsive", "idle_lag"]
