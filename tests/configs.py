"""Configs for tests that run the whole embedded stack."""

from __future__ import annotations

from pathlib import Path

import yaml

from avatarchat.config import DEFAULT_CONFIG


def greedy_default(folder: Path, without: tuple[str, ...] = ()) -> Path:
    """The embedded default config with greedy decoding, less the sections ``without``
    (e.g. ``("avatar",)``), written into ``folder``.

    At the default's sampled temperature the same question gets replies of different
    lengths from run to run: "a long story" was once a single 4 s sentence (CI, stop 8),
    too short for the tests that speak over it or measure its echo."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["llm"]["temperature"] = 0.0
    for section in without:
        config.pop(section, None)
    path = folder / "greedy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
