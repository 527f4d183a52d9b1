"""The portrait renderer: one ``FaceParams`` in, one RGB frame out.

How a frame is made:

1. ``FaceRig`` (deform.py) moves the face landmarks; anchors stay put.
2. The displacement of every pixel of the face region is the barycentric blend of its
   rest-pose triangle's three vertex displacements (piecewise linear, so continuous and
   exactly zero where only anchors are involved: no seam at the region's edge).
3. Backward mapping: the output pixel p shows the source at q with q + d(q) = p. The
   first guess q = p - d(p) is refined by a few fixed-point steps q = p - d(q) (each a
   cv2.remap of the displacement field), which makes the moving lower lip and chin land
   where they should even when they travel farther than the lip is thick.
4. The inner mouth (mouth.py) is painted where the inner lip contour has opened, and a
   closing eye is tinted towards the lid skin.

Promises: ``render`` returns a fresh [size, size, 3] uint8 RGB array; pixels outside the
face region are byte-identical to the portrait; neutral params reproduce the portrait
exactly; it is safe to call from several threads at once (all per-frame state is local,
and OpenCV releases the GIL in the heavy steps).
"""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np

from avatarchat.avatar.asset import AvatarAsset
from avatarchat.avatar.deform import FaceRig
from avatarchat.avatar.mouth import MouthPainter
from avatarchat.avatar.params import FaceParams

REFINE_STEPS = 2  # fixed-point inverse refinements; 2 brings the jaw to within ~0.5 px
FIELD_STRIDE = 2  # the displacement field is evaluated on every 2nd pixel and read bilinearly


class PortraitRenderer:
    """Renders frames of one avatar. Everything heavy is precomputed in ``__init__``."""

    def __init__(self, asset: AvatarAsset) -> None:
        self.asset = asset
        self.size = asset.size
        self.image = np.ascontiguousarray(asset.image)
        self.image.setflags(write=False)
        self.rig = FaceRig(asset)
        self.x0, self.y0, self.x1, self.y1 = self._face_region()
        self._vidx, self._bary = self._rasterize_rest_mesh()
        h, w = self.y1 - self.y0, self.x1 - self.x0
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        self._grid = np.dstack([gx, gy])  # local pixel coordinates [h, w, 2]
        self._grid_coarse = self._grid * (1.0 / FIELD_STRIDE)  # the same, in field-grid units
        self._origin = np.array([self.x0, self.y0], np.float32)
        self.mouth = MouthPainter(self.rig)
        self._eyes = self._eye_tints()
        self._mouth_tris = self._mouth_triangles()

    # ---- read-only views for a renderer elsewhere (the page's, avatar/rig_export.py) ---------

    @property
    def mouth_triangles(self) -> np.ndarray:
        """The triangles near the lips that are inverted exactly, slivers first."""
        return self._mouth_tris

    @property
    def eye_tints(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per eye: its landmark indices and the lid-skin colour a closing eye is tinted to."""
        return self._eyes

    # ---- precomputation -------------------------------------------------------------------
    def _face_region(self) -> tuple[int, int, int, int]:
        """Bounding box of every triangle that has a face point: outside it nothing moves."""
        tri = self.asset.triangles
        moving = (tri < self.rig.n_face).any(axis=1)
        pts = self.asset.points[np.unique(tri[moving])]
        x0, y0 = np.floor(pts.min(axis=0)).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 1
        s = self.size
        return max(x0, 0), max(y0, 0), min(x1, s), min(y1, s)

    def _rasterize_rest_mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """For every node of a stride-``FIELD_STRIDE`` grid over the face region: the 3
        vertex indices of its rest-pose triangle and its barycentric weights. The field is
        piecewise linear and smooth away from the lips (which are inverted exactly), so a
        coarse grid read back bilinearly loses nothing visible and costs a quarter.
        Triangles of anchors only get weights on anchors (zero displacement)."""
        h, w = self.y1 - self.y0, self.x1 - self.x0
        tid = np.full((h, w), -1, np.int32)
        pts = self.asset.points - np.array([self.x0, self.y0], np.float32)
        for i, t in enumerate(self.asset.triangles):
            # 4 bits of sub-pixel precision so neighbours share edges without gaps.
            cv2.fillPoly(tid, [np.round(pts[t] * 16).astype(np.int32)], int(i), lineType=cv2.LINE_8, shift=4)
        if (tid < 0).any():  # pixels of no triangle (outside the hull): nearest filled one
            tid = self._fill_holes(tid)
        # Pixels of anchor-only triangles never move; the coarse field read bilinearly would
        # bleed a pixel or two of motion into them, so the final map is masked with this.
        # any(axis=1) of a 2-D array is an array; numpy's stubs also allow a scalar.
        moving = cast(np.ndarray, (self.asset.triangles < self.rig.n_face).any(axis=1))
        self._moving = moving[tid].astype(np.float32)[..., None]
        s = FIELD_STRIDE
        ys = np.minimum(np.arange(0, h + s, s), h - 1)
        xs = np.minimum(np.arange(0, w + s, s), w - 1)
        yy, xx = np.meshgrid(ys.astype(np.float32), xs.astype(np.float32), indexing="ij")
        vidx = self.asset.triangles[tid[np.ix_(ys, xs)]]  # [hc, wc, 3]
        a, b, c = (pts[vidx[..., k]] for k in range(3))
        p = np.dstack([xx, yy])
        v0, v1, v2 = b - a, c - a, p - a
        den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
        den = np.where(np.abs(den) < 1e-6, 1e-6, den)
        l1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
        l2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
        bary = np.dstack([1.0 - l1 - l2, l1, l2]).astype(np.float32)
        self._coarse_shape = (len(ys), len(xs))
        return vidx.reshape(-1, 3).T.copy(), bary.reshape(-1, 3).T.copy()

    @staticmethod
    def _fill_holes(tid: np.ndarray) -> np.ndarray:
        holes = (tid < 0).astype(np.uint8)
        _, labels = cv2.distanceTransformWithLabels(holes, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        src = np.zeros(labels.max() + 1, np.int32)
        src[labels[holes == 0]] = tid[holes == 0]
        return np.where(tid < 0, src[labels], tid)

    def _mouth_triangles(self) -> np.ndarray:
        """Triangles near the lips, where displacement jumps by the whole mouth opening over
        a pixel or two and the fixed-point inverse can't be trusted; they are inverted
        exactly. Slivers between the inner lip contours come first, so that the proper
        triangles are drawn over them if they fold."""
        m = self.rig.mouth
        tri = self.asset.triangles
        near = np.zeros(len(self.asset.points), bool)
        near[: self.rig.n_face] = self.rig.lip_points
        sel = tri[near[tri].any(axis=1)]
        inner = np.zeros(len(near), bool)
        inner[np.concatenate([m.upper_inner, m.lower_inner])] = True
        sliver = inner[sel].all(axis=1)
        return np.concatenate([sel[sliver], sel[~sliver]])

    def _eye_tints(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per eye: its landmark indices and the lid-skin colour sampled just above it."""
        out = []
        lm = self.asset.landmarks
        for name in ("left_eye", "right_eye"):
            idx = np.array(self.asset.groups[name])
            p = lm[idx]
            h = max(float(np.ptp(p[:, 1])), 2.0)
            x0, x1 = int(p[:, 0].min() + 0.25 * np.ptp(p[:, 0])), int(p[:, 0].max() - 0.25 * np.ptp(p[:, 0]))
            ytop = int(p[:, 1].min())
            patch = self.image[max(ytop - int(1.2 * h), 0): max(ytop - int(0.3 * h), 1), x0:max(x1, x0 + 1)]
            colour = np.median(patch.reshape(-1, 3), axis=0).astype(np.float32) if patch.size else np.zeros(3, np.float32)
            out.append((idx, colour))
        return out

    # ---- per frame ------------------------------------------------------------------------
    def displacement_field(self, pts: np.ndarray) -> np.ndarray:
        """Displacement [hc, wc, 2] float32 at the field-grid nodes of the face region."""
        d = (pts - self.rig.rest).astype(np.float32)
        i0, i1, i2 = self._vidx
        b0, b1, b2 = self._bary
        dx = d[:, 0]
        dy = d[:, 1]
        fx = dx[i0] * b0 + dx[i1] * b1 + dx[i2] * b2
        fy = dy[i0] * b0 + dy[i1] * b1 + dy[i2] * b2
        return np.dstack([fx.reshape(self._coarse_shape), fy.reshape(self._coarse_shape)])

    def render(self, params: FaceParams) -> np.ndarray:
        """One RGB uint8 frame [size, size, 3] of the avatar showing ``params``."""
        pts = self.rig.deformed(params)
        frame = self.image.copy()
        moved = np.abs(pts - self.rig.rest).max() > 1e-3
        if not moved:
            return frame
        field = self.displacement_field(pts)
        def at(where: np.ndarray) -> np.ndarray:  # the field at local pixel coords (grid units)
            # cv2's stubs require map2, but OpenCV takes none when map1 holds both coordinates.
            return cv2.remap(field, where, None, cv2.INTER_LINEAR,  # type: ignore[call-overload]
                             borderMode=cv2.BORDER_REPLICATE)

        d = at(self._grid_coarse)
        for _ in range(REFINE_STEPS):
            d = at((self._grid - d) * (1.0 / FIELD_STRIDE))
        d *= self._moving
        q = self._grid - d
        q += self._origin
        self._exact_mouth(q, pts)
        region = frame[self.y0:self.y1, self.x0:self.x1]
        # map2=None as in at() above: cv2's stubs don't allow it.
        cv2.remap(self.image, q, None, cv2.INTER_LINEAR, dst=region,  # type: ignore[call-overload]
                  borderMode=cv2.BORDER_REPLICATE)
        self._close_eyes(frame, pts, params)
        self.mouth.paint(frame, pts, params)
        return frame

    def _exact_mouth(self, q: np.ndarray, pts: np.ndarray) -> None:
        """Overwrite the source map ``q`` (absolute coords) with the exact piecewise-affine
        inverse over the deformed mouth triangles."""
        tri = self._mouth_tris
        dst = pts[tri].astype(np.float64)  # [k, 3, 2]
        src = self.rig.rest[tri].astype(np.float64)
        x0, y0 = np.floor(dst.reshape(-1, 2).min(axis=0)).astype(int)
        x1, y1 = np.ceil(dst.reshape(-1, 2).max(axis=0)).astype(int) + 1
        x0, y0 = max(x0, self.x0), max(y0, self.y0)
        x1, y1 = min(x1, self.x1), min(y1, self.y1)
        if x1 <= x0 or y1 <= y0:
            return
        ids = np.full((y1 - y0, x1 - x0), -1, np.int32)
        local = np.round((dst - [x0, y0]) * 16).astype(np.int32)
        for i in range(len(tri)):
            cv2.fillPoly(ids, [local[i]], i, cv2.LINE_8, shift=4)
        # Affine map of each triangle: [x, y, 1] in the frame -> source point.
        hom = np.concatenate([dst, np.ones((len(tri), 3, 1))], axis=2)  # [k, 3, 3]
        det = np.linalg.det(hom)
        hom[np.abs(det) < 1e-9] += np.eye(3) * 1e-3  # degenerate slivers: any finite map
        aff = np.linalg.solve(hom, src).astype(np.float32)  # [k, 3, 2]
        ys, xs = np.nonzero(ids >= 0)
        a = aff[ids[ys, xs]]
        px, py = (xs + x0).astype(np.float32), (ys + y0).astype(np.float32)
        sub = q[y0 - self.y0:y1 - self.y0, x0 - self.x0:x1 - self.x0]
        sub[ys, xs, 0] = px * a[:, 0, 0] + py * a[:, 1, 0] + a[:, 2, 0]
        sub[ys, xs, 1] = px * a[:, 0, 1] + py * a[:, 1, 1] + a[:, 2, 1]

    def _close_eyes(self, frame: np.ndarray, pts: np.ndarray, params: FaceParams) -> None:
        """A closing eye shows the warped upper lid; past half-closed, the squeezed slit (iris
        and lashes pressed into a few pixels) is covered with the lid's skin colour and a
        thin soft lash line, so a closed eye reads as closed rather than as a smear."""
        blink = float(np.clip(params.blink, 0.0, 1.0)) if np.isfinite(params.blink) else 0.0
        if blink < 0.5:
            return
        k = (blink - 0.5) / 0.5
        for idx, colour in self._eyes:
            p = pts[idx].astype(np.float32)
            rest = self.rig.rest[idx]
            thick = 1.0 + 0.22 * float(np.ptp(rest[:, 1]))  # covers what the slit squeezed
            x0, y0 = np.floor(p.min(axis=0) - thick).astype(int) - 3
            x1, y1 = np.ceil(p.max(axis=0) + thick).astype(int) + 4
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.size), min(y1, self.size)
            if x1 <= x0 or y1 <= y0:
                continue
            local = p - [x0, y0]
            ring = local[np.argsort(np.arctan2(local[:, 1] - local[:, 1].mean(), local[:, 0] - local[:, 0].mean()))]
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            pts4 = np.round(ring * 4).astype(np.int32)
            cv2.fillPoly(mask, [pts4], 255, cv2.LINE_AA, shift=2)
            cv2.polylines(mask, [pts4], True, 255, max(int(round(thick)), 1), cv2.LINE_AA, shift=2)
            mask = cv2.GaussianBlur(mask, (0, 0), 0.4 * thick + 0.5)
            a = (mask.astype(np.float32) * (0.85 * k / 255.0))[..., None]
            roi = frame[y0:y1, x0:x1]
            tinted = roi * (1.0 - a) + colour * a
            # The lash line: where the lids meet, darker and soft.
            lash = np.zeros_like(mask)
            lid = local[np.argsort(local[:, 0])]
            cv2.polylines(lash, [np.round(lid * 4).astype(np.int32)], False, 255, 1, cv2.LINE_AA, shift=2)
            lash = cv2.GaussianBlur(lash, (0, 0), 0.7)
            b = (lash.astype(np.float32) * (0.45 * k / 255.0))[..., None]
            roi[:] = np.clip(tinted * (1.0 - b) + self._lash_colour(colour) * b + 0.5, 0, 255).astype(np.uint8)

    @staticmethod
    def _lash_colour(skin: np.ndarray) -> np.ndarray:
        return skin * 0.35
