"""Conformance factory of the ``edge`` TTS handler, against the local read-aloud server
(``avatarchat.testing.services.edge``), reached through the real edge-tts client (the
handler's ``url: ws://…`` relay; see ``tests/test_service_edge.py`` for what that covers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from avatarchat.engine.handler import Handler
from avatarchat.testing.conformance.factories import ConformanceFactory
from avatarchat.testing.services.base import LocalService
from avatarchat.testing.services.edge import app, warm


@pytest.fixture(scope="module")
def edge_readaloud_server() -> Iterator[LocalService]:
    """The local read-aloud server, for one test module's handlers."""
    warm()  # its voice loads now, not inside a case's first-audio deadline
    with LocalService(app) as svc:
        yield svc


def _edge(request: pytest.FixtureRequest) -> Handler[Any]:
    from avatarchat.handlers.tts.edge import EdgeOptions, EdgeTTS

    svc = request.getfixturevalue("edge_readaloud_server")
    tts = EdgeTTS(EdgeOptions(url=svc.ws_url))
    tts.load()
    return tts


FACTORIES: dict[str, ConformanceFactory] = {
    # Its core is the clause's stream (``synthesize_stream``): one call per clause.
    "tts:edge": ConformanceFactory(build=_edge, core=lambda h: (h, "synthesize_stream")),
}
