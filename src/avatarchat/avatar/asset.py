"""A prepared avatar: one aligned portrait plus the mesh and masks the renderer warps.

On disk, a folder::

    NAME/
      avatar.json   name, size, provenance, landmark model, and the landmark index groups
      image.png     the aligned, cropped portrait (size x size, RGB)
      mesh.npz      points [N, 2] float32 (pixel coords; the first ``face_points`` are the
                    face-mesh landmarks, the rest fixed anchors on the frame border),
                    triangles [T, 3] int32, and masks (uint8 0..255, size x size)

``avatar prepare`` writes it (mediapipe is needed only there); running an avatar needs only
numpy and OpenCV. The folder is written to a temp folder and renamed, never half-way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MASK_NAMES = ("face", "lips", "mouth", "left_eye", "right_eye")
#: Landmark index groups every asset records (mediapipe face-mesh numbering).
GROUPS = ("lips_outer", "lips_inner", "left_eye", "right_eye", "left_brow", "right_brow", "face_oval",
          "upper_lip_inner", "lower_lip_inner", "upper_lip_outer", "lower_lip_outer", "chin")
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "avatars"


class AvatarAssetError(ValueError):
    """The avatar folder is missing, incomplete or of another format; says which."""


@dataclass
class AvatarAsset:
    name: str
    image: np.ndarray  # [size, size, 3] uint8 RGB
    points: np.ndarray  # [N, 2] float32
    triangles: np.ndarray  # [T, 3] int32
    face_points: int  # the first face_points of ``points`` are landmarks
    groups: dict[str, list[int]]
    masks: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def landmarks(self) -> np.ndarray:
        return self.points[: self.face_points]

    def save(self, folder: Path) -> None:
        """Write the asset folder atomically (a temp folder renamed into place)."""
        import cv2

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            meta = dict(self.meta, name=self.name, size=self.size, format=FORMAT_VERSION,
                        face_points=self.face_points, groups=self.groups)
            (tmp / "avatar.json").write_text(json.dumps(meta, indent=2))
            cv2.imwrite(str(tmp / "image.png"), cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR))
            # Any: mypy checks **-unpacked values against savez's `allow_pickle: bool` too,
            # though a "mask_" key can never be that name.
            masks: dict[str, Any] = {f"mask_{k}": v.astype(np.uint8) for k, v in self.masks.items()}
            np.savez_compressed(tmp / "mesh.npz", points=self.points.astype(np.float32),
                                triangles=self.triangles.astype(np.int32), **masks)
            os.chmod(tmp, 0o755)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def load_avatar(name_or_path: str | os.PathLike[str]) -> AvatarAsset:
    """Load a prepared avatar: a folder path, or the name of a built-in one ("default")."""
    import cv2

    folder = Path(name_or_path)
    if not folder.is_dir():
        builtin = BUILTIN_DIR / str(name_or_path)
        if builtin.is_dir():
            folder = builtin
        else:
            known = ", ".join(sorted(p.name for p in BUILTIN_DIR.glob("*") if p.is_dir())) or "(none)"
            raise AvatarAssetError(f"no avatar folder {str(name_or_path)!r}; built-in avatars: {known}")
    try:
        meta = json.loads((folder / "avatar.json").read_text())
        image = cv2.imread(str(folder / "image.png"), cv2.IMREAD_COLOR)
        with np.load(folder / "mesh.npz") as mesh:
            points, triangles = mesh["points"], mesh["triangles"]
            masks = {k[5:]: mesh[k] for k in mesh.files if k.startswith("mask_")}
    except (OSError, KeyError, ValueError) as exc:
        raise AvatarAssetError(f"{folder}: not a complete avatar folder ({exc}); run `avatarchat avatar prepare`") from None
    if image is None:
        raise AvatarAssetError(f"{folder}/image.png: cannot be read")
    if meta.get("format") != FORMAT_VERSION:
        raise AvatarAssetError(f"{folder}: avatar format {meta.get('format')!r}, this version reads {FORMAT_VERSION}; prepare it again")
    missing = [m for m in MASK_NAMES if m not in masks] + [g for g in GROUPS if g not in meta.get("groups", {})]
    if missing:
        raise AvatarAssetError(f"{folder}: missing {', '.join(missing)}; prepare it again")
    return AvatarAsset(
        name=meta.get("name", folder.name),
        image=cv2.cvtColor(image, cv2.COLOR_BGR2RGB),
        points=points.astype(np.float32),
        triangles=triangles.astype(np.int32),
        face_points=int(meta["face_points"]),
        groups={k: list(map(int, v)) for k, v in meta["groups"].items()},
        masks=masks,
        meta=meta,
    )
