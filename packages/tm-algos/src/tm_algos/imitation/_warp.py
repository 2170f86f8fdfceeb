"""The compiled kernel of :class:`tm_algos.imitation.augment.FrameAugment` (imported on use)."""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

__all__ = ["warp_frames"]


@njit(cache=True, nogil=True, fastmath=True)
def _taps(
    size: int, scale: float, shift: float, lo: NDArray[np.int64], frac: NDArray[np.float32]
) -> None:  # pragma: no cover (compiled)
    """Source index ``lo[k]`` and weight ``frac[k]`` of ``lo[k] + 1`` for output pixel ``k`` of
    a line scaled by ``scale`` about its centre and moved by ``shift`` (border clamped)."""
    for k in range(size):
        pos = (k + 0.5 - size / 2) / scale + size / 2 - shift - 0.5
        pos = min(max(pos, 0.0), size - 1.0)
        first = min(int(pos), max(size - 2, 0))
        lo[k] = first
        frac[k] = pos - first


@njit(cache=True, nogil=True, fastmath=True)
def warp_frames(
    src: NDArray[np.uint8],
    scale_x: NDArray[np.float64],
    scale_y: NDArray[np.float64],
    shift_x: NDArray[np.float64],
    shift_y: NDArray[np.float64],
    contrast: NDArray[np.float64],
    brightness: NDArray[np.float64],
    gamma: NDArray[np.float64],
    out: NDArray[np.uint8],
) -> None:  # pragma: no cover (compiled)
    """``out[b]``: ``src[b]`` (C, H, W), H and W >= 2, each pixel value v first mapped to
    ``255 (v / 255) ** gamma[b]``, scaled about its centre by ``scale_x[b]``/``scale_y[b]``,
    moved by ``shift_x[b]``/``shift_y[b]`` pixels (bilinear, border pixels repeated), its
    deviation from the mean (over a 4-pixel grid) times ``contrast[b]``, everything times
    ``brightness[b]``, rounded and clipped to 0..255."""
    n, channels, height, width = src.shape
    x0 = np.empty(width, np.int64)
    wx = np.empty(width, np.float32)
    y0 = np.empty(height, np.int64)
    wy = np.empty(height, np.float32)
    row = np.empty(width, np.float32)
    lut = np.empty(256, np.float32)
    one = np.float32(1.0)
    for b in range(n):
        for level in range(256):
            lut[level] = np.float32(255.0 * (level / 255.0) ** gamma[b])
        _taps(width, scale_x[b], shift_x[b], x0, wx)
        _taps(height, scale_y[b], shift_y[b], y0, wy)
        frames = src[b]
        total = 0.0
        count = 0
        for c in range(channels):
            for i in range(0, height, 4):
                for j in range(0, width, 4):
                    total += lut[frames[c, i, j]]
                    count += 1
        mean = np.float32(total / count)
        gain = np.float32(contrast[b] * brightness[b])
        offset = np.float32((mean - mean * contrast[b]) * brightness[b] + 0.5)
        for c in range(channels):
            plane = frames[c]
            target = out[b, c]
            for i in range(height):
                r0 = plane[y0[i]]
                r1 = plane[y0[i] + 1]
                a = wy[i]
                a0 = one - a
                for j in range(width):
                    lo = x0[j]
                    f = wx[j]
                    left = lut[r0[lo]] * a0 + lut[r1[lo]] * a
                    right = lut[r0[lo + 1]] * a0 + lut[r1[lo + 1]] * a
                    row[j] = (left * (one - f) + right * f) * gain + offset
                for j in range(width):
                    v = row[j]
                    v = v if v > 0.0 else np.float32(0.0)
                    v = v if v < 255.0 else np.float32(255.0)
                    target[i, j] = np.uint8(np.int32(v))
