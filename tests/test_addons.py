"""Add-ons (``avatarchat.addons``): ``add`` installs real hash-pinned wheels with pip, builds,
verifies and renames into place; it is idempotent, atomic, refuses an unaccepted licence and
names the add-ons on a bad name.

The add-on here is a real one made by the test: a wheel holding two data parts (built with
zipfile, installed by pip from a local folder, ``--no-index``, into a target folder so the
venv stays untouched) and a module whose build joins the parts, like the Qwen add-ons.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import sys
import zipfile
from pathlib import Path

import pytest

from avatarchat import addons
from avatarchat.addons import AddonError, PreparedFile
from avatarchat.engine.handler import HandlerLoadError

PARTS = (b"first part of the model\n" * 100, b"second part\n" * 50)
MODEL_SHA = hashlib.sha256(b"".join(PARTS)).hexdigest()
DIST = "avatarchat-addon-testdata"
_ids = itertools.count()

MODULE = '''
from importlib.metadata import distribution
from pathlib import Path
from avatarchat.addons import Addon, PreparedFile

def build(work: Path, progress) -> None:
    if not {requirements!r}:  # no wheel: the parts are here
        (work / "model.bin").write_bytes({parts!r})
    else:
        dist = distribution({dist!r})
        with open(work / "model.bin", "wb") as out:
            for part in ("part01.bin", "part02.bin"):
                progress("joining " + part)
                out.write(Path(dist.locate_file("avatarchat_addon_testdata/data/" + part)).read_bytes())
    {extra}

FILE = PreparedFile(addon={name!r}, name="test model", relpath="model.bin", sha256={sha!r}, licence="MIT")
ADDON = Addon(name={name!r}, summary="a test add-on", licence="MIT", restriction={restriction!r},
              requirements={requirements!r}, build=build, files=(FILE,), transport={transport!r})
'''


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def data_wheel(folder: Path, dist: str, files: dict[str, bytes], version: str = "1.0") -> Path:
    """A real data-only wheel, as the transport wheels are: ``files`` and its dist-info."""
    stem = f"{dist.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    entries = dict(files) | {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in entries.items())
    entries[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    wheel = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in entries.items():
            z.writestr(path, data)
    return wheel


def make_wheel(folder: Path) -> Path:
    return data_wheel(folder, DIST, {"avatarchat_addon_testdata/data/part01.bin": PARTS[0],
                                     "avatarchat_addon_testdata/data/part02.bin": PARTS[1]})


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Add-ons go to tmp_path/models, pip installs into tmp_path/site (on sys.path)."""
    monkeypatch.setenv("AVATARCHAT_MODELS_DIR", str(tmp_path / "models"))
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv("PIP_TARGET", str(site))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def register(tmp: Path, monkeypatch: pytest.MonkeyPatch, *, wheel_hash: str | None = None,
             restriction: str | None = None, extra: str = "pass", sha: str = MODEL_SHA,
             with_wheel: bool = True, transport: bool = False) -> str:
    """Write a real add-on module under ``tmp`` and register it; returns its name."""
    n = next(_ids)
    name = f"test-addon-{n}"
    requirements = ""
    if with_wheel:
        wheels = tmp / "wheels"
        wheels.mkdir(exist_ok=True)
        wheel = make_wheel(wheels)
        digest = wheel_hash or hashlib.sha256(wheel.read_bytes()).hexdigest()
        req = tmp / f"requirements-{n}.txt"
        req.write_text(f"--no-index\n--find-links {wheels}\n{DIST}==1.0 --hash=sha256:{digest}\n")
        requirements = str(req)
    module = f"acme_addon_{n}"
    (tmp / f"{module}.py").write_text(MODULE.format(dist=DIST, parts=b"".join(PARTS), name=name, transport=(DIST,) if transport else (), sha=sha, extra=extra,
                                                    restriction=restriction, requirements=requirements))
    monkeypatch.setitem(addons.ADDONS, name, f"{module}:ADDON")
    monkeypatch.delitem(sys.modules, module, raising=False)
    return name


def leftovers(models: Path, name: str) -> list[str]:
    """Anything in the models folder besides the add-on's folder and its lock file."""
    return sorted(p.name for p in models.iterdir() if p.name not in (name, f".{name}.lock"))


def test_add_installs_builds_verifies_then_is_idempotent(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = register(env, monkeypatch)
    said: list[str] = []
    assert addons.state(addons.get(name)) == "missing"
    assert addons.add(name, accept_licence=False, progress=said.append) is True
    assert any("installing 1 hash-pinned wheels" in s for s in said)
    assert f"{name}: joining part02.bin" in said
    path = env / "models" / name / "model.bin"
    assert path.read_bytes() == b"".join(PARTS)
    assert (env / "site" / "avatarchat_addon_testdata" / "data" / "part01.bin").exists()
    addon = addons.get(name)
    assert addons.state(addon) == "verified"
    assert addons.state(addon, check=False) == "added"
    assert addon.files[0].locate() == path
    assert leftovers(env / "models", name) == []
    assert (path.parent.stat().st_mode & 0o777) == 0o755

    mtime = path.stat().st_mtime_ns
    again: list[str] = []
    assert addons.add(name, accept_licence=False, progress=again.append) is False
    assert again == [f"{name}: already added"]  # no pip, no build
    assert path.stat().st_mtime_ns == mtime


def test_transport_wheels_are_removed_once_their_files_are_in_place(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = register(env, monkeypatch, transport=True)
    said: list[str] = []
    assert addons.add(name, False, said.append) is True
    assert any("removing the 1 transport wheels" in s for s in said)
    assert not (env / "site" / "avatarchat_addon_testdata").exists()
    assert (env / "models" / name / "model.bin").read_bytes() == b"".join(PARTS)
    assert addons.state(addons.get(name)) == "verified"
    assert addons.add(name, False, lambda s: None) is False  # no reinstall for the gone wheels


def test_a_damaged_file_is_rebuilt_and_replaced(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = register(env, monkeypatch)
    addons.add(name, False, lambda s: None)
    path = env / "models" / name / "model.bin"
    path.write_bytes(b"damaged")
    assert addons.state(addons.get(name)) == "SHA256 MISMATCH"
    assert addons.add(name, False, lambda s: None) is True
    assert path.read_bytes() == b"".join(PARTS)
    assert leftovers(env / "models", name) == []


def test_a_build_with_the_wrong_sha256_leaves_nothing(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = register(env, monkeypatch, sha="0" * 64)
    with pytest.raises(AddonError, match="sha256 .* expected 0000.*nothing was added"):
        addons.add(name, False, lambda s: None)
    assert leftovers(env / "models", name) == []
    assert not (env / "models" / name).exists()


def test_a_build_that_fails_midway_leaves_nothing_and_keeps_an_earlier_add(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = register(env, monkeypatch, extra="raise OSError('disk full')")
    with pytest.raises(OSError, match="disk full"):
        addons.add(name, False, lambda s: None)
    assert leftovers(env / "models", name) == []
    assert not (env / "models" / name).exists()
    # An earlier good add stays untouched when a rebuild fails.
    good = env / "models" / name / "model.bin"
    good.parent.mkdir()
    good.write_bytes(b"stale")
    with pytest.raises(OSError):
        addons.add(name, False, lambda s: None)
    assert good.read_bytes() == b"stale"
    assert leftovers(env / "models", name) == []


def test_a_restricted_licence_is_refused_until_accepted(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = register(env, monkeypatch, restriction="Trained on a corpus licensed for non-commercial use only.")
    with pytest.raises(AddonError) as refused:
        addons.add(name, accept_licence=False, progress=lambda s: None)
    assert "non-commercial use only" in str(refused.value)
    assert f"avatarchat models add {name} --accept-licence" in str(refused.value)
    assert not any((env / "site").iterdir())  # pip never ran
    said: list[str] = []
    assert addons.add(name, accept_licence=True, progress=said.append) is True
    assert any("licence accepted" in s for s in said)


def test_pip_failure_shows_pip_and_adds_nothing(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = register(env, monkeypatch, wheel_hash="1" * 64)
    with pytest.raises(AddonError) as failed:
        addons.add(name, False, lambda s: None)
    assert "pip failed" in str(failed.value)
    assert "hash" in str(failed.value).lower()  # pip's own words about the hash
    assert not (env / "models" / name).exists()
    assert leftovers(env / "models", name) == []


def test_bad_names_list_the_add_ons(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("nope", "../etc", "", "QWEN2.5-0.5B"):
        with pytest.raises(AddonError, match="unknown add-on .*qwen2.5-0.5b.*zh"):
            addons.get(bad)
    monkeypatch.setitem(addons.ADDONS, "ghost", "avatarchat.handlers.nothing_here:ADDON")
    with pytest.raises(AddonError, match="not part of this avatarchat version"):
        addons.get("ghost")
    monkeypatch.setitem(addons.ADDONS, "wrong", "avatarchat.addons:ADDONS")
    with pytest.raises(AddonError, match="is not its Addon"):
        addons.get("wrong")


def test_groups_expand_in_order_without_duplicates() -> None:
    assert addons.expand(["zh"]) == ["whisper-base", "qwen2.5-0.5b", "mandarin-voice"]
    assert addons.expand(["qwen2.5-0.5b", "zh", "qwen2.5-1.5b"]) == [
        "qwen2.5-0.5b", "whisper-base", "mandarin-voice", "qwen2.5-1.5b"]


def test_a_file_not_added_says_how_to_add_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARCHAT_MODELS_DIR", str(tmp_path))
    f = PreparedFile(addon="qwen2.5-0.5b", name="Qwen", relpath="x.gguf", sha256="0" * 64, licence="Apache-2.0")
    assert f.path() is None and f.installed_version() is None
    with pytest.raises(HandlerLoadError, match="run: avatarchat models add qwen2.5-0.5b"):
        f.locate()


def test_models_dir_is_per_venv_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AVATARCHAT_MODELS_DIR", raising=False)
    assert addons.models_dir() == Path(sys.prefix) / "share" / "avatarchat" / "models"
