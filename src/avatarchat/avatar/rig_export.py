"""The avatar's rig as a JSON document, for rendering it in the browser (web/avatar/).

``rig_document(renderer)`` holds everything the page needs to move the mesh exactly as
``FaceRig.deformed`` does and to draw the frame as ``PortraitRenderer.render`` does: the
rest points, the triangles that move, the blend-shape stack, the pucker's lip data, the
head-pose geometry, the inner-mouth and eye-lid constants. The portrait itself is not in
it: ``portrait_png(renderer)`` gives it as PNG bytes (served separately, so the browser
decodes and caches it as an image).

Coordinates are pixels of the portrait with OpenCV's convention (pixel i's centre at i);
a GL renderer adds 0.5. Displacements are rounded to ``DECIMALS`` (1/1000 px: the rounding
error of a whole frame stays below 0.01 px), which keeps the document small: for the
built-in avatar (546 points, 478 landmarks) 65 KB as ``json.dumps`` writes it, 19 KB gzipped.

Both functions are pure: they read the renderer and never change it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import cv2
import numpy as np

from avatarchat.avatar import deform, mouth
from avatarchat.avatar.params import FaceParams
from avatarchat.avatar.render import PortraitRenderer

RIG_VERSION = 1
DECIMALS = 3  # pixel values to 1/1000 px
#: FaceParams fields in wire order (the page's PARAM_NAMES).
PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(FaceParams))


def _num(a: np.ndarray | float, decimals: int = DECIMALS) -> Any:
    """Rounded floats as plain Python numbers (lists for arrays); integral values as ints,
    which JSON writes without a trailing ".0"."""
    r = np.round(np.asarray(a, np.float64), decimals)
    if r.ndim == 0:
        v = float(r)
        return int(v) if v.is_integer() else v
    flat = [int(v) if v.is_integer() else v for v in r.ravel().tolist()]
    return flat


def _ints(a: np.ndarray | list[int]) -> list[int]:
    return [int(v) for v in np.asarray(a).ravel()]


def _warp_triangles(r: PortraitRenderer) -> np.ndarray:
    """The triangles that can move, in draw order: those away from the lips first, then the
    renderer's mouth triangles (inner-lip slivers, then the rest), so that where the lips
    fold the same triangle ends on top as in the Python renderer's exact mouth inverse."""
    tri = r.asset.triangles
    moving = (tri < r.rig.n_face).any(axis=1)
    mouth_set = {tuple(t) for t in r.mouth_triangles.tolist()}
    others = np.array([t for t in tri[moving].tolist() if tuple(t) not in mouth_set], np.int32).reshape(-1, 3)
    return np.concatenate([others, r.mouth_triangles.astype(np.int32)])


def _shapes(r: PortraitRenderer) -> dict[str, Any]:
    rig = r.rig
    names = list(deform.SHAPE_RANGES)
    stack = rig.shape_stack[:, : rig.n_face]  # anchors never move: their rows are all zero
    return {
        "names": names,
        "ranges": [list(deform.SHAPE_RANGES[n]) for n in names],
        "delta": [_num(stack[i]) for i in range(len(names))],  # each [n_face * 2], x y x y ...
    }


def _pucker(r: PortraitRenderer) -> dict[str, Any]:
    rig = r.rig
    sel = np.flatnonzero(rig.pucker_weights)
    return {
        "amount": deform.PUCKER,
        "full_at": deform.PUCKER_FULL_AT,
        "index": _ints(sel),
        "weight": _num(rig.pucker_weights[sel], 5),
        "abs_u": _num(np.abs(rig.lip_u[sel]), 5),
    }


def _head(r: PortraitRenderer) -> dict[str, Any]:
    rig = r.rig
    return {
        "face_c": _num(rig.face_c, 6),
        "depth": _num(rig.depth, 4),
        "roll_pivot": _num(rig.roll_pivot, 6),
        "max_deg": deform.MAX_HEAD_DEG,
        "breath_fraction": deform.BREATH_FRACTION,
    }


def _mouth(r: PortraitRenderer) -> dict[str, Any]:
    return {
        "upper_inner": _ints(r.rig.mouth.upper_inner),
        "lower_inner": _ints(r.rig.mouth.lower_inner),
        "min_gap_px": mouth.MIN_GAP_PX,
        "colours": {
            "cavity_edge": _num(mouth.CAVITY_EDGE), "cavity_deep": _num(mouth.CAVITY_DEEP),
            "tongue": _num(mouth.TONGUE), "teeth": _num(mouth.TEETH),
        },
    }


def _eyes(r: PortraitRenderer) -> list[dict[str, Any]]:
    return [{"index": _ints(idx), "colour": _num(colour, 2)} for idx, colour in r.eye_tints]


def rig_document(renderer: PortraitRenderer) -> dict[str, Any]:
    """The JSON-able rig of ``renderer``'s avatar (``"version": 1``).

    Keys: ``size`` (the square image's side), ``n_points``/``n_face`` (the first ``n_face``
    points are landmarks, the rest fixed anchors), ``rest`` ([n_points * 2], x y x y ...),
    ``triangles`` ([k * 3]: the triangles with a landmark, in draw order; the rest of the
    mesh never moves), ``face_region`` ([x0, y0, x1, y1), nothing outside moves),
    ``face_h``, ``param_names``, ``shapes`` (names/ranges/delta per blend-shape channel),
    ``pucker``, ``head``, ``mouth``, ``eyes``.
    """
    rig = renderer.rig
    return {
        "version": RIG_VERSION,
        "name": renderer.asset.name,
        "size": int(renderer.size),
        "n_points": int(rig.n_points),
        "n_face": int(rig.n_face),
        "param_names": list(PARAM_NAMES),
        "rest": _num(rig.rest),
        "triangles": _ints(_warp_triangles(renderer)),
        "face_region": [int(renderer.x0), int(renderer.y0), int(renderer.x1), int(renderer.y1)],
        "face_h": _num(rig.face_h, 6),
        "shapes": _shapes(renderer),
        "pucker": _pucker(renderer),
        "head": _head(renderer),
        "mouth": _mouth(renderer),
        "eyes": _eyes(renderer),
    }


def portrait_png(renderer: PortraitRenderer) -> bytes:
    """The portrait (the image every frame is warped from) as PNG bytes, RGB."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(renderer.image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("cv2.imencode could not write the portrait as PNG")
    return bytes(buf)
