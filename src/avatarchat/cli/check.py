"""``avatarchat check-config`` and ``avatarchat models``: answers without loading any model."""

from __future__ import annotations

import argparse
from typing import Any

from avatarchat.engine.config import load_config
from avatarchat.engine.handler import STAGES, HandlerLoadError, handlers_for
from avatarchat.engine.pipeline import Pipeline
from avatarchat.models import ModelFile, verify


def add_check_config_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check-config", help="validate a YAML config without loading models")
    p.add_argument("file", nargs="?", help="config file (default: the embedded default)")
    p.set_defaults(run=run_check_config)


def add_models_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("models", help="list every handler's model files, licences and whether they verify")
    p.add_argument("--config", "-c", help="only the handlers of this config")
    p.set_defaults(run=run_models)


def run_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{config.path}: OK")
    for stage, sc in config.stages.items():
        opts = ", ".join(f"{k}={v!r}" for k, v in sc.options.model_dump().items())
        print(f"  {stage:<4} {sc.handler:<18} {opts}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    if args.config:
        handlers = Pipeline.build(load_config(args.config)).handlers
    else:
        handlers = [cls(cls.Options()) for stage in STAGES for cls in handlers_for(stage).values()
                    if _constructible(cls)]
    rows = [("stage", "handler", "model", "size", "licence", "status")]
    missing = 0
    for h in handlers:
        for mf in h.models():
            status, size = _status(mf)
            missing += status != "verified"
            rows.append((h.stage, h.name, mf.name, size, mf.licence, status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 1 if missing and args.config else 0


def _constructible(cls: Any) -> bool:
    try:
        cls.Options()
        return True
    except Exception:  # options with required fields only make sense from a config
        return False


def _status(mf: ModelFile) -> tuple[str, str]:
    path = mf.path()
    if path is None:
        return f"not installed ({mf.install_hint})", "-"
    size = f"{path.stat().st_size / 1e6:.1f} MB"
    try:
        verify(path, mf.sha256, mf.name, mf.install_hint)
    except HandlerLoadError:
        return "SHA256 MISMATCH (reinstall)", size
    return "verified", size
