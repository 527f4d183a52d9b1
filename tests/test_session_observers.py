"""``Handler.observe_session``: the pipeline lets every handler attach its cross-stage
watchers to a new session, and the silero VAD attaches end of turn only when its options
ask for it (the engine itself reads no handler's options)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from avatarchat.config import load_config
from avatarchat.engine.endofturn import EndOfTurn
from avatarchat.engine.events import Event
from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.session import Session
from avatarchat.handlers.vad.silero import SileroOptions, SileroVADHandler
from tests.fakes import FakeLLM, FakeTTS


class Recorder:
    """STAND-IN for a ``Session``: records what is attached with ``observe``."""

    def __init__(self) -> None:
        self.watchers: list[Callable[[Event], None]] = []

    def observe(self, types: tuple[type[Event], ...], callback: Callable[[Event], None]) -> None:
        self.watchers.append(callback)


@pytest.mark.parametrize(("complete_ms", "unfinished_ms", "attached"), [
    (0, 0, False),
    (250, 0, True),
    (0, 1600, True),
])
def test_silero_attaches_end_of_turn_only_when_asked(complete_ms: int, unfinished_ms: int, attached: bool) -> None:
    vad = SileroVADHandler(SileroOptions.model_validate({"complete_ms": complete_ms, "unfinished_ms": unfinished_ms}))
    session = Recorder()
    vad.observe_session(session)  # type: ignore[arg-type]
    owners = [getattr(w, "__self__", None) for w in session.watchers]
    assert [type(o) for o in owners] == ([EndOfTurn] if attached else [])
    if attached:
        judge = owners[0]
        assert isinstance(judge, EndOfTurn)
        assert (judge.complete_ms, judge.unfinished_ms) == (complete_ms, unfinished_ms)


def test_every_handler_sees_each_new_session_before_it_starts() -> None:
    seen: list[tuple[str, Session]] = []

    class Watching(FakeLLM):
        def observe_session(self, session: Session) -> None:
            seen.append((self.stage, session))

    pipeline = Pipeline(load_config(), [Watching(), FakeTTS()])  # FakeTTS: the default, no watchers
    first, second = pipeline.session("a"), pipeline.session("b")
    assert seen == [("llm", first), ("llm", second)]
