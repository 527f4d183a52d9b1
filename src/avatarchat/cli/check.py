"""``avatarchat check-config`` and ``avatarchat models``: answers without loading any model."""

from __future__ import annotations

import argparse
from typing import Any

from avatarchat.config import load_config, redact
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
