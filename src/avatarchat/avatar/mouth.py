"""The inner mouth: what shows between the lips once the inner lip contour opens.

A portrait photo has no inside of the mouth, so it is painted: a dark red-brown cavity
(darkest at the back), the upper teeth as an off-white band hanging from the upper lip,
the lower teeth as a narrower band on the lower lip once the jaw is well open, and a
hint of tongue low in the cavity. Everything is clipped to the deformed inner-lip polygon
with an anti-aliased (4x sub-pixel) edge; the warped lips outside that polygon stay on top.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatarchat.avatar.deform import FaceRig
from avatarchat.avatar.params import FaceParams

# RGB colours, chosen against real mouth photos: the cavity is never black, teeth never white.
CAVITY_EDGE = np.array([92, 38, 40], np.float32)
CAVITY_DEEP = np.array([30, 10, 12], np.float32)
TONGUE = np.array([150, 70, 74], np.float32)
# Teeth sit in the mouth's shade: a bright band read as dentures in rendered frames.
TEETH = np.array([204, 190, 164], np.float32)
MIN_GAP_PX = 0.6  # below this the mouth counts as closed


def _clamp01(v: float) -> float:
    return float(np.clip(v, 0.0, 1.0)) if np.isfinite(v) else 0.0


def _aa_mask(shape: tuple[int, int], polys: list[np.ndarray], blur: float = 0.0) -> np.ndarray:
    """Anti-aliased coverage [h, w] float32 0..1 of polygons given in local pixel coords."""
    m: np.ndarray = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(p * 4).astype(np.int32) for p in polys], 255, cv2.LINE_AA, shift=2)
    if blur > 0:
        m = cv2.GaussianBlur(m, (0, 0), blur)
    return m.astype(np.float32) * (1.0 / 255.0)


class MouthPainter:
    """Paints the mouth interior into a frame (read-only after init: thread-safe)."""

    def __init__(self, rig: FaceRig) -> None:
        self.upper = rig.mouth.upper_inner
        self.lower = rig.mouth.lower_inner
        self.face_h = rig.face_h

    def paint(self, frame: np.ndarray, pts: np.ndarray, params: FaceParams) -> None:
        """Composite the interior under the lips of ``frame`` (in place) for deformed ``pts``."""
        up, lo = self._sorted(pts[self.upper]), self._sorted(pts[self.lower])
        xs = np.linspace(max(up[0, 0], lo[0, 0]), min(up[-1, 0], lo[-1, 0]), 24)
        top, bot = np.interp(xs, up[:, 0], up[:, 1]), np.interp(xs, lo[:, 0], lo[:, 1])
        gap = float(np.max(bot - top)) if len(xs) else 0.0
        if gap < MIN_GAP_PX:
            return
        poly = np.concatenate([up, lo[::-1]]).astype(np.float32)
        x0, y0 = np.floor(poly.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, frame.shape[1]), min(y1, frame.shape[0])
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        o = np.array([x0, y0], np.float32)
        shape = (y1 - y0, x1 - x0)
        mask = _aa_mask(shape, [poly - o], blur=0.5)
        layer = self._cavity(shape, xs - x0, top - y0, bot - y0, gap)
        self._tongue(layer, xs - x0, bot - y0, gap)
        self._teeth(layer, xs - x0, top - y0, bot - y0, gap, params)
        a = mask[..., None]
        roi = frame[y0:y1, x0:x1]
        roi[:] = np.clip(roi * (1.0 - a) + layer * a + 0.5, 0, 255).astype(np.uint8)

    @staticmethod
    def _sorted(p: np.ndarray) -> np.ndarray:
        return p[np.argsort(p[:, 0], kind="stable")].astype(np.float64)

    def _cavity(self, shape: tuple[int, int], xs: np.ndarray, top: np.ndarray, bot: np.ndarray,
                gap: float) -> np.ndarray:
        """Dark red-brown, darkest in the middle-back, lighter near the lips and corners."""
        h, w = shape
        cx = 0.5 * (xs[0] + xs[-1])
        half = max(0.5 * (xs[-1] - xs[0]), 1.0)
        cy = float(np.mean(0.5 * (top + bot)))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.sqrt(((xx - cx) / half) ** 2 + ((yy - cy) / max(0.6 * gap, 1.0)) ** 2)
        k = np.clip(r, 0.0, 1.0)[..., None] ** 1.5
        return CAVITY_DEEP + (CAVITY_EDGE - CAVITY_DEEP) * k

    def _tongue(self, layer: np.ndarray, xs: np.ndarray, bot: np.ndarray, gap: float) -> None:
        """A soft darker-pink blob resting on the lower lip, visible once the gap is wide."""
        vis = np.clip((gap - 5.0) / 10.0, 0.0, 1.0)
        if vis <= 0:
            return
        h, w = layer.shape[:2]
        cx = 0.5 * (xs[0] + xs[-1])
        half = 0.5 * (xs[-1] - xs[0])
        cy = float(np.max(bot)) + 0.05 * gap
        m: np.ndarray = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (int(round(cx * 4)), int(round(cy * 4))), (int(half * 0.62 * 4), int(gap * 0.42 * 4)),
                    0, 0, 360, 255, -1, cv2.LINE_AA, shift=2)
        m = cv2.GaussianBlur(m, (0, 0), max(gap * 0.12, 1.0))
        yy = np.arange(h, dtype=np.float32)[:, None]
        shade = np.clip(0.55 + 0.45 * (yy - (cy - 0.4 * gap)) / max(0.4 * gap, 1.0), 0.5, 1.0)[..., None]
        a = (m.astype(np.float32) * (0.75 * vis / 255.0))[..., None]
        layer[:] = layer * (1.0 - a) + (TONGUE * shade) * a

    def _teeth(self, layer: np.ndarray, xs: np.ndarray, top: np.ndarray, bot: np.ndarray, gap: float,
               params: FaceParams) -> None:
        """Upper teeth hang from the upper lip (more with ``upper`` and a wider gap); the lower
        teeth rise from the lower lip only once the jaw is well open."""
        upper, jaw = _clamp01(params.upper), _clamp01(params.jaw)
        half = max(0.5 * (xs[-1] - xs[0]), 1.0)
        u = (xs - 0.5 * (xs[0] + xs[-1])) / half
        span = np.clip(1.0 - (np.abs(u) / 0.78) ** 4, 0.0, 1.0)  # canines curve back out of sight
        full = 0.048 * self.face_h
        rnd = _clamp01(params.round)
        th = np.minimum(full, (bot - top) * (0.34 + 0.3 * upper - 0.15 * rnd)) * np.sqrt(span)
        self._band(layer, xs, top - 1.5, top + th, u, span, shade_top=True)
        lower_vis = np.clip((jaw - 0.5) / 0.4, 0.0, 1.0)
        if lower_vis > 0:
            span_lo = np.clip(1.0 - (np.abs(u) / 0.58) ** 4, 0.0, 1.0)
            tl = np.minimum(0.028 * self.face_h, (bot - top) * 0.2) * lower_vis * np.sqrt(span_lo)
            self._band(layer, xs, bot - tl, bot + 1.5, u, span_lo, shade_top=True, dim=0.86)

    @staticmethod
    def _band(layer: np.ndarray, xs: np.ndarray, y_top: np.ndarray, y_bot: np.ndarray, u: np.ndarray,
              span: np.ndarray, shade_top: bool, dim: float = 1.0) -> None:
        """One row of teeth between two curves, shaded darker towards the corners and in the
        lip's shadow, with faint gaps between the front teeth."""
        keep = (span > 0.02) & (y_bot - y_top > 0.3)
        if keep.sum() < 2:
            return
        xs_k = xs[keep]
        poly = np.concatenate([np.stack([xs_k, y_top[keep]], 1), np.stack([xs_k, y_bot[keep]], 1)[::-1]])
        h, w = layer.shape[:2]
        m = _aa_mask((h, w), [poly.astype(np.float32)], blur=0.45)
        xx = np.arange(w, dtype=np.float32)
        ux = np.interp(xx, xs, u)
        side = 1.0 - 0.45 * np.clip(np.abs(ux), 0.0, 1.0) ** 1.6  # curvature of the arch
        # Faint dark lines between incisors/canines (narrow dips in brightness).
        seams = np.ones_like(ux)
        for s in (0.0, 0.2, -0.2, 0.38, -0.38):
            seams -= 0.12 * np.exp(-(((ux - s) * (xs[-1] - xs[0]) / 2) ** 2) / 0.8)
        yy = np.arange(h, dtype=np.float32)[:, None]
        edge = np.interp(xx, xs, y_top if shade_top else y_bot)[None, :]
        dist = np.abs(yy - edge)
        lip_shadow = 0.7 + 0.3 * np.clip(dist / 3.0, 0.0, 1.0)
        shade = (side * seams)[None, :] * lip_shadow * dim
        a = 0.9 * m[..., None]  # a little of the cavity shows through: teeth are not opaque paint
        layer[:] = layer * (1.0 - a) + (TEETH * shade[..., None]) * a
