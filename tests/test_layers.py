"""The package's layers import one way: the engine and the handlers know nothing of the server,
the CLI or the benchmarks, and nothing imports the entry point (``avatarchat.cli.main``), which
imports every subcommand and the bench CLI.

Checked twice: in the source, every ``import`` statement, including those inside functions
(which run only when a command does); and in a fresh interpreter, what importing the modules
and loading every registered handler actually pulls in."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.util import resolve_name
from pathlib import Path

import avatarchat

PACKAGE = Path(avatarchat.__file__).resolve().parent
ENTRY_POINT = "avatarchat.cli.main"
#: Folders whose modules must import nothing from these packages.
LOWER = {"engine": ("avatarchat.server", "avatarchat.cli", "avatarchat.bench", "avatarchat.config"),
         "handlers": ("avatarchat.server", "avatarchat.cli", "avatarchat.bench", "avatarchat.config")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names, wherever the statement is
    (``from avatarchat.cli import main`` names ``avatarchat.cli.main`` too)."""
    names: set[str] = set()
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_nothing_imports_the_entry_point() -> None:
    offenders = [module_name(p) for p in modules() if module_name(p) != ENTRY_POINT and ENTRY_POINT in imported(p)]
    assert not offenders, f"import {ENTRY_POINT}: {offenders}"


def test_the_engine_and_the_handlers_import_no_upper_layer() -> None:
    offenders = []
    for folder, banned in LOWER.items():
        for path in modules():
            if path.is_relative_to(PACKAGE / folder):
                bad = sorted(n for n in imported(path) if n.startswith(banned))
                offenders += [f"{module_name(path)} imports {n}" for n in bad]
    assert not offenders, "\n".join(offenders)


def test_a_fresh_interpreter_confirms_the_layers() -> None:
    # Every CLI and bench module but the entry point: the entry point must not come with them.
    # The engine's modules and every registered handler: no server, CLI or bench module may.
    upper = [module_name(p) for p in modules()
             if p.is_relative_to(PACKAGE / "cli") or p.is_relative_to(PACKAGE / "bench")]
    engine = [module_name(p) for p in modules() if p.is_relative_to(PACKAGE / "engine")]
    script = f"""
import importlib, json, sys
def loaded(prefixes):
    return sorted(m for m in sys.modules if m.startswith(prefixes))
for name in {engine!r}:
    importlib.import_module(name)
from avatarchat.engine.handler import STAGES, handlers_for
handlers = sorted(cls.__module__ for stage in STAGES for cls in handlers_for(stage).values())
engine_pulls = loaded(("avatarchat.server", "avatarchat.cli", "avatarchat.bench", "avatarchat.config"))
for name in {[m for m in upper if m != ENTRY_POINT]!r}:
    importlib.import_module(name)
print(json.dumps({{"handlers": handlers, "engine_pulls": engine_pulls,
                  "entry_point": {ENTRY_POINT!r} in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert "avatarchat.handlers.llm.local" in seen["handlers"]  # the handlers were really loaded
    assert seen["engine_pulls"] == []
    assert seen["entry_point"] is False
