"""``avatarchat avatar prepare``: turn one portrait photo into an avatar folder.

The photo should show one face, frontal, evenly lit, mouth closed, the face at least 250 px
tall (120 px is the minimum). The result is a folder (default ./avatars/NAME) that
``--avatar`` options and configs can name. Needs mediapipe 0.10.14 (installed with
--no-deps); running the avatar afterwards does not.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from avatarchat.cli.errors import UserError
from avatarchat.cli.progress import say as _say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("avatar", help="prepare avatars from portrait photos",
                       description="Avatar assets: prepare one from a portrait photo.")
    cmds = p.add_subparsers(title="avatar commands", metavar="COMMAND")
    prep = cmds.add_parser("prepare", help="turn one portrait photo into an avatar folder",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("photo", type=Path, metavar="PHOTO", help="portrait photo (JPEG, PNG, WebP, ...)")
    prep.add_argument("--name", "-n", required=True, help="avatar name (letters, digits, . _ -)")
    prep.add_argument("--out", "-o", type=Path, help="output folder (default: ./avatars/NAME)")
    prep.add_argument("--size", type=int, default=512, help="square output size in pixels (default 512)")
    prep.add_argument("--licence", help="licence of the photo, recorded in avatar.json")
    prep.add_argument("--source-note", help="where the photo comes from, recorded in avatar.json")
    prep.add_argument("--preview", type=Path, metavar="PNG",
                      help="also write a PNG of the crop with the mesh, landmarks and masks drawn on it")
    prep.set_defaults(run=run_prepare)
    p.set_defaults(run=lambda _a: p.print_help() or 2)


def run_prepare(args: argparse.Namespace) -> int:
    from avatarchat.avatar.prepare import PrepareError, prepare_to_folder

    if getattr(args, "verbose", False):
        os.environ["AVATARCHAT_VERBOSE"] = "1"  # let mediapipe's native logs through
    t0 = time.perf_counter()
    try:
        folder = prepare_to_folder(args.photo, args.name, args.out, args.size, licence=args.licence,
                                   source_note=args.source_note, progress=_say)
    except PrepareError as exc:
        raise UserError(str(exc)) from None
    if args.preview:
        import cv2

        from avatarchat.avatar.asset import load_avatar

        if not cv2.imwrite(str(args.preview), cv2.cvtColor(draw_overlay(load_avatar(folder)), cv2.COLOR_RGB2BGR)):
            raise UserError(f"{args.preview}: cannot write the preview PNG")
        _say(f"preview: {args.preview}")
    _say(f"wrote {folder}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def draw_overlay(asset: object) -> np.ndarray:
    """The crop with the triangle mesh (grey), anchors (blue), landmarks (green) and the lips,
    mouth and eye masks tinted (red, yellow, cyan): for checking a prepared avatar by eye."""
    import cv2

    img = asset.image.astype(np.float32)  # type: ignore[attr-defined]
    masks = asset.masks  # type: ignore[attr-defined]
    for name, colour in (("lips", (255, 40, 40)), ("mouth", (255, 230, 0)), ("left_eye", (0, 220, 255)),
                         ("right_eye", (0, 220, 255))):
        a = masks[name].astype(np.float32)[..., None] / 255 * 0.45
        img = img * (1 - a) + np.array(colour, np.float32) * a
    out = img.round().clip(0, 255).astype(np.uint8)
    pts = asset.points  # type: ignore[attr-defined]
    n = asset.face_points  # type: ignore[attr-defined]
    for tri in asset.triangles:  # type: ignore[attr-defined]
        cv2.polylines(out, [np.round(pts[tri] * 4).astype(np.int32)], True, (150, 150, 150), 1, cv2.LINE_AA, 2)
    for i, (x, y) in enumerate(np.round(pts * 4).astype(np.int32)):
        cv2.circle(out, (int(x), int(y)), 4 if i < n else 10, (0, 230, 0) if i < n else (40, 90, 255), -1,
                   cv2.LINE_AA, 2)
    return out
