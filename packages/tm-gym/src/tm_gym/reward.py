"""Progress reward along a reference trajectory, shared by the simulator and the live game.

The reference is a polyline resampled every :data:`REFERENCE_SPACING` (0.1 m). Each step, every
car is localised on it: the search walks forward from the car's current index and keeps going as
long as it finds closer points (a closer point restarts the ``lookahead`` budget, so cutting a
corner is found); if nothing ahead is closer it walks backwards the same way (``lookback``
budget), so a car that reverses stays localised. A car farther than ``max_stray`` metres from
every point searched is not localised and earns nothing.

Reward is paid only for *new* ground: ``(new_best − old_best) · progress_scale`` where
``best`` is the furthest index ever reached this episode (default 0.01 per point = 1.0 per
10 m, as in TMRL). Backing up and driving the same stretch again earns nothing — TMRL pays for
it again. Crossing the finish pays ``finish_bonus`` (once) and terminates. Once ``min_steps``
steps have passed, each step without new ground counts towards failure, and more than
``max_no_progress`` such steps in a row terminate the episode (a car that never moves fails at
step ``min_steps + max_no_progress + 1``, 81 with the defaults, as in TMRL).

References are stored as ``.npz`` (array ``points``, loaded with ``allow_pickle=False``) or JSON
(``{"format": "tm-gym-reference/1", "spacing": 0.1, "points": [[x, y(, z)], ...]}``) — never
pickle.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from tm_gym.error import TrajectoryFormatError

__all__ = [
    "REFERENCE_FORMAT",
    "REFERENCE_SPACING",
    "ProgressReward",
    "ReferenceTrajectory",
    "RewardConfig",
    "resample_polyline",
]

REFERENCE_SPACING = 0.1
REFERENCE_FORMAT = "tm-gym-reference/1"
MAX_REFERENCE_POINTS = 2_000_000
"""Most points a reference file may declare (200 km at the 0.1 m spacing), checked before reading."""
MAX_REFERENCE_BYTES = 128 * 1024 * 1024
"""Largest reference file read (JSON text, or the npz's declared ``points`` array)."""


@dataclass(frozen=True)
class RewardConfig:
    """Reward settings. Defaults follow TMRL where TMRL has the setting."""

    lookahead: int = 500
    """Points searched past the last improvement (500 × 0.1 m = 50 m)."""
    lookback: int = 10
    max_stray: float = 100.0
    """Metres beyond which a car counts as lost (no progress)."""
    progress_scale: float = 0.01
    """Reward per reference point gained (0.01 × 10 points per metre = 1.0 per 10 m)."""
    finish_bonus: float = 100.0
    min_steps: int = 70
    max_no_progress: int = 10

    def __post_init__(self) -> None:
        for name in ("lookahead", "lookback", "min_steps", "max_no_progress"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"RewardConfig.{name}={v!r}: expected a non-negative int")
        for name in ("max_stray", "progress_scale", "finish_bonus"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"RewardConfig.{name}={v!r}: expected a finite number >= 0")


def resample_polyline(
    points: NDArray[np.floating[Any]], spacing: float = REFERENCE_SPACING
) -> NDArray[np.float64]:
    """Points every ``spacing`` metres along the polyline through ``points`` (K, D)."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 2 or p.shape[1] not in (2, 3):
        raise TrajectoryFormatError(
            f"expected (K, 2) or (K, 3) points with K >= 2, got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)):
        raise TrajectoryFormatError("trajectory points contain NaN or infinite values")
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    p = p[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    if s[-1] < spacing:
        raise TrajectoryFormatError(
            f"trajectory is {s[-1]:.3f} m long; it must be longer than the spacing {spacing} m"
        )
    s_new = np.arange(math.floor(s[-1] / spacing) + 1) * spacing
    return np.stack([np.interp(s_new, s, p[:, d]) for d in range(p.shape[1])], axis=1)


@dataclass(frozen=True, eq=False)
class ReferenceTrajectory:
    """A reference polyline resampled every :data:`REFERENCE_SPACING` metres.

    ``points`` is (K, 2) for the simulator's ground plane or (K, 3) for the game's (x, y, z).
    """

    points: NDArray[np.float64]

    def __post_init__(self) -> None:
        p = self.points
        if p.ndim != 2 or p.shape[0] < 2 or p.shape[1] not in (2, 3):
            raise TrajectoryFormatError(
                f"reference points must be (K, 2) or (K, 3) with K >= 2, got shape {p.shape}"
            )
        if not np.all(np.isfinite(p)):
            raise TrajectoryFormatError("reference points contain NaN or infinite values")

    @classmethod
    def from_polyline(cls, points: NDArray[np.floating[Any]]) -> ReferenceTrajectory:
        return cls(resample_polyline(points))

    @property
    def length(self) -> float:
        return (len(self.points) - 1) * REFERENCE_SPACING

    def save(self, path: str | Path) -> Path:
        """Write ``.npz`` (default) or ``.json`` depending on the suffix."""
        p = Path(path)
        if p.suffix == ".json":
            p.write_text(
                json.dumps(
                    {
                        "format": REFERENCE_FORMAT,
                        "spacing": REFERENCE_SPACING,
                        "points": self.points.round(4).tolist(),
                    }
                ),
                "utf-8",
            )
        else:
            with p.open("wb") as f:
                np.savez_compressed(
                    f,
                    points=self.points,
                    format=np.array(REFERENCE_FORMAT),
                    spacing=np.array(REFERENCE_SPACING),
                )
        return p

    @classmethod
    def load(cls, path: str | Path) -> ReferenceTrajectory:
        """Load a ``.npz`` or ``.json`` reference (never pickle)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"reference trajectory {str(p)!r} does not exist; record one "
                "or pass reward_trajectory=None"
            )
        if p.suffix == ".json":
            _check_reference_size(p, p.stat().st_size, "the file")
            try:
                data = json.loads(p.read_text("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TrajectoryFormatError(f"{p}: not valid JSON ({e})") from None
            except RecursionError:
                raise TrajectoryFormatError(f"{p}: JSON nested too deeply; re-record it") from None
            if not isinstance(data, dict) or data.get("format") != REFERENCE_FORMAT:
                raise TrajectoryFormatError(
                    f"{p}: expected an object with format {REFERENCE_FORMAT!r}"
                )
            spacing = data.get("spacing")
            try:
                pts = np.asarray(data.get("points"), dtype=np.float64)
            except (TypeError, ValueError):
                raise TrajectoryFormatError(
                    f"{p}: 'points' must be a list of [x, y(, z)] numbers"
                ) from None
        else:
            try:
                _check_npz_points(p)
                with p.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
                    if "points" not in z.files:
                        raise TrajectoryFormatError(f"{p}: no 'points' array (found {z.files})")
                    pts = np.asarray(z["points"], dtype=np.float64)
                    spacing = float(z["spacing"]) if "spacing" in z.files else None
            except TrajectoryFormatError:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise TrajectoryFormatError(
                    f"{p}: not a readable .npz reference ({e}); re-record it"
                ) from None
        if spacing is not None and not math.isclose(float(spacing), REFERENCE_SPACING):
            pts = resample_polyline(pts)
        try:
            return cls(pts)
        except TrajectoryFormatError as e:
            raise TrajectoryFormatError(f"{p}: {e}") from None


def _check_reference_size(path: Path, nbytes: int, what: str) -> None:
    if nbytes > MAX_REFERENCE_BYTES:
        raise TrajectoryFormatError(
            f"{path}: {what} holds {nbytes:,} bytes, more than a reference may "
            f"({MAX_REFERENCE_BYTES:,}); this is not a reference trajectory: record one with "
            "`tm-gym record-reward`"
        )


def _check_npz_points(path: Path) -> None:
    """Refuse an npz whose ``points`` array declares too much, from its header alone."""
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo("points.npy")
        except KeyError:
            return  # reported with the file's members below
        with zf.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise TrajectoryFormatError(
                    f"{path}: 'points' uses npy format {version}; re-record the reference"
                )
    n = math.prod(shape)
    if len(shape) != 2 or shape[0] > MAX_REFERENCE_POINTS:
        raise TrajectoryFormatError(
            f"{path}: 'points' declares shape {shape}; a reference is at most "
            f"{MAX_REFERENCE_POINTS:,} rows of [x, y(, z)]: re-record it with `tm-gym record-reward`"
        )
    _check_reference_size(path, n * dtype.itemsize, "'points'")


@njit(cache=True)
def _localise(
    pos: NDArray[np.float64],
    ref: NDArray[np.float64],
    cur: NDArray[np.int64],
    lookahead: int,
    lookback: int,
    max_stray: float,
) -> None:
    n, d = pos.shape
    k = ref.shape[0]
    for i in range(n):
        c = cur[i]
        best = 0.0
        for q in range(d):
            best += (pos[i, q] - ref[c, q]) ** 2
        bj = c
        budget = lookahead
        j = c + 1
        while j < k and budget > 0:
            dd = 0.0
            for q in range(d):
                dd += (pos[i, q] - ref[j, q]) ** 2
            if dd < best:
                best = dd
                bj = j
                budget = lookahead
            else:
                budget -= 1
            j += 1
        if bj == c:
            budget = lookback
            j = c - 1
            while j >= 0 and budget > 0:
                dd = 0.0
                for q in range(d):
                    dd += (pos[i, q] - ref[j, q]) ** 2
                if dd < best:
                    best = dd
                    bj = j
                    budget = lookback
                else:
                    budget -= 1
                j -= 1
        if best <= max_stray * max_stray:
            cur[i] = bj


@njit(cache=True)
def _nearest(p: NDArray[np.float64], ref: NDArray[np.float64]) -> int:
    best = np.inf
    bj = 0
    for j in range(ref.shape[0]):
        d = 0.0
        for q in range(ref.shape[1]):
            d += (p[q] - ref[j, q]) ** 2
        if d < best:
            best = d
            bj = j
    return bj


@njit(cache=True)
def _update(
    pos: NDArray[np.float64],
    finished: NDArray[np.bool_],
    ref: NDArray[np.float64],
    cur: NDArray[np.int64],
    best: NDArray[np.int64],
    steps: NDArray[np.int64],
    no_progress: NDArray[np.int64],
    paid: NDArray[np.bool_],
    lookahead: int,
    lookback: int,
    max_stray: float,
    scale: float,
    bonus: float,
    min_steps: int,
    max_no_progress: int,
    reward: NDArray[np.float64],
    term: NDArray[np.bool_],
) -> None:
    _localise(pos, ref, cur, lookahead, lookback, max_stray)
    for i in range(pos.shape[0]):
        gained = cur[i] - best[i]
        steps[i] += 1
        if gained > 0:
            best[i] = cur[i]
            no_progress[i] = 0
            reward[i] = gained * scale
        else:
            if steps[i] > min_steps:
                no_progress[i] += 1
            reward[i] = 0.0
        failed = no_progress[i] > max_no_progress
        if finished[i] and not paid[i]:
            reward[i] += bonus
            paid[i] = True
        term[i] = finished[i] or failed


class ProgressReward:
    """Batched progress reward for N cars (see the module docstring)."""

    def __init__(
        self, reference: ReferenceTrajectory, num_cars: int, config: RewardConfig | None = None
    ) -> None:
        self.reference = reference
        self.config = config or RewardConfig()
        self.num_cars = num_cars
        self.current = np.zeros(num_cars, dtype=np.int64)
        self.best = np.zeros(num_cars, dtype=np.int64)
        self.steps = np.zeros(num_cars, dtype=np.int64)
        self.no_progress = np.zeros(num_cars, dtype=np.int64)
        self.finish_paid = np.zeros(num_cars, dtype=np.bool_)
        self._nearest_cache: dict[bytes, int] = {}

    def reset(self, positions: NDArray[np.float64], mask: NDArray[np.bool_] | None = None) -> None:
        """Localise the selected cars globally (nearest reference point) and zero counters."""
        sel = np.arange(self.num_cars) if mask is None else np.flatnonzero(mask)
        ref = self.reference.points
        for i in sel:
            p = positions[i, : ref.shape[1]]
            key = p.tobytes()
            j = self._nearest_cache.get(key)
            if j is None:
                j = _nearest(np.ascontiguousarray(p, dtype=np.float64), ref)
                if len(self._nearest_cache) < 64:  # respawns happen at a few fixed places
                    self._nearest_cache[key] = j
            self.current[i] = j
        self.best[sel] = self.current[sel]
        self.steps[sel] = 0
        self.no_progress[sel] = 0
        self.finish_paid[sel] = False

    def update(
        self, positions: NDArray[np.float64], finished: NDArray[np.bool_]
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Advance every car; returns (rewards, terminated) of shape (N,).

        ``positions`` is (N, D) with D the reference's dimension (extra columns are ignored).
        """
        ref = self.reference.points
        pos = positions if positions.shape[1] == ref.shape[1] else positions[:, : ref.shape[1]]
        pos = np.ascontiguousarray(pos, dtype=np.float64)
        reward = np.empty(self.num_cars)
        term = np.empty(self.num_cars, dtype=np.bool_)
        cfg = self.config
        _update(
            pos,
            np.asarray(finished, dtype=np.bool_),
            ref,
            self.current,
            self.best,
            self.steps,
            self.no_progress,
            self.finish_paid,
            cfg.lookahead,
            cfg.lookback,
            cfg.max_stray,
            cfg.progress_scale,
            cfg.finish_bonus,
            cfg.min_steps,
            cfg.max_no_progress,
            reward,
            term,
        )
        return reward, term

    @property
    def progress(self) -> NDArray[np.float64]:
        """Furthest fraction of the reference reached, per car."""
        return self.best / max(len(self.reference.points) - 1, 1)
