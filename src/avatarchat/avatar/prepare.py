"""Turn one portrait photo into an avatar asset (see :mod:`avatarchat.avatar.asset`).

Steps: read the photo safely (size checks before decoding), find exactly one face with
mediapipe's face mesh, rotate so the eyes are level, scale and crop so the face fills about
45-50 % of a square frame, find the 478 landmarks again on the aligned crop, then add fixed
anchors (frame border and a ring around the face), a Delaunay mesh, the landmark groups and
feathered masks. mediapipe is imported only here; running an avatar never needs it.

Every refusal is a :class:`PrepareError` (a ValueError) whose message is one line a user can act on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from avatarchat.avatar.asset import AvatarAsset

MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 50 * 1024 * 1024
MIN_FACE_PX = 120  # below this the crop is mush
GOOD_FACE_PX = 250  # at or above this a 512 px avatar looks sharp
FACE_FRACTION = (0.45, 0.47)  # face height / frame: the fewest upscaling within this band
FACE_CENTRE_Y = 0.44  # the face box centre sits a little above the frame centre
RING_SCALE = 1.35  # anchor ring = face oval scaled out by this much about its centre
BORDER_ANCHORS_PER_SIDE = 8
LANDMARK_MODEL = "mediapipe 0.10.14 face_mesh (refine_landmarks)"
MEDIAPIPE_HINT = "avatar preparation needs mediapipe 0.10.14: pip install --no-deps mediapipe==0.10.14"
Progress = Callable[[str], None]


class PrepareError(ValueError):
    """The photo cannot become an avatar; the message (one line) says why and what to do."""


def prepare_avatar(photo: str | os.PathLike[str], name: str, size: int = 512, *,
                   licence: str | None = None, source_note: str | None = None,
                   progress: Progress | None = None) -> AvatarAsset:
    """Build the asset in memory; raises PrepareError for any photo it refuses.

    Promises: ``points[:478]`` are the landmarks found on the aligned crop, in output pixels;
    the other points are fixed anchors (border first, then the ring); every triangle has
    positive area in y-down pixels; the eyes are level to within the landmark noise.
    """
    say = progress or (lambda _m: None)
    if not 128 <= size <= 2048:
        raise PrepareError(f"--size {size} is out of range; use 128..2048 (512 is the default)")
    path = Path(photo)
    rgb, raw = read_photo(path)
    h, w = rgb.shape[:2]
    say(f"read {path.name}: {w}x{h}")
    with _FaceMesh() as mesh:  # closed inside the quiet zone even on errors: no log spam at exit
        box, matrix, angle, crop, final = _locate_and_align(mesh, rgb, size, say)
    asset = build_asset(name, crop, final, size)
    asset.meta.update({
        "source_file": path.name, "source_sha256": hashlib.sha256(raw).hexdigest(),
        "original_size": [w, h], "face_box_source": [round(float(v), 1) for v in box],
        "crop_transform": [[round(float(v), 6) for v in row] for row in matrix],
        "eye_angle_deg": round(angle, 2), "landmark_model": LANDMARK_MODEL,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "licence": licence, "source_note": source_note, "synthetic_label_required": True,
    })
    say(f"mesh: {len(asset.points)} points ({asset.face_points} landmarks), {len(asset.triangles)} triangles; "
        f"face {asset.meta['face_height_px']:.0f} px = {asset.meta['face_fraction']:.0%} of the frame")
    return asset


def _locate_and_align(mesh: _FaceMesh, rgb: np.ndarray, size: int, say: Progress
                      ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """(source face box, source->crop matrix, eye angle removed, crop, [478, 3] crop landmarks)."""
    lm = _one_face(mesh, rgb, say)
    box = _bbox(lm)
    face_px = box[3]
    if face_px < MIN_FACE_PX:
        raise PrepareError(f"face is {face_px:.0f} px tall; "
                           f"at least {MIN_FACE_PX} px is needed, {GOOD_FACE_PX}+ looks sharp")
    if face_px < GOOD_FACE_PX:
        say(f"warning: face is {face_px:.0f} px tall; {GOOD_FACE_PX}+ px looks sharper")
    matrix, angle = _alignment(lm, face_px, size)
    scale = float(np.hypot(*matrix[:, 0]))
    for attempt in range(3):
        crop = _warp(rgb, matrix, size)
        found = mesh.faces(crop)
        if not found:  # the landmarks mapped from the source are the (rare) fallback
            return box, matrix, angle, crop, np.c_[lm[:, :2] @ matrix[:, :2].T + matrix[:, 2], lm[:, 2] * scale]
        # Landmarks found on the crop itself are sharper; take the face nearest the frame centre.
        final = min(found, key=lambda f: float(np.abs(_bbox(f)[:2] + _bbox(f)[2:] / 2 - size / 2).sum()))
        # The two detections can disagree by a few degrees (turned heads): correct and redo.
        fix, residual = _alignment(final, face_px, size)
        if abs(residual) < 0.5 or attempt == 2:
            break
        matrix = fix[:, :2] @ matrix + np.c_[np.zeros((2, 2)), fix[:, 2]]
        angle, scale = angle + residual, float(np.hypot(*matrix[:, 0]))
    say(f"aligned: rotated {angle:+.1f} deg, scaled x{scale:.2f}, {size}x{size}")
    return box, matrix, angle, crop, final

def prepare_to_folder(photo: str | os.PathLike[str], name: str, out: str | os.PathLike[str] | None = None,
                      size: int = 512, **options: Any) -> Path:
    """Prepare and save atomically to ``out`` (default ./avatars/NAME); returns the folder.

    Refuses before any work when ``out`` is something other than an empty or avatar folder,
    so a typo can never replace unrelated files.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise PrepareError(f"avatar name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    folder = Path(out) if out is not None else Path("avatars") / name
    if folder.exists() and not (folder.is_dir() and ((folder / "avatar.json").is_file() or not any(folder.iterdir()))):
        raise PrepareError(f"{folder} exists and is not an avatar folder; choose another --out")
    asset = prepare_avatar(photo, name, size, **options)
    asset.save(folder)
    return folder


# --- reading -------------------------------------------------------------------------------

def read_photo(path: Path) -> tuple[np.ndarray, bytes]:
    """Return (RGB uint8 image, file bytes); checks size from the header before decoding."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise PrepareError(MEDIAPIPE_HINT + " (and its matplotlib/Pillow dependencies)") from None
    if not path.is_file():
        raise PrepareError(f"{path}: no such file")
    nbytes = path.stat().st_size
    if nbytes == 0:
        raise PrepareError(f"{path}: the file is empty")
    if nbytes > MAX_FILE_BYTES:
        raise PrepareError(f"{path}: {nbytes / 2**20:.0f} MB is too big "
                           f"(limit {MAX_FILE_BYTES // 2**20} MB); scale the photo down")
    raw = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's decompression-bomb warning: we check ourselves
        try:
            image: Image.Image = Image.open(io.BytesIO(raw))  # lazy: reads only the header
            w, h = image.size
        except Image.DecompressionBombError:
            raise PrepareError(f"{path}: image is too large "
                               f"(limit {MAX_PIXELS // 10**6} megapixels); scale it down") from None
        except Exception:
            raise PrepareError(f"{path}: not an image (or a format Pillow cannot read)") from None
        if w * h > MAX_PIXELS:
            raise PrepareError(f"{path}: {w}x{h} is {w * h / 1e6:.0f} megapixels "
                               f"(limit {MAX_PIXELS // 10**6}); scale it down")
        try:
            image.load()  # Pillow raises on truncated or corrupt data; OpenCV would pad with grey
            image = ImageOps.exif_transpose(image).convert("RGB")
        except Exception as exc:
            raise PrepareError(f"{path}: corrupt or truncated image ({str(exc).splitlines()[0][:80]})") from None
    return np.asarray(image, dtype=np.uint8).copy(), raw


# --- face mesh -----------------------------------------------------------------------------

@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """Silence TF-lite/absl lines that C++ writes straight to fd 2 (Python logging can't)."""
    if os.environ.get("AVATARCHAT_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    python_stderr = sys.stderr
    # Python's own messages (progress lines) keep going to the real stderr meanwhile.
    visible = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        os.dup2(devnull, 2)
        sys.stderr = visible
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protobuf's GetPrototype deprecation, every call
            yield
    finally:
        sys.stderr = python_stderr
        visible.close()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _FaceMesh:
    """mediapipe's legacy face mesh, static images, up to two faces, 478 landmarks each.

    Use as a context manager: native stderr stays quiet for the mesh's whole life, because
    its graph threads log (e.g. a TF-lite feedback-manager warning) between our calls too.
    """

    def __enter__(self) -> _FaceMesh:
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._quiet = contextlib.ExitStack()
        self._quiet.enter_context(_native_stderr_quiet())
        try:
            try:
                from mediapipe.python.solutions import face_mesh
            except ImportError as exc:
                raise PrepareError(f"{MEDIAPIPE_HINT} ({exc})") from None
            self._mesh = face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=2)
        except BaseException:
            self._quiet.close()
            raise
        return self

    def faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Each face as [478, 3] float64: x, y in pixels of ``rgb``, z in the same pixel scale."""
        h, w = rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(rgb))
        return [np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark])
                for face in result.multi_face_landmarks or []]

    def __exit__(self, *exc: object) -> None:
        try:
            self._mesh.close()
        finally:
            self._quiet.close()


def _one_face(mesh: _FaceMesh, rgb: np.ndarray, say: Progress) -> np.ndarray:
    # Detection works at a small fixed input size anyway; a smaller copy is just faster.
    h, w = rgb.shape[:2]
    k = min(1.0, 1600 / max(h, w))
    small = rgb if k == 1.0 else cv2.resize(rgb, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
    faces = [f / np.array([small.shape[1] / w, small.shape[0] / h, small.shape[1] / w]) for f in mesh.faces(small)]
    if not faces:
        raise PrepareError(f"no face found; use a frontal, evenly lit photo of one face ({MIN_FACE_PX}+ px tall)")
    faces.sort(key=lambda f: -_bbox(f)[3])
    # A far smaller second face (someone in the background) is ignored; a comparable one is not.
    if len(faces) > 1 and _bbox(faces[1])[3] >= 0.4 * _bbox(faces[0])[3]:
        raise PrepareError(f"found {len(faces)} faces; crop the photo to one person")
    if len(faces) > 1:
        say("note: ignoring a much smaller second face")
    return faces[0]


def _bbox(lm: np.ndarray) -> np.ndarray:
    """[x, y, w, h] of the landmark bounding box."""
    lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
    return np.r_[lo, hi - lo]


# --- alignment -----------------------------------------------------------------------------

def _alignment(lm: np.ndarray, face_px: float, size: int) -> tuple[np.ndarray, float]:
    """The 2x3 source->crop matrix and the eye-line angle (degrees) it removes."""
    edges = _connections()
    right_eye, left_eye = (lm[sorted({i for e in edges[k] for i in e}), :2].mean(0) for k in ("right_eye", "left_eye"))
    dx, dy = left_eye - right_eye
    angle = float(np.degrees(np.arctan2(dy, dx)))
    rot = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2]
    turned = lm[:, :2] @ rot.T
    lo, hi = turned.min(0), turned.max(0)
    # Upscale as little as possible: the face takes its own size if that is within the band.
    fraction = float(np.clip(face_px / size, *FACE_FRACTION))
    scale = fraction * size / (hi[1] - lo[1])
    target = np.array([size / 2, FACE_CENTRE_Y * size])
    matrix = np.c_[scale * rot, target - scale * (lo + hi) / 2]
    return matrix, angle


def _warp(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Resample with INTER_AREA when shrinking, Lanczos when enlarging; blur any padding."""
    scale = float(np.hypot(*matrix[:, 0]))
    src, m = rgb, matrix
    if scale < 0.95:
        h, w = rgb.shape[:2]
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        src = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / w, nh / h
        # cv2.resize maps pixel centres: x' = sx * x + (sx - 1) / 2; undo that in the matrix.
        shrink = np.array([[sx, 0, (sx - 1) / 2], [0, sy, (sy - 1) / 2], [0, 0, 1]])
        m = (np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(shrink))[:2]
    flags = cv2.INTER_CUBIC if scale < 0.95 else cv2.INTER_LANCZOS4
    out = cv2.warpAffine(src, m, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.ones(src.shape[:2], np.float32), m, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if valid.min() < 0.999:  # the crop left the photo: fade replicated edges into a blur
        blurred = cv2.GaussianBlur(out, (0, 0), size / 40)
        alpha = cv2.GaussianBlur(valid, (0, 0), size / 100)[..., None] * valid[..., None]
        out = (alpha * out + (1 - alpha) * blurred).round().clip(0, 255).astype(np.uint8)
    return out


# --- groups, anchors, mesh, masks -----------------------------------------------------------

def _connections() -> dict[str, frozenset[tuple[int, int]]]:
    """mediapipe's own edge sets (its numbering), read at prepare time, never copied here."""
    try:
        from mediapipe.python.solutions import face_mesh_connections as c
    except ImportError as exc:
        raise PrepareError(f"{MEDIAPIPE_HINT} ({exc})") from None
    return {"lips": c.FACEMESH_LIPS, "left_eye": c.FACEMESH_LEFT_EYE, "right_eye": c.FACEMESH_RIGHT_EYE,
            "left_brow": c.FACEMESH_LEFT_EYEBROW, "right_brow": c.FACEMESH_RIGHT_EYEBROW,
            "face_oval": c.FACEMESH_FACE_OVAL}


def _chains(edges: frozenset[tuple[int, int]]) -> list[list[int]]:
    """Each connected component as one ordered path (a loop is returned without repeating its start)."""
    adj: dict[int, set[int]] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    seen: set[int] = set()
    chains = []
    for start in sorted(adj, key=lambda n: (len(adj[n]) != 1, n)):  # open paths from an end
        if start in seen:
            continue
        chain = [start]
        seen.add(start)
        while nxt := sorted(adj[chain[-1]] - seen):
            chain.append(nxt[0])
            seen.add(nxt[0])
        chains.append(chain)
    return chains


def _contour(chains: list[list[int]], xy: np.ndarray, start: int | None = None) -> list[int]:
    """Join chains end-to-nearest-end into one loop, clockwise on screen, beginning at ``start``."""
    loop, rest = list(chains[0]), [list(c) for c in chains[1:]]
    while rest:
        best = min(((np.linalg.norm(xy[loop[-1]] - xy[c[0 if fwd else -1]]), i, fwd)
                    for i, c in enumerate(rest) for fwd in (True, False)))
        nxt = rest.pop(best[1])
        loop += nxt if best[2] else nxt[::-1]
    p = xy[loop]
    if np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]) < 0:
        loop.reverse()  # positive shoelace area in y-down pixels = clockwise as seen
    if start is not None:
        k = loop.index(start)
        loop = loop[k:] + loop[:k]
    return loop


def _halves(loop: list[int], end: int, upper_marker: int) -> tuple[list[int], list[int]]:
    """Split a loop that begins at one corner at the other corner ``end``: (upper, lower),
    both running from the first corner to ``end``; the upper one contains ``upper_marker``."""
    k = loop.index(end)
    a, b = loop[: k + 1], [loop[0]] + loop[k:][::-1]
    return (a, b) if upper_marker in a else (b, a)


def landmark_groups(xy: np.ndarray) -> dict[str, list[int]]:
    """Ordered index contours for every group the asset format names (subject's left/right)."""
    edges = _connections()
    lips = _chains(edges["lips"])
    outer = _contour([c for c in lips if 61 in c], xy, 61)
    inner = _contour([c for c in lips if 78 in c], xy, 78)
    groups = {"lips_outer": outer, "lips_inner": inner, "face_oval": _contour(_chains(edges["face_oval"]), xy, 10)}
    groups["upper_lip_inner"], groups["lower_lip_inner"] = _halves(inner, 308, 13)
    groups["upper_lip_outer"], groups["lower_lip_outer"] = _halves(outer, 291, 0)
    for key in ("left_eye", "right_eye", "left_brow", "right_brow"):
        groups[key] = _contour(_chains(edges[key]), xy)
    corners_y = (xy[61, 1] + xy[291, 1]) / 2
    # The jaw line below the mouth corners: one contiguous run of the oval (which starts on top).
    chin = [i for i in groups["face_oval"] if xy[i, 1] > corners_y]
    groups["chin"] = chin if xy[chin[0], 0] < xy[chin[-1], 0] else chin[::-1]
    return {k: [int(i) for i in v] for k, v in groups.items()}


def _anchors(oval: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(border anchors on the frame edge, ring anchors around the face inside the frame)."""
    edge, n = size - 1.0, BORDER_ANCHORS_PER_SIDE
    t = np.arange(n) / n * edge
    zero, full = np.zeros(n), np.full(n, edge)
    border = np.concatenate([np.c_[t, zero], np.c_[full, t], np.c_[edge - t, full], np.c_[zero, edge - t]])
    centre = oval.mean(0)
    margin, spacing = size / 32, size / 40
    ring: list[np.ndarray] = []
    for p in centre + RING_SCALE * (oval - centre):
        # Past the frame the border already holds the picture still; crowded points make slivers.
        if np.all(p >= margin) and np.all(p <= edge - margin) and all(np.linalg.norm(p - q) >= spacing for q in ring):
            ring.append(p)
    return border, np.array(ring).reshape(-1, 2)


def delaunay(points: np.ndarray, size: int) -> np.ndarray:
    """[T, 3] int32 point indices; each triangle has positive area in y-down pixels (clockwise
    as seen); zero-area triangles are dropped."""
    sub = cv2.Subdiv2D((0, 0, size, size))
    index: dict[tuple[float, float], int] = {}
    for i, (x, y) in enumerate(points.astype(np.float32)):
        key = (float(x), float(y))
        if key not in index:  # an exact duplicate would be merged by Subdiv2D anyway
            index[key] = i
            sub.insert(key)
    triangles = []
    # cv2's stubs say a sequence of Vec6f; it is an [N, 6] float32 array.
    for tri in cast(np.ndarray, sub.getTriangleList()).reshape(-1, 3, 2):
        ids = [index.get((float(x), float(y))) for x, y in tri]
        if None in ids:
            continue  # touches Subdiv2D's virtual outer vertices
        a, b, c = points[cast(list[int], ids)]
        cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(cross) > 1e-3:
            triangles.append(ids if cross > 0 else [ids[0], ids[2], ids[1]])
    return np.array(triangles, dtype=np.int32).reshape(-1, 3)


def _poly(points: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Anti-aliased filled polygon, feathered by a Gaussian of ``sigma`` px, as float 0..1."""
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [np.round(points * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(m.astype(np.float32) / 255, (0, 0), sigma)


def build_asset(name: str, image: np.ndarray, lm: np.ndarray, size: int) -> AvatarAsset:
    """Assemble points (landmarks, then border, then ring anchors), mesh, groups and masks."""
    xy = lm[:, :2].astype(np.float64)
    groups = landmark_groups(xy)
    border, ring = _anchors(xy[groups["face_oval"]], size)
    points = np.concatenate([xy, border, ring]).astype(np.float32)
    fine = size / 512
    inner = _poly(xy[groups["lips_inner"]], size, fine)
    masks = {"face": _poly(xy[groups["face_oval"]], size, 2 * fine),
             "lips": np.clip(_poly(xy[groups["lips_outer"]], size, fine) - inner, 0, 1), "mouth": inner,
             "left_eye": _poly(xy[groups["left_eye"]], size, fine),
             "right_eye": _poly(xy[groups["right_eye"]], size, fine)}
    face_h = float(np.ptp(xy[:, 1]))
    meta = {"face_height_px": round(face_h, 1), "face_fraction": round(face_h / size, 4),
            "anchors": {"border": len(border), "ring": len(ring)}, "sides": "left/right = the subject's own",
            # Depth per landmark (mediapipe z, same pixel scale as x; smaller = nearer): for head turns.
            "landmark_z": [round(float(z), 1) for z in lm[:, 2]]}
    return AvatarAsset(name=name, image=image, points=points, triangles=delaunay(points, size),
                       face_points=len(xy), groups=groups,
                       masks={k: (v * 255).round().astype(np.uint8) for k, v in masks.items()}, meta=meta)
