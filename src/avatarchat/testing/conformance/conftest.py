"""Makes the suite's fixtures and hooks apply to the cases of this package when it runs
as ``pytest --pyargs avatarchat.testing.conformance`` (see ``fixtures``)."""

from avatarchat.testing.conformance.fixtures import *  # noqa: F401,F403
