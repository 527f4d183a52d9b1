"""The data-channel protocol (channel ``events``): JSON messages, one per channel message.

Documented for other clients in docs/PROTOCOL.md. Client messages are parsed strictly, and
whatever their bytes, ``parse_client_message`` either returns a message or raises
``ProtocolError`` with a short text that is sent back as ``{"type": "error", ...}``; the
session goes on. Checked in order, each before any costlier work: the size, UTF-8, the
nesting depth (a scan of the brackets outside strings, before ``json`` recurses), JSON with
finite numbers only (no ``NaN``, ``Infinity``, ``1e999``, integers of more than
``MAX_INT_DIGITS`` digits), then the message's type and fields (unknown fields refused,
no coercion: ``ping.t`` must be a JSON number).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

#: The largest client message accepted (bytes of UTF-8 JSON). The answer's SDP advertises
#: it as the SCTP max-message-size, so a browser refuses to send a bigger one.
MAX_MESSAGE_BYTES = 4096
#: The longest typed message (characters).
MAX_TEXT_CHARS = 1000
#: Deepest nesting of arrays and objects (every valid message has depth 1).
MAX_DEPTH = 4
#: Longest integer literal (Python refuses to parse ints of 4,300+ digits, with a ValueError).
MAX_INT_DIGITS = 20


class ProtocolError(ValueError):
    """A client message was refused; the text is safe to send back to that client."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- client -> server ---------------------------------------------------------------------


class TextMessage(_Msg):
    """Type instead of speaking: starts a turn (and interrupts a reply in progress)."""

    type: Literal["text"]
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class InterruptMessage(_Msg):
    """Stop the avatar's current reply."""

    type: Literal["interrupt"]


class PingMessage(_Msg):
    """Keep-alive; answered with ``pong`` carrying the same ``t`` (a finite number)."""

    type: Literal["ping"]
    t: Annotated[float, Field(allow_inf_nan=False)] | None = None


ClientMessage = Annotated[TextMessage | InterruptMessage | PingMessage, Field(discriminator="type")]
_client = TypeAdapter(ClientMessage)
CLIENT_TYPES = ("text", "interrupt", "ping")

# A JSON string (with its escapes), then any bracket: a scan that never recurses.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def nesting_depth(text: str, stop_above: int | None = None) -> int:
    """The deepest nesting of ``[`` and ``{`` outside JSON strings (a linear scan, no
    recursion); the scan stops once the depth passes ``stop_above``."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRINGS.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if stop_above is not None and deepest > stop_above:
                break
    return deepest


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not allowed: numbers must be finite")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ProtocolError(f"number {literal[:20]} is out of range: numbers must be finite")
    return value


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise ProtocolError(f"an integer of {len(literal)} digits is too long (limit {MAX_INT_DIGITS})")
    return int(literal)


def _text_of(raw: str | bytes) -> str:
    """The message as text, within the size limit, or ``ProtocolError``."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is too big (limit {MAX_MESSAGE_BYTES})")
    try:
        return data.decode("utf-8")  # strict: also refuses a str holding lone surrogates
    except UnicodeDecodeError:
        raise ProtocolError("message is not valid UTF-8 text") from None


def _json_of(text: str) -> Any:
    if nesting_depth(text, stop_above=MAX_DEPTH) > MAX_DEPTH:
        raise ProtocolError(f"message is nested too deeply (limit {MAX_DEPTH})")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except ProtocolError:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise ProtocolError("message is not JSON") from None


def parse_client_message(raw: str | bytes) -> TextMessage | InterruptMessage | PingMessage:
    """Parse one data-channel message from a client, or raise ``ProtocolError``. Never
    raises anything else, whatever ``raw`` holds."""
    data = _json_of(_text_of(raw))
    if not isinstance(data, dict) or "type" not in data:
        raise ProtocolError(f'message must be a JSON object with a "type" ({", ".join(CLIENT_TYPES)})')
    kind = data["type"]
    if kind not in CLIENT_TYPES:  # a str, or a list/dict that is never one of them
        shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
        raise ProtocolError(f"unknown message type {shown!r}; known: {', '.join(CLIENT_TYPES)}")
    try:
        return _client.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:]) or "message"
        raise ProtocolError(f"{kind}: {where}: {err['msg']}") from None


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
    """One message as JSON text. Raises ``ValueError`` rather than write ``NaN`` or
    ``Infinity``, which a browser's ``JSON.parse`` refuses."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_or_skip(message: dict[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any]) -> str | None:
    """``encode``, or None (and a warning) for a message with a non-finite number: what a
    transport sends is never a message a browser cannot read."""
    try:
        return encode(message)
    except ValueError:
        logger.warning("not sending a %s message with a non-finite number", message.get("type"))
        return None


# --- the WebSocket transport's own messages (server -> client) ------------------------------

VideoMode = Literal["jpeg", "motion", "params", "none"]
VIDEO_MODES: tuple[VideoMode, ...] = ("jpeg", "motion", "params", "none")


def hello(session: str, sample_rate: int, reply_sample_rate: int, video: VideoMode,
          fps: int | None) -> dict[str, Any]:
    """The WebSocket's first message: the session id, the rate of the mic PCM the server
    takes (``sample_rate``), the rate of the reply PCM it sends, the video mode, and the
    avatar's frame rate (None without an avatar)."""
    return {"type": "hello", "session": session, "sample_rate": sample_rate,
            "reply_sample_rate": reply_sample_rate, "video": video, "fps": fps}


def frame(pts: float, jpeg: str) -> dict[str, Any]:
    """One avatar video frame (``video=jpeg``): ``pts`` seconds on the session's media
    clock (the reply audio's), ``jpeg`` the image as base64."""
    return {"type": "frame", "pts": round(pts, 4), "jpeg": jpeg}


def motion(turn: int, times: tuple[float, ...], channels: tuple[str, ...],
           values: tuple[tuple[float, ...], ...], visemes: tuple[str, ...]) -> dict[str, Any]:
    """The mouth curves behind a stretch of a reply's frames (``video=motion``): ``times``
    on the reply's timeline (0 = its first audio sample), one row of ``values`` (columns
    ``channels``) and one viseme label per time."""
    return {"type": "motion", "turn": turn, "times": [round(t, 4) for t in times], "channels": list(channels),
            "values": [[round(v, 4) for v in row] for row in values], "visemes": list(visemes)}


# --- the client-drawn avatar (``avatar: client`` over WebRTC, ``video=params`` over a WebSocket) --


def media_clock(media_zero: float, fps: int, names: tuple[str, ...]) -> dict[str, Any]:
    """Where this connection's media time 0 is on the server's wall clock (Unix seconds),
    the face's frame rate, and the names of a ``face`` row's values, in order."""
    return {"type": "clock", "media_zero": round(media_zero, 6), "fps": fps, "names": list(names)}


def face(k0: int, rows: list[tuple[float, ...]]) -> dict[str, Any]:
    """The face's parameters for frames ``k0``, ``k0 + 1``, …: frame k shows at media time
    ``k / fps``. A later row for the same frame replaces an earlier one."""
    return {"type": "face", "k0": k0, "rows": [list(r) for r in rows]}


def audio_at(t: float) -> dict[str, Any]:
    """(WebSocket, ``video=params``.) The next binary audio frame starts at media time ``t``;
    the ones after it follow on, 20 ms each, until the next ``audio_at``."""
    return {"type": "audio_at", "t": round(t, 4)}
