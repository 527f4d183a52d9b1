"""The data-channel protocol (channel ``events``): JSON messages, one per channel message.

Documented for other clients in docs/PROTOCOL.md. Client messages are parsed strictly: a
message that is not JSON, too big, of an unknown type or with wrong fields raises
``ProtocolError`` with a message that is sent back as ``{"type": "error", ...}``; the
session goes on.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

#: The largest client message accepted (bytes of UTF-8 JSON).
MAX_MESSAGE_BYTES = 4096
#: The longest typed message (characters).
MAX_TEXT_CHARS = 1000


class ProtocolError(ValueError):
    """A client message was refused; the text is safe to send back to that client."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- client -> server ---------------------------------------------------------------------


class TextMessage(_Msg):
    """Type instead of speaking: starts a turn (and interrupts a reply in progress)."""

    type: Literal["text"]
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class InterruptMessage(_Msg):
    """Stop the avatar's current reply."""

    type: Literal["interrupt"]


class PingMessage(_Msg):
    """Keep-alive; answered with ``pong`` carrying the same ``t``."""

    type: Literal["ping"]
    t: float | None = None


ClientMessage = Annotated[TextMessage | InterruptMessage | PingMessage, Field(discriminator="type")]
_client = TypeAdapter(ClientMessage)
CLIENT_TYPES = ("text", "interrupt", "ping")


def parse_client_message(raw: str | bytes) -> TextMessage | InterruptMessage | PingMessage:
    """Parse one data-channel message from a client, or raise ``ProtocolError``."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes is too big (limit {MAX_MESSAGE_BYTES})")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError("message is not JSON") from None
    if not isinstance(data, dict) or "type" not in data:
        raise ProtocolError(f'message must be a JSON object with a "type" ({", ".join(CLIENT_TYPES)})')
    if data["type"] not in CLIENT_TYPES:
        raise ProtocolError(f"unknown message type {str(data['type'])[:40]!r}; known: {', '.join(CLIENT_TYPES)}")
    try:
        return _client.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:]) or "message"
        raise ProtocolError(f"{data['type']}: {where}: {err['msg']}") from None


# --- server -> client -----------------------------------------------------------------------


def state(value: Literal["listening", "thinking", "speaking"]) -> dict[str, Any]:
    return {"type": "state", "state": value}


def transcript(turn: int, text: str, final: bool) -> dict[str, Any]:
    """What the user said (``final`` false for a partial while they speak)."""
    return {"type": "transcript", "turn": turn, "text": text, "final": final}


def reply(turn: int, text: str, final: bool, interrupted: bool = False,
          truncated: bool = False) -> dict[str, Any]:
    """The avatar's words: deltas with ``final`` false, then the whole text with ``final`` true.

    ``interrupted``: the reply was cut off (barge-in, interrupt, a typed message); ``text``
    is then what the user heard, and replaces any text sent for the turn before.
    ``truncated``: the model hit its token limit; ``text`` is what the voice said, which may
    stop before the last deltas (an unfinished sentence is not said), and replaces them.
    """
    msg: dict[str, Any] = {"type": "reply", "turn": turn, "text": text, "final": final}
    if interrupted:
        msg["interrupted"] = True
    if truncated:
        msg["truncated"] = True
    return msg


def metrics(turn: int, timings_ms: dict[str, float]) -> dict[str, Any]:
    return {"type": "metrics", "turn": turn, **timings_ms}


def error(message: str, turn: int | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "error", "message": message}
    if turn is not None:
        msg["turn"] = turn
    return msg


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)
