"""Seeded bad data-channel messages: not JSON, not objects, unknown types and fields, wrong
types, NaN and infinities, huge numbers, deep nesting, bad UTF-8 (as binary and as text
frames), oversized, empty, and byte-flipped valid messages.

Every message here is invalid by the protocol (docs/PROTOCOL.md): ``is_valid`` is an
independent statement of it, and a flipped message it calls valid is left out, so each
message sent must get exactly one ``error`` and nothing else.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

MAX_BYTES = 4096
MAX_TEXT = 1000


@dataclass(frozen=True)
class Message:
    """``kind``: ``text`` (a string frame), ``binary``, or ``raw-text`` (a string frame
    whose bytes are not UTF-8, which aiortc's own send() cannot make)."""

    label: str
    kind: str
    payload: str | bytes


def is_valid(raw: str | bytes) -> bool:
    """The protocol's client messages: text (1..1000 chars), interrupt, ping (finite t)."""
    try:
        data = json.loads(raw)
        size = len(raw.encode() if isinstance(raw, str) else raw)
    except (ValueError, RecursionError):  # UnicodeEncodeError too: a lone surrogate
        return False
    if size > MAX_BYTES or not isinstance(data, dict):
        return False
    kind = data.get("type")
    if kind == "text":
        text = data.get("text")
        return (set(data) == {"type", "text"} and isinstance(text, str) and 1 <= len(text) <= MAX_TEXT
                and _encodable(text))
    if kind == "interrupt":
        return set(data) == {"type"}
    if kind == "ping":
        t = data.get("t")
        finite = t is None or (type(t) in (int, float) and math.isfinite(t))
        return set(data) <= {"type", "t"} and finite
    return False


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _nest(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def messages(rng: random.Random) -> list[Message]:
    """About 330 invalid messages, in a fixed order."""
    out: list[Message] = []

    def text(label: str, payload: str) -> None:
        out.append(Message(label, "text", payload))

    for s in ["", " ", "\n", "{", "}", "[", "nul", "tru", "'x'", "{type:'text'}", '{"type":"text"', "\ufeff{}",
              '{"type":"ping"}{"type":"ping"}', "\x00", "//", '{"type":"ping",}', "{'type':'ping'}"]:
        text(f"not JSON {s[:16]!r}", s)
    for i in range(20):
        text(f"random string #{i}", "".join(rng.choice('{}[]":,ab1 \\') for _ in range(rng.randint(1, 60))))
    for s in ["1", "-1", "1e999", "NaN", "Infinity", "null", "true", "[]", "[1,2]", '"text"', '""',
              '[{"type":"ping"}]', "9" * 4000]:
        text(f"not an object {s[:16]!r}", s)
    bad_types: list[Any] = [None, 1, [], {}, "", "TEXT", "text ", "pong", "error", "reply", "state", "\u0000",
                            "x" * 3000, True, 1.5, "metrics", "transcript"]
    bad_types += ["".join(rng.choice("abcxyz_") for _ in range(rng.randint(1, 12))) for _ in range(15)]
    text("no type", "{}")
    text("no type, a text", '{"text": "hello"}')
    for t in bad_types:
        text(f"type {t!r:.20}", json.dumps({"type": t}))
    values: list[Any] = [None, 1, True, [], {}, "", "x" * (MAX_TEXT + 1), ["hello"], {"a": "b"}, 0.5]
    for v in values:
        text(f"text {v!r:.20}", json.dumps({"type": "text", "text": v}))
    text("text missing", '{"type": "text"}')
    text("text with an extra field", '{"type": "text", "text": "hello", "turn": 1}')
    text("text with a lone surrogate", '{"type": "text", "text": "hi \\ud800 there"}')
    text("text of 4000 chars", json.dumps({"type": "text", "text": "a" * 4000}))
    text("text nested 500 deep", '{"type": "text", "text": ' + _nest(500, '"hi"') + "}")
    text("text keys twice", '{"type": "text", "text": "hello", "text": 1}')
    text("type twice", '{"type": "ping", "type": "text"}')
    for extra in ['"x": 1', '"turn": "x"', '"type2": "interrupt"', '"t": 1']:
        text(f"interrupt with {extra}", '{"type": "interrupt", ' + extra + "}")
    for t in ['"1"', "true", "false", "[]", "{}", "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e309",
              "9" * 4400, "-" + "9" * 5000, '"NaN"', "[1]", '{"t": 1}', _nest(900)]:
        text(f"ping t={t[:16]}", '{"type": "ping", "t": ' + t + "}")
    text("ping with an extra field", '{"type": "ping", "t": 1, "u": 2}')
    for depth in (100, 500, 1000, 1500, 2000):
        text(f"array nested {depth}", _nest(depth))
        text(f"object nested {depth}", '{"a":' * depth + "1" + "}" * depth)
    text("nested type", '{"type": ' + _nest(1000, '"text"') + "}")
    for n in (MAX_BYTES + 1, 5000, 16_000, 65_000, 200_000):
        text(f"text message of {n} bytes", json.dumps({"type": "text", "text": "a" * n}))
    out.append(Message("binary of 10 KB", "binary", b"{" * 10_000))
    out += _bytes(rng)
    out += _flipped(rng)
    return out


def _bytes(rng: random.Random) -> list[Message]:
    out = [Message("binary empty", "binary", b""), Message("binary NUL", "binary", b"\x00")]
    bad_utf8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]
    for bad in bad_utf8:
        out.append(Message(f"binary {bad!r}", "binary", b'{"type": "text", "text": "hi ' + bad + b'"}'))
        out.append(Message(f"text frame {bad!r}", "raw-text", b'{"type": "text", "text": "hi ' + bad + b'"}'))
        out.append(Message(f"text frame ping {bad!r}", "raw-text", b'{"type": "ping", "t": 1}' + bad))
    for i in range(20):
        out.append(Message(f"random bytes #{i}", "binary", rng.randbytes(rng.randint(1, 300))))
    for i in range(5):
        out.append(Message(f"random text frame #{i}", "raw-text", rng.randbytes(rng.randint(1, 300))))
    return out


VALID = ['{"type": "text", "text": "Say hello."}', '{"type": "interrupt"}', '{"type": "ping", "t": 12.5}',
         '{"type": "ping"}']


def _flipped(rng: random.Random) -> list[Message]:
    out: list[Message] = []
    while len(out) < 140:
        chars = list(rng.choice(VALID))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(chars))
            chars[at:at + rng.randint(0, 2)] = rng.choice(['"', "{", "}", ":", ",", "\\", "\x00", "9", "e", "n", "",
                                                           "\ud800", "[", " ", "NaN"])
        payload = "".join(chars)
        if is_valid(payload):
            continue
        if _encodable(payload):
            out.append(Message(f"flipped #{len(out)}: {payload[:40]!r}", "text", payload))
        else:  # a lone surrogate: as the UTF-8 bytes a broken client might send
            out.append(Message(f"flipped #{len(out)}: {payload[:40]!r}", "raw-text",
                               payload.encode("utf-8", "surrogatepass")))
    return out
