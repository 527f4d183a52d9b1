"""``avatar prepare``: a real portrait becomes a sound asset; every bad photo gets one clear line."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarchat.avatar.asset import BUILTIN_DIR, GROUPS, MASK_NAMES, AvatarAsset, load_avatar
from avatarchat.cli.main import main

mpl = pytest.importorskip("matplotlib")
GRACE = Path(mpl.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MONA = Path(__file__).parents[2] / "shared" / "portraits" / "mona_lisa_1400.jpg"
needs_mediapipe = pytest.mark.skipif(
    pytest.importorskip("importlib.util").find_spec("mediapipe") is None, reason="mediapipe 0.10.14 not installed")


def _prepare(photo: Path, out: Path, size: int = 512) -> AvatarAsset:
    from avatarchat.avatar.prepare import prepare_to_folder

    return load_avatar(prepare_to_folder(photo, out.name, out, size))


@pytest.fixture(scope="module")
def grace(tmp_path_factory: pytest.TempPathFactory) -> AvatarAsset:
    if not GRACE.is_file():
        pytest.skip("matplotlib's grace_hopper.jpg is absent")
    return _prepare(GRACE, tmp_path_factory.mktemp("avatars") / "grace")


def _eye_angle(asset: AvatarAsset) -> float:
    right, left = (asset.points[asset.groups[k]].mean(0) for k in ("right_eye", "left_eye"))
    return float(np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0])))


def _check_asset(asset: AvatarAsset) -> None:
    """The promises every prepared asset keeps, whatever the photo."""
    size, n = asset.size, asset.face_points
    assert asset.image.shape == (size, size, 3) and n == 478
    lm = asset.landmarks
    assert lm.min() >= 0 and lm.max() <= size - 1
    assert abs(_eye_angle(asset)) < 2.0
    assert 0.42 * size <= np.ptp(lm[:, 1]) <= 0.52 * size
    border = asset.points[n: n + asset.meta["anchors"]["border"]]
    on_edge = np.isin(border[:, 0], (0, size - 1)) | np.isin(border[:, 1], (0, size - 1))
    assert len(border) == 32 and on_edge.all()
    for corner in [(0, 0), (size - 1, 0), (size - 1, size - 1), (0, size - 1)]:
        assert (np.abs(border - corner).sum(1) < 1e-3).any(), corner
    ring = asset.points[n + len(border):]
    assert len(ring) >= 12 and (ring > 0).all() and (ring < size - 1).all()
    tri = asset.triangles
    assert tri.min() >= 0 and tri.max() < len(asset.points)
    assert set(np.unique(tri)) == set(range(len(asset.points)))  # every point is meshed
    a, b, c = (asset.points[tri[:, i]] for i in range(3))
    cross = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    assert (cross > 1e-3).all()  # one orientation throughout, nothing degenerate
    assert set(asset.groups) >= set(GROUPS) and set(asset.masks) >= set(MASK_NAMES)
    for m in asset.masks.values():
        assert m.shape == (size, size) and m.dtype == np.uint8


@pytest.mark.slow
@needs_mediapipe
def test_grace_hopper_becomes_a_sound_asset(grace: AvatarAsset) -> None:
    _check_asset(grace)
    meta = grace.meta
    assert meta["source_file"] == "grace_hopper.jpg" and meta["original_size"] == [512, 600]
    assert len(meta["source_sha256"]) == 64 and np.array(meta["crop_transform"]).shape == (2, 3)
    assert meta["landmark_model"].startswith("mediapipe 0.10.14")
    # Her face is only ~201 px tall: the crop upscales as little as the 45 % floor allows.
    assert 0.44 <= meta["face_fraction"] <= 0.47


@pytest.mark.slow
@needs_mediapipe
def test_groups_and_masks_sit_on_the_features(grace: AvatarAsset) -> None:
    g, p = grace.groups, grace.points
    assert g["lips_outer"][0] == 61 and g["lips_inner"][0] == 78
    assert g["upper_lip_inner"][0] == g["lower_lip_inner"][0] == 78
    assert g["upper_lip_inner"][-1] == g["lower_lip_inner"][-1] == 308
    assert 13 in g["upper_lip_inner"] and 14 in g["lower_lip_inner"]
    assert 0 in g["upper_lip_outer"] and 17 in g["lower_lip_outer"]
    assert p[g["chin"], 1].min() > p[[61, 291], 1].mean() and 152 in g["chin"]
    assert p[g["left_eye"], 0].mean() > p[g["right_eye"], 0].mean()  # the subject's left is image right
    lips = grace.masks["lips"] > 127
    assert lips.sum() > 300
    ys, xs = np.nonzero(lips)
    outer = p[g["lips_outer"]]
    assert np.allclose([xs.mean(), ys.mean()], outer.mean(0), atol=6)
    (x0, y0), (x1, y1) = outer.min(0) - 3, outer.max(0) + 3
    assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
    for eye in ("left_eye", "right_eye"):
        ys, xs = np.nonzero(grace.masks[eye] > 127)
        assert len(xs) > 100 and np.allclose([xs.mean(), ys.mean()], p[g[eye]].mean(0), atol=4)


@pytest.mark.slow
@needs_mediapipe
def test_round_trip_and_builtin_default(grace: AvatarAsset, tmp_path: Path) -> None:
    grace.save(tmp_path / "again")
    back = load_avatar(tmp_path / "again")
    assert np.array_equal(back.points, grace.points) and np.array_equal(back.triangles, grace.triangles)
    assert np.array_equal(back.image, grace.image)
    default = load_avatar("default")  # the shipped one keeps the same promises
    assert default.meta["source_sha256"] == grace.meta["source_sha256"]
    assert (BUILTIN_DIR / "default" / "image.png").stat().st_size < 600_000
    _check_asset(default)


@pytest.mark.slow
@needs_mediapipe
def test_large_photo_is_shrunk_and_padded(tmp_path: Path) -> None:
    if not MONA.is_file():
        pytest.skip("../shared/portraits/mona_lisa_1400.jpg is absent (test-only portrait)")
    _check_asset(_prepare(MONA, tmp_path / "mona"))
    # A tight off-centre crop forces the frame past the photo's edge: padded, still sound.
    img = cv2.imread(str(MONA))
    cv2.imwrite(str(tmp_path / "tight.jpg"), img[250:800, 150:700])
    _check_asset(_prepare(tmp_path / "tight.jpg", tmp_path / "tight", size=384))


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height, without the pixels (for the size check)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _bad_photo(kind: str, tmp_path: Path) -> Path:
    photo = tmp_path / f"{kind}.jpg"
    grace = cv2.imread(str(GRACE)) if GRACE.is_file() else None
    if kind == "text":
        photo.write_text("hello, I am not a picture\n")
    elif kind == "truncated":
        photo.write_bytes(GRACE.read_bytes()[:20_000])
    elif kind == "huge_pixels":
        photo = tmp_path / "huge.png"
        _png_header(photo, 10_000, 8_000)
    elif kind == "huge_file":
        with photo.open("wb") as f:  # sparse: takes no disk, refused by size before reading
            f.truncate(60 * 2**20)
    elif kind == "no_face":
        ramp = np.linspace(0, 255, 480, dtype=np.uint8)
        cv2.imwrite(str(photo), np.dstack([np.tile(ramp, (400, 1))] * 3))
    elif kind == "two_faces":
        cv2.imwrite(str(photo), np.hstack([grace, grace]))
    elif kind == "small":
        cv2.imwrite(str(photo), cv2.resize(grace, (100, 117), interpolation=cv2.INTER_AREA))
    return photo


BAD = [
    ("missing", "no such file", False),
    ("text", "not an image", False),
    ("truncated", "corrupt or truncated image", False),
    ("huge_pixels", "80 megapixels (limit 50)", False),
    ("huge_file", "60 MB is too big", False),
    pytest.param("no_face", "no face found", True, marks=pytest.mark.slow),
    pytest.param("two_faces", "found 2 faces; crop the photo to one person", True, marks=pytest.mark.slow),
    pytest.param("small", "at least 120 px is needed, 250+ looks sharp", True, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("kind", "message", "mediapipe"), BAD)
def test_bad_photos_are_refused_with_one_line(kind: str, message: str, mediapipe: bool, tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    from avatarchat.avatar.prepare import PrepareError, prepare_to_folder

    if (mediapipe or kind == "truncated") and not GRACE.is_file():
        pytest.skip("matplotlib's grace_hopper.jpg is absent")
    if mediapipe:
        pytest.importorskip("mediapipe")
    photo = _bad_photo(kind, tmp_path)
    parent = tmp_path / "avatars"
    parent.mkdir()
    with pytest.raises(PrepareError, match=re.escape(message)) as info:
        prepare_to_folder(photo, "x", parent / "x")
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert main(["avatar", "prepare", str(photo), "--name", "x", "--out", str(parent / "x")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("avatarchat: error: ") and message in err[-1]
    assert not [line for line in err if "TensorFlow" in line or "W0000" in line]  # native logs quieted
    if not mediapipe:
        assert len(err) == 1  # refused before any work: the error is the only line
    assert list(parent.iterdir()) == []  # nothing left behind, not even a temp folder


def test_out_must_be_an_avatar_folder_or_empty(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    assert main(["avatar", "prepare", str(GRACE), "--name", "x", "--out", str(tmp_path)]) == 2
    assert "is not an avatar folder" in capfd.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "precious"
    assert main(["avatar", "prepare", str(GRACE), "--name", "../up", "--out", str(tmp_path / "y")]) == 2
    assert "avatar name" in capfd.readouterr().err and not (tmp_path / "y").exists()


@pytest.mark.slow
@needs_mediapipe
def test_cli_writes_default_folder_and_preview(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    if not GRACE.is_file():
        pytest.skip("matplotlib's grace_hopper.jpg is absent")
    monkeypatch.chdir(tmp_path)
    rc = main(["avatar", "prepare", str(GRACE), "--name", "hopper", "--size", "256", "--licence", "public domain",
               "--source-note", "matplotlib sample data", "--preview", "check.png"])
    err = capfd.readouterr().err
    assert rc == 0 and "wrote avatars/hopper" in err and "warning: face is" in err
    meta = json.loads((tmp_path / "avatars" / "hopper" / "avatar.json").read_text())
    assert meta["size"] == 256 and meta["licence"] == "public domain" and meta["source_note"]
    assert cv2.imread("check.png").shape == (256, 256, 3)
    assert sorted(p.name for p in (tmp_path / "avatars").iterdir()) == ["hopper"]
