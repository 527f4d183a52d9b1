"""Landmark displacement: where every mesh point of an avatar goes for one ``FaceParams``.

The expression channels (jaw, lips, eyes, brows, smile) are linear blend shapes: one
[N, 2] pixel-displacement basis per channel, precomputed from the rest-pose landmarks, so
a frame's local deformation is a weighted sum. The head pose (yaw, pitch, roll) and the
breath shift are then applied as a small rigid-ish transform of the face points.

Promises: only the first ``face_points`` points ever move (border and ring anchors stay
exactly where they are, so the warp is confined to the face and has no seam); all
displacement amplitudes are fractions of the face's own size, so a larger or smaller
portrait moves the same way; parameters are clamped to ranges that still look right.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarchat.avatar.asset import AvatarAsset
from avatarchat.avatar.params import FaceParams

#: Channels that are linear blend shapes, with the range each is clamped to.
SHAPE_RANGES: dict[str, tuple[float, float]] = {
    "jaw": (0.0, 1.0), "stretch": (0.0, 1.0), "round": (0.0, 1.0), "upper": (0.0, 1.0),
    "press": (0.0, 1.0), "blink": (0.0, 1.0), "brows": (-1.0, 1.0), "smile": (0.0, 1.0),
}
MAX_HEAD_DEG = 3.0  # yaw/pitch/roll clamp: a 2D warp of one photo cannot turn a head far
BREATH_FRACTION = 0.008  # of face height (about 2-3 px on a 512 px portrait)

# Amplitudes at channel value 1, as fractions of face height H or mouth width W.
JAW_DROP_H = 0.085  # chin drop: ~25 px on a 512 px portrait
UPPER_RAISE_H = 0.03
STRETCH_W = 0.10
ROUND_W = 0.15
PUCKER = 0.45  # round = 1 narrows the lips' opening by this fraction of the mouth's width
PUCKER_FULL_AT = 0.5  # rounding from which the opening is fully oval
SMILE_H, SMILE_W = 0.022, 0.035
BROW_H = 0.03


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _curve(points: np.ndarray, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A contour as (xs, ys) sorted by x, for ``np.interp`` lookups."""
    p = points[idx]
    order = np.argsort(p[:, 0], kind="stable")
    return p[order, 0].astype(np.float64), p[order, 1].astype(np.float64)


@dataclass(frozen=True)
class MouthGeometry:
    """Rest-pose mouth layout the renderer and the blend shapes share."""

    upper_inner: np.ndarray  # landmark indices of the upper inner lip, left to right
    lower_inner: np.ndarray  # lower inner lip, left to right (shares the corners)
    centre: np.ndarray  # [2] mouth centre
    width: float  # outer corner to outer corner
    face_height: float


class FaceRig:
    """Precomputed blend shapes and head-pose geometry for one avatar (read-only after init,
    so one rig may serve concurrent renders)."""

    def __init__(self, asset: AvatarAsset) -> None:
        self.n_points = len(asset.points)
        self.n_face = asset.face_points
        lm = asset.landmarks.astype(np.float64)
        g = asset.groups
        self.rest = asset.points.astype(np.float32)
        oval = lm[g["face_oval"]]
        self.face_h = float(np.ptp(oval[:, 1]))
        self.face_w = float(np.ptp(oval[:, 0]))
        self.face_c = oval.mean(axis=0)
        self.mouth = self._mouth_geometry(lm, g)
        self._lip = self._classify_lips(lm, g)
        self.basis: dict[str, np.ndarray] = {}
        for name, fn in (("jaw", self._jaw), ("stretch", self._stretch), ("round", self._round),
                         ("upper", self._upper), ("press", self._press), ("smile", self._smile),
                         ("brows", self._brows), ("blink", self._blink)):
            full = np.zeros((self.n_points, 2), np.float32)
            full[: self.n_face] = fn(lm, g)
            self.basis[name] = full
        self._names = list(SHAPE_RANGES)
        self._stack = np.stack([self.basis[n] for n in self._names])  # [C, N, 2]
        self._depth = self._pseudo_depth(lm)
        self._pucker_w = self._pucker_weights()
        chin = lm[g["chin"]][:, 1].max()
        self._roll_pivot = np.array([self.face_c[0], chin + 0.25 * self.face_h])

    # -- read-only views for a renderer elsewhere (the page's, avatar/rig_export.py) ----------

    @property
    def shape_stack(self) -> np.ndarray:
        """The blend shapes [channels, points, 2] in ``SHAPE_RANGES`` order."""
        return self._stack

    @property
    def pucker_weights(self) -> np.ndarray:
        """Per point, how much of the pucker it takes (see ``_pucker``)."""
        return self._pucker_w

    @property
    def lip_u(self) -> np.ndarray:
        """Per landmark, its horizontal place in the mouth (-1 left corner .. 1 right)."""
        return self._lip["u"]

    @property
    def depth(self) -> np.ndarray:
        """Pseudo-depth of each face point (what yaw and pitch shift it by)."""
        return self._depth

    @property
    def roll_pivot(self) -> np.ndarray:
        """The point the head rolls about, below the chin."""
        return self._roll_pivot

    @property
    def lip_points(self) -> np.ndarray:
        """Boolean mask over the landmarks: on the lips (either lip or a corner)."""
        return self._lip["lip"]

    # ---- geometry -------------------------------------------------------------------------
    def _mouth_geometry(self, lm: np.ndarray, g: dict[str, list[int]]) -> MouthGeometry:
        up = np.array(g["upper_lip_inner"])[np.argsort(lm[g["upper_lip_inner"], 0], kind="stable")]
        lo = np.array(g["lower_lip_inner"])[np.argsort(lm[g["lower_lip_inner"], 0], kind="stable")]
        outer = lm[g["lips_outer"]]
        width = float(np.ptp(outer[:, 0]))
        centre = np.array([outer[:, 0].min() + width / 2, lm[np.concatenate([up, lo]), 1].mean()])
        return MouthGeometry(up, lo, centre, width, self.face_h)

    def _classify_lips(self, lm: np.ndarray, g: dict[str, list[int]]) -> dict[str, np.ndarray]:
        """For every landmark: is it on the upper/lower lip, its horizontal position u in the
        mouth (-1 left corner .. 1 right corner) and its depth t into the lip (0 at the
        inner edge .. 1 at the outer edge)."""
        ux, uy = _curve(lm, g["upper_lip_inner"])
        lx, ly = _curve(lm, g["lower_lip_inner"])
        oux, ouy = _curve(lm, g["upper_lip_outer"])
        olx, oly = _curve(lm, g["lower_lip_outer"])
        x, y = lm[:, 0], lm[:, 1]
        line = 0.5 * (np.interp(x, ux, uy) + np.interp(x, lx, ly))
        top, bottom = np.interp(x, oux, ouy), np.interp(x, olx, oly)
        poly = np.concatenate([np.stack([oux, ouy], 1), np.stack([olx, oly], 1)[::-1]]).astype(np.float32)
        inside = np.array([cv2.pointPolygonTest(poly, (float(a), float(b)), True) >= -1.0 for a, b in lm])
        upper = inside & (y <= line)
        lower = inside & (y > line)
        # Contour membership beats geometry: a closed mouth's inner contours may cross.
        for mine, other in (("upper", "lower"), ("lower", "upper")):
            for part in ("inner", "outer"):
                idx = g[f"{mine}_lip_{part}"]
                (upper if mine == "upper" else lower)[idx] = True
                (lower if mine == "upper" else upper)[idx] = False
        corners = [i for i in set(g["upper_lip_inner"]) & set(g["lower_lip_inner"])]
        corners += [i for i in set(g["upper_lip_outer"]) & set(g["lower_lip_outer"])]
        upper[corners] = lower[corners] = False
        t = np.where(y <= line, (line - y) / np.maximum(line - top, 1.0), (y - line) / np.maximum(bottom - line, 1.0))
        u = np.clip((x - self.mouth.centre[0]) / (self.mouth.width / 2), -1.2, 1.2)
        corner = np.zeros(len(lm), bool)
        corner[corners] = True
        return {"upper": upper, "lower": lower, "corner": corner, "lip": upper | lower | corner,
                "u": u, "t": np.clip(t, 0.0, 1.0), "line": line, "top": top, "bottom": bottom}

    def _lip_vertical(self, lm: np.ndarray, k: float) -> np.ndarray:
        """Vertical lip shaping: lip points move by ``k`` times their distance from the lip
        line (k > 0 thickens, k < 0 thins); the skin around follows the outer lip edge with a
        falloff, so that no triangle between lip and skin folds."""
        L, m = self._lip, self.mouth
        y = lm[:, 1]
        edge = np.where(y <= L["line"], L["top"], L["bottom"])
        w = m.width
        fall = np.exp(-(((y - edge) / (0.14 * w)) ** 2))
        fall *= np.exp(-((np.maximum(np.abs(lm[:, 0] - m.centre[0]) - w / 2, 0.0) / (0.12 * w)) ** 2))
        return np.where(L["lip"], k * (y - L["line"]), k * (edge - L["line"]) * fall)

    def _near_corners(self, lm: np.ndarray, sigma_w: float) -> np.ndarray:
        """Signed falloff (+ right corner, - left) of non-lip points around the mouth corners."""
        m = self.mouth
        cl = m.centre - [m.width / 2, 0]
        cr = m.centre + [m.width / 2, 0]
        s = sigma_w * m.width
        gl = np.exp(-np.sum((lm - cl) ** 2, 1) / (2 * s * s))
        gr = np.exp(-np.sum((lm - cr) ** 2, 1) / (2 * s * s))
        return np.where(self._lip["lip"], 0.0, gr - gl)

    def _pseudo_depth(self, lm: np.ndarray) -> np.ndarray:
        """Depth of each face point on an ellipsoid through the face oval (0 at the outline)."""
        n = (lm - self.face_c) / [self.face_w / 2, self.face_h / 2]
        return (self.face_w / 2) * 0.8 * np.sqrt(np.clip(1.0 - np.sum(n * n, 1), 0.0, None))

    # ---- blend shapes (each returns [face_points, 2] displacement at channel value 1) -------
    def _jaw(self, lm: np.ndarray, g: dict[str, list[int]]) -> np.ndarray:
        """The mandible drops: the lower lip (most in the middle), chin and lower face move
        down, fading out towards the mouth-corner line and towards the jaw angles."""
        L, m = self._lip, self.mouth
        corner_y = m.centre[1]
        lip_bottom = lm[g["lower_lip_outer"], 1].max()
        v = (lm[:, 1] - corner_y) / max(lip_bottom - corner_y, 1.0)
        lateral = np.clip(1.0 - 0.5 * ((lm[:, 0] - m.centre[0]) / (self.face_w / 2)) ** 2, 0.3, 1.0)
        w = _smoothstep(v) * lateral
        w[L["lower"]] = 0.35 + 0.65 * (1.0 - np.clip(L["u"][L["lower"]], -1, 1) ** 2)
        w[L["upper"]] = 0.0
        w[L["corner"]] = 0.2
        d = np.zeros_like(lm)
        d[:, 1] = JAW_DROP_H * self.face_h * w
        # The upper inner lip lifts a little as the mouth opens (the lip peels off the teeth).
        ui = L["upper"] & (L["t"] < 0.3)
        d[ui, 1] -= 0.012 * self.face_h * (1.0 - np.clip(L["u"][ui], -1, 1) ** 2)
        return d

    def _stretch(self, lm: np.ndarray, g: dict[str, list[int]]) -> np.ndarray:
        """Corners pull sideways, the lips flatten towards the lip line, cheeks follow."""
        L = self._lip
        d = np.zeros_like(lm)
        d[:, 0] = STRETCH_W * self.mouth.width * np.where(L["lip"], np.clip(L["u"], -1, 1), 0.7 * self._near_corners(lm, 0.3))
        d[:, 1] = self._lip_vertical(lm, -0.2)
        return d

    def _round(self, lm: np.ndarray, g: dict[str, list[int]]) -> np.ndarray:
        """Lips purse: corners pull in, lips thicken (pout) and part a little in the middle."""
        L = self._lip
        d = np.zeros_like(lm)
        d[:, 0] = -ROUND_W * self.mouth.width * np.where(L["lip"], np.clip(L["u"], -1, 1), 0.6 * self._near_corners(lm, 0.3))
        d[:, 1] = self._lip_vertical(lm, 0.22)
        mid = 1.0 - np.clip(L["u"], -1, 1) ** 2
        d[L["lower"], 1] += 0.012 * self.face_h * mid[L["lower"]]
        d[L["upper"], 1] -= 0.006 * self.face_h * mid[L["upper"]]
        return d

    def _upper(self, lm: np.ndarray, g: dict[str, list[int]]) -> np.ndarray:
        """The upper lip rises (its inner edge most), showing the upper teeth."""
        L = self._lip
        d = np.zeros_like(lm)
        up = L["upper"]
        mid = 1.0 - np.clip(L["u"], -1, 1) ** 2
        d[up, 1] = -UPPER_RAISE_H * self.face_h * mid[up] * (1.0 - 0.5 * L["t"][up])
        # The skin between lip and nose follows a little.
        c = self.mouth.centre
        above = ~L["lip"] & (lm[:, 1] < c[1])
        r2 = ((lm[:, 0] - c[0]) / (0.5 * self.mouth.width)) ** 2 + ((lm[:, 1] - c[1]) / (0.12 * self.face_h)) ** 2
        d[above, 1] = -0.4 * UPPER_RAISE_H * self.face_h * np.exp(-r2[above])
        return d

    def _press(self, lm: np.ndarray, g: dict[str, list[int]]) -> np.ndarray:
        """Lips press together: both lips thin towards the lip line and the inner edges meet
        (closing a source photo's slightly open mouth)."""
        L = self._lip
        d = np.zeros_like(lm)
        d[:, 1] = self._lip_vertical(lm, -0.25)
        inner = list(set(g["upper_lip_inner"]) | set(g["lower_lip_inner"]))
        d[inner, 1] = L["line"][inner] - lm[inner, 1]
        return d

    def _smile(self, lm: np.ndarray, g: dict[str, list[int]]) -> np.ndarray:
        """Corners rise and widen a little; cheeks lift."""
        L = self._lip
        d = np.zeros_like(lm)
        u = np.clip(L["u"], -1, 1)
        near = self._near_corners(lm, 0.35)
        d[:, 0] = SMILE_W * self.mouth.width * np.where(L["lip"], u, 0.6 * near)
        d[:, 1] = -SMILE_H * self.face_h * np.where(L["lip"], u * u, 0.7 * np.abs(near))
        return d

    def _brows(self, lm: np.ndarray, g: dict[str, list[int]]) -> np.ndarray:
        """Brows rise; the skin around them (forehead, upper lids) follows with a falloff."""
        brow = np.array(g["left_brow"] + g["right_brow"])
        dist = np.min(np.linalg.norm(lm[:, None, :] - lm[None, brow, :], axis=2), axis=1)
        w = np.exp(-0.5 * (dist / (0.07 * self.face_h)) ** 2)
        eyes = np.array(g["left_eye"] + g["right_eye"])
        w[eyes] *= 0.3  # the lid margin hardly moves with the brow
        d = np.zeros_like(lm)
        d[:, 1] = -BROW_H * self.face_h * w
        return d

    def _blink(self, lm: np.ndarray, g: dict[str, list[int]]) -> np.ndarray:
        """Upper lid comes down to meet the lower lid (which rises a little); whatever lies
        inside the eye (iris points) collapses onto that line; the skin above follows."""
        d = np.zeros_like(lm)
        for name in ("left_eye", "right_eye"):
            d += self._blink_one(lm, np.array(g[name]))
        return d

    def _blink_one(self, lm: np.ndarray, eye: np.ndarray) -> np.ndarray:
        p = lm[eye]
        left, right = p[np.argmin(p[:, 0])], p[np.argmax(p[:, 0])]
        corner_line = left[1] + (p[:, 0] - left[0]) * (right[1] - left[1]) / max(right[0] - left[0], 1.0)
        is_up = p[:, 1] < corner_line - 0.5
        is_lo = p[:, 1] > corner_line + 0.5
        ends = [np.argmin(p[:, 0]), np.argmax(p[:, 0])]
        up_idx = np.concatenate([np.flatnonzero(is_up), ends])
        lo_idx = np.concatenate([np.flatnonzero(is_lo), ends])
        uxs, uys = _curve(p, list(up_idx))
        lxs, lys = _curve(p, list(lo_idx))
        x = np.clip(lm[:, 0], left[0], right[0])
        top, bot = np.interp(x, uxs, uys), np.interp(x, lxs, lys)
        meet = bot - 0.3 * (bot - top)  # lids meet low, as real lids do
        d = np.zeros_like(lm)
        poly = p[np.argsort(np.arctan2(p[:, 1] - p[:, 1].mean(), p[:, 0] - p[:, 0].mean()))].astype(np.float32)
        inside = np.array([cv2.pointPolygonTest(poly, (float(a), float(b)), False) > 0 for a, b in lm])
        on = np.zeros(len(lm), bool)
        on[eye] = True
        move = on | inside
        d[move, 1] = meet[move] - lm[move, 1]
        # Skin above the lid (crease) follows part-way, fading with distance.
        span = (lm[:, 0] > left[0] - 0.15 * (right[0] - left[0])) & (lm[:, 0] < right[0] + 0.15 * (right[0] - left[0]))
        height = max(float(np.max(bot - top)), 2.0)
        above = span & ~move & (lm[:, 1] < top)
        k = 0.45 * np.exp(-(((top - lm[:, 1]) / (0.9 * height)) ** 2))
        d[above, 1] = k[above] * (meet[above] - top[above])
        below = span & ~move & (lm[:, 1] > bot)
        k = 0.5 * np.exp(-(((lm[:, 1] - bot) / (0.7 * height)) ** 2))
        d[below, 1] = k[below] * (meet[below] - bot[below])
        return d

    # ---- per frame ------------------------------------------------------------------------
    def clamp(self, params: FaceParams) -> np.ndarray:
        """The blend-shape weights of ``params``, clamped, in ``SHAPE_RANGES`` order."""
        vals = [getattr(params, n) for n in self._names]
        return np.array([min(max(float(v), lo), hi) if np.isfinite(v) else 0.0
                         for v, (lo, hi) in zip(vals, SHAPE_RANGES.values())], np.float32)

    def deformed(self, params: FaceParams) -> np.ndarray:
        """All mesh points [N, 2] float32 for ``params``; anchors are returned unchanged."""
        w = self.clamp(params)
        pts = self.rest + np.tensordot(w, self._stack, axes=1)
        if w[self._names.index("round")] > 0:
            self._pucker(pts, float(w[self._names.index("round")]))
        pts[: self.n_face] = self._head(pts[: self.n_face], params)
        return pts

    def _pucker_weights(self) -> np.ndarray:
        """Per point, how much of the pucker it takes: the inner lip edges fully, fading
        into the lip body; skin and corners none."""
        L = self._lip
        w = np.zeros(self.n_points, np.float32)
        depth = np.clip(1.0 - L["t"] / 0.4, 0.0, 1.0)
        w[: self.n_face] = np.where(L["upper"] | L["lower"], depth, 0.0)
        return w

    def _pucker(self, pts: np.ndarray, amount: float) -> None:
        """Rounded lips leave a small oval opening in the middle, not a narrower slit: the
        lips' gap is reshaped to an ellipse whose width shrinks with ``amount``. A linear
        blend cannot do this, because how far the lips must close depends on how far the jaw
        (another channel) has opened them. Works in place on the blended points."""
        m, L = self.mouth, self._lip
        up, lo = pts[m.upper_inner], pts[m.lower_inner]
        sel = np.flatnonzero(self._pucker_w)
        x = pts[sel, 0]
        mid = 0.5 * (np.interp(x, up[:, 0], up[:, 1]) + np.interp(x, lo[:, 0], lo[:, 1]))
        half_width = 1.0 - PUCKER * amount
        u = np.abs(L["u"][sel])
        keep = np.sqrt(np.clip(1.0 - (u / half_width) ** 2, 0.0, 1.0))
        # Fade the reshaping in, so that a little rounding changes the mouth a little.
        strength = min(1.0, amount / PUCKER_FULL_AT)
        pts[sel, 1] += (mid - pts[sel, 1]) * (1.0 - keep) * self._pucker_w[sel] * strength

    def _head(self, p: np.ndarray, params: FaceParams) -> np.ndarray:
        """Head pose on face points: yaw/pitch shift features by their pseudo-depth (the
        outline stays, the far side compresses), roll rotates about a point below the chin."""

        def deg(v: float) -> float:
            return float(np.clip(v, -MAX_HEAD_DEG, MAX_HEAD_DEG)) if np.isfinite(v) else 0.0

        yaw, pitch, roll = np.radians([deg(params.yaw), deg(params.pitch), deg(params.roll)])
        c, z = self.face_c, self._depth
        out = p.astype(np.float64)
        out[:, 0] = c[0] + (out[:, 0] - c[0]) * np.cos(yaw) + z * np.sin(yaw)
        out[:, 1] = c[1] + (out[:, 1] - c[1]) * np.cos(pitch) + z * np.sin(pitch)
        if roll:
            cs, sn = np.cos(roll), np.sin(roll)
            q = out - self._roll_pivot
            out = self._roll_pivot + np.stack([q[:, 0] * cs - q[:, 1] * sn, q[:, 0] * sn + q[:, 1] * cs], 1)
        breath = float(np.clip(params.breath, 0.0, 1.0)) if np.isfinite(params.breath) else 0.0
        out[:, 1] -= BREATH_FRACTION * self.face_h * breath
        return out.astype(np.float32)
