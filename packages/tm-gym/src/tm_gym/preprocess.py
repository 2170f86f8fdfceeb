"""From a game screenshot to what the agent sees: the agent's frame and the pixel LIDAR.

Pure functions of an ``(H, W, 3)`` uint8 RGB screenshot of the game window's client area (what a
:class:`~tm_gym.core.ports.FrameSource` returns):

* :func:`agent_frame` — the ``(C, size, size)`` uint8 frame of an image observation: ITU-R 601
  grayscale (the luma weights of OpenCV's ``BGR2GRAY``, as in TMRL), then an area-averaging
  resize (the window is squashed to a square, as TMRL does). The simulator's fast 64×64 path
  (:meth:`tm_gym.sim.simulator.Simulator.render_gray`) matches it up to sampling.
* :func:`pixel_lidar` — the game-side LIDAR: 19 distances in metres to the black track borders,
  in the same units and beam order as the simulator's exact LIDAR (:mod:`tm_gym.sim.lidar`),
  found by inverse perspective. The ground is taken to be flat and the camera to be the chase
  camera described by :class:`~tm_gym.core.geometry.CameraSpec`, so every ground point in the car's
  frame maps to a fixed pixel: each beam's pixels are precomputed once per window size, and a
  scan only reads those pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from tm_gym.core.geometry import LIDAR_ANGLES_DEG, LIDAR_BEAMS, LIDAR_RANGE, CameraSpec

__all__ = [
    "BORDER_THRESHOLD",
    "DEFAULT_CAMERA",
    "LIDAR_STEP",
    "LidarScan",
    "agent_frame",
    "area_resize",
    "ground_to_pixel",
    "pixel_lidar",
    "to_gray",
]

BORDER_THRESHOLD = 55
"""A pixel belongs to a track border when every channel is below this (TMRL's rule)."""
LIDAR_STEP = 0.05
"""Spacing of the ground points each beam is marched through, metres."""

DEFAULT_CAMERA = CameraSpec()
"""The simulator's chase camera (what the emulator shows); calibrate one for the real game."""

_LUMA = (0.299, 0.587, 0.114)


def _check_rgb(rgb: Any, name: str = "rgb") -> NDArray[np.uint8]:
    """The screenshot as an (H, W, 3) uint8 array, or a ValueError saying what is wrong."""
    if not isinstance(rgb, np.ndarray):
        raise TypeError(
            f"{name} is a {type(rgb).__name__}; expected a numpy array of shape (H, W, 3), "
            "dtype uint8 (an RGB screenshot)"
        )
    if rgb.dtype != np.uint8:
        raise ValueError(
            f"{name} has dtype {rgb.dtype}; expected uint8 RGB values 0–255 "
            "(convert with np.clip(x, 0, 255).astype(np.uint8) if it holds floats)"
        )
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        hint = (
            " (drop the alpha channel: rgb[..., :3])" if rgb.ndim == 3 and rgb.shape[2] == 4 else ""
        )
        raise ValueError(f"{name} has shape {rgb.shape}; expected (H, W, 3) RGB{hint}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"{name} has shape {rgb.shape}; expected a non-empty image")
    return rgb


# -- agent frame ---------------------------------------------------------------------------------
def to_gray(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """ITU-R 601 luma of an (..., 3) RGB array, rounded to the nearest integer (uint8).

    The same conversion as :data:`tm_gym.sim.raster.GRAY_PALETTE`: a colour of the simulator's
    palette turns into exactly its palette gray.
    """
    f = rgb.astype(np.float64)
    g = _LUMA[0] * f[..., 0] + _LUMA[1] * f[..., 1] + _LUMA[2] * f[..., 2]
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


@lru_cache(maxsize=32)
def _box_filter(
    n_in: int, n_out: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """A 1-D box filter as sparse rows: output pixel i covers the input interval
    [i·n_in/n_out, (i+1)·n_in/n_out); input pixel ``idx[a]`` (for a in ``start[i]:start[i+1]``)
    contributes with the length ``weight[a]`` of its overlap (exactly 1.0 for whole pixels)."""
    scale = n_in / n_out
    start = np.zeros(n_out + 1, dtype=np.intp)
    idx: list[int] = []
    weight: list[float] = []
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(math.floor(lo), min(math.ceil(hi), n_in)):
            w = min(hi, j + 1.0) - max(lo, float(j))
            if w > 1e-12:
                idx.append(j)
                weight.append(w)
        start[i + 1] = len(idx)
    out = (start, np.array(idx, dtype=np.intp), np.array(weight, dtype=np.float64))
    for a in out:
        a.setflags(write=False)
    return out


@njit(cache=True)
def _area_gray(
    rgb: NDArray[np.uint8],
    r_start: NDArray[np.intp],
    r_idx: NDArray[np.intp],
    r_w: NDArray[np.float64],
    c_start: NDArray[np.intp],
    c_idx: NDArray[np.intp],
    c_w: NDArray[np.float64],
    out: NDArray[np.uint8],
) -> None:
    """Grayscale (per pixel, rounded) then box-filter ``rgb`` into ``out`` (h, w)."""
    h, w = out.shape
    for i in range(h):
        for j in range(w):
            acc = 0.0
            area = 0.0
            for a in range(r_start[i], r_start[i + 1]):
                r = r_idx[a]
                row = 0.0
                span = 0.0
                for b in range(c_start[j], c_start[j + 1]):
                    c = c_idx[b]
                    g = np.rint(0.299 * rgb[r, c, 0] + 0.587 * rgb[r, c, 1] + 0.114 * rgb[r, c, 2])
                    row += c_w[b] * g
                    span += c_w[b]
                acc += r_w[a] * row
                area += r_w[a] * span
            out[i, j] = min(max(np.rint(acc / area), 0.0), 255.0)


@njit(cache=True)
def _area_channels(
    img: NDArray[np.uint8],
    r_start: NDArray[np.intp],
    r_idx: NDArray[np.intp],
    r_w: NDArray[np.float64],
    c_start: NDArray[np.intp],
    c_idx: NDArray[np.intp],
    c_w: NDArray[np.float64],
    out: NDArray[np.uint8],
) -> None:
    """Box-filter every channel of ``img`` (H, W, C) into ``out`` (C, h, w)."""
    nc, h, w = out.shape
    for i in range(h):
        for j in range(w):
            for ch in range(nc):
                acc = 0.0
                area = 0.0
                for a in range(r_start[i], r_start[i + 1]):
                    r = r_idx[a]
                    row = 0.0
                    span = 0.0
                    for b in range(c_start[j], c_start[j + 1]):
                        row += c_w[b] * img[r, c_idx[b], ch]
                        span += c_w[b]
                    acc += r_w[a] * row
                    area += r_w[a] * span
                out[ch, i, j] = min(max(np.rint(acc / area), 0.0), 255.0)


def _pixels(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}={v!r}: expected a positive integer number of pixels")
    return int(v)


def area_resize(img: NDArray[np.uint8], height: int, width: int) -> NDArray[np.uint8]:
    """Area-averaging resize of an (H, W) or (H, W, C) uint8 image, rounded to nearest.

    Each output pixel is the mean of the input area it covers: the exact block mean when the
    input size is a multiple of the output size (256×128 → 64×64 averages 4×2 blocks), a box
    filter with fractional edge weights otherwise (like OpenCV's ``INTER_AREA`` when shrinking).
    """
    obj: Any = img
    if not isinstance(obj, np.ndarray) or obj.dtype != np.uint8 or obj.ndim not in (2, 3):
        raise ValueError(
            f"img has shape {getattr(obj, 'shape', None)} and dtype {getattr(obj, 'dtype', None)}"
            "; expected an (H, W) or (H, W, C) uint8 array"
        )
    height, width = _pixels("height", height), _pixels("width", width)
    src = np.ascontiguousarray(img if img.ndim == 3 else img[:, :, None])
    out = np.empty((src.shape[2], height, width), dtype=np.uint8)
    _area_channels(src, *_box_filter(src.shape[0], height), *_box_filter(src.shape[1], width), out)
    res = np.moveaxis(out, 0, -1)
    return np.ascontiguousarray(res if img.ndim == 3 else res[:, :, 0])


def agent_frame(
    rgb: NDArray[np.uint8], size: int = 64, grayscale: bool = True
) -> NDArray[np.uint8]:
    """The agent's frame of a screenshot: ``(1, size, size)`` grayscale or ``(3, size, size)``
    RGB, uint8, channels first.

    Grayscale is computed per pixel first (ITU-R 601, rounded, like TMRL's ``BGR2GRAY``; see
    :func:`to_gray`), then the picture is squashed to ``size`` × ``size`` by area averaging
    (see :func:`area_resize`).

    Raises:
        ValueError: ``rgb`` is not an (H, W, 3) uint8 array, or ``size`` is not positive.
    """
    src = np.ascontiguousarray(_check_rgb(rgb))
    size = _pixels("size", size)
    rows = _box_filter(src.shape[0], size)
    cols = _box_filter(src.shape[1], size)
    if grayscale:
        gray = np.empty((size, size), dtype=np.uint8)
        _area_gray(src, *rows, *cols, gray)
        return gray[None]
    out = np.empty((3, size, size), dtype=np.uint8)
    _area_channels(src, *rows, *cols, out)
    return out


# -- pixel LIDAR ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LidarScan:
    """One pixel-LIDAR scan (beam k points 90° − 10°·k from the heading: left … ahead … right)."""

    distances: NDArray[np.float32]
    """(19,) metres from the car's centre to the first border pixel along each beam; for a beam
    that leaves the picture first, the distance at which it left it."""
    in_view: NDArray[np.bool_]
    """(19,) True where the beam found a border or reached ``max_range`` inside the picture;
    False where it left the picture (or passed the camera's far plane) first."""


@dataclass(frozen=True, eq=False)
class _BeamTable:
    """The pixels each beam crosses, in order (concatenated; beam k is ``start[k]:start[k+1]``),
    with the distance along the beam at which it enters each of them."""

    rows: NDArray[np.intp]
    cols: NDArray[np.intp]
    enter: NDArray[np.float32]
    start: NDArray[np.intp]
    end: NDArray[np.float32]
    """(19,) distance where the beam stops without a hit (max_range or where it left view)."""
    end_in_view: NDArray[np.bool_]


def ground_to_pixel(
    camera: CameraSpec,
    width: int,
    height: int,
    ahead: NDArray[np.float64],
    left: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Where ground points (car frame, metres) appear in a ``width`` × ``height`` picture.

    Returns continuous pixel coordinates ``(col, row)`` — the pixel is ``(floor(row),
    floor(col))`` — and whether each point is visible: in front of the camera, inside the
    picture and not beyond ``camera.far``. It inverts :func:`tm_gym.sim.camera.ray_table`.
    """
    p = math.radians(camera.pitch_deg)
    tan_h = math.tan(math.radians(camera.hfov_deg) / 2)
    tan_v = tan_h / camera.window_aspect
    fwd = np.asarray(ahead, dtype=np.float64) + camera.behind  # horizontal, from the camera
    lft = np.asarray(left, dtype=np.float64)
    depth = fwd * math.cos(p) + camera.height * math.sin(p)
    up = fwd * math.sin(p) - camera.height * math.cos(p)
    front = depth > 1e-9
    safe = np.where(front, depth, 1.0)
    col = (-lft / safe / tan_h + 1.0) * (width / 2)
    row = (1.0 - up / safe / tan_v) * (height / 2)
    visible = (
        front
        & (col >= 0)
        & (col < width)
        & (row >= 0)
        & (row < height)
        & (np.hypot(fwd, lft) <= camera.far)
    )
    return col, row, visible


@lru_cache(maxsize=16)
def _beam_table(
    camera: CameraSpec, width: int, height: int, max_range: float, step: float
) -> _BeamTable:
    n = math.floor(max_range / step + 1e-9) + 1
    t = np.minimum(np.arange(n, dtype=np.float64) * step, max_range)
    if t[-1] < max_range:
        t = np.append(t, max_range)
    ang = np.radians(LIDAR_ANGLES_DEG)
    ahead = np.cos(ang)[:, None] * t[None, :]
    left = np.sin(ang)[:, None] * t[None, :]
    col, row, vis = ground_to_pixel(camera, width, height, ahead, left)
    rows: list[NDArray[np.intp]] = []
    cols: list[NDArray[np.intp]] = []
    enter: list[NDArray[np.float64]] = []
    start = np.zeros(LIDAR_BEAMS + 1, dtype=np.intp)
    end = np.empty(LIDAR_BEAMS, dtype=np.float32)
    end_in_view = np.empty(LIDAR_BEAMS, dtype=np.bool_)
    for k in range(LIDAR_BEAMS):
        # the ground ray projects to a straight segment that moves monotonically towards its
        # vanishing point, so once it leaves the (convex) picture it never comes back
        n_vis = int(np.argmin(vis[k])) if not vis[k].all() else len(t)
        r = np.floor(row[k, :n_vis]).astype(np.intp)
        c = np.floor(col[k, :n_vis]).astype(np.intp)
        new = np.ones(n_vis, dtype=bool)
        new[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
        rows.append(r[new])
        cols.append(c[new])
        enter.append(t[:n_vis][new])
        start[k + 1] = start[k] + int(new.sum())
        if n_vis == len(t):
            end[k], end_in_view[k] = max_range, True
        else:
            end[k], end_in_view[k] = (t[n_vis - 1] if n_vis > 0 else 0.0), False
    table = _BeamTable(
        rows=np.concatenate(rows),
        cols=np.concatenate(cols),
        enter=np.concatenate(enter).astype(np.float32),
        start=start,
        end=end,
        end_in_view=end_in_view,
    )
    for a in (table.rows, table.cols, table.enter, table.start, table.end, table.end_in_view):
        a.setflags(write=False)
    return table


def pixel_lidar(
    rgb: NDArray[np.uint8],
    camera: CameraSpec = DEFAULT_CAMERA,
    *,
    threshold: int = BORDER_THRESHOLD,
    max_range: float = LIDAR_RANGE,
) -> LidarScan:
    """The LIDAR read from a screenshot of the chase camera (any window size).

    Each beam is marched along the ground from the car's centre in :data:`LIDAR_STEP` steps;
    every ground point is projected into the picture, and the beam stops at the first pixel
    whose three channels are all below ``threshold`` (the black track border). Beams that reach
    ``max_range`` report ``max_range``; beams that leave the picture (or pass ``camera.far``)
    first report where they left it, with ``in_view`` False.

    Accuracy is bounded by the pixel footprint, which grows with distance (about the square of
    the distance along the view axis): see the tests for measured errors against the exact LIDAR.

    Raises:
        ValueError: ``rgb`` is not an (H, W, 3) uint8 array, or a parameter is out of range.
    """
    rgb = _check_rgb(rgb)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)):
        raise ValueError(f"threshold={threshold!r}: expected an integer in 1…255")
    if not 1 <= threshold <= 255:
        raise ValueError(f"threshold={threshold!r}: expected an integer in 1…255")
    if not (math.isfinite(max_range) and max_range > 0):
        raise ValueError(f"max_range={max_range!r}: expected a positive number of metres")
    h, w = rgb.shape[:2]
    table = _beam_table(camera, w, h, float(max_range), LIDAR_STEP)
    if len(table.enter) == 0:  # no beam starts inside the picture
        return LidarScan(distances=table.end.copy(), in_view=table.end_in_view.copy())
    px = rgb[table.rows, table.cols]  # (P, 3), a gather of only the pixels the beams cross
    dark = np.flatnonzero((px < threshold).all(axis=1))
    lo, hi = table.start[:-1], table.start[1:]
    pos = np.searchsorted(dark, lo)
    first = dark[np.minimum(pos, max(len(dark) - 1, 0))] if len(dark) else np.full_like(lo, -1)
    hit = (pos < len(dark)) & (first < hi) & (first >= lo)
    dist = np.where(hit, table.enter[np.where(hit, first, 0)], table.end).astype(np.float32)
    in_view = hit | table.end_in_view
    return LidarScan(distances=dist, in_view=in_view)
