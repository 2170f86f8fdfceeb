"""The batched simulator: N cars on one track, stepped together by compiled kernels.

:class:`Simulator` owns the car state as flat arrays (one entry per car) and exposes the three
things the environment needs: advancing physics, rendering the camera, and scanning the LIDAR.
Cars do not collide with each other (like ghosts in a TrackMania time attack).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.geometry import LIDAR_RANGE, WINDOW_HEIGHT, WINDOW_WIDTH, CameraSpec
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.sim.camera import render_gray, render_rgb
from tm_gym.sim.lidar import lidar
from tm_gym.sim.physics import IDLE_RPM, CarParams, advance_split
from tm_gym.sim.raster import TrackRaster, build_raster
from tm_gym.sim.track import Track
from tm_gym.sim.tracks import load_track

__all__ = ["PHYSICS_DT", "Simulator"]

PHYSICS_DT = 0.01
"""Default physics substep, seconds."""

_RASTERS: dict[int, tuple[Track, TrackRaster]] = {}


def raster_for(track: Track) -> TrackRaster:
    """The (cached) raster of ``track``."""
    hit = _RASTERS.get(id(track))
    if hit is not None and hit[0] is track:
        return hit[1]
    r = build_raster(track)
    if len(_RASTERS) > 32:
        _RASTERS.clear()
    _RASTERS[id(track)] = (track, r)
    return r


class Simulator:
    """N cars on one track.

    Args:
        track: a :class:`Track`, a built-in name, ``gen:SEED`` or a path to a track file.
        num_cars: number of cars simulated together.
        params: car physics constants.
        physics_dt: physics substep in seconds (default 10 ms).
        camera: chase-camera placement.
    """

    def __init__(
        self,
        track: Track | str,
        num_cars: int = 1,
        *,
        params: CarParams | None = None,
        physics_dt: float = PHYSICS_DT,
        camera: CameraSpec | None = None,
    ) -> None:
        if num_cars < 1:
            raise ValueError(f"num_cars={num_cars}: expected at least 1")
        if not (0.0 < physics_dt <= 0.05):
            raise ValueError(f"physics_dt={physics_dt}: expected a value in (0, 0.05] seconds")
        self.track = load_track(track)
        self.num_cars = num_cars
        self.params = params or CarParams()
        self.physics_dt = physics_dt
        self.camera = camera or CameraSpec()
        self._p = self.params.as_array()
        self.raster = raster_for(self.track)
        n = num_cars
        self.x = np.zeros(n)
        self.y = np.zeros(n)
        self.psi = np.zeros(n)
        self.vx = np.zeros(n)
        self.vy = np.zeros(n)
        self.yaw = np.zeros(n)
        self.gear = np.zeros(n, dtype=np.int64)
        self.rpm = np.full(n, IDLE_RPM)
        self.idx = np.zeros(n, dtype=np.int64)
        self.s = np.zeros(n)
        self.lat = np.zeros(n)
        self.race_time = np.zeros(n)
        self.finished = np.zeros(n, dtype=np.bool_)
        self.finish_time = np.full(n, np.nan)
        self.checkpoint = np.zeros(n, dtype=np.int64)
        self.driven = np.zeros(n)
        self.contacts = np.zeros(n, dtype=np.int64)
        self.controls = np.zeros((n, 3))
        self.reset()

    # -- state ---------------------------------------------------------------------------
    @cached_property
    def _start(self) -> tuple[float, float, float, int]:
        t = self.track
        xy = t.start_xy
        idx = int(np.argmin(np.abs(t.s - t.start_s)))
        return float(xy[0]), float(xy[1]), t.heading_at(t.start_s), idx

    def reset(self, mask: NDArray[np.bool_] | None = None) -> None:
        """Put the cars selected by ``mask`` (all by default) at the start, at rest."""
        sel: Any = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        x0, y0, h0, i0 = self._start
        self.x[sel] = x0
        self.y[sel] = y0
        self.psi[sel] = h0
        for a in (self.vx, self.vy, self.yaw, self.lat, self.race_time, self.driven):
            a[sel] = 0.0
        self.gear[sel] = 0
        self.rpm[sel] = IDLE_RPM
        self.idx[sel] = i0
        self.s[sel] = self.track.start_s
        self.finished[sel] = False
        self.finish_time[sel] = np.nan
        self.checkpoint[sel] = 0
        self.contacts[sel] = 0
        self.controls[sel] = 0.0

    def step(self, controls: NDArray[np.floating[Any]], n_substeps: int) -> None:
        """Apply ``controls`` (N, 3) = [gas, brake, steer] for ``n_substeps`` physics substeps.

        gas and brake act above 0 (0…1), steer is −1 (full left) … +1 (full right). Values are
        clipped; NaN must be rejected by the caller.
        """
        if n_substeps <= 0:
            return
        c = np.ascontiguousarray(controls, dtype=np.float64).reshape(self.num_cars, 3)
        self.step_split(c, 0, c, n_substeps)

    def step_split(
        self, first: NDArray[np.float64], n_first: int, second: NDArray[np.float64], n_second: int
    ) -> None:
        """``n_first`` substeps under ``first`` then ``n_second`` under ``second``, in one call.

        Both control arrays must be float64 (N, 3) and C-contiguous; ``controls`` ends as
        ``second``. This is the environment's hot path (the end of one time step and the start
        of the next).
        """
        t = self.track
        advance_split(
            int(n_first),
            first,
            int(n_second),
            second,
            self.physics_dt,
            self._p,
            self.x,
            self.y,
            self.psi,
            self.vx,
            self.vy,
            self.yaw,
            self.gear,
            self.rpm,
            self.idx,
            self.s,
            self.lat,
            self.race_time,
            self.finished,
            self.finish_time,
            self.checkpoint,
            self.driven,
            self.contacts,
            t.centerline,
            t.tangents,
            t.normals,
            t.s,
            t.widths,
            float(t.finish_s),
            t.checkpoints_s,
        )
        self.controls[:] = second

    # -- readings ------------------------------------------------------------------------
    @property
    def speed(self) -> NDArray[np.float64]:
        """Signed forward speed, m/s (negative when reversing)."""
        return self.vx * np.cos(self.psi) + self.vy * np.sin(self.psi)

    @property
    def speed_kmh(self) -> NDArray[np.float64]:
        return self.speed * 3.6

    @property
    def positions(self) -> NDArray[np.float64]:
        """(N, 2) positions in metres."""
        return np.stack([self.x, self.y], axis=1)

    @property
    def progress(self) -> NDArray[np.float64]:
        """Fraction of the race distance covered along the centre line (0 at start, 1 at finish)."""
        t = self.track
        return np.clip((self.s - t.start_s) / (t.finish_s - t.start_s), 0.0, 1.0)

    def telemetry_record(
        self, i: int = 0, *, controls: NDArray[np.float64] | None = None, version: int = 2
    ) -> TelemetryRecord:
        """Car ``i``'s state as the game's telemetry plugin reports it (game axes: x and z
        horizontal, y up; the flat track is at y = 0, the simulator's y is the game's z).

        ``controls`` are the inputs to report (default: those of the last physics step). The
        race time stops at the finish, like the game's chronometer.
        """
        c = self.controls[i] if controls is None else controls
        return TelemetryRecord(
            speed_kmh=float(self.speed_kmh[i]),
            distance=float(self.driven[i]),
            x=float(self.x[i]),
            y=0.0,
            z=float(self.y[i]),
            steer=float(c[2]),
            gas=float(min(max(c[0], 0.0), 1.0)),
            brake=1.0 if c[1] > 0 else 0.0,
            finished=bool(self.finished[i]),
            gear=int(self.gear[i]),
            rpm=float(self.rpm[i]),
            race_time=float(self.finish_time[i] if self.finished[i] else self.race_time[i]),
            checkpoint=int(self.checkpoint[i]),
            vx=float(self.vx[i]),
            vy=0.0,
            vz=float(self.vy[i]),
            yaw=float(self.psi[i]),
            pitch=0.0,
            roll=0.0,
            version=version,
        )

    def render_gray(
        self, width: int = 64, height: int = 64, out: NDArray[np.uint8] | None = None
    ) -> NDArray[np.uint8]:
        """Grayscale driver's views (N, height, width) uint8 — the agent's fast path."""
        return render_gray(self.raster, self.x, self.y, self.psi, width, height, self.camera, out)

    def render_rgb(
        self,
        width: int = WINDOW_WIDTH,
        height: int = WINDOW_HEIGHT,
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """Colour driver's views (N, height, width, 3) uint8 — the game window."""
        return render_rgb(self.raster, self.x, self.y, self.psi, width, height, self.camera, out)

    def lidar(
        self, out: NDArray[np.float32] | None = None, max_range: float = LIDAR_RANGE
    ) -> NDArray[np.float32]:
        """LIDAR scans (N, 19) in metres, beam 0 left … beam 18 right."""
        return lidar(self.raster, self.x, self.y, self.psi, out, max_range)

    def substeps(self, seconds: float) -> int:
        """Number of physics substeps in ``seconds`` (must be a whole number of substeps)."""
        n = seconds / self.physics_dt
        k = round(n)
        if not math.isclose(n, k, abs_tol=1e-6):
            raise ValueError(
                f"{seconds} s is not a whole number of {self.physics_dt} s physics "
                "substeps; choose durations that are multiples of physics_dt"
            )
        return int(k)
