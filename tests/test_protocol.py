"""The data-channel protocol's parser on every class of bad input, and the message rate
limit's token bucket in virtual time."""

from __future__ import annotations

import json
import math

import pytest

from avatarchat.server import protocol
from avatarchat.server.protocol import (
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    InterruptMessage,
    PingMessage,
    ProtocolError,
    TextMessage,
    nesting_depth,
    parse_client_message,
)
from avatarchat.server.ratelimit import Admit, MessageRate, TokenBucket


def refused(raw: str | bytes) -> str:
    with pytest.raises(ProtocolError) as exc:
        parse_client_message(raw)
    return str(exc.value)


def test_valid_messages_parse_to_their_types() -> None:
    assert parse_client_message('{"type":"text","text":"hi"}') == TextMessage(type="text", text="hi")
    assert parse_client_message(b'{"type":"interrupt"}') == InterruptMessage(type="interrupt")
    assert parse_client_message('{"type":"ping","t":12.5}').t == 12.5
    assert parse_client_message('{"type":"ping","t":-3}').t == -3.0
    assert parse_client_message('{"type":"ping"}').t is None
    # Brackets inside a string are text, not nesting.
    assert parse_client_message(json.dumps({"type": "text", "text": "[[[[[[{{{{{{ \\\" ]]"})).type == "text"


@pytest.mark.parametrize("raw, says", [
    ("[" * 1000 + "]" * 1000, "nested too deeply"),  # ~2 KB: json would recurse 1,000 deep
    ("{\"a\":" * 600 + "1" + "}" * 600, "nested too deeply"),
    ('{"type":"text","text":' + "[" * 500 + "]" * 500 + "}", "nested too deeply"),
    ('{"type":"text","text":"' + "[" * 10 + '}', "nested too deeply"),  # an unterminated string
    ('{"type":"text","text":[[[["deep"]]]]}', "nested too deeply"),
])
def test_deep_nesting_is_refused_before_json_parses_it(raw: str, says: str) -> None:
    assert says in refused(raw)


def test_nesting_depth_scan() -> None:
    assert nesting_depth('{"a":[1,{"b":[]}]}') == 4
    assert nesting_depth('{"a":"[[[[\\"[[["}') == 1
    assert nesting_depth("") == 0
    assert nesting_depth("[" * MAX_DEPTH + "]" * MAX_DEPTH) == MAX_DEPTH


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"type":"text","text":"\xc3"}', b"\xed\xa0\x80", "\ud800"])
def test_text_that_is_not_utf8_is_refused(raw: str | bytes) -> None:
    assert refused(raw) == "message is not valid UTF-8 text"


@pytest.mark.parametrize("t, says", [
    ('"1"', "valid number"), ("true", "valid number"), ("null", None), ("[1]", "valid number"),
    ("NaN", "NaN is not allowed"), ("Infinity", "Infinity is not allowed"),
    ("-Infinity", "-Infinity is not allowed"), ("1e999", "out of range"), ("-1e999", "out of range"),
    ("9" * 4050, "too long"),  # just under the size limit; int() of n digits costs n² time
    ("1" * 21, "too long"),
])
def test_ping_t_must_be_a_finite_json_number(t: str, says: str | None) -> None:
    raw = '{"type":"ping","t":' + t + "}"
    if says is None:
        assert parse_client_message(raw) == PingMessage(type="ping", t=None)
    else:
        assert says in refused(raw)


@pytest.mark.parametrize("raw, says", [
    ("", "not JSON"), ("{", "not JSON"), ("nope", "not JSON"), ('{"type":"text"', "not JSON"),
    ("[]", 'JSON object with a "type"'), ('"text"', 'JSON object with a "type"'),
    ("{}", 'JSON object with a "type"'), ('{"type":"hack"}', "unknown message type 'hack'"),
    ('{"type":["text"]}', "unknown message type 'list'"), ('{"type":{"a":1}}', "unknown message type 'dict'"),
    ('{"type":"text"}', "text: text: Field required"), ('{"type":"text","text":""}', "at least 1"),
    ('{"type":"text","text":5}', "valid string"), ('{"type":"text","text":"hi","x":1}', "x: Extra inputs"),
    ('{"type":"interrupt","now":true}', "now: Extra inputs"), ('{"type":"ping","t":1,"u":2}', "u: Extra"),
    ('{"type":"text","text":"' + "a" * (protocol.MAX_TEXT_CHARS + 1) + '"}', "at most"),
    ("x" * (MAX_MESSAGE_BYTES + 1), f"too big (limit {MAX_MESSAGE_BYTES})"),
    ("é" * (MAX_MESSAGE_BYTES // 2 + 1), "too big"),  # counted in UTF-8 bytes, not characters
])
def test_malformed_messages_say_what_is_wrong(raw: str, says: str) -> None:
    assert says in refused(raw)


def test_every_error_text_is_short_and_names_no_internals() -> None:
    for raw in ["[" * 3000, "\ud800", '{"type":"ping","t":' + "9" * 4400 + "}", "{" * 4000, '{"type":"' + "x" * 3000 + '"}']:
        message = refused(raw)
        assert len(message) < 120 and "Traceback" not in message and "File " not in message


def test_pongs_and_every_server_message_are_strict_json() -> None:
    assert protocol.encode({"type": "pong", "t": 1.5}) == '{"type":"pong","t":1.5}'
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            protocol.encode({"type": "pong", "t": bad})


# --- the rate limit, in virtual time -----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(per_s=4, burst=20, clock=clock)
    assert [bucket.take() for _ in range(21)] == [True] * 20 + [False]
    clock.now = 50.125
    assert not bucket.take()
    clock.now = 50.25  # 0.25 s at 4 a second: one token
    assert bucket.take() and not bucket.take()
    clock.now += 1000  # refills only up to the burst
    assert sum(bucket.take() for _ in range(100)) == 20


def test_bucket_survives_a_clock_that_steps_back() -> None:
    clock = Clock()
    bucket = TokenBucket(per_s=1, burst=2, clock=clock)
    bucket.take(), bucket.take()
    clock.now -= 100
    assert not bucket.take()
    clock.now += 1
    assert bucket.take()


def test_one_error_per_run_of_excess_messages() -> None:
    clock = Clock()
    rate = MessageRate(per_s=2, burst=3, clock=clock)
    verdicts = [rate.admit() for _ in range(10)]
    assert verdicts == [Admit.PASS] * 3 + [Admit.REFUSE] + [Admit.DROP] * 6
    clock.now += 0.5  # one token back: one message passes, and a new run of excess is told again
    assert [rate.admit() for _ in range(3)] == [Admit.PASS, Admit.REFUSE, Admit.DROP]
    assert rate.dropped == 9
    assert "2 a second" in rate.message() and "bursts of 3" in rate.message()


def test_bucket_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        TokenBucket(per_s=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(per_s=1, burst=0)
