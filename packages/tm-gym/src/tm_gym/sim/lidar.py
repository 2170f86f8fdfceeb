"""Exact LIDAR: 19 beams over the forward half-plane, distance to the track borders.

Beam ``k`` points ``90° − 10°·k`` from the car's heading, counter-clockwise positive: beam 0 is
straight to the left, beam 9 straight ahead, beam 18 straight to the right — the order in which
the beams sweep a screenshot from left to right. Each value is the distance in metres from the
car's centre to the inner edge of the black border band (the first "border pixel" a camera would
see along that direction), within a few centimetres, capped at :data:`LIDAR_RANGE`.

Beams are sphere-traced through the track's clearance grid (interpolated; across the road it is a
lower bound of the distance to the border), with a bisection if a step lands beyond the border.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from tm_gym.sim.raster import CLEARANCE_CELL, TrackRaster

__all__ = ["LIDAR_ANGLES_DEG", "LIDAR_BEAMS", "LIDAR_RANGE", "lidar"]

LIDAR_BEAMS = 19
LIDAR_RANGE = 150.0
LIDAR_ANGLES_DEG: NDArray[np.float64] = 90.0 - 10.0 * np.arange(LIDAR_BEAMS, dtype=np.float64)
_EPS = 0.02
_MAX_ITER = 2000  # grazing beams advance in 2 cm steps near a border
_ANGLES = np.radians(LIDAR_ANGLES_DEG)


@njit(cache=True, inline="always")
def _clear(grid: NDArray[np.float32], x0: float, y0: float, wx: float, wy: float) -> float:
    """Bilinear interpolation of the clearance grid (-1 outside it)."""
    fx = (wx - x0) / CLEARANCE_CELL - 0.5
    fy = (wy - y0) / CLEARANCE_CELL - 0.5
    ix = math.floor(fx)
    iy = math.floor(fy)
    if ix < 0 or iy < 0 or iy + 1 >= grid.shape[0] or ix + 1 >= grid.shape[1]:
        return -1.0
    ax = fx - ix
    ay = fy - iy
    top = grid[iy, ix] * (1.0 - ax) + grid[iy, ix + 1] * ax
    bot = grid[iy + 1, ix] * (1.0 - ax) + grid[iy + 1, ix + 1] * ax
    return top * (1.0 - ay) + bot * ay


@njit(cache=True)
def _lidar(
    px: NDArray[np.float64],
    py: NDArray[np.float64],
    psi: NDArray[np.float64],
    angles: NDArray[np.float64],
    grid: NDArray[np.float32],
    x0: float,
    y0: float,
    max_range: float,
    out: NDArray[np.float32],
) -> None:
    n = px.shape[0]
    nb = angles.shape[0]
    for i in range(n):
        for k in range(nb):
            a = psi[i] + angles[k]
            dx, dy = math.cos(a), math.sin(a)
            t = 0.0
            prev = 0.0
            for _ in range(_MAX_ITER):
                c = _clear(grid, x0, y0, px[i] + t * dx, py[i] + t * dy)
                if c < 0.0:
                    # stepped past the border: bisect between the last safe point and here
                    lo, hi = prev, t
                    for _b in range(10):
                        mid = 0.5 * (lo + hi)
                        if _clear(grid, x0, y0, px[i] + mid * dx, py[i] + mid * dy) < 0.0:
                            hi = mid
                        else:
                            lo = mid
                    t = lo
                    break
                if t >= max_range:
                    break
                prev = t
                t += max(c, _EPS)
            out[i, k] = min(t, max_range)


def lidar(
    raster: TrackRaster,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    psi: NDArray[np.float64],
    out: NDArray[np.float32] | None = None,
    max_range: float = LIDAR_RANGE,
) -> NDArray[np.float32]:
    """LIDAR scans (N, 19) float32 in metres for N cars at poses (x, y, psi)."""
    if out is None:
        out = np.empty((len(x), LIDAR_BEAMS), dtype=np.float32)
    _lidar(x, y, psi, _ANGLES, raster.clearance, raster.x0, raster.y0, max_range, out)
    return out
