"""The exported rig document: deforming with only its data (a numpy re-implementation of
what web/avatar/rig.js does) lands every mesh point where ``FaceRig.deformed`` puts it,
for params across all channels, clamped ones and non-finite ones; the document is plain
JSON, finite, and the PNG is the portrait."""

from __future__ import annotations

import json
import math
from typing import Any

import cv2
import numpy as np
import pytest

from avatarchat.avatar.asset import AvatarAssetError, load_avatar
from avatarchat.avatar.params import FaceParams
from avatarchat.avatar.render import PortraitRenderer
from avatarchat.avatar.rig_export import PARAM_NAMES, portrait_png, rig_document

TOLERANCE_PX = 0.01  # the document rounds displacements to 1/1000 px
CASES = [
    FaceParams(),
    FaceParams(jaw=1.0),
    FaceParams(jaw=0.6, round=1.0),
    FaceParams(jaw=0.3, round=0.2, press=0.4),
    FaceParams(smile=1.0, stretch=0.8, upper=0.5),
    FaceParams(blink=1.0, brows=-1.0),
    FaceParams(yaw=2.5, roll=-1.7, pitch=1.2, brows=0.6, breath=0.7),
    FaceParams(jaw=3.0, round=-2.0, yaw=40.0, pitch=-9.0, breath=5.0, brows=-4.0),  # clamped
    FaceParams(jaw=float("nan"), roll=float("inf"), round=float("nan"), smile=0.5),  # non-finite -> 0
]


@pytest.fixture(scope="module")
def renderer() -> PortraitRenderer:
    try:
        return PortraitRenderer(load_avatar("default"))
    except AvatarAssetError as exc:
        pytest.skip(f"built-in avatar 'default' is missing ({exc})")


@pytest.fixture(scope="module")
def doc(renderer: PortraitRenderer) -> dict[str, Any]:
    # Through JSON, as the page gets it.
    return json.loads(json.dumps(rig_document(renderer), allow_nan=False))


def _finite(v: float) -> float:
    return v if math.isfinite(v) else 0.0


def deform_from_document(doc: dict[str, Any], params: FaceParams) -> np.ndarray:
    """Mesh points [n_points, 2] for ``params`` from the document alone (rig.js's algorithm)."""
    nf = doc["n_face"]
    pts = np.array(doc["rest"], np.float64).reshape(-1, 2)
    sh = doc["shapes"]
    w = [min(max(_finite(getattr(params, n)), lo), hi) for n, (lo, hi) in zip(sh["names"], sh["ranges"])]
    for wi, delta in zip(w, sh["delta"]):
        pts[:nf] += wi * np.array(delta).reshape(-1, 2)
    rnd = w[sh["names"].index("round")]
    if rnd > 0:
        pk, m = doc["pucker"], doc["mouth"]
        up, lo = pts[m["upper_inner"]], pts[m["lower_inner"]]
        sel = np.array(pk["index"])
        x = pts[sel, 0]
        mid = 0.5 * (np.interp(x, up[:, 0], up[:, 1]) + np.interp(x, lo[:, 0], lo[:, 1]))
        half = 1.0 - pk["amount"] * rnd
        keep = np.sqrt(np.clip(1.0 - (np.array(pk["abs_u"]) / half) ** 2, 0.0, 1.0))
        strength = min(1.0, rnd / pk["full_at"])
        pts[sel, 1] += (mid - pts[sel, 1]) * (1.0 - keep) * np.array(pk["weight"]) * strength
    hd = doc["head"]
    lim = hd["max_deg"]
    yaw, pitch, roll = (math.radians(min(max(_finite(getattr(params, n)), -lim), lim)) for n in ("yaw", "pitch", "roll"))
    c, z, piv = np.array(hd["face_c"]), np.array(hd["depth"]), np.array(hd["roll_pivot"])
    f = pts[:nf]
    f[:, 0] = c[0] + (f[:, 0] - c[0]) * math.cos(yaw) + z * math.sin(yaw)
    f[:, 1] = c[1] + (f[:, 1] - c[1]) * math.cos(pitch) + z * math.sin(pitch)
    qx, qy = f[:, 0] - piv[0], f[:, 1] - piv[1]
    f[:, 0] = piv[0] + qx * math.cos(roll) - qy * math.sin(roll)
    f[:, 1] = piv[1] + qx * math.sin(roll) + qy * math.cos(roll)
    f[:, 1] -= hd["breath_fraction"] * doc["face_h"] * min(max(_finite(params.breath), 0.0), 1.0)
    return pts


@pytest.mark.parametrize("params", CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.as_dict().items() if v) or "neutral")
def test_document_deforms_like_the_rig(renderer: PortraitRenderer, doc: dict[str, Any], params: FaceParams) -> None:
    want = renderer.rig.deformed(params)
    got = deform_from_document(doc, params)
    err = np.abs(got - want).max()
    assert err < TOLERANCE_PX, f"max point error {err:.4f} px"
    rest = np.array(doc["rest"]).reshape(-1, 2)
    assert np.array_equal(got[doc["n_face"]:], rest[doc["n_face"]:])  # anchors stay


def test_the_cases_move_the_face(renderer: PortraitRenderer) -> None:
    """So that the comparison above is not between two unmoved meshes."""
    for params in CASES[1:]:
        moved = np.abs(renderer.rig.deformed(params) - renderer.rig.rest).max()
        assert moved > 1.0, (params, moved)


def test_document_shape_and_json(renderer: PortraitRenderer, doc: dict[str, Any]) -> None:
    assert doc["version"] == 1
    assert doc["param_names"] == list(PARAM_NAMES) == [
        "jaw", "stretch", "round", "upper", "press", "blink", "brows", "yaw", "pitch", "roll", "breath", "smile"]
    n, nf = doc["n_points"], doc["n_face"]
    assert len(doc["rest"]) == 2 * n and nf < n
    tri = np.array(doc["triangles"]).reshape(-1, 3)
    assert tri.min() >= 0 and tri.max() < n and (tri < nf).any(axis=1).all()  # every one moves
    # Every mesh triangle with a landmark is there, once.
    full = renderer.asset.triangles
    assert len(tri) == int((full < nf).any(axis=1).sum()) == len({tuple(t) for t in tri.tolist()})
    assert all(len(d) == 2 * nf for d in doc["shapes"]["delta"])
    assert len(doc["head"]["depth"]) == nf
    assert [len(e["colour"]) for e in doc["eyes"]] == [3, 3]
    x0, y0, x1, y1 = doc["face_region"]
    assert 0 <= x0 < x1 <= doc["size"] and 0 <= y0 < y1 <= doc["size"]
    text = json.dumps(rig_document(renderer), allow_nan=False)  # raises on NaN/inf
    assert len(text) < 400_000, len(text)


def test_portrait_png_is_the_image(renderer: PortraitRenderer) -> None:
    png = portrait_png(renderer)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    back = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, renderer.image)
