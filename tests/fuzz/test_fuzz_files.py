"""Bad audio files for ``avatarchat talk --input`` (and ``audio.io.load_audio``) and bad
images for ``avatarchat avatar prepare``: each is refused with one clear line (exit code 2,
no traceback) or, for audio still decodable (a truncated WAV), read as finite audio; no
call hangs, and a refused input leaves nothing in the output folder."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest

from avatarchat.audio.io import AudioInputError, load_audio
from avatarchat.cli.main import main
from tests.fuzz.bounded import call
from tests.fuzz.gen_files import audio, images

AUDIO = audio(random.Random("audio"))
IMAGES = images(random.Random("images"))


def one_error_line(err: str) -> str | None:
    """Why ``err`` (the CLI's stderr) does not end in one ``avatarchat: error:`` line after
    nothing but progress lines (``[  0.7s] read photo.jpg: 1x1``), or None."""
    lines = [line for line in err.strip().splitlines() if not re.match(r"\[\s*\d+\.\d+s\] ", line)]
    if len(lines) != 1 or not lines[0].startswith("avatarchat: error: "):
        return f"stderr is not one error line: {err[-300:]!r}"
    return None


def test_bad_audio_is_refused_in_one_line_or_read_as_finite_audio(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failures: list[str] = []
    refused = 0
    for i, (label, data) in enumerate(AUDIO):
        path = tmp_path / f"in-{i}.wav"
        path.write_bytes(data)
        result, error = call(load_audio, path, timeout=30)
        if error is None:
            if not (result.dtype == np.float32 and result.ndim == 1 and len(result)
                    and np.all(np.isfinite(result)) and np.abs(result).max() <= 1.0):
                failures.append(f"{label}: read as {result.dtype} {result.shape}, not finite audio within -1..1")
            continue
        if not isinstance(error, AudioInputError) or "\n" in str(error) or path.name not in str(error):
            failures.append(f"{label}: {type(error).__name__}: {str(error)[:200]!r}")
            continue
        refused += 1
        out = tmp_path / f"out-{i}"
        code, crash = call(main, ["talk", "--input", str(path), "--out", str(out)], timeout=60)
        why = one_error_line(capsys.readouterr().err)
        if crash is not None or code != 2 or why or out.exists():
            failures.append(f"{label}: talk exit {code}, {crash!r:.100}, {why}, output folder made: {out.exists()}")
    print(f"\naudio: {len(AUDIO)} files, {refused} refused, {len(AUDIO) - refused} read")
    assert not failures, f"{len(failures)} of {len(AUDIO)} audio files:\n" + "\n".join(failures)
    assert refused >= len(AUDIO) // 2


def test_bad_images_are_refused_in_one_line_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    kept = outputs / "kept"  # an existing, empty output folder must stay empty
    kept.mkdir()
    failures: list[str] = []
    for i, (label, data) in enumerate(IMAGES):
        path = inputs / f"photo-{i}"
        path.write_bytes(data)
        out = outputs / f"avatar-{i}" if i % 2 else kept
        code, crash = call(main, ["avatar", "prepare", str(path), "--name", "fuzz", "--out", str(out)], timeout=120)
        why = one_error_line(capsys.readouterr().err)
        left = sorted(p.name for p in outputs.iterdir())
        if crash is not None or code != 2 or why or left != ["kept"] or any(kept.iterdir()):
            failures.append(f"{label}: exit {code}, {crash!r:.200}, {why}, output folder now {left}")
    print(f"\nimages: {len(IMAGES)} files, all refused")
    assert not failures, f"{len(failures)} of {len(IMAGES)} images:\n" + "\n".join(failures)
