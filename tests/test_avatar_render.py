"""The portrait renderer on the built-in avatar: it reproduces the photo at rest, opens the
mouth into a cavity, closes the eyes, never touches pixels outside the face, and matches
its golden frames.

Regenerate the goldens (after a deliberate change to the look, having looked at them):

    UPDATE_GOLDEN=1 pytest tests/test_avatar_render.py -k golden

then view tests/data/render_*.png before committing them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarchat.avatar.asset import AvatarAsset, AvatarAssetError, load_avatar
from avatarchat.avatar.params import FaceParams
from avatarchat.avatar.render import PortraitRenderer

DATA = Path(__file__).parent / "data"
OPEN = FaceParams(jaw=0.7, stretch=0.2, upper=0.3, yaw=1.5, brows=0.3)
GOLDENS = {"render_neutral.png": FaceParams(), "render_open.png": OPEN}


@pytest.fixture(scope="module")
def asset() -> AvatarAsset:
    try:
        return load_avatar("default")
    except AvatarAssetError as exc:
        pytest.skip(f"built-in avatar 'default' is missing ({exc}); `avatarchat avatar prepare` makes it")


@pytest.fixture(scope="module")
def renderer(asset: AvatarAsset) -> PortraitRenderer:
    return PortraitRenderer(asset)


def _box(points: np.ndarray, margin: float, size: int, below: float = 0.0) -> tuple[slice, slice]:
    x0, y0 = points.min(axis=0) - margin
    x1, y1 = points.max(axis=0) + margin
    y1 += below
    return slice(max(int(y0), 0), min(int(y1) + 1, size)), slice(max(int(x0), 0), min(int(x1) + 1, size))


def _mouth_box(asset: AvatarAsset) -> tuple[slice, slice]:
    """The lips plus room below them for the lower lip and chin to travel."""
    lips = asset.landmarks[asset.groups["lips_outer"]]
    return _box(lips, 4, asset.size, below=0.12 * np.ptp(asset.landmarks[:, 1]))


def _eye_box(asset: AvatarAsset, name: str) -> tuple[slice, slice]:
    return _box(asset.landmarks[asset.groups[name]], 3, asset.size)


def _luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_neutral_reproduces_the_portrait(renderer: PortraitRenderer, asset: AvatarAsset) -> None:
    frame = renderer.render(FaceParams())
    assert frame.shape == asset.image.shape and frame.dtype == np.uint8
    assert np.abs(frame.astype(np.int16) - asset.image).mean() < 1.5


def test_jaw_opening_darkens_the_mouth_monotonically(renderer: PortraitRenderer, asset: AvatarAsset) -> None:
    ys, xs = _mouth_box(asset)
    dark = [int((_luma(renderer.render(FaceParams(jaw=j))[ys, xs]) < 70).sum()) for j in (0.0, 0.3, 0.6, 0.9)]
    assert dark[0] < dark[1] < dark[2] < dark[3], dark
    assert dark[3] - dark[0] > 200, dark  # a real opening, not a few pixels


def test_blink_changes_the_eyes_and_not_the_mouth(renderer: PortraitRenderer, asset: AvatarAsset) -> None:
    rest, closed = renderer.render(FaceParams()), renderer.render(FaceParams(blink=1.0))
    for eye in ("left_eye", "right_eye"):
        ys, xs = _eye_box(asset, eye)
        assert np.abs(closed[ys, xs].astype(np.int16) - rest[ys, xs]).mean() > 8, eye
    ys, xs = _mouth_box(asset)
    assert np.abs(closed[ys, xs].astype(np.int16) - rest[ys, xs]).max() <= 1


def _outside_ring(asset: AvatarAsset) -> np.ndarray:
    """Pixels outside the convex hull of the ring anchors (anchors not on the frame edge)."""
    anchors = asset.points[asset.face_points:]
    s = asset.size - 1
    on_edge = (anchors <= 0.5).any(axis=1) | (anchors >= s - 0.5).any(axis=1)
    ring = anchors[~on_edge] if (~on_edge).sum() >= 3 else asset.landmarks
    inside = np.zeros((asset.size, asset.size), np.uint8)
    cv2.fillConvexPoly(inside, cv2.convexHull(np.round(ring).astype(np.int32)), 1)
    return inside == 0


def test_nothing_outside_the_ring_moves(renderer: PortraitRenderer, asset: AvatarAsset) -> None:
    outside = _outside_ring(asset)
    assert outside.mean() > 0.2
    for p in (FaceParams(jaw=1, stretch=1, round=1, upper=1, blink=1, brows=1, smile=1),
              FaceParams(yaw=3, pitch=-3, roll=3, breath=1), FaceParams(yaw=-3, pitch=3, roll=-3, brows=-1)):
        frame = renderer.render(p)
        assert np.array_equal(frame[outside], asset.image[outside]), p


def test_random_params_give_sane_frames(renderer: PortraitRenderer, asset: AvatarAsset) -> None:
    rng = np.random.default_rng(7)
    names = FaceParams().as_dict()
    for _ in range(10):
        # Beyond the documented ranges on purpose: the renderer clamps.
        p = FaceParams(**{k: float(rng.uniform(-5, 5) if k in ("yaw", "pitch", "roll") else rng.uniform(-0.3, 1.3))
                          for k in names})
        frame = renderer.render(p)
        assert frame.shape == (asset.size, asset.size, 3) and frame.dtype == np.uint8
        assert frame.min() < 30 and frame.max() > 220  # full range: not blank, not washed out
        assert np.abs(frame.astype(np.int16) - asset.image).mean() < 12  # still the same portrait


def test_nan_params_do_not_break_a_frame(renderer: PortraitRenderer, asset: AvatarAsset) -> None:
    frame = renderer.render(FaceParams(jaw=float("nan"), yaw=float("inf"), blink=float("nan")))
    assert np.abs(frame.astype(np.int16) - asset.image).mean() < 1.5


def test_concurrent_renders_match_sequential(renderer: PortraitRenderer) -> None:
    params = [FaceParams(jaw=j, blink=b, yaw=y) for j, b, y in zip(np.linspace(0, 1, 12), np.linspace(1, 0, 12),
                                                                      np.linspace(-3, 3, 12))]
    expected = [renderer.render(p) for p in params]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(renderer.render, params))
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))


def test_render_returns_a_fresh_array(renderer: PortraitRenderer, asset: AvatarAsset) -> None:
    frame = renderer.render(FaceParams())
    frame[:] = 0
    assert renderer.render(FaceParams()).max() > 0 and asset.image.max() > 0


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden_frames(renderer: PortraitRenderer, name: str) -> None:
    """Face-region crops against stored PNGs; the tolerance lets interpolation and codec
    noise pass but not a broken warp or mouth."""
    frame = renderer.render(GOLDENS[name])[renderer.y0:renderer.y1, renderer.x0:renderer.x1]
    path = DATA / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        DATA.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        pytest.skip(f"golden {name} rewritten")
    golden = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert golden is not None, f"{path} missing: run with UPDATE_GOLDEN=1"
    golden = cv2.cvtColor(golden, cv2.COLOR_BGR2RGB)
    assert golden.shape == frame.shape, "face region changed: the avatar or the renderer's region logic differs"
    diff = np.abs(frame.astype(np.int16) - golden).astype(np.float32)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 20, (diff.mean(), np.percentile(diff, 99))


def _lip_gap(renderer: PortraitRenderer, params: FaceParams, us: tuple[float, ...]) -> list[float]:
    """The inner lips' vertical gap (px) at positions u across the mouth (-1..1 corner to corner)."""
    rig = renderer.rig
    pts = rig.deformed(params)
    up, lo = pts[rig.mouth.upper_inner], pts[rig.mouth.lower_inner]
    left, right = min(up[0, 0], lo[0, 0]), max(up[-1, 0], lo[-1, 0])
    xs = [left + (u + 1) / 2 * (right - left) for u in us]
    return [float(np.interp(x, lo[:, 0], lo[:, 1]) - np.interp(x, up[:, 0], up[:, 1])) for x in xs]


def test_rounded_lips_leave_an_oval_opening_not_a_slit(renderer: PortraitRenderer) -> None:
    us = (-0.7, 0.0, 0.7)
    for jaw in (0.3, 0.8):
        open_side, open_mid, _ = _lip_gap(renderer, FaceParams(jaw=jaw), us)
        round_side, round_mid, round_other = _lip_gap(renderer, FaceParams(jaw=jaw, round=1.0), us)
        # Towards the corners the lips close; the middle stays open (the "oo" of "you").
        assert round_side < 0.35 * open_side and round_other < 0.35 * open_side, (jaw, open_side, round_side)
        assert round_mid > 0.6 * open_mid, (jaw, open_mid, round_mid)
    # Half rounding ("oh") closes less than full rounding ("oo").
    half = _lip_gap(renderer, FaceParams(jaw=0.6, round=0.5), us)[0]
    full = _lip_gap(renderer, FaceParams(jaw=0.6, round=1.0), us)[0]
    assert full < half < _lip_gap(renderer, FaceParams(jaw=0.6), us)[0]


def test_a_little_rounding_changes_the_mouth_a_little(renderer: PortraitRenderer) -> None:
    us = tuple(np.linspace(-0.9, 0.9, 7))
    gaps = [np.array(_lip_gap(renderer, FaceParams(jaw=0.6, round=r), us)) for r in (0.0, 0.02, 0.04)]
    # Lip-sync curves pass through small values all the time: no jump when rounding starts.
    assert np.abs(gaps[1] - gaps[0]).max() < 0.5, gaps
    assert np.abs(gaps[2] - gaps[1]).max() < 0.5, gaps
