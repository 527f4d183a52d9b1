"""``avatarchat check-config``: the resolved config, without loading any model (``avatarchat
models`` lives in ``cli/models.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from avatarchat.config import load_config, redact


def add_check_config_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check-config", help="validate a YAML config without loading models")
    p.add_argument("file", nargs="?", help="config file (default: the embedded default)")
    p.set_defaults(run=run_check_config)


def run_check_config(args: argparse.Namespace) -> int:
    """Every option the config resolves to, one section a line; secrets (``api_key``,
    ``server.auth.secret``, ``server.turn.secret``, ICE ``credential``...) show as ``***``
    when set and as None or '' when not."""
    config = load_config(args.file)
    print(f"{config.path}: OK")
    print(f"  {'session':<7} {_options(config.session.model_dump())}")
    for stage, sc in config.stages.items():
        print(f"  {stage:<7} {sc.handler:<18} {_options(sc.options.model_dump())}")
    server = redact(config.server.model_dump())
    flat = {k: v for k, v in server.items() if not isinstance(v, dict)}
    print(f"  {'server':<7} {_options(flat)}")
    for name, section in server.items():
        if isinstance(section, dict):
            print(f"  server.{name} {_options(section)}")
    return 0


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in redact(options).items())
