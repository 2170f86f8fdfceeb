"""The driver's view: a chase camera over the flat ground, rendered like the game window.

Every pixel's viewing ray is fixed relative to the car, so the ground point each pixel sees is
precomputed once per resolution (a *ray table*: metres ahead of and to the left of the car).
Rendering a frame is then one rotation, one translation and one raster lookup per pixel, done by
compiled kernels for N cars at once.

The same camera renders at any resolution: the full 256×128 colour window (what a person sees,
``render_mode="rgb_array"``) and the agent's 64×64 grayscale frame directly (the fast path; it
matches the window squashed to 64×64 like TMRL's resize, up to sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit
from numpy.typing import NDArray

from tm_gym.core.geometry import WINDOW_HEIGHT, WINDOW_WIDTH, CameraSpec
from tm_gym.sim.raster import (
    GRAY_PALETTE,
    M_CAR_BODY,
    M_CAR_GLASS,
    M_CAR_WHEEL,
    M_FAR,
    MATERIAL_CELL,
    PALETTE,
    TrackRaster,
)

__all__ = ["RayTable", "ray_table", "render_gray", "render_rgb"]

_DEFAULT_CAMERA = CameraSpec()
_SKY = -1
_NO_CAR = -1


@dataclass(frozen=True, eq=False)
class RayTable:
    """Per-pixel ground offsets for one resolution (car frame: ahead, left, in metres)."""

    ahead: NDArray[np.float64]
    left: NDArray[np.float64]
    kind: NDArray[np.int16]
    """-1 sky, -2 far ground (haze), otherwise -3 (ground) or a car palette index."""
    sky: NDArray[np.uint8]
    """(H, 3) sky colour of each row."""
    sky_gray: NDArray[np.uint8]
    """(H,) the same in grayscale."""


_GROUND = -3
_FAR_GROUND = -2


@lru_cache(maxsize=16)
def ray_table(spec: CameraSpec, width: int, height: int) -> RayTable:
    """Ray table for a ``width`` × ``height`` frame of ``spec``."""
    tan_h = math.tan(math.radians(spec.hfov_deg) / 2)
    tan_v = tan_h / spec.window_aspect
    u = (2 * (np.arange(width) + 0.5) / width - 1) * tan_h  # right
    v = (1 - 2 * (np.arange(height) + 0.5) / height) * tan_v  # up
    uu, vv = np.meshgrid(u, v)
    p = math.radians(spec.pitch_deg)
    d_ahead = math.cos(p) + vv * math.sin(p)
    d_up = -math.sin(p) + vv * math.cos(p)
    d_left = -uu
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d_up < -1e-6, spec.height / -d_up, np.inf)
    ahead = t * d_ahead - spec.behind
    left = t * d_left
    kind = np.full((height, width), _GROUND, dtype=np.int16)
    dist = np.hypot(t * d_ahead, left)
    kind[~np.isfinite(t)] = _SKY
    kind[np.isfinite(t) & (dist > spec.far)] = _FAR_GROUND
    ahead = np.where(np.isfinite(ahead), ahead, 0.0)
    left = np.where(np.isfinite(left), left, 0.0)
    if spec.draw_car:
        _draw_car(kind, width, height)
    # sky: light blue at the horizon to deeper blue at the top
    frac = (np.arange(height) + 0.5) / height
    top, bottom = np.array([70, 130, 210.0]), np.array([185, 215, 240.0])
    sky = top[None, :] + (bottom - top)[None, :] * np.clip(frac * 3.0, 0, 1)[:, None]
    sky_rgb = np.rint(sky).astype(np.uint8)
    return RayTable(
        ahead=np.ascontiguousarray(ahead),
        left=np.ascontiguousarray(left),
        kind=kind,
        sky=sky_rgb,
        sky_gray=_gray_sky(sky_rgb),
    )


def _draw_car(kind: NDArray[np.int16], width: int, height: int) -> None:
    """A simple car seen from behind at the bottom centre (no pure black: borders are black)."""
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    ax = np.abs(xx)
    wheels = (ax > 0.075) & (ax < 0.105) & (yy > 0.86) & (yy < 0.98)
    body = (ax < 0.085) & (yy > 0.84) & (yy < 0.96)
    cabin = (ax < 0.085 - (0.84 - yy) * 0.5) & (yy > 0.78) & (yy <= 0.84)
    glass = (ax < 0.05) & (yy > 0.79) & (yy < 0.83)
    kind[wheels] = M_CAR_WHEEL
    kind[body | cabin] = M_CAR_BODY
    kind[glass] = M_CAR_GLASS


@njit(cache=True, inline="always")
def _ground_material(
    raster_mat: NDArray[np.uint8], x0: float, y0: float, wx: float, wy: float
) -> int:
    ix = math.floor((wx - x0) / MATERIAL_CELL)
    iy = math.floor((wy - y0) / MATERIAL_CELL)
    if ix < 0 or iy < 0 or iy >= raster_mat.shape[0] or ix >= raster_mat.shape[1]:
        return M_FAR
    return raster_mat[iy, ix]


@njit(cache=True)
def _render_gray(
    px: NDArray[np.float64],
    py: NDArray[np.float64],
    psi: NDArray[np.float64],
    ahead: NDArray[np.float64],
    left: NDArray[np.float64],
    kind: NDArray[np.int16],
    sky_gray: NDArray[np.uint8],
    mat: NDArray[np.uint8],
    x0: float,
    y0: float,
    pal: NDArray[np.uint8],
    out: NDArray[np.uint8],
) -> None:
    n = px.shape[0]
    h, w = kind.shape
    for i in range(n):
        c, s = math.cos(psi[i]), math.sin(psi[i])
        for r in range(h):
            for col in range(w):
                k = kind[r, col]
                if k == _SKY:
                    out[i, r, col] = sky_gray[r]
                elif k == _FAR_GROUND:
                    out[i, r, col] = pal[M_FAR]
                elif k >= 0:
                    out[i, r, col] = pal[k]
                else:
                    a, lft = ahead[r, col], left[r, col]
                    wx = px[i] + a * c - lft * s
                    wy = py[i] + a * s + lft * c
                    out[i, r, col] = pal[_ground_material(mat, x0, y0, wx, wy)]


@njit(cache=True)
def _render_rgb(
    px: NDArray[np.float64],
    py: NDArray[np.float64],
    psi: NDArray[np.float64],
    ahead: NDArray[np.float64],
    left: NDArray[np.float64],
    kind: NDArray[np.int16],
    sky: NDArray[np.uint8],
    mat: NDArray[np.uint8],
    x0: float,
    y0: float,
    pal: NDArray[np.uint8],
    out: NDArray[np.uint8],
) -> None:
    n = px.shape[0]
    h, w = kind.shape
    for i in range(n):
        c, s = math.cos(psi[i]), math.sin(psi[i])
        for r in range(h):
            for col in range(w):
                k = kind[r, col]
                if k == _SKY:
                    for ch in range(3):
                        out[i, r, col, ch] = sky[r, ch]
                    continue
                if k == _FAR_GROUND:
                    m = M_FAR
                elif k >= 0:
                    m = k
                else:
                    a, lft = ahead[r, col], left[r, col]
                    wx = px[i] + a * c - lft * s
                    wy = py[i] + a * s + lft * c
                    m = _ground_material(mat, x0, y0, wx, wy)
                for ch in range(3):
                    out[i, r, col, ch] = pal[m, ch]


def _gray_sky(sky: NDArray[np.uint8]) -> NDArray[np.uint8]:
    f = sky.astype(np.float64)
    return np.clip(np.rint(0.299 * f[:, 0] + 0.587 * f[:, 1] + 0.114 * f[:, 2]), 0, 255).astype(
        np.uint8
    )


def render_gray(
    raster: TrackRaster,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    psi: NDArray[np.float64],
    width: int,
    height: int,
    spec: CameraSpec = _DEFAULT_CAMERA,
    out: NDArray[np.uint8] | None = None,
) -> NDArray[np.uint8]:
    """Grayscale frames (N, height, width) uint8 of N cars at poses (x, y, psi)."""
    table = ray_table(spec, width, height)
    if out is None:
        out = np.empty((len(x), height, width), dtype=np.uint8)
    _render_gray(
        x,
        y,
        psi,
        table.ahead,
        table.left,
        table.kind,
        table.sky_gray,
        raster.material,
        raster.x0,
        raster.y0,
        GRAY_PALETTE,
        out,
    )
    return out


def render_rgb(
    raster: TrackRaster,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    psi: NDArray[np.float64],
    width: int = WINDOW_WIDTH,
    height: int = WINDOW_HEIGHT,
    spec: CameraSpec = _DEFAULT_CAMERA,
    out: NDArray[np.uint8] | None = None,
) -> NDArray[np.uint8]:
    """Colour frames (N, height, width, 3) uint8 of N cars at poses (x, y, psi)."""
    table = ray_table(spec, width, height)
    if out is None:
        out = np.empty((len(x), height, width, 3), dtype=np.uint8)
    _render_rgb(
        x,
        y,
        psi,
        table.ahead,
        table.left,
        table.kind,
        table.sky,
        raster.material,
        raster.x0,
        raster.y0,
        PALETTE,
        out,
    )
    return out
