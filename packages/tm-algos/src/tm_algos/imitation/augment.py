"""Frame augmentation for behaviour cloning: random camera-like warps and lighting changes.

A pixel student trained on one camera learns where the road edges sit in the frame; moved,
zoomed or squashed a little, the same road looks new to it. :class:`FrameAugment` distorts
every training sample's frame stack (the same distortion for the whole stack, so that motion
between the frames is kept) before the student sees it:

* ``zoom`` — a factor drawn from ``[low, high]``, both axes, about the frame's centre: roughly
  what a narrower (> 1) or wider (< 1) field of view does;
* ``stretch_y`` — an extra vertical factor: roughly what a lower (> 1) or higher (< 1) camera
  does to the ground;
* ``shift_y_px`` / ``shift_x_px`` — a translation in pixels drawn from ``[low, high]``: a
  vertical one is roughly a pitch change; a horizontal one changes what the frame says about
  the car's heading, so keep it small (DrQ uses ±4 on 84 pixels) or 0;
* ``brightness`` — every pixel multiplied by a factor from ``[low, high]``;
* ``contrast`` — each frame stack's deviation from its mean multiplied by a factor from
  ``[low, high]``;
* ``gamma`` — every pixel value v mapped to ``255 (v / 255) ** gamma``, gamma drawn
  log-uniformly from ``[low, high]``: a tone curve that brightens (< 1) or darkens (> 1) the
  dark and light parts of the frame by different amounts (applied first).

Warps are bilinear with the border pixels repeated; everything runs in one compiled pass per
batch. A key left out does nothing; an empty table turns augmentation off. Labels are not
changed: each change is one a real camera or light would make without changing the right
action (the horizontal shift only approximately). Acting and evaluation never augment.

>>> from tm_algos.imitation.augment import FrameAugment
>>> aug = FrameAugment.from_table({"zoom": [0.85, 1.15], "brightness": [0.8, 1.2]})
>>> aug.active
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from tm_algos.errors import InvalidValueError

if TYPE_CHECKING:
    import torch as th

__all__ = ["AUGMENT_KEYS", "FrameAugment"]

_Range = tuple[float, float]

AUGMENT_KEYS: dict[str, tuple[str, float, float]] = {
    # key: (what, lowest allowed, highest allowed)
    "zoom": ("a factor, 1 = unchanged", 0.25, 4.0),
    "stretch_y": ("a factor, 1 = unchanged", 0.25, 4.0),
    "shift_y_px": ("pixels, 0 = unchanged", -64.0, 64.0),
    "shift_x_px": ("pixels, 0 = unchanged", -64.0, 64.0),
    "brightness": ("a factor, 1 = unchanged", 0.0, 4.0),
    "contrast": ("a factor, 1 = unchanged", 0.0, 4.0),
    "gamma": ("an exponent, 1 = unchanged", 0.1, 10.0),
}
"""The keys of an ``[imitation.augment]`` table, what their ``[low, high]`` mean, and the
widest range each may take."""


def _range(key: str, value: Any) -> _Range:
    what, lowest, highest = AUGMENT_KEYS[key]
    pair = list(value) if isinstance(value, list | tuple) else None
    ok = (
        pair is not None
        and len(pair) == 2
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in pair
        )
    )
    if not ok or not (lowest <= float(pair[0]) <= float(pair[1]) <= highest):  # type: ignore[index]
        raise InvalidValueError(
            f"imitation.augment.{key} = {value!r}: expected [low, high] ({what}) with "
            f"{lowest:g} <= low <= high <= {highest:g}, e.g. "
            f"{[0.9, 1.1] if 'px' not in key else [-2, 2]}"
        )
    return float(pair[0]), float(pair[1])  # type: ignore[index]


@dataclass(frozen=True)
class FrameAugment:
    """Random warps and lighting changes of uint8 frame stacks (see the module docstring).

    Each field is a ``(low, high)`` range; the default of every field changes nothing.
    """

    zoom: _Range = (1.0, 1.0)
    stretch_y: _Range = (1.0, 1.0)
    shift_y_px: _Range = (0.0, 0.0)
    shift_x_px: _Range = (0.0, 0.0)
    brightness: _Range = (1.0, 1.0)
    contrast: _Range = (1.0, 1.0)
    gamma: _Range = (1.0, 1.0)

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> FrameAugment:
        """The augmentation an ``[imitation.augment]`` table describes.

        Raises:
            InvalidValueError: an unknown key or a bad range (the message names both).
        """
        values: dict[str, _Range] = {}
        for key, value in (table or {}).items():
            if key not in AUGMENT_KEYS:
                raise InvalidValueError(
                    f"imitation.augment: unknown key {key!r}; use {', '.join(AUGMENT_KEYS)}"
                )
            values[key] = _range(key, value)
        return cls(**values)

    @property
    def active(self) -> bool:
        """Whether any field can change a frame."""
        neutral = FrameAugment()
        return any(getattr(self, f.name) != getattr(neutral, f.name) for f in fields(self))

    def to_table(self) -> dict[str, list[float]]:
        """The fields that change something, as TOML-shaped data (``from_table`` reads it)."""
        neutral = FrameAugment()
        return {
            f.name: list(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(neutral, f.name)
        }

    def __call__(self, images: th.Tensor, rng: np.random.Generator | None = None) -> th.Tensor:
        """``images`` (B, C, H, W) uint8, each sample distorted at random (draws from ``rng``);
        a new uint8 tensor of the same shape, on the same device. The C channels of a sample
        (its frame history) share one distortion."""
        import torch as th

        from tm_algos.imitation._warp import warp_frames

        if images.dim() != 4 or images.dtype != th.uint8:
            raise InvalidValueError(
                f"FrameAugment takes uint8 frame stacks (B, C, H, W); got {images.dtype} of "
                f"shape {tuple(images.shape)}"
            )
        n = images.shape[0]
        if not self.active or n == 0:
            return images
        rng = rng if rng is not None else np.random.default_rng()

        def draw(bounds: _Range) -> NDArray[np.float64]:
            return (
                rng.uniform(bounds[0], bounds[1], n)
                if bounds[0] != bounds[1]
                else np.full(n, bounds[0])
            )

        zoom = draw(self.zoom)
        src = images.detach().cpu().contiguous().numpy()
        out = np.empty_like(src)
        warp_frames(
            src,
            zoom,
            zoom * draw(self.stretch_y),
            draw(self.shift_x_px),
            draw(self.shift_y_px),
            draw(self.contrast),
            draw(self.brightness),
            np.exp(draw((math.log(self.gamma[0]), math.log(self.gamma[1])))),
            out,
        )
        return th.from_numpy(out).to(images.device)
