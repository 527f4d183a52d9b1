"""The real embedded pipeline, loaded once for the fuzz tests that need real sessions
(SDP and data channel): greedy decoding and short replies, so a reply takes little time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from avatarchat.engine.config import load_config
from avatarchat.engine.pipeline import Pipeline
from tests.configs import greedy_default

#: Reply length cap for the fuzz and soak sessions: the replies only have to exist.
SHORT_REPLY_TOKENS = 16


def short_config(folder: Path) -> Path:
    """The embedded default at temperature 0 with replies cut at ``SHORT_REPLY_TOKENS``."""
    path = greedy_default(folder)
    config = yaml.safe_load(path.read_text())
    config["llm"]["max_tokens"] = SHORT_REPLY_TOKENS
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="package")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Loaded in a throwaway loop: the handlers are plain objects each test's loop can use."""
    config = load_config(short_config(tmp_path_factory.mktemp("config")))
    return asyncio.run(Pipeline.load(config, progress=lambda _: None))
