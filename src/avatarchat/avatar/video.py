"""Writing a reply as a video file (H.264 + AAC in MP4) and as a contact sheet (PNG).

Both tracks start at 0 on the reply clock: video frame ``k`` has pts ``k`` in a time base
of ``1/fps``, audio sample ``n`` has pts ``n`` in ``1/rate``. So a frame shown at ``k/fps``
plays with the audio at ``k/fps`` seconds, exactly as the pipeline timed them. Files are
written to a temp file beside the target and renamed: never half-written.
``write_mp4`` encodes in memory first (a few MB per minute at 512 px).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from avatarchat.audio.io import atomic_write

#: Rates the AAC encoder takes as they are; anything else is resampled to 48 kHz.
_AAC_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000})
_AAC_FRAME = 1024  # samples per AAC frame


def _timed(frames: Iterable[np.ndarray | tuple[float, np.ndarray]], fps: float) -> list[tuple[int, np.ndarray]]:
    """(frame index, image) pairs from bare images (index = position) or (pts, image) pairs."""
    out: list[tuple[int, np.ndarray]] = []
    for i, item in enumerate(frames):
        if isinstance(item, tuple):
            pts, image = item
            out.append((int(round(pts * fps)), image))
        else:
            out.append((i, item))
    out.sort(key=lambda x: x[0])
    # Two images on one index (should not happen) would break the stream: keep the first.
    return [x for j, x in enumerate(out) if j == 0 or x[0] != out[j - 1][0]]


def write_mp4(path: str | os.PathLike[str], frames: Iterable[np.ndarray] | Iterable[tuple[float, np.ndarray]],
              fps: int, audio: np.ndarray | None = None, sample_rate: int = 24000, crf: int = 20) -> Path:
    """Encode ``frames`` ([H, W, 3] uint8 RGB; images or (pts seconds, image)) at ``fps``
    and mono float32 ``audio`` into an MP4 (libx264 yuv420p, AAC). Returns the path."""
    import av

    path = Path(path)
    timed = _timed(frames, fps)
    if not timed:
        raise ValueError("write_mp4: no frames")
    h, w = timed[0][1].shape[:2]
    buffer = io.BytesIO()  # MP4 needs a seekable output; the file is written in one go
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = w - w % 2, h - h % 2  # yuv420p needs even sizes
        video.pix_fmt = "yuv420p"
        # The muxer changes the stream's time base once the header is written: frames keep
        # their own 1/fps (and audio 1/rate) and PyAV rescales the packets.
        tb = video.time_base = Fraction(1, fps)
        video.options = {"crf": str(crf), "preset": "veryfast"}
        astream = None
        if audio is not None and len(audio):
            audio, sample_rate = _aac_ready(audio, sample_rate)
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
            astream.time_base = Fraction(1, sample_rate)
        for index, image in timed:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: video.height, : video.width]), format="rgb24")
            frame.pts = index
            frame.time_base = tb
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if astream is not None:
            assert audio is not None  # the audio stream exists only when there is audio
            _encode_audio(container, astream, audio, sample_rate)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    return path


def _aac_ready(audio: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    samples = np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
    if rate in _AAC_RATES:
        return samples, rate
    from avatarchat.audio.resample import Resampler

    rs = Resampler(rate, 48000)
    return np.concatenate([rs.process(samples), rs.flush()]).astype(np.float32), 48000


def _encode_audio(container: object, stream: object, samples: np.ndarray, rate: int) -> None:
    import av

    for n in range(0, len(samples), _AAC_FRAME):
        block = samples[n:n + _AAC_FRAME]
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = n
        frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(frame))  # type: ignore[attr-defined]
    container.mux(stream.encode(None))  # type: ignore[attr-defined]


# -- contact sheet ---------------------------------------------------------------------------


def contact_sheet(frames: Sequence[np.ndarray] | Sequence[tuple[float, np.ndarray]], cols: int = 6, rows: int = 3,
                  label: bool = True, thumb: int = 160, fps: float = 25.0) -> np.ndarray:
    """A grid of ``cols * rows`` thumbnails sampled evenly across ``frames`` (RGB uint8),
    each labelled with its time (pts, or position / ``fps`` for bare images)."""
    import cv2

    if len(frames) == 0:
        raise ValueError("contact_sheet: no frames")
    items = [f if isinstance(f, tuple) else (i / fps, f) for i, f in enumerate(frames)]
    n = min(cols * rows, len(items))
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    h, w = items[0][1].shape[:2]
    th, tw = thumb, max(1, round(thumb * w / h))
    sheet = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    for j, i in enumerate(picks):
        pts, image = items[i]
        small = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        if label:
            text = f"{pts:.2f}s"
            cv2.putText(small, text, (5, th - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(small, text, (5, th - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(j, cols)
        sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = small
    return sheet


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write an RGB image as PNG, atomically."""
    import cv2

    path = Path(path)
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG")
    atomic_write(path, lambda f: f.write(data.tobytes()))
    return path
