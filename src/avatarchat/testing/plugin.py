"""The pytest plugin of the conformance suite: its command-line options.

Load it with ``-p avatarchat.testing.plugin`` (pytest reads options only from plugins
loaded before it parses the command line, and a conftest inside an installed package is
not one of those)::

    pytest -p avatarchat.testing.plugin --pyargs avatarchat.testing.conformance \\
        --avatarchat-handler tts:myvoice --avatarchat-factories myvoice.conformance

The fixtures live in ``avatarchat.testing.conformance.fixtures``; this module adds nothing
else to a test run.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("avatarchat", "avatarchat handler conformance")
    group.addoption(
        "--avatarchat-handler", action="append", default=[], metavar="STAGE:NAME", dest="avatarchat_handler",
        help="test only this registered handler (repeatable), e.g. tts:myvoice; default: every registered one",
    )
    group.addoption(
        "--avatarchat-factories", default=None, metavar="MODULE[:ATTR]", dest="avatarchat_factories",
        help="a dict (default attribute FACTORIES) from handler name to "
        "avatarchat.testing.conformance.factories.ConformanceFactory",
    )
