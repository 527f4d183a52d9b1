"""Reading user audio files and writing WAVs, with clear errors and atomic writes."""

from __future__ import annotations

import os
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

#: One turn longer than this is almost surely the wrong file (a whole recording).
MAX_INPUT_SECONDS = 120.0
#: Float samples this far past full scale (+40 dB) are not audio but a broken file.
MAX_PEAK = 100.0


class AudioInputError(ValueError):
    """A user-supplied audio file cannot be used; the message says why in one line."""


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000,
               max_seconds: float = MAX_INPUT_SECONDS) -> np.ndarray:
    """Decode any audio file PyAV/FFmpeg reads into mono float32 at ``sample_rate``.

    Any input rate and channel count is accepted (channels are averaged); samples come back
    within -1..1 (a float file a little past full scale is clipped, as any fixed-point format
    would be). Raises ``AudioInputError`` for missing, non-audio, corrupt, empty, NaN-filled,
    too long input, or float samples far past full scale.
    """
    import av  # lazy: only the CLI and tests read files

    p = Path(path)
    if not p.is_file():
        raise AudioInputError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise AudioInputError(f"{p}: the file is empty")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.audio:
                raise AudioInputError(f"{p}: has no audio stream (is it an audio file?)")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            limit = int(max_seconds * sample_rate)
            total = 0
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += len(chunk)
                if total > limit:
                    raise AudioInputError(
                        f"{p}: longer than {max_seconds:.0f} s; one turn should be one utterance "
                        "(cut the file, or use `avatarchat serve` for long conversations)"
                    )
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioInputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioInputError(f"{p}: not a readable audio file ({exc})") from None
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if len(audio) == 0:
        raise AudioInputError(f"{p}: contains no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioInputError(f"{p}: contains NaN or infinite samples")
    peak = float(np.abs(audio).max())
    if peak > MAX_PEAK:
        raise AudioInputError(f"{p}: samples reach {peak:.3g}, far past full scale (1.0); not audio")
    return np.clip(audio, -1.0, 1.0, out=audio)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    """Write mono 16-bit PCM atomically: a reader never sees a half-written file."""
    pcm = (np.clip(np.nan_to_num(samples), -1.0, 1.0) * 32767.0).astype("<i2")
    atomic_write(Path(path), lambda f: _write_wav(f, pcm, sample_rate))


def _write_wav(f: BinaryIO, pcm: np.ndarray, sample_rate: int) -> None:
    with wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temp file in the same folder, then rename over ``path``.

    ``write``'s return value is ignored (so ``lambda f: f.write(data)`` will do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

