"""The application's config file: the engine's sections (``session:`` and one per stage,
``avatarchat.engine.config``) plus ``server:`` (``avatarchat.server.settings``).

``load_config`` is what the CLI, the benchmarks and the tests read a config with. The file
handling, the limits, the error phrasing (``file: key.path: what is wrong``) and ``redact``
are the engine's; this module only adds the server's section and the server keys that moved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatarchat.engine.config import ConfigError, PipelineConfig, parse_sections, read_config, redact
from avatarchat.server.settings import ServerSettings

__all__ = ["DEFAULT_CONFIG", "MOVED_SERVER_KEYS", "Config", "ConfigError", "load_config", "parse_config", "redact"]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"

#: Server keys that moved: old dotted path -> where it lives now (the engine adds its own).
MOVED_SERVER_KEYS = {
    "server.barge_in.enabled": "session.barge_in.enabled",
    "server.barge_in.min_speech_ms": "session.barge_in.min_speech_ms",
    "server.barge_in.duck_volume": "session.barge_in.duck_volume",
    "server.barge_in.echo_guard": "server.echo_guard",
}


@dataclass(frozen=True)
class Config(PipelineConfig):
    """A whole config: what the pipeline is built from, and how ``avatarchat serve`` serves it."""

    server: ServerSettings = field(default_factory=ServerSettings)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, substitute and validate a config file (the embedded default if ``path`` is None).

    Raises ``ConfigError``, one line naming the file, before any model loads."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    return parse_config(read_config(file), str(file))


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Validate an already-parsed YAML document (``source`` names it in errors)."""
    pipeline, sections = parse_sections(raw, source, {"server": ServerSettings}, MOVED_SERVER_KEYS)
    return Config(pipeline.path, pipeline.session, pipeline.stages, sections["server"])
