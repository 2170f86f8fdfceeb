"""Exact LIDAR: 19 beams over the forward half-plane, distance to the track borders.

Beam ``k`` points ``90° − 10°·k`` from the car's heading, counter-clockwise positive: beam 0 is
straight to the left, beam 9 straight ahead, beam 18 straight to the right — the order in which
the beams sweep a screenshot from left to right. Each value is the distance in metres from the
car's centre to the inner edge of the black border band (the first "border pixel" a camera would
see along that direction), within a few centimetres, capped at :data:`LIDAR_RANGE`.

Beams are sphere-traced through the track's clearance grid (interpolated; across the road it is a
lower bound of the distance to the border) with steps of at least 0.4 m; the step that lands
beyond the border is refined back to the crossing by regula falsi.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from tm_gym.core.geometry import LIDAR_ANGLES_DEG, LIDAR_BEAMS, LIDAR_RANGE
from tm_gym.sim.raster import CLEARANCE_CELL, TrackRaster

__all__ = ["lidar"]

_MIN_STEP = 0.4
# Off-road regions between two stretches of road are at least 1.6 m wide (two border bands), so a
# 0.4 m step can never jump over one: a step that lands past the border is bisected back.
_MAX_ITER = 1000
_REFINE = 6
_HALF_DIAG = CLEARANCE_CELL * 0.7072
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


@njit(cache=True, inline="always")
def _clear_near(grid: NDArray[np.float32], x0: float, y0: float, wx: float, wy: float) -> float:
    """Clearance of the nearest grid cell, lowered by the most it can differ inside the cell
    (the field changes by at most 1 m per metre), so it stays a safe step length."""
    ix = int((wx - x0) / CLEARANCE_CELL)
    iy = int((wy - y0) / CLEARANCE_CELL)
    if wx < x0 or wy < y0 or iy >= grid.shape[0] or ix >= grid.shape[1]:
        return -1.0
    return grid[iy, ix] - _HALF_DIAG


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
    ca = np.cos(angles)
    sa = np.sin(angles)
    for i in range(n):
        ch, sh = math.cos(psi[i]), math.sin(psi[i])
        for k in range(nb):
            dx = ch * ca[k] - sh * sa[k]
            dy = sh * ca[k] + ch * sa[k]
            t = 0.0
            prev = 0.0
            c_prev = 0.0
            for _ in range(_MAX_ITER):
                wx, wy = px[i] + t * dx, py[i] + t * dy
                c = _clear_near(grid, x0, y0, wx, wy)
                if c > _MIN_STEP:  # far from any border: a cheap, safe sphere step
                    if t >= max_range:
                        break
                    prev, c_prev = t, c
                    t += c
                    continue
                c = _clear(grid, x0, y0, wx, wy)
                if c < 0.0:
                    # stepped past the border: the clearance is close to linear across it, so a
                    # few regula-falsi steps between the last point on the road and this one
                    # find the crossing to well under a centimetre
                    lo, hi, c_lo, c_hi = prev, t, c_prev, c
                    for _r in range(_REFINE):
                        mid = lo + (hi - lo) * c_lo / (c_lo - c_hi)
                        c_mid = _clear(grid, x0, y0, px[i] + mid * dx, py[i] + mid * dy)
                        if c_mid < 0.0:
                            hi, c_hi = mid, c_mid
                        else:
                            lo, c_lo = mid, c_mid
                        if abs(c_mid) < 0.003:
                            break
                    t = lo + (hi - lo) * c_lo / (c_lo - c_hi)
                    break
                if t >= max_range:
                    break
                prev, c_prev = t, c
                t += max(c, _MIN_STEP)
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
