"""Seeded structural mutations of a real aiortc offer: truncated, lines dropped, swapped
and duplicated, huge m-lines, bad fingerprints, no audio, bad numbers, random bytes.

Every address in a mutated candidate line is loopback (or not an address at all): an
offer the server accepts must never make it send a packet off this machine.
"""

from __future__ import annotations

import random
import re

Mutation = tuple[str, str]


def mutations(offer: str, rng: random.Random) -> list[Mutation]:
    """Bad offers made from ``offer`` (CRLF lines, as aiortc writes them)."""
    lines = offer.rstrip("\r\n").split("\r\n")
    out: list[Mutation] = []
    out += _truncated(offer)
    out += _dropped(lines)
    out += _reordered(lines, rng)
    out += _huge(lines)
    out += _fingerprints(lines)
    out += _no_audio(offer)
    out += _bad_values(offer)
    out += _random(offer, rng)
    return out


def join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def _key(line: str) -> str:
    return line.split(":", 1)[0] if line.startswith("a=") else line[:2]


def _truncated(offer: str) -> list[Mutation]:
    return [(f"truncated at {f:.0%}", offer[: int(len(offer) * f)]) for f in
            (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97, 0.995)]


def _dropped(lines: list[str]) -> list[Mutation]:
    keys = sorted({_key(line) for line in lines})
    return [(f"without {k} lines", join([line for line in lines if _key(line) != k])) for k in keys]


def _reordered(lines: list[str], rng: random.Random) -> list[Mutation]:
    out = []
    for i in range(20):
        swapped = list(lines)
        a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
        swapped[a], swapped[b] = swapped[b], swapped[a]
        out.append((f"lines {a} and {b} swapped", join(swapped)))
    for i in range(5):
        shuffled = lines[:1] + rng.sample(lines[1:], len(lines) - 1)
        out.append((f"shuffled #{i}", join(shuffled)))
    for i in range(8):
        dup = list(lines)
        at = rng.randrange(1, len(lines))
        dup.insert(at, lines[rng.randrange(1, len(lines))])
        out.append((f"a line duplicated at {at}", join(dup)))
    out.append(("fields of the m-lines reversed",
                join([" ".join(reversed(x.split())) if x.startswith("m=") else x for x in lines])))
    out.append(("keys and values swapped",
                join([f"{x[2:]}={x[:1]}" if len(x) > 2 and x[1] == "=" else x for x in lines])))
    sections = _sections(lines)
    out.append(("audio section twice", join(sections[0] + sections[1] + sections[1] + sum(sections[2:], []))))
    out.append(("sections in reverse", join(sections[0] + sum(reversed(sections[1:]), []))))
    return out


def _sections(lines: list[str]) -> list[list[str]]:
    """The session part, then one list per m-section."""
    out: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            out.append([])
        out[-1].append(line)
    return out


def _huge(lines: list[str]) -> list[Mutation]:
    sections = _sections(lines)
    audio = sections[1]
    head = audio[0].split()
    many_pts = " ".join(head[:3] + [str(96 + i % 32) for i in range(5000)])
    out = [
        ("audio m-line with 5000 payload types", join(sections[0] + [many_pts] + audio[1:] + sum(sections[2:], []))),
        ("audio m-line of 40 KB", join(sections[0] + [audio[0] + " 111" * 10000] + audio[1:] + sum(sections[2:], []))),
        ("1000 audio m-lines", join(sections[0] + audio + [audio[0]] * 1000)),
        ("80 audio sections", join(sections[0] + audio * 80)),
        ("3000 rtpmap lines", join(sections[0] + audio + ["a=rtpmap:111 opus/48000/2"] * 3000)),
        ("an attribute of 30 KB", join(sections[0] + audio + ["a=x-junk:" + "a" * 30000])),
        ("a session name of 20 KB", join([x if not x.startswith("s=") else "s=" + "n" * 20000 for x in lines])),
        ("400 candidate lines", join(lines + ["a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"] * 400)),
        ("offer of 70 KB", join(lines + ["a=x:" + "b" * 70000])),
    ]
    return out


def _fingerprints(lines: list[str]) -> list[Mutation]:
    values = ["sha-256 zz", "sha-256 " + "AB:" * 100 + "AB", "md5 00", "sha-256", "", "unknown-algo AA:BB",
              "sha-256 " + "00:" * 31 + "00", "sha-1 " + "FF:" * 19 + "FF", "sha-256 \x00\x01", "sha-256 AB" * 3,
              "SHA-256 " + "AB:" * 31 + "AB", " " * 50]
    out = []
    for v in values:
        out.append((f"fingerprint {v[:20]!r}",
                    join([("a=fingerprint:" + v) if x.startswith("a=fingerprint:") else x for x in lines])))
    fp = next((x for x in lines if x.startswith("a=fingerprint:")), "a=fingerprint:sha-256 00")
    out.append(("20 fingerprints", join([y for x in lines for y in ([x] * 20 if x == fp else [x])])))
    return out


def _no_audio(offer: str) -> list[Mutation]:
    return [
        ("audio renamed video", offer.replace("m=audio ", "m=video ")),
        ("audio renamed text", offer.replace("m=audio ", "m=text ")),
        ("audio renamed 'audi0'", offer.replace("m=audio ", "m=audi0 ")),
        ("audio port 0", re.sub(r"m=audio \d+", "m=audio 0", offer)),
        ("audio recvonly", offer.replace("a=sendrecv", "a=recvonly")),
        ("audio inactive", offer.replace("a=sendrecv", "a=inactive")),
        ("only the session part", join(_sections(offer.rstrip("\r\n").split("\r\n"))[0])),
        ("only 'audio' in a comment", "v=0\r\ns=m=audio\r\n"),
        ("v=0 and m=audio only", "v=0\r\nm=audio\r\n"),
        ("v=0 and a bare audio m-line", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
    ]


def _sub(offer: str, pattern: str, value: str) -> str:
    return re.sub(pattern, value, offer, flags=re.MULTILINE)


def _bad_values(offer: str) -> list[Mutation]:
    subs = [
        (r"^m=audio \d+", ["m=audio -1", "m=audio 99999999", "m=audio abc", "m=audio"]),
        (r"^(m=audio \S+ \S+) .*$", [r"\1 300", r"\1 -1", r"\1 x", r"\1"]),
        (r"^(a=rtpmap:\d+) opus/48000/2", [r"\1 opus/0/2", r"\1 opus/48000/0", r"\1 opus/48000/99999",
                                           r"\1 opus/abc", r"\1 opus", r"\1"]),
        (r"^a=ssrc:\d+", ["a=ssrc:99999999999999999", "a=ssrc:-1", "a=ssrc:x"]),
        (r"^a=max-message-size:\d+", ["a=max-message-size:-1", "a=max-message-size:99999999999999999999",
                                      "a=max-message-size:abc", "a=max-message-size:0"]),
        (r"^a=sctp-port:\d+", ["a=sctp-port:0", "a=sctp-port:70000", "a=sctp-port:abc"]),
        (r"^a=ice-ufrag:.*$", ["a=ice-ufrag:", "a=ice-ufrag:" + "u" * 300, "a=ice-ufrag:\u00e9\u4e2d"]),
        (r"^a=ice-pwd:.*$", ["a=ice-pwd:", "a=ice-pwd:x", "a=ice-pwd:" + "p" * 500]),
        (r"^a=setup:.*$", ["a=setup:nonsense", "a=setup:", "a=setup:holdconn"]),
        (r"^a=mid:.*$", ["a=mid:0", "a=mid:", "a=mid:" + "m" * 300]),
        (r"^a=group:BUNDLE.*$", ["a=group:BUNDLE 7 8 9", "a=group:BUNDLE", "a=group:LS x"]),
        (r"^c=.*$", ["c=IN IP4 garbage", "c=IN IP9 127.0.0.1", "c="]),
        (r"^o=.*$", ["o=- x", "o=", "o=- 1 1 IN IP4 127.0.0.1 extra fields here"]),
        (r"^v=0", ["v=1", "v=0x"]),
        (r"^t=.*$", ["t=a b", "t="]),
        (r"^(a=candidate:\S+) \d+ (\S+) \d+ (\S+) \d+ typ \S+",
         [r"\1 1 \2 99999999999999 \3 9 typ host", r"\1 1 \2 1 \3 0 typ host", r"\1 1 \2 1 \3 70000 typ host",
          r"\1 1 \2 1 \3 9 typ nonsense", r"\1 9 \2 1 \3 9 typ host", r"\1 1 tcp 1 \3 9 typ host tcptype active",
          r"\1 1 \2 1 127.0.0.2 9 typ host", r"\1 1 \2 1 ::1 9 typ host", r"\1 1 \2", "a=candidate:",
          r"\1 1 \2 1 \3 9 typ srflx raddr 127.0.0.1 rport 9", r"\1 1 \2 1 \3 9 typ relay raddr garbage rport x"]),
        (r"^a=rtcp-fb:.*$", ["a=rtcp-fb:", "a=rtcp-fb:* nack"]),
        (r"^a=fmtp:.*$", ["a=fmtp:", "a=fmtp:111 " + ";".join(f"k{i}={i}" for i in range(500))]),
        (r"^a=extmap:.*$", ["a=extmap:99999 urn:x", "a=extmap:x", "a=extmap:"]),
    ]
    out = []
    for pattern, values in subs:
        for value in values:
            mutated = _sub(offer, pattern, value)
            if mutated != offer:
                out.append((f"{pattern[:20]} -> {value[:30]!r}", mutated))
    return out


def _random(offer: str, rng: random.Random) -> list[Mutation]:
    out = []
    for n in (10, 100, 1000, 10000):
        out.append((f"v=0 then {n} random printable", "v=0\r\n" + "".join(rng.choice("abc=:\r\n 0123") for _ in range(n))))
        out.append((f"v=0 then {n} random code points", "v=0\r\n" + "".join(chr(rng.randrange(1, 0x3000)) for _ in range(n))))
    out.append(("v=0 and m=audio then NUL bytes", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + "\x00" * 500))
    out.append(("a lone surrogate", offer.replace("s=-", "s=\ud800")))
    out.append(("a lone surrogate in the ice password", _sub(offer, r"^a=ice-pwd:.*$", "a=ice-pwd:\udfff" * 3)))
    out.append(("LF line ends", offer.replace("\r\n", "\n")))
    out.append(("CR line ends", offer.replace("\r\n", "\r")))
    out.append(("no line ends", offer.replace("\r\n", " ")))
    for i in range(30):
        chars = list(offer)
        for _ in range(rng.randint(1, 10)):
            chars[rng.randrange(len(chars))] = rng.choice("\x00:= \r\n9-aZ/\u00e9\ufffd")
        out.append((f"characters flipped #{i}", "".join(chars)))
    return out
