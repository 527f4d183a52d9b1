"""Reading a session's output in tests: which events belong to a turn, whether it ended,
and a short listing of events for assertion messages."""

from __future__ import annotations

from collections.abc import Iterable

from avatarchat.engine.events import Event, ReplyEnd, TurnCancelled


def ended(events: Iterable[Event], turn: int) -> bool:
    """Whether ``events`` hold the end of ``turn`` (its ReplyEnd or TurnCancelled)."""
    return any(isinstance(e, ReplyEnd | TurnCancelled) and e.turn == turn for e in events)


def of_turn(events: Iterable[Event], turn: int) -> list[Event]:
    """The events of ``turn``, in order."""
    return [e for e in events if e.turn == turn]


def summary(events: Iterable[Event]) -> str:
    """A short, readable listing of events: ``ReplyText(t2 'Hello')``, ``TurnCancelled(t1 error)``."""
    parts = []
    for e in events:
        text = getattr(e, "text", None)
        extra = f" {text!r}" if isinstance(text, str) else ""
        extra += f" #{getattr(e, 'index')}" if hasattr(e, "index") else ""
        extra += f" {e.reason}" if isinstance(e, TurnCancelled) else ""
        parts.append(f"{type(e).__name__}(t{e.turn}{extra})")
    return ", ".join(parts) or "nothing"
