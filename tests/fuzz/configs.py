"""The config of the fuzz and soak sessions: the embedded default, greedy, short replies."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.configs import greedy_default

#: Reply length cap: the replies only have to exist, and a short one is quick to make.
SHORT_REPLY_TOKENS = 16


def short_config(folder: Path) -> Path:
    """The embedded default at temperature 0 with replies cut at ``SHORT_REPLY_TOKENS``."""
    path = greedy_default(folder)
    config = yaml.safe_load(path.read_text())
    config["llm"]["max_tokens"] = SHORT_REPLY_TOKENS
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
