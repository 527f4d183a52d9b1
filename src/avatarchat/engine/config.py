"""YAML configuration of a pipeline: ``session`` plus one section per stage.

    session: {system_prompt: "...", history_turns: 3, language: en}
    vad: {handler: silero, end_ms: 500}
    asr: {handler: whisper, model: tiny.en}
    llm: {handler: local}
    tts: {handler: hibari}

or, with a speech-to-speech model in place of ``asr``, ``llm`` and ``tts``::

    vad: {handler: silero}
    s2s: {handler: qwen_omni, api_key: "${DASHSCOPE_API_KEY}"}

This is what the engine needs (``PipelineConfig``). An application that keeps sections of its
own in the same file (``avatarchat.config``: ``server:``) passes their models to
``parse_sections``; the engine validates them with the same rules and messages, knowing
nothing of what they mean.

Strings may use ``${NAME}`` and ``${NAME:-default}``. Everything is validated before any
model loads; errors name the file, the key path and the allowed values. A key that moved
(``MOVED_KEYS``) is refused with one line naming its new place.

A config file is untrusted input: at most ``MAX_CONFIG_BYTES`` are read, and its YAML is
parsed within the depth and size limits of ``yaml_limits`` (aliases expanded), so a "billion
laughs" file or a deeply nested one fails in milliseconds with one line naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from avatarchat.engine import yaml_limits
from avatarchat.engine.handler import (
    OPTIONAL_STAGES,
    S2S_REPLACES,
    STAGES,
    HandlerOptions,
    SessionSettings,
    handlers_for,
)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

#: The largest config file read (the embedded default is ~4 KiB).
MAX_CONFIG_BYTES = 256 * 1024
#: Option names whose values are secrets (``api_key``, ``server.auth.secret``, an ICE
#: server's ``credential``...): whatever prints a config shows them as ``***``.
SECRET_NAME = re.compile(r"(key|secret|password|passwd|token|credential)$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")

#: Engine keys that moved: old dotted path -> where it lives now.
MOVED_KEYS: Mapping[str, str] = {
    "vad.complete_ms": "session.end_of_turn.complete_ms",
    "vad.unfinished_ms": "session.end_of_turn.unfinished_ms",
}


class ConfigError(ValueError):
    """A config problem, already phrased for the user: ``file: key.path: what is wrong``."""


@dataclass(frozen=True)
class StageConfig:
    """One stage of a config: the handler's registered name and its validated options."""

    stage: str
    handler: str
    options: HandlerOptions


@dataclass(frozen=True)
class PipelineConfig:
    """What the engine builds a pipeline from: the config's source (a path, for messages),
    its ``session:`` section and, per stage present, the handler and its options."""

    path: str
    session: SessionSettings
    stages: dict[str, StageConfig] = field(default_factory=dict)



def read_config(path: str | os.PathLike[str]) -> Any:
    """The YAML document in ``path``, parsed within the limits above (not yet validated).

    Raises ``ConfigError`` (one line naming the file) for a missing, unreadable, oversized
    or malformed file."""
    file = Path(path)
    try:
        with file.open("rb") as f:  # bounded read: the path may be a device or a huge file
            data = f.read(MAX_CONFIG_BYTES + 1)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read it ({_one_line(str(exc))})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a config is a few KiB")
    try:
        return yaml_limits.load(text)
    except yaml_limits.YamlTooComplex as exc:
        raise ConfigError(f"{file}: line {exc.line}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise ConfigError(f"{file}: not valid YAML{where}: {_one_line(what)}") from None
    except yaml.YAMLError as exc:  # a ReaderError: a character YAML does not allow
        what = str(exc).replace(' in "<unicode string>",', " at")
        raise ConfigError(f"{file}: not valid YAML: {_one_line(what)}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # A tagged value its constructor cannot build (``!!timestamp 2024-99-99``, ``!!int abc``).
        raise ConfigError(f"{file}: not valid YAML: a value cannot be read ({_one_line(str(exc))[:120]})") from None


def load_pipeline_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and validate a config of ``session:`` and stage sections only (no application
    sections: a ``server:`` section is an unknown section here)."""
    return parse_sections(read_config(path), str(Path(path)))[0]


class Masked(str):
    """A secret that is set, shown as ``***`` by ``str``, ``repr`` and f-strings."""

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"


def redact(value: Any, name: str = "") -> Any:
    """``value`` (a dumped config, a section, an option) fit to print: a set secret becomes
    ``Masked`` (``***``), an unset one (``None``, ``""``) stays as it is, so the output still
    says whether it is set; a password inside a URL (``https://user:pw@host``) becomes ``***``."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, name) for v in value)
    if SECRET_NAME.search(name) and value not in (None, ""):
        return Masked("***")
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_sections(raw: Any, source: str = "<config>", sections: Mapping[str, type[BaseModel]] | None = None,
                   moved: Mapping[str, str] | None = None) -> tuple[PipelineConfig, dict[str, Any]]:
    """Validate an already-parsed YAML document: the engine's sections into a
    ``PipelineConfig``, and each of ``sections`` (an application's own top-level sections,
    name -> pydantic model, validated as ``{}`` when absent) into its model.

    A key of ``MOVED_KEYS`` or of ``moved`` (old dotted path -> new place) is refused before
    anything is validated. Raises ``ConfigError``: ``source: key.path: what is wrong``."""
    extra = dict(sections or {})
    allowed = ("session", *extra, *STAGES)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(allowed)})")
    raw = _substitute(raw, source, "")
    odd = [k for k in raw if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{source}: {str(odd[0])[:40]!r}: a section name must be text; allowed: {', '.join(allowed)}")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown section; allowed: {', '.join(allowed)}")
    _refuse_moved(raw, source, {**MOVED_KEYS, **(moved or {})})
    session = _validate(SessionSettings, raw.get("session") or {}, source, "session")
    stages = {}
    s2s = raw.get("s2s") is not None
    for stage in STAGES:
        section = raw.get(stage)
        if section is not None and s2s and stage in S2S_REPLACES:
            raise ConfigError(f"{source}: {stage}: not with s2s (a speech-to-speech model replaces "
                              f"{', '.join(S2S_REPLACES)}); remove {stage}, or remove s2s")
        if section is None and (stage in OPTIONAL_STAGES or stage == "s2s" or (s2s and stage in S2S_REPLACES)):
            continue
        if section is None:
            required = ", ".join(s for s in STAGES if s not in OPTIONAL_STAGES and s != "s2s")
            raise ConfigError(f"{source}: {stage}: missing section; every config needs {required} "
                              f"(or vad and s2s, a speech-to-speech model, in place of {', '.join(S2S_REPLACES)})")
        stages[stage] = _stage(stage, section, source)
    validated = {name: _validate(model, raw.get(name) or {}, source, name) for name, model in extra.items()}
    return PipelineConfig(source, session, stages), validated


def _refuse_moved(raw: dict[str, Any], source: str, moved: Mapping[str, str]) -> None:
    for old, new in moved.items():
        node: Any = raw
        for part in old.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            raise ConfigError(f"{source}: {old}: moved to {new}")


def _stage(stage: str, section: Any, source: str) -> StageConfig:
    available = handlers_for(stage)
    if not isinstance(section, dict) or "handler" not in section:
        raise ConfigError(
            f"{source}: {stage}.handler: missing; allowed: {', '.join(sorted(available))}"
        )
    options = dict(section)
    name = options.pop("handler")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: {stage}.handler: must be a handler name; allowed: {', '.join(sorted(available))}")
    if name not in available:
        raise ConfigError(
            f"{source}: {stage}.handler: unknown handler {name!r}; allowed: {', '.join(sorted(available))}"
        )
    cls = available[name]
    return StageConfig(stage, name, _validate(cls.Options, options, source, stage))


def _validate(model: type[BaseModel], data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix}: must be a mapping of options")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join([prefix, *(str(p) for p in err["loc"])])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model.model_fields)) or "(none)"
            raise ConfigError(f"{source}: {path}: unknown key; allowed: {allowed}") from None
        got = redact(err.get("input"), str(err["loc"][-1]) if err["loc"] else prefix)
        raise ConfigError(f"{source}: {path}: {err['msg']} (got {got!r})") from None


def _substitute(node: Any, source: str, path: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, source, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, source, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(f"{source}: {path}: environment variable {name} is not set (use ${{{name}:-default}})")
            return default
        return value

    return _ENV.sub(repl, node)
