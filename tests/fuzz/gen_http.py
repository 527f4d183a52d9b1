"""Seeded bad HTTP requests for ``POST /api/offer`` and the other routes, as raw bytes.

Each case is one request on its own connection (``Connection: close``). ``HOST`` in a
request is replaced by the server's ``127.0.0.1:port`` when it is sent. ``may_close``
marks requests whose framing is broken on purpose (a body that never arrives, headers
past the parser's limits): for those the server may close the connection instead of
answering.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

HOST = b"\x01HOST\x01"

OFFER_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
             "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=rtpmap:111 opus/48000/2\r\n")
OFFER = json.dumps({"sdp": OFFER_SDP, "type": "offer"}).encode()
JSON_TYPE = (b"Content-Type", b"application/json")


@dataclass(frozen=True)
class HttpCase:
    group: str
    label: str
    raw: bytes
    may_close: bool = False


def request(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]] = (), body: bytes = b"",
            *, length: bool = True) -> bytes:
    """A request with Host and ``Connection: close``; Content-Length of ``body`` if ``length``."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + HOST, b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if length and (body or method == b"POST"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post_offer(body: bytes, extra: Iterable[tuple[bytes, bytes]] = (), target: bytes = b"/api/offer") -> bytes:
    return request(b"POST", target, [JSON_TYPE, *extra], body)


def nested(depth: int, open_: str = "[", close: str = "]", inner: str = "1") -> bytes:
    return (open_ * depth + inner + close * depth).encode()


def bodies(rng: random.Random) -> list[HttpCase]:
    """Request bodies for ``POST /api/offer``: not JSON, wrong types, huge numbers, deep
    nesting, bad UTF-8, compressed garbage, oversized, byte-flipped offers."""
    out: list[tuple[str, bytes]] = []
    for n in (0, 1, 2, 7, 64, 700, 4000):
        out.append((f"random {n} bytes", rng.randbytes(n)))
    for text in (b"{", b"}", b"[", b"{\"sdp\":", b"nul", b"'single'", b"{sdp: 1}", b"\x00", b"\xef\xbb\xbf{}",
                 b"{\"sdp\":\"v=0\",\"type\":\"offer\"", b"{}{}", b"1 2", b"// comment\n{}", b"{\"a\":1,}"):
        out.append((f"not JSON {text[:12]!r}", text))
    values = [1, -1, 0.5, True, False, None, [], {}, "", " ", "\t\r\n", ["v=0"], {"v": 0}, "v=0",
              "x" * 100, 10**30, -(10**30), 1e308]
    for value in values:
        out.append((f"sdp={value!r:.20}", json.dumps({"sdp": value, "type": "offer"}).encode()))
        out.append((f"type={value!r:.20}", json.dumps({"sdp": OFFER_SDP, "type": value}).encode()))
    for top in ([], [OFFER_SDP, "offer"], "offer", 0, True, None, 3.5, {"sdp": OFFER_SDP}, {"type": "offer"},
                {"sdp": OFFER_SDP, "type": "answer"}, {"sdp": OFFER_SDP, "type": "pranswer"},
                {"sdp": OFFER_SDP, "type": "offer", "extra": [1] * 50}, {"SDP": OFFER_SDP, "TYPE": "offer"}):
        out.append((f"top {json.dumps(top)[:24]}", json.dumps(top).encode()))
    for digits in (400, 4300, 4301, 5000, 20000, 60000):
        big = b"9" * digits
        out.append((f"int of {digits} digits (top)", big))
        out.append((f"int of {digits} digits in sdp", b'{"sdp": ' + big + b', "type": "offer"}'))
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1e-999"):
        out.append((f"literal {literal.decode()}", b'{"sdp": ' + literal + b', "type": "offer"}'))
    for depth in (64, 500, 1000, 5000, 20000):
        out.append((f"array nested {depth}", nested(depth)))
        out.append((f"object nested {depth}", nested(depth, '{"a":', "}")))
        out.append((f"nested {depth} in sdp", b'{"type":"offer","sdp":' + nested(depth) + b"}"))
    for bad in (b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"):
        out.append((f"bad UTF-8 {bad!r} in sdp", b'{"sdp": "v=0 ' + bad + b'", "type": "offer"}'))
        out.append((f"bad UTF-8 {bad!r} in a key", b'{"' + bad + b'": 1, "sdp": "v=0", "type": "offer"}'))
    for escape in (b"\\ud800", b"\\udfff", b"\\ud800\\ud800", b"\\u0000", b"\\x41", b"\\u12", b"\\"):
        out.append((f"escape {escape!r} in sdp", b'{"sdp": "v=0\\r\\nm=audio ' + escape + b'", "type": "offer"}'))
    cases = [HttpCase("bodies", label, post_offer(body)) for label, body in out]
    cases += _encoded(rng)
    cases += _oversized()
    cases += _content_types()
    for i in range(120):
        cases.append(HttpCase("bodies", f"flipped offer #{i}", post_offer(_flip(rng, OFFER))))
    return cases


def _flip(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op, at = rng.random(), rng.randrange(len(buf))
        if op < 0.5:
            buf[at] = rng.randrange(256)
        elif op < 0.75:
            del buf[at: at + rng.randint(1, 8)]
        else:
            buf[at:at] = rng.choice([b"\x00", b"\\", b'"', b"{", b"]", b"\xff", b"9" * 50])
    return bytes(buf)


def _encoded(rng: random.Random) -> list[HttpCase]:
    """Bodies with a Content-Encoding: garbage, truncated, stacked, bombs, unknown codings."""
    bomb = gzip.compress(b"0" * (60 * 2**20), 9)  # ~60 KB that inflates to 60 MB
    deflated = zlib.compress(OFFER)
    gzipped = gzip.compress(OFFER)
    out = [
        ("gzip", rng.randbytes(100)), ("gzip", gzipped[: len(gzipped) // 2]), ("gzip", gzipped[:10]),
        ("gzip", b"\x1f\x8b" + rng.randbytes(60)), ("gzip", gzip.compress(b"not json")),
        ("gzip", gzip.compress(nested(5000))), ("gzip", gzip.compress(b"9" * 50000)), ("gzip", bomb),
        ("gzip", gzipped[:-4] + b"\0\0\0\0"), ("gzip", b""),
        ("deflate", rng.randbytes(100)), ("deflate", deflated[:-3]), ("deflate", b"\x78\x9c" + rng.randbytes(30)),
        ("deflate", zlib.compress(b"0" * (40 * 2**20), 9)), ("deflate", zlib.compress(b"\xff\xfe")),
        ("br", rng.randbytes(50)), ("br", OFFER), ("zstd", rng.randbytes(50)), ("compress", OFFER),
        ("x-unknown", OFFER), ("gzip, gzip", gzip.compress(gzipped)), ("gzip, deflate", rng.randbytes(40)),
        ("identity", OFFER), ("GZIP", rng.randbytes(40)), ("gzip;q=1", rng.randbytes(40)), ("\xff", OFFER),
    ]
    return [HttpCase("bodies", f"Content-Encoding {enc!r} {len(body)} bytes",
                     post_offer(body, [(b"Content-Encoding", enc.encode("latin-1"))]))
            for enc, body in out]


def _oversized() -> list[HttpCase]:
    big = b'{"sdp": "v=0' + b"a" * 200_000 + b'", "type": "offer"}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in [big[i:i + 8192] for i in range(0, len(big), 8192)])
    chunked += b"0\r\n\r\n"
    cases = [
        HttpCase("bodies", "body of 200 KB", post_offer(big)),
        HttpCase("bodies", "body of 65 KB", post_offer(big[:65 * 1024])),
        HttpCase("bodies", "200 KB chunked, no length",
                 request(b"POST", b"/api/offer", [JSON_TYPE, (b"Transfer-Encoding", b"chunked")], chunked, length=False)),
    ]
    for declared in (b"1000000000", b"99999999999999999999999", b"65537"):
        raw = request(b"POST", b"/api/offer", [JSON_TYPE, (b"Content-Length", declared)], OFFER, length=False)
        cases.append(HttpCase("bodies", f"declares {declared.decode()[:12]} bytes, sends {len(OFFER)}", raw, may_close=True))
    return cases


def _content_types() -> list[HttpCase]:
    types = [b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
             b"application/json; charset=utf-16", b"application/json; charset=nonsense", b"application/json;;;",
             b"application/JSON", b"application/json\x00", b"*/*", b"", b"application/jsonp", b"\xff\xfe"]
    cases = [HttpCase("bodies", f"Content-Type {t[:24]!r}",
                      request(b"POST", b"/api/offer", [(b"Content-Type", t)], OFFER)) for t in types]
    cases.append(HttpCase("bodies", "no Content-Type", request(b"POST", b"/api/offer", [], OFFER)))
    utf16 = OFFER.decode().encode("utf-16")
    cases.append(HttpCase("bodies", "UTF-16 body", request(b"POST", b"/api/offer",
                                                            [(b"Content-Type", b"application/json; charset=utf-16")], utf16)))
    return cases


ROUTES = (b"/", b"/api/offer", b"/healthz", b"/api/config", b"/metrics", b"/app.js")


def methods(rng: random.Random) -> list[HttpCase]:
    """Every route with methods it does not take, made-up methods and broken request lines."""
    names = [b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"HEAD", b"PROPFIND", b"FOO", b"get", b"post",
             b"GET" * 300, b"G\x00T", b"GET\xff", b"POST "]
    cases = [HttpCase("methods", f"{m[:16]!r} {route.decode()}", request(m, route, [JSON_TYPE], OFFER),
                      may_close=not m.isalpha() or len(m) > 100)
             for m in names for route in ROUTES]
    cases.append(HttpCase("methods", "GET /api/offer", request(b"GET", b"/api/offer")))
    cases.append(HttpCase("methods", "POST /healthz", request(b"POST", b"/healthz", [JSON_TYPE], OFFER)))
    cases.append(HttpCase("methods", "POST /", request(b"POST", b"/", [JSON_TYPE], OFFER)))
    for line in (b"GET", b"GET /", b"GET / HTTP/9.9", b"GET / HTTP/1.1 extra", b"\x16\x03\x01\x02\x00\x01\x00",
                 b"PRI * HTTP/2.0", b"CONNECT 127.0.0.1:1 HTTP/1.1", b"GET / HTTP/0.9", b" GET / HTTP/1.1",
                 rng.randbytes(40).replace(b"\r\n", b"")):
        cases.append(HttpCase("methods", f"request line {line[:24]!r}", line + b"\r\nHost: " + HOST + b"\r\n\r\n",
                              may_close=True))
    return cases


def paths(rng: random.Random) -> list[HttpCase]:
    """Targets with NUL, traversal, overlong segments, bad percent-escapes and raw bytes."""
    targets = [b"/%00", b"/index.html%00", b"/index.html%00.js", b"/%00/../index.html", b"/..", b"/../",
               b"/../../../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/..%2f..%2fetc%2fpasswd",
               b"/%2e%2e%5c%2e%2e%5cetc%5cpasswd", b"/..\\..\\etc\\passwd", b"/static/../../secret.txt",
               b"/%ff", b"/%ff%fe", b"/%c0%ae%c0%ae/", b"/%e2%82", b"/%", b"/%g1", b"/%%", b"/%0", b"/%u002e",
               b"//", b"///etc/passwd", b"/./index.html", b"/.", b"/index.html/", b"/index.html/.",
               b"/api/offer/", b"/api/offer/..", b"/api//offer", b"/API/OFFER", b"/healthz/", b"/healthz%00",
               b"/metrics/../healthz", b"/\xff\xfe", b"/\xc3\xa9", b"/\x7f", b"/a\tb", b"/a b",
               b"/%0d%0aSet-Cookie:%20x=1", b"/app.js;.html", b"/app.js?", b"/app.js#frag", b"/~root",
               b"/proc/self/environ", b"/%2fproc%2fself%2fenviron", b"/.git/config", b"/.env",
               b"*", b"http://127.0.0.1/", b"http://evil.example/", b"index.html", b"",
               b"/" + b"a" * 255, b"/" + b"a" * 256, b"/" + b"a" * 4096, b"/" + b"a/" * 2000,
               b"/" + b"%41" * 2000, b"/" + b"a" * 9000, b"/" + b"../" * 1000 + b"etc/passwd",
               b"/" + b"%00" * 300, b"/" + b"\xff" * 300]
    alphabet = b"abc./%0fF\\\x00\xff~-_;:@!$&'()*+,="
    for n in range(40):
        length = rng.choice([1, 5, 20, 100, 300])
        targets.append(b"/" + bytes(rng.choice(alphabet) for _ in range(length)))
    cases = []
    for t in targets:
        # Past the parser's line limit, or bytes HTTP forbids: aiohttp's parser may hang up.
        framing = len(t) > 8000 or any(c < 0x21 or c == 0x7F for c in t) or t == b""
        for method in (b"GET", b"POST"):
            raw = request(method, t) if method == b"GET" else post_offer(OFFER, target=t)
            cases.append(HttpCase("paths", f"{method.decode()} {t[:40]!r}", raw, may_close=framing))
    return cases


def headers(rng: random.Random) -> list[HttpCase]:
    """Huge, repeated, contradictory and malformed headers, on the offer route and a page."""
    json_len = str(len(OFFER)).encode()
    sets: list[tuple[str, list[tuple[bytes, bytes]], bool]] = [
        ("header of 8 KB", [(b"X-Big", b"a" * 8000)], False),
        ("header of 9 KB", [(b"X-Big", b"a" * 9000)], True),
        ("header of 100 KB", [(b"X-Big", b"a" * 100_000)], True),
        ("header name of 9 KB", [(b"X" * 9000, b"1")], True),
        ("120 headers", [(b"X-H%d" % i, b"v") for i in range(120)], False),
        ("200 headers", [(b"X-H%d" % i, b"v") for i in range(200)], True),
        ("5000 cookies", [(b"Cookie", b"a=b; " * 5000)], True),
        ("two Hosts", [(b"Host", b"evil.example")], True),
        ("two Content-Types", [(b"Content-Type", b"text/plain")], False),
        ("two equal Content-Lengths", [(b"Content-Length", json_len)], True),
        ("two different Content-Lengths", [(b"Content-Length", b"5")], True),
        ("Transfer-Encoding chunked and a length", [(b"Transfer-Encoding", b"chunked")], True),
        ("Transfer-Encoding gzip", [(b"Transfer-Encoding", b"gzip")], True),
        ("Transfer-Encoding junk", [(b"Transfer-Encoding", b"\xff")], True),
        ("Expect 100-continue", [(b"Expect", b"100-continue")], False),
        ("Expect junk", [(b"Expect", b"200-ok")], False),
        ("Origin evil", [(b"Origin", b"http://evil.example")], False),
        ("Origin null", [(b"Origin", b"null")], False),
        ("Origin junk", [(b"Origin", b"\xff\xfe://")], False),
        ("Origin huge", [(b"Origin", b"http://" + b"a" * 5000)], False),
        ("Referer evil", [(b"Referer", b"http://evil.example/x")], False),
        ("Authorization junk", [(b"Authorization", b"Bearer \xff\x00x")], True),
        ("Authorization huge", [(b"Authorization", b"Bearer " + b"a" * 7000)], False),
        ("Authorization empty", [(b"Authorization", b"")], False),
        ("Authorization Basic", [(b"Authorization", b"Basic Zm9vOmJhcg==")], False),
        ("Authorization jwt none", [(b"Authorization", b"Bearer eyJhbGciOiJub25lIn0.e30.")], False),
        ("X-Forwarded-For junk", [(b"X-Forwarded-For", b"1.2.3.4, \xff, , ::::")], True),
        ("X-Forwarded-For many", [(b"X-Forwarded-For", b", ".join([b"10.0.0.1"] * 800))], False),
        ("Forwarded junk", [(b"Forwarded", b"for=\"[::1\";proto=gopher")], False),
        ("Accept-Encoding junk", [(b"Accept-Encoding", b"\x00\xff;q=nan")], True),
        ("Connection upgrade", [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], False),
        ("Upgrade h2c", [(b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA")], False),
        ("Range", [(b"Range", b"bytes=99999999999-0")], False),
        ("If-Modified-Since junk", [(b"If-Modified-Since", b"\xff yesterday")], True),
        ("Content-Type param bomb", [(b"Content-Type", b"application/json" + b";a=b" * 1500)], False),
    ]
    cases = []
    for label, extra, may_close in sets:
        cases.append(HttpCase("headers", f"offer, {label}", post_offer(OFFER, extra), may_close))
        cases.append(HttpCase("headers", f"page, {label}", request(b"GET", b"/", extra), may_close))
    lengths = [b"-1", b"abc", b"1e3", b" 5", b"5 ", b"0x10", b"+5", b"", b"5, 5", b"\xff", b"0", b"10"]
    for value in lengths:
        raw = request(b"POST", b"/api/offer", [JSON_TYPE, (b"Content-Length", value)], OFFER, length=False)
        cases.append(HttpCase("headers", f"Content-Length {value!r}", raw, may_close=True))
    malformed = [b"NoColon", b": no-name", b"Bad Name: x", b"X-A:\x00", b"X-A: a\rb", b" folded: x",
                 b"X-A: x\r\n continued", b"X-\xff: y", b"X-A: \xff\xfe", b"Content-Type : application/json"]
    for line in malformed:
        raw = (b"POST /api/offer HTTP/1.1\r\nHost: " + HOST + b"\r\nConnection: close\r\n" + line +
               b"\r\nContent-Type: application/json\r\nContent-Length: " + json_len + b"\r\n\r\n" + OFFER)
        cases.append(HttpCase("headers", f"malformed line {line[:20]!r}", raw, may_close=True))
    no_host = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    cases.append(HttpCase("headers", "no Host", no_host, may_close=True))
    cases.append(HttpCase("headers", "HTTP/1.0 no Host", b"GET /healthz HTTP/1.0\r\n\r\n", may_close=True))
    for i in range(10):
        extra = [(bytes(rng.choice(b"abcXYZ-_") for _ in range(rng.randint(1, 30))),
                  rng.randbytes(rng.randint(0, 60)).replace(b"\r", b"").replace(b"\n", b""))]
        cases.append(HttpCase("headers", f"random header #{i}", post_offer(OFFER, extra), may_close=True))
    return cases


def queries(rng: random.Random) -> list[HttpCase]:
    """Query strings on every route: NUL, bad escapes, huge, repeated, a token of junk."""
    strings = [b"?", b"??", b"?&&&", b"?=", b"?a", b"?a=%00", b"?a=%ff%fe", b"?%ff=1", b"?a=%", b"?a=%g0",
               b"?token=", b"?token=junk", b"?token=" + b"a" * 4000, b"?token=a&token=b",
               b"?token=eyJhbGciOiJub25lIn0.e30.", b"?sdp=v%3D0&type=offer", b"?type=answer",
               b"?" + b"a=1&" * 1000, b"?" + b"x" * 7000, b"?a[]=1&a[b]=2", b"?a=1;b=2", b"?%00%00",
               b"?a=\xff", b"?a=%0d%0aX:1", b"?callback=alert(1)"]
    for _ in range(8):
        strings.append(b"?" + bytes(rng.choice(b"a=&%0f\xff;+") for _ in range(rng.randint(1, 80))))
    cases = []
    for q in strings:
        for route in (b"/", b"/healthz", b"/api/config", b"/metrics"):
            cases.append(HttpCase("queries", f"GET {route.decode()}{q[:30]!r}", request(b"GET", route + q),
                                  may_close=b"\xff" in q))
        cases.append(HttpCase("queries", f"POST /api/offer{q[:30]!r}", post_offer(OFFER, target=b"/api/offer" + q),
                              may_close=b"\xff" in q))
    return cases


def all_cases() -> dict[str, list[HttpCase]]:
    """Every HTTP case by group, each group from its own seed."""
    makers = {"bodies": bodies, "methods": methods, "paths": paths, "headers": headers, "queries": queries}
    return {name: make(random.Random(f"http-{name}")) for name, make in makers.items()}
