"""The real embedded pipeline, loaded once for the fuzz tests that need real sessions
(SDP and data channel): greedy decoding and short replies, so a reply takes little time."""

from __future__ import annotations

import asyncio

import pytest

from avatarchat.config import load_config
from avatarchat.engine.pipeline import Pipeline
from tests.fuzz.configs import short_config


@pytest.fixture(scope="package")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Loaded in a throwaway loop: the handlers are plain objects each test's loop can use."""
    config = load_config(short_config(tmp_path_factory.mktemp("config")))
    return asyncio.run(Pipeline.load(config, progress=lambda _: None))
