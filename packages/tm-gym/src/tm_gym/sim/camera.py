"""The driver's view: a chase camera over the flat ground, rendered like the game window.

Every pixel's viewing ray is fixed relative to the car, so the ground point each pixel sees is
precomputed once per resolution (a *ray table*: metres ahead of and to the left of the car).
Rendering a frame is then one rotation, one translation and one raster lookup per pixel, done by
compiled kernels for N cars at once.

The same camera renders at any resolution: the full 256×128 colour window (what a person sees,
``render_mode="rgb_array"``) and the agent's 64×64 grayscale frame directly (the fast path; it
matches the window squashed to 64×64 like TMRL's resize, up to sampling).

Each car has its own look (:class:`~tm_gym.core.visuals.Visuals`: colours, brightness, camera
height, pitch and field of view). :class:`CarViews` holds what the kernels read for N cars at
one resolution: one ray table per distinct camera (cars that share a camera share its table, so
N cars with one look read a single table, as fast as one shared camera), and each car's palette
and sky rows. Changing one car's look (:meth:`CarViews.update`) rewrites only that car's
entries, and its camera's table if no other car uses it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit
from numpy.typing import NDArray

from tm_gym.core.geometry import CameraSpec
from tm_gym.core.visuals import Visuals
from tm_gym.sim.raster import (
    M_CAR_BODY,
    M_CAR_GLASS,
    M_CAR_WHEEL,
    M_FAR,
    MATERIAL_CELL,
    PALETTE,
    TrackRaster,
    palette_of,
    scale_brightness,
)

__all__ = [
    "SKY_HORIZON",
    "SKY_TOP",
    "CarViews",
    "RayTable",
    "ray_table",
    "render_gray",
    "render_rgb",
    "sky_rows",
]

SKY_TOP = (70, 130, 210)
"""The standard sky's colour at the top of the window (deeper blue)."""
SKY_HORIZON = (185, 215, 240)
"""The standard sky's colour at the horizon (light blue)."""
_SKY = -1


@dataclass(frozen=True, eq=False)
class RayTable:
    """Per-pixel ground offsets for one resolution (car frame: ahead, left, in metres)."""

    ahead: NDArray[np.float64]
    left: NDArray[np.float64]
    kind: NDArray[np.int16]
    """-1 sky, -2 far ground (haze), otherwise -3 (ground) or a car palette index."""


_GROUND = -3
_FAR_GROUND = -2


@lru_cache(maxsize=16)
def ray_table(spec: CameraSpec, width: int, height: int) -> RayTable:
    """Ray table for a ``width`` × ``height`` frame of ``spec`` (cached, read-only)."""
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
        car = _car_overlay(width, height)
        kind = np.where(car >= 0, car, kind).astype(np.int16)
    table = RayTable(ahead=np.ascontiguousarray(ahead), left=np.ascontiguousarray(left), kind=kind)
    for a in (table.ahead, table.left, table.kind):
        a.flags.writeable = False
    return table


@lru_cache(maxsize=16)
def _car_overlay(width: int, height: int) -> NDArray[np.int16]:
    """A simple car seen from behind at the bottom centre (no pure black: borders are black):
    its palette index at each pixel, -1 elsewhere. Read-only."""
    kind = np.full((height, width), -1, dtype=np.int16)
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
    kind.flags.writeable = False
    return kind


def _gray_sky(sky: NDArray[np.uint8]) -> NDArray[np.uint8]:
    f = sky.astype(np.float64)
    return np.clip(np.rint(0.299 * f[:, 0] + 0.587 * f[:, 1] + 0.114 * f[:, 2]), 0, 255).astype(
        np.uint8
    )


def _horizon_of(visuals: Visuals) -> tuple[int, int, int]:
    if visuals.sky_horizon is not None:
        return visuals.sky_horizon
    lift = np.asarray(SKY_HORIZON) - np.asarray(SKY_TOP)
    r, g, b = (int(c) for c in np.clip(np.asarray(visuals.sky) + lift, 0, 255))
    return r, g, b


@lru_cache(maxsize=256)
def sky_rows(visuals: Visuals, height: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The sky colour of each row of a ``height``-row frame: RGB (height, 3) and gray (height,).

    From ``visuals.sky`` at the top to its horizon colour (``sky_horizon``, by default ``sky``
    lightened by :data:`SKY_HORIZON` − :data:`SKY_TOP`) a third of the way down the frame, then
    constant; scaled by ``visuals.brightness``. Read-only.
    """
    frac = (np.arange(height) + 0.5) / height
    top = np.asarray(visuals.sky, dtype=np.float64)
    bottom = np.asarray(_horizon_of(visuals), dtype=np.float64)
    sky = top[None, :] + (bottom - top)[None, :] * np.clip(frac * 3.0, 0, 1)[:, None]
    rgb = scale_brightness(np.rint(sky).astype(np.uint8), visuals.brightness)
    gray = _gray_sky(rgb)
    rgb.flags.writeable = False
    gray.flags.writeable = False
    return rgb, gray


class CarViews:
    """What the kernels read to render N cars at one resolution, each car with its own look.

    Args:
        width, height: the frame size, pixels.
        visuals: the look of each car (its length is N).
        base: the camera placement the looks' height, pitch and field of view modify (its
            ``behind``, ``far``, ``window_aspect`` and ``draw_car`` are kept).

    The arrays are public so the kernels can take them: ``table`` (N,) is each car's slot in
    the stacked ray tables ``ahead``/``left``/``kind`` (S, height, width); ``sky`` (N, height,
    3) and ``sky_gray`` (N, height) each car's sky rows; ``palette`` (N, M, 3) and
    ``palette_gray`` (N, M) each car's palette. Do not write to them; use :meth:`update`.
    """

    def __init__(
        self, width: int, height: int, visuals: Iterable[Visuals], base: CameraSpec | None = None
    ) -> None:
        looks = list(visuals)
        n = len(looks)
        if n < 1:
            raise ValueError("CarViews needs at least one car")
        self.width, self.height, self.n = width, height, n
        self.base = CameraSpec() if base is None else base
        self.looks: list[Visuals] = looks
        self.table = np.zeros(n, dtype=np.int64)
        self.all_cars = np.arange(n, dtype=np.int64)
        self.sky = np.empty((n, height, 3), dtype=np.uint8)
        self.sky_gray = np.empty((n, height), dtype=np.uint8)
        self.palette = np.empty((n, len(PALETTE), 3), dtype=np.uint8)
        self.palette_gray = np.empty((n, len(PALETTE)), dtype=np.uint8)
        self.ahead = np.empty((0, height, width))
        self.left = np.empty((0, height, width))
        self.kind = np.empty((0, height, width), dtype=np.int16)
        self._slot_spec: list[CameraSpec | None] = []
        self._slot_users: list[int] = []
        self._slot_of: dict[CameraSpec, int] = {}
        self._car_slot = [-1] * n
        self.update(range(n), looks)

    @property
    def slots(self) -> int:
        """How many distinct cameras the cars use now (ray tables read by the kernels)."""
        return sum(1 for users in self._slot_users if users > 0)

    def update(self, cars: Iterable[int], visuals: Iterable[Visuals]) -> None:
        """Give car ``cars[k]`` the look ``visuals[k]``."""
        for i, look in zip(cars, visuals, strict=True):
            i = int(i)
            self.looks[i] = look
            self._release(i)
            slot = self._acquire(look.camera(self.base))
            self._car_slot[i] = slot
            self.table[i] = slot
            self.sky[i], self.sky_gray[i] = sky_rows(look, self.height)
            self.palette[i], self.palette_gray[i] = palette_of(look)

    def _release(self, car: int) -> None:
        slot = self._car_slot[car]
        if slot >= 0:
            self._slot_users[slot] -= 1
            self._car_slot[car] = -1

    def _acquire(self, spec: CameraSpec) -> int:
        slot = self._slot_of.get(spec)
        if slot is not None:
            self._slot_users[slot] += 1
            return slot
        free = [k for k, users in enumerate(self._slot_users) if users == 0]
        if free:
            slot = free[0]
            old = self._slot_spec[slot]
            if old is not None:
                del self._slot_of[old]
        else:
            slot = len(self._slot_users)
            self._grow(max(1, 2 * slot))
        t = ray_table(spec, self.width, self.height)
        self.ahead[slot], self.left[slot], self.kind[slot] = t.ahead, t.left, t.kind
        self._slot_spec[slot] = spec
        self._slot_users[slot] = 1
        self._slot_of[spec] = slot
        return slot

    def _grow(self, capacity: int) -> None:
        """Room for ``capacity`` ray tables (at most N are ever in use at once)."""
        capacity = min(capacity, self.n)
        old = len(self._slot_users)
        h, w = self.height, self.width
        for name, dtype in (("ahead", np.float64), ("left", np.float64), ("kind", np.int16)):
            grown = np.zeros((capacity, h, w), dtype=dtype)
            grown[:old] = getattr(self, name)
            setattr(self, name, grown)
        self._slot_spec.extend([None] * (capacity - old))
        self._slot_users.extend([0] * (capacity - old))


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
    cars: NDArray[np.int64],
    px: NDArray[np.float64],
    py: NDArray[np.float64],
    psi: NDArray[np.float64],
    table: NDArray[np.int64],
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
    h, w = kind.shape[1], kind.shape[2]
    for j in range(cars.shape[0]):
        i = cars[j]
        t = table[i]
        c, s = math.cos(psi[i]), math.sin(psi[i])
        for r in range(h):
            for col in range(w):
                k = kind[t, r, col]
                if k == _SKY:
                    out[j, r, col] = sky_gray[i, r]
                elif k == _FAR_GROUND:
                    out[j, r, col] = pal[i, M_FAR]
                elif k >= 0:
                    out[j, r, col] = pal[i, k]
                else:
                    a, lft = ahead[t, r, col], left[t, r, col]
                    wx = px[i] + a * c - lft * s
                    wy = py[i] + a * s + lft * c
                    out[j, r, col] = pal[i, _ground_material(mat, x0, y0, wx, wy)]


@njit(cache=True)
def _render_rgb(
    cars: NDArray[np.int64],
    px: NDArray[np.float64],
    py: NDArray[np.float64],
    psi: NDArray[np.float64],
    table: NDArray[np.int64],
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
    h, w = kind.shape[1], kind.shape[2]
    for j in range(cars.shape[0]):
        i = cars[j]
        t = table[i]
        c, s = math.cos(psi[i]), math.sin(psi[i])
        for r in range(h):
            for col in range(w):
                k = kind[t, r, col]
                if k == _SKY:
                    for ch in range(3):
                        out[j, r, col, ch] = sky[i, r, ch]
                    continue
                if k == _FAR_GROUND:
                    m = M_FAR
                elif k >= 0:
                    m = k
                else:
                    a, lft = ahead[t, r, col], left[t, r, col]
                    wx = px[i] + a * c - lft * s
                    wy = py[i] + a * s + lft * c
                    m = _ground_material(mat, x0, y0, wx, wy)
                for ch in range(3):
                    out[j, r, col, ch] = pal[i, m, ch]


def _which(views: CarViews, n: int, cars: NDArray[np.int64] | None) -> NDArray[np.int64]:
    if n != views.n:
        raise ValueError(f"{n} car poses for views of {views.n} cars")
    return views.all_cars if cars is None else np.asarray(cars, dtype=np.int64)


def render_gray(
    raster: TrackRaster,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    psi: NDArray[np.float64],
    views: CarViews,
    cars: NDArray[np.int64] | None = None,
    out: NDArray[np.uint8] | None = None,
) -> NDArray[np.uint8]:
    """Grayscale frames (K, height, width) uint8 of the cars ``cars`` (default: all N), at
    poses ``x``, ``y``, ``psi`` (N,) and with the looks of ``views``."""
    which = _which(views, len(x), cars)
    if out is None:
        out = np.empty((len(which), views.height, views.width), dtype=np.uint8)
    _render_gray(
        which,
        x,
        y,
        psi,
        views.table,
        views.ahead,
        views.left,
        views.kind,
        views.sky_gray,
        raster.material,
        raster.x0,
        raster.y0,
        views.palette_gray,
        out,
    )
    return out


def render_rgb(
    raster: TrackRaster,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    psi: NDArray[np.float64],
    views: CarViews,
    cars: NDArray[np.int64] | None = None,
    out: NDArray[np.uint8] | None = None,
) -> NDArray[np.uint8]:
    """Colour frames (K, height, width, 3) uint8 of the cars ``cars`` (default: all N), at
    poses ``x``, ``y``, ``psi`` (N,) and with the looks of ``views``."""
    which = _which(views, len(x), cars)
    if out is None:
        out = np.empty((len(which), views.height, views.width, 3), dtype=np.uint8)
    _render_rgb(
        which,
        x,
        y,
        psi,
        views.table,
        views.ahead,
        views.left,
        views.kind,
        views.sky,
        raster.material,
        raster.x0,
        raster.y0,
        views.palette,
        out,
    )
    return out
