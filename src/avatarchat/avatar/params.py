"""The parameters one avatar frame is rendered from: what the face does at one instant."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True, slots=True)
class FaceParams:
    """All fields are small numbers around 0; the renderer clamps them to what looks right.

    Mouth (0..1): ``jaw`` open, lip ``stretch`` (corners sideways), lip ``round`` (pursed),
    ``upper`` lip raise, lips ``press``ed together.
    Eyes and brows: ``blink`` 0 open .. 1 closed; ``brows`` -1 frown .. 1 raised.
    Head, in degrees: ``yaw`` (left/right), ``pitch`` (nod), ``roll`` (tilt).
    ``breath`` 0..1: the chest/shoulders rise of breathing (a small vertical shift).
    ``smile`` 0..1: the slight attentive expression while listening.
    """

    jaw: float = 0.0
    stretch: float = 0.0
    round: float = 0.0
    upper: float = 0.0
    press: float = 0.0
    blink: float = 0.0
    brows: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    breath: float = 0.0
    smile: float = 0.0

    def with_(self, **changes: float) -> FaceParams:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


NEUTRAL = FaceParams()
