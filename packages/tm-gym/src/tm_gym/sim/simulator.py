"""The batched simulator: N cars on one track, stepped together by compiled kernels.

:class:`Simulator` owns the car state as flat arrays (one entry per car) and exposes the three
things the environment needs: advancing physics, rendering the camera, and scanning the LIDAR.
Cars do not collide with each other (like ghosts in a TrackMania time attack). Each car has its
own look (:class:`~tm_gym.core.visuals.Visuals`, :meth:`Simulator.set_visuals`) and may start
off the standard start pose (:meth:`Simulator.reset`'s offsets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.geometry import LIDAR_RANGE, WINDOW_HEIGHT, WINDOW_WIDTH, CameraSpec
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.core.visuals import Visuals
from tm_gym.sim.camera import CarViews, render_gray, render_rgb
from tm_gym.sim.lidar import lidar
from tm_gym.sim.physics import IDLE_RPM, CarParams, advance_split, gear_and_rpm
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
        camera: chase-camera placement; each car's look sets its height, pitch and field of
            view (the rest is kept).
        visuals: every car's look (default: the standard look, with ``camera``'s height, pitch
            and field of view when ``camera`` is given); change it with :meth:`set_visuals`.
    """

    def __init__(
        self,
        track: Track | str,
        num_cars: int = 1,
        *,
        params: CarParams | None = None,
        physics_dt: float = PHYSICS_DT,
        camera: CameraSpec | None = None,
        visuals: Visuals | None = None,
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
        if visuals is None:
            visuals = Visuals(
                camera_height_m=self.camera.height,
                camera_pitch_deg=self.camera.pitch_deg,
                fov_deg=self.camera.hfov_deg,
            )
        self._visuals: list[Visuals] = [visuals] * num_cars
        self._views: dict[tuple[int, int], CarViews] = {}
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

    def reset(
        self,
        mask: NDArray[np.bool_] | None = None,
        *,
        lateral_m: NDArray[np.float64] | None = None,
        heading_rad: NDArray[np.float64] | None = None,
        speed_ms: NDArray[np.float64] | None = None,
    ) -> None:
        """Put the cars selected by ``mask`` (all by default) at the start, at rest.

        The optional offsets, one per selected car (in car order), move them off the standard
        start pose: ``lateral_m`` metres to the left of the centre line (negative: right),
        ``heading_rad`` radians counter-clockwise from the track's direction, rolling forward
        at ``speed_ms`` m/s (in the gear the gearbox picks at that speed, without throttle).
        """
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
        if lateral_m is not None or heading_rad is not None or speed_ms is not None:
            self._offset_start(sel, lateral_m, heading_rad, speed_ms)

    def _offset_start(
        self,
        sel: Any,
        lateral_m: NDArray[np.float64] | None,
        heading_rad: NDArray[np.float64] | None,
        speed_ms: NDArray[np.float64] | None,
    ) -> None:
        cars = np.arange(self.num_cars)[sel]
        k = len(cars)
        zeros = np.zeros(k)
        lat = zeros if lateral_m is None else np.asarray(lateral_m, dtype=np.float64)
        dpsi = zeros if heading_rad is None else np.asarray(heading_rad, dtype=np.float64)
        v = zeros if speed_ms is None else np.asarray(speed_ms, dtype=np.float64)
        for name, arr in (("lateral_m", lat), ("heading_rad", dpsi), ("speed_ms", v)):
            if arr.shape != (k,) or not np.isfinite(arr).all():
                raise ValueError(f"{name}: expected {k} finite values, one per car reset")
        nrm = self.track.normals[self._start[3]]
        self.x[cars] += lat * nrm[0]
        self.y[cars] += lat * nrm[1]
        self.lat[cars] = lat
        self.psi[cars] += dpsi
        self.vx[cars] = v * np.cos(self.psi[cars])
        self.vy[cars] = v * np.sin(self.psi[cars])
        for i, speed in zip(cars, v, strict=True):
            self.gear[i], self.rpm[i] = gear_and_rpm(float(speed) * 3.6, self.params)

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

    # -- looks and cameras -----------------------------------------------------------------
    @property
    def visuals(self) -> tuple[Visuals, ...]:
        """Each car's current look."""
        return tuple(self._visuals)

    def set_visuals(
        self, visuals: Visuals | Sequence[Visuals], cars: Sequence[int] | NDArray[Any] | None = None
    ) -> None:
        """Give the cars ``cars`` (default: all) the look ``visuals`` (one for all, or one per
        car listed)."""
        which = list(range(self.num_cars)) if cars is None else [int(i) for i in cars]
        looks = [visuals] * len(which) if isinstance(visuals, Visuals) else list(visuals)
        if len(looks) != len(which):
            raise ValueError(f"{len(looks)} looks for {len(which)} cars")
        for i, look in zip(which, looks, strict=True):
            self._visuals[i] = look
        for views in self._views.values():
            views.update(which, looks)

    def camera_of(self, car: int = 0) -> CameraSpec:
        """The camera car ``car`` is seen through: :attr:`camera` with its look's height,
        pitch and field of view (what the pixel LIDAR must assume for its frames)."""
        return self._visuals[car].camera(self.camera)

    def views(self, width: int, height: int) -> CarViews:
        """The cars' ray tables, skies and palettes at ``width`` × ``height`` (kept up to date)."""
        views = self._views.get((width, height))
        if views is None:
            views = CarViews(width, height, self._visuals, self.camera)
            self._views[(width, height)] = views
        return views

    def render_gray(
        self,
        width: int = 64,
        height: int = 64,
        out: NDArray[np.uint8] | None = None,
        cars: NDArray[np.int64] | None = None,
    ) -> NDArray[np.uint8]:
        """Grayscale driver's views (K, height, width) uint8 of ``cars`` (default: all N) — the
        agent's fast path."""
        views = self.views(width, height)
        return render_gray(self.raster, self.x, self.y, self.psi, views, cars, out)

    def render_rgb(
        self,
        width: int = WINDOW_WIDTH,
        height: int = WINDOW_HEIGHT,
        out: NDArray[np.uint8] | None = None,
        cars: NDArray[np.int64] | None = None,
    ) -> NDArray[np.uint8]:
        """Colour driver's views (K, height, width, 3) uint8 of ``cars`` (default: all N) — the
        game window."""
        views = self.views(width, height)
        return render_rgb(self.raster, self.x, self.y, self.psi, views, cars, out)

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
