"""Seeded bad configs: YAML texts for ``load_config`` (wrong types, unknown keys, alias
bombs, deep nesting, huge files, syntax errors, bad tags and environment references) and
already-parsed documents for ``parse_config`` (recursive, deep, odd keys).

Every case is invalid except the byte-flipped copies of the default (``may_pass``), which
may still be a valid config."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

import yaml

from avatarchat.config import DEFAULT_CONFIG


@dataclass(frozen=True)
class ConfigCase:
    label: str
    text: str | bytes | None = None  # for load_config
    doc: Any = None  # for parse_config, when text is None
    may_pass: bool = False


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _leaves(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(section, key) for section, body in doc.items() if isinstance(body, dict)
            for key in body if key != "handler"]


def _set(doc: dict[str, Any], section: str, key: str, value: Any) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    new.setdefault(section, {})[key] = value
    return new


def typed(base: dict[str, Any]) -> list[ConfigCase]:
    """Each option given values of the wrong type; unknown keys, sections and handlers."""
    out = []
    for section, key in _leaves(base):
        value = base[section][key]
        wrong: list[Any] = [[1, 2], {"x": 1}] if not isinstance(value, (list, dict)) else ["text", 3]
        for w in wrong:
            out.append(ConfigCase(f"{section}.{key} = {w!r}", _dump(_set(base, section, key, w))))
    for section in base:
        out.append(ConfigCase(f"{section}.bogus_key", _dump(_set(base, section, "bogus_key", 1))))
        out.append(ConfigCase(f"{section} is a list", _dump({**base, section: [1, 2]})))
        out.append(ConfigCase(f"{section} is a string", _dump({**base, section: "yes"})))
    for stage in ("vad", "asr", "llm", "tts", "avatar"):
        out.append(ConfigCase(f"{stage}.handler unknown", _dump(_set(base, stage, "handler", "nope"))))
        out.append(ConfigCase(f"{stage}.handler a list", _dump(_set(base, stage, "handler", ["silero"]))))
        out.append(ConfigCase(f"{stage}.handler null", _dump(_set(base, stage, "handler", None))))
        no_handler = copy.deepcopy(base)
        no_handler[stage].pop("handler")
        out.append(ConfigCase(f"{stage} without a handler", _dump(no_handler)))
    for stage in ("vad", "asr", "llm", "tts"):
        out.append(ConfigCase(f"without {stage}", _dump({k: v for k, v in base.items() if k != stage})))
    out.append(ConfigCase("an unknown section", _dump({**base, "extra": {"a": 1}})))
    out.append(ConfigCase("a non-string section name", "1: {a: 1}\n" + _dump(base)))
    server: list[tuple[str, Any]] = [
        ("port", 0), ("port", 70000), ("port", "eighty"), ("max_sessions", 0), ("max_sessions", 65),
        ("idle_timeout_s", -1), ("connect_timeout_s", 0), ("max_session_s", "forever"),
        ("max_sessions_per_client", 0), ("message_rate", "fast"), ("message_rate", {"per_s": 0}),
        ("message_rate", {"per_s": 5, "burst": 0}), ("http", []), ("http", {"max_connections": 0}),
        ("http", {"header_timeout_s": -1}), ("auth", 1), ("auth", {"secret": ["x"]}), ("auth", {"max_ttl_s": 1}),
        ("turn", {"urls": "turn:x"}), ("turn", {"ttl_s": 1}), ("ice_servers", [{"urls": []}]),
        ("ice_servers", "stun:x"), ("video_codec", "av1"), ("trusted_proxies", "10.0.0.1"),
        ("allowed_origins", {"a": 1}), ("barge_in", {"client_grace_ms": 1}), ("echo_guard", "maybe"),
        ("mic_prefetch_packets", -1), ("max_body_bytes", 1), ("self_signed", "maybe"), ("host", ["::"]),
    ]
    for key, value in server:
        out.append(ConfigCase(f"server.{key} = {value!r:.30}", _dump({**base, "server": {key: value}})))
    session: list[tuple[str, Any]] = [
        ("barge_in", {"duck_volume": 2}), ("barge_in", {"min_speech_ms": -1}), ("barge_in", "on"),
        ("end_of_turn", {"complete_ms": -1}), ("end_of_turn", {"unfinished_ms": 99999}), ("end_of_turn", [250]),
    ]
    for key, value in session:
        out.append(ConfigCase(f"session.{key} = {value!r:.30}", _dump(_set(base, "session", key, value))))
    # Keys that moved: each is refused, naming its new place.
    moved_keys: list[tuple[str, Any]] = [("vad.complete_ms", 250), ("vad.unfinished_ms", 1600),
                                         ("server.barge_in.enabled", False), ("server.barge_in.echo_guard", True)]
    for old, value in moved_keys:
        moved = copy.deepcopy(base)
        *parents, key = old.split(".")
        node = moved
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
        out.append(ConfigCase(f"moved key {old}", _dump(moved)))
    for path, value in [("vad.threshold", ".nan"), ("vad.threshold", ".inf"), ("llm.temperature", "-.inf"),
                        ("session.history_turns", "-5"), ("vad.end_ms", "1e400"), ("asr.threads", "0"),
                        ("llm.max_tokens", "99999999999999999999"), ("avatar.fps", "0")]:
        section, key = path.split(".")
        text = _dump(base).replace(f"\n  {key}: {base[section].get(key)}\n", f"\n  {key}: {value}\n")
        if key not in base[section]:
            text = _dump(_set(base, section, key, "PLACEHOLDER")).replace("PLACEHOLDER", value)
        out.append(ConfigCase(f"{path}: {value}", text))
    return out


def structural(base: dict[str, Any], rng: random.Random) -> list[ConfigCase]:
    """Alias bombs, recursion, depth, size, syntax, tags, encodings, environment references."""
    text = _dump(base)
    out = []
    for levels in (3, 5, 7, 9, 12):
        lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
        out.append(ConfigCase(f"alias bomb of {levels} levels", "\n".join(lines) + "\n" + text))
        out.append(ConfigCase(f"alias bomb of {levels} levels in a session key",
                              text.replace("session:\n", "session:\n  x: *a%d\n" % (levels - 1))
                              .replace("session:", "\n".join(lines) + "\nsession:", 1)))
    out.append(ConfigCase("recursive alias", "x: &x [*x]\n" + text))
    out.append(ConfigCase("recursive mapping", "session: &s\n  s: *s\n" + text.split("\n", 3)[3]))
    out.append(ConfigCase("merge key of a scalar", "base: &b 1\nsession:\n  <<: *b\n"))
    out.append(ConfigCase("merge of a list of aliases", "a: &a {x: 1}\nsession:\n  <<: [*a, *a, *a]\n" + text))
    out.append(ConfigCase("an undefined alias", "session: *nope\n"))
    for depth in (50, 500, 5000, 50000):
        out.append(ConfigCase(f"flow list nested {depth}", "session:\n  x: " + "[" * depth + "]" * depth + "\n"))
        out.append(ConfigCase(f"flow map nested {depth}", "session: " + "{a: " * depth + "1" + "}" * depth + "\n"))
    out.append(ConfigCase("block map nested 300", "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v\n"))
    out.append(ConfigCase("a 6 MB string", text + "junk: " + "x" * (6 * 2**20) + "\n"))
    out.append(ConfigCase("200,000 keys", text + "".join(f"k{i}: {i}\n" for i in range(200_000))))
    out.append(ConfigCase("a 2 MB system prompt", _dump(_set(base, "session", "system_prompt", "y" * 2**21))))
    for label, bad in [("a tab indent", "session:\n\tlanguage: en\n"), ("unclosed [", "session: [\n"),
                       ("unclosed {", "session: {a: 1\n"), ("unclosed quote", 'session: "abc\n'),
                       ("bad indent", "session:\n  a: 1\n b: 2\n"), ("a lone colon", ":\n"),
                       ("document markers", "---\n...\n---\n" + text), ("two documents", text + "---\n" + text),
                       ("a directive", "%YAML 9.9\n---\n" + text), ("a python tag", "session: !!python/object:os.system ls\n"),
                       ("a python name", "session: !!python/name:os.system\n"), ("a binary tag", "session: !!binary '%%%'\n"),
                       ("a bad timestamp", "session: !!timestamp 2024-99-99\n"), ("a bad int", "session: !!int abc\n"),
                       ("a custom tag", "session: !custom {a: 1}\n"), ("a set", "session: !!set {a, b}\n"),
                       ("a complex key", "? [a, b]\n: 1\n" + text), ("a null key", "~: 1\n" + text),
                       ("a list on top", "- a\n- b\n"), ("a scalar on top", "just words\n"), ("a number on top", "42\n"),
                       ("only a comment", "# nothing\n"), ("empty", ""), ("NUL bytes", "session:\x00\n"),
                       ("control characters", "session: \x07\x1b\n"), ("a BOM mid-file", text + "\ufeffx: 1\n")]:
        out.append(ConfigCase(label, bad))
    for label, raw in [("invalid UTF-8", text.encode() + b"x: \xff\xfe\n"), ("UTF-16", text.encode("utf-16")),
                       ("Latin-1 bytes", "session: {system_prompt: caf\u00e9}\n".encode("latin-1")),
                       ("random bytes", rng.randbytes(2000))]:
        out.append(ConfigCase(label, raw))
    for ref in ["${AVATARCHAT_FUZZ_UNSET}", "${", "${}", "${1BAD}", "${A:-${B}}", "${" * 500, "$" * 5000,
                "${AVATARCHAT_FUZZ_UNSET:-" + "d" * 100000 + "}"]:
        out.append(ConfigCase(f"env reference {ref[:20]!r}", _dump(_set(base, "llm", "threads", ref))))
    for i in range(60):
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = rng.choice(":-[]{}&*!|>'\"#%@`\t\n ")
        out.append(ConfigCase(f"default with characters flipped #{i}", "".join(chars), may_pass=True))
    return out


def documents(base: dict[str, Any]) -> list[ConfigCase]:
    """Parsed documents with keys and values YAML rarely gives (``parse_config``'s input).
    Self-referential and overdeep Python objects are left out: YAML cannot make them past
    ``load_config``'s limits, and a caller that builds them is a bug, not bad input."""
    return [ConfigCase("an int key", doc={**base, 1: {}}), ConfigCase("a None key", doc={**base, None: {}}),
            ConfigCase("a tuple key", doc={**base, ("a",): 1}), ConfigCase("a set value", doc=_set(base, "session", "x", {1})),
            ConfigCase("bytes value", doc=_set(base, "llm", "model", b"\xff")), ConfigCase("a top-level list", doc=[base]),
            ConfigCase("an object value", doc=_set(base, "llm", "threads", object()))]


def all_cases() -> list[ConfigCase]:
    base = yaml.safe_load(DEFAULT_CONFIG.read_text())
    return typed(base) + structural(base, random.Random("config")) + documents(base)
