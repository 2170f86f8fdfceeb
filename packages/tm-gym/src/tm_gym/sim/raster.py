"""Top-down rasters of a track: ground materials for the camera, wall clearance for the LIDAR.

Two grids cover the track's bounding box (plus a margin):

* ``material`` (cell :data:`MATERIAL_CELL` = 0.25 m, uint8): what the ground looks like there —
  road (two tones alternating every 6 m so motion is visible), the black border band inside each
  wall, black-and-white stripes on the wall's outer face, start/checkpoint/finish lines, and
  grass (an 8 m checkerboard) off the road.
* ``clearance`` (cell :data:`CLEARANCE_CELL` = 0.5 m, float32): the distance from the cell's
  centre to the inner edge of the nearest border band, measured across the road (negative beyond
  it). Across the road it is a lower bound of the straight-line distance to the border, so the
  LIDAR can sphere-trace with it.

Both are built once per track by stamping every centre-line sample (see :func:`build_raster`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit
from numpy.typing import NDArray

from tm_gym.core.visuals import Visuals
from tm_gym.sim.track import BORDER_WIDTH, Track

__all__ = [
    "CLEARANCE_CELL",
    "GRAY_PALETTE",
    "MATERIAL_CELL",
    "PALETTE",
    "Material",
    "TrackRaster",
    "build_raster",
    "palette_of",
]

MATERIAL_CELL = 0.25
CLEARANCE_CELL = 0.5
_MARGIN = 40.0
_WALL_FACE = 0.8  # width of the striped outer face of the wall, metres


# Palette indices (module constants so compiled kernels can use them).
M_GRASS_A = 0
M_GRASS_B = 1
M_ROAD_A = 2
M_ROAD_B = 3
M_BORDER = 4
M_STRIPE_WHITE = 5
M_LINE_WHITE = 6
M_FINISH_A = 7
M_FINISH_B = 8
M_CHECKPOINT = 9
M_FAR = 10
M_CAR_BODY = 11
M_CAR_GLASS = 12
M_CAR_WHEEL = 13


class Material:
    """Palette indices of ground materials (and of the sky and car, used by the camera)."""

    GRASS_A = M_GRASS_A
    GRASS_B = M_GRASS_B
    ROAD_A = M_ROAD_A
    ROAD_B = M_ROAD_B
    BORDER = M_BORDER
    STRIPE_WHITE = M_STRIPE_WHITE
    LINE_WHITE = M_LINE_WHITE
    FINISH_A = M_FINISH_A
    FINISH_B = M_FINISH_B
    CHECKPOINT = M_CHECKPOINT
    FAR = M_FAR
    CAR_BODY = M_CAR_BODY
    CAR_GLASS = M_CAR_GLASS
    CAR_WHEEL = M_CAR_WHEEL


# RGB colours. Borders are pure black like TrackMania's track borders (the game-side LIDAR looks
# for pixels darker than (55, 55, 55)); nothing else in the view is that dark.
PALETTE: NDArray[np.uint8] = np.array(
    [
        (78, 148, 62),  # GRASS_A
        (92, 165, 72),  # GRASS_B
        (112, 112, 118),  # ROAD_A
        (124, 124, 130),  # ROAD_B
        (12, 12, 12),  # BORDER
        (235, 235, 235),  # STRIPE_WHITE
        (240, 240, 240),  # LINE_WHITE
        (20, 20, 20),  # FINISH_A
        (245, 245, 245),  # FINISH_B
        (40, 110, 230),  # CHECKPOINT
        (150, 180, 150),  # FAR (haze over distant ground)
        (205, 40, 40),  # CAR_BODY
        (90, 110, 140),  # CAR_GLASS
        (75, 75, 80),  # CAR_WHEEL
    ],
    dtype=np.uint8,
)


def _to_gray(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """ITU-R 601 luma, the weights OpenCV's BGR2GRAY uses (TMRL's preprocessing)."""
    f = rgb.astype(np.float64)
    g = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


GRAY_PALETTE: NDArray[np.uint8] = _to_gray(PALETTE)
"""The palette in grayscale, as the agent's frames show it."""


def scale_brightness(rgb: NDArray[np.uint8], brightness: float) -> NDArray[np.uint8]:
    """``rgb`` times ``brightness``, rounded and clipped to 0–255 (unchanged for 1.0)."""
    if brightness == 1.0:
        return rgb.copy()
    return np.clip(np.rint(rgb.astype(np.float64) * brightness), 0, 255).astype(np.uint8)


def _with_offset(colour: tuple[int, int, int], material: int, reference: int) -> NDArray[np.int64]:
    """``colour`` plus the standard offset of ``material`` from ``reference``, clipped."""
    offset = PALETTE[material].astype(np.int64) - PALETTE[reference].astype(np.int64)
    return np.clip(np.asarray(colour, dtype=np.int64) + offset, 0, 255)


@lru_cache(maxsize=256)
def palette_of(visuals: Visuals) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The RGB palette (M, 3) and its grayscale (M,) of a look, read-only.

    ``grass``, ``road``, ``border_dark`` and ``border_light`` replace GRASS_A, ROAD_A, BORDER
    and STRIPE_WHITE; GRASS_B, ROAD_B and FAR (the haze over distant ground) keep their
    standard offsets from the first tone; the lines, checkpoints and the car keep their
    colours; then every colour is scaled by ``brightness``. ``Visuals()`` gives exactly
    :data:`PALETTE` and :data:`GRAY_PALETTE`.
    """
    pal = PALETTE.astype(np.int64)
    pal[M_GRASS_A] = visuals.grass
    pal[M_GRASS_B] = _with_offset(visuals.grass, M_GRASS_B, M_GRASS_A)
    pal[M_FAR] = _with_offset(visuals.grass, M_FAR, M_GRASS_A)
    pal[M_ROAD_A] = visuals.road
    pal[M_ROAD_B] = _with_offset(visuals.road, M_ROAD_B, M_ROAD_A)
    pal[M_BORDER] = visuals.border_dark
    pal[M_STRIPE_WHITE] = visuals.border_light
    rgb = scale_brightness(pal.astype(np.uint8), visuals.brightness)
    gray = _to_gray(rgb)
    rgb.flags.writeable = False
    gray.flags.writeable = False
    return rgb, gray


@dataclass(frozen=True, eq=False)
class TrackRaster:
    """The two grids of a track and where they lie in the world."""

    x0: float
    y0: float
    material: NDArray[np.uint8]
    clearance: NDArray[np.float32]


@njit(cache=True)
def _material_at(
    lon: float,
    lat: float,
    half: float,
    total: float,
    start_s: float,
    finish_s: float,
    cps: NDArray[np.float64],
    wx: float,
    wy: float,
) -> int:
    a = abs(lat)
    inner = half - BORDER_WIDTH
    if lon < 0.0 or lon > total:
        beyond = -lon if lon < 0.0 else lon - total
        if beyond < _WALL_FACE and a < half + _WALL_FACE:
            return M_BORDER
        return M_GRASS_A + ((math.floor(wx / 8.0) + math.floor(wy / 8.0)) % 2)
    if a < inner:
        if abs(lon - finish_s) < 1.5:
            return M_FINISH_A + ((math.floor(lon - finish_s + 1.5) + math.floor(lat)) % 2)
        if abs(lon - (start_s + 2.0)) < 0.4:
            return M_LINE_WHITE
        for c in cps:
            if abs(lon - c) < 0.75:
                return M_CHECKPOINT
        return M_ROAD_A + (math.floor(lon / 6.0) % 2)
    if a < half:
        return M_BORDER
    if a < half + _WALL_FACE:
        return M_BORDER if math.floor(lon / 2.0) % 2 == 0 else M_STRIPE_WHITE
    return M_GRASS_A + ((math.floor(wx / 8.0) + math.floor(wy / 8.0)) % 2)


@njit(cache=True)
def _stamp(
    cl: NDArray[np.float64],
    tan: NDArray[np.float64],
    nrm: NDArray[np.float64],
    s_arr: NDArray[np.float64],
    widths: NDArray[np.float64],
    start_s: float,
    finish_s: float,
    cps: NDArray[np.float64],
    x0: float,
    y0: float,
    mat: NDArray[np.uint8],
    clear: NDArray[np.float32],
) -> None:
    m = cl.shape[0]
    total = s_arr[m - 1]
    best_m = np.full(mat.shape, np.inf, dtype=np.float32)
    best_c = np.full(clear.shape, np.inf, dtype=np.float32)
    for i in range(m):
        px, py = cl[i, 0], cl[i, 1]
        tx, ty = tan[i, 0], tan[i, 1]
        nx, ny = nrm[i, 0], nrm[i, 1]
        half = widths[i] / 2.0
        r = half + _WALL_FACE + 1.0
        r2 = r * r
        # fine material grid
        ix0 = max(int((px - r - x0) / MATERIAL_CELL), 0)
        ix1 = min(int((px + r - x0) / MATERIAL_CELL) + 1, mat.shape[1] - 1)
        iy0 = max(int((py - r - y0) / MATERIAL_CELL), 0)
        iy1 = min(int((py + r - y0) / MATERIAL_CELL) + 1, mat.shape[0] - 1)
        for iy in range(iy0, iy1 + 1):
            cy = y0 + (iy + 0.5) * MATERIAL_CELL
            dy = cy - py
            for ix in range(ix0, ix1 + 1):
                cx = x0 + (ix + 0.5) * MATERIAL_CELL
                dx = cx - px
                d2 = dx * dx + dy * dy
                if d2 > r2 or d2 >= best_m[iy, ix]:
                    continue
                best_m[iy, ix] = d2
                lon = s_arr[i] + dx * tx + dy * ty
                lat = dx * nx + dy * ny
                mat[iy, ix] = _material_at(lon, lat, half, total, start_s, finish_s, cps, cx, cy)
        # coarse clearance grid
        ix0 = max(int((px - r - x0) / CLEARANCE_CELL), 0)
        ix1 = min(int((px + r - x0) / CLEARANCE_CELL) + 1, clear.shape[1] - 1)
        iy0 = max(int((py - r - y0) / CLEARANCE_CELL), 0)
        iy1 = min(int((py + r - y0) / CLEARANCE_CELL) + 1, clear.shape[0] - 1)
        for iy in range(iy0, iy1 + 1):
            cy = y0 + (iy + 0.5) * CLEARANCE_CELL
            dy = cy - py
            for ix in range(ix0, ix1 + 1):
                cx = x0 + (ix + 0.5) * CLEARANCE_CELL
                dx = cx - px
                d2 = dx * dx + dy * dy
                if d2 > r2 or d2 >= best_c[iy, ix]:
                    continue
                best_c[iy, ix] = d2
                lon = s_arr[i] + dx * tx + dy * ty
                lat = dx * nx + dy * ny
                c = (half - BORDER_WIDTH) - abs(lat)
                c = min(c, lon, total - lon)
                clear[iy, ix] = c


def build_raster(track: Track) -> TrackRaster:
    """Rasterise ``track`` (0.3–1.5 s for the built-in tracks on one slow core)."""
    cl = track.centerline
    lo = cl.min(axis=0) - _MARGIN
    hi = cl.max(axis=0) + _MARGIN
    w_m = math.ceil((hi[0] - lo[0]) / MATERIAL_CELL)
    h_m = math.ceil((hi[1] - lo[1]) / MATERIAL_CELL)
    xs = lo[0] + (np.arange(w_m) + 0.5) * MATERIAL_CELL
    ys = lo[1] + (np.arange(h_m) + 0.5) * MATERIAL_CELL
    checker = (np.floor(ys / 8.0)[:, None] + np.floor(xs / 8.0)[None, :]) % 2
    mat = (M_GRASS_A + checker).astype(np.uint8)
    clear = np.full((math.ceil(h_m / 2), math.ceil(w_m / 2)), -1.0, dtype=np.float32)
    _stamp(
        cl,
        track.tangents,
        track.normals,
        track.s,
        track.widths,
        float(track.start_s),
        float(track.finish_s),
        track.checkpoints_s,
        float(lo[0]),
        float(lo[1]),
        mat,
        clear,
    )
    return TrackRaster(x0=float(lo[0]), y0=float(lo[1]), material=mat, clearance=clear)
