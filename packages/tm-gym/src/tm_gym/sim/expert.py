"""A scripted expert driver with privileged knowledge of the track.

Steering is pure pursuit on the centre line (the look-ahead point moves further out with speed,
which cuts corners a little); speed follows a plan computed once per track from the curvature
(at most ``lateral_margin`` of the tyres' grip in turns) and a backward pass that starts braking
early enough for every turn ahead. It proves that a track is drivable, gives each track its
reference lap time, and produces demonstrations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.typing import NDArray

from tm_gym.core.geometry import WINDOW_HEIGHT, WINDOW_WIDTH
from tm_gym.sim.physics import CarParams
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.track import SAMPLE_SPACING, Track
from tm_gym.sim.tracks import load_track

__all__ = ["ExpertDriver", "ExpertLap", "run_expert"]


def speed_plan(
    track: Track, params: CarParams, lateral_margin: float = 0.82, brake_margin: float = 0.7
) -> NDArray[np.float64]:
    """Target speed (m/s) at every centre-line sample."""
    k = np.abs(track.curvature)
    # look at the sharpest curvature within ±6 m so the plan covers the whole turn
    win = int(6.0 / SAMPLE_SPACING)
    kpad = np.pad(k, win, mode="edge")
    kmax = np.lib.stride_tricks.sliding_window_view(kpad, 2 * win + 1).max(axis=1)
    v = np.sqrt(lateral_margin * params.grip / np.maximum(kmax, 1e-6))
    v = np.minimum(v, 130.0)
    a_b = brake_margin * params.brake_decel
    ds = SAMPLE_SPACING
    for i in range(len(v) - 2, -1, -1):
        v[i] = min(v[i], math.sqrt(v[i + 1] ** 2 + 2 * a_b * ds))
    return v


@njit(cache=True)
def _expert_controls(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    psi: NDArray[np.float64],
    speed: NDArray[np.float64],
    idx: NDArray[np.int64],
    cl: NDArray[np.float64],
    plan: NDArray[np.float64],
    wheelbase: float,
    lock_deg: float,
    speed_ref: float,
    spacing: float,
    out: NDArray[np.float64],
) -> None:
    m = cl.shape[0]
    for i in range(x.shape[0]):
        v = speed[i]
        look = 7.0 + 0.45 * max(v, 0.0)
        j = min(idx[i] + int(look / spacing), m - 1)
        dx = cl[j, 0] - x[i]
        dy = cl[j, 1] - y[i]
        c, s = math.cos(psi[i]), math.sin(psi[i])
        ahead = dx * c + dy * s
        left = -dx * s + dy * c
        ld2 = max(ahead * ahead + left * left, 1.0)
        curv = 2.0 * left / ld2
        lock = math.radians(lock_deg) / (1.0 + abs(v) / speed_ref)
        delta = math.atan(curv * wheelbase)
        steer = -delta / lock
        out[i, 2] = min(max(steer, -1.0), 1.0)
        # speed: the lowest plan value over the next stretch the car covers in 0.25 s
        j1 = min(idx[i] + int((2.0 + 0.25 * max(v, 0.0)) / spacing), m - 1)
        target = plan[idx[i]]
        for k in range(idx[i], j1 + 1):
            target = min(target, plan[k])
        err = target - v
        if err > 0.0:
            out[i, 0] = min(1.0, 0.3 + err)
            out[i, 1] = 0.0
        elif err > -1.5:
            out[i, 0] = 0.0
            out[i, 1] = 0.0
        else:
            out[i, 0] = 0.0
            out[i, 1] = min(1.0, -err / 4.0)


class ExpertDriver:
    """Computes the expert's controls for every car of a :class:`Simulator`."""

    def __init__(self, track: Track, params: CarParams | None = None) -> None:
        self.track = track
        self.params = params or CarParams()
        self.plan = speed_plan(track, self.params)

    def act(self, sim: Simulator) -> NDArray[np.float64]:
        """Controls (N, 3) = [gas, brake, steer] for the current state of ``sim``."""
        out = np.zeros((sim.num_cars, 3))
        p = self.params
        _expert_controls(
            sim.x,
            sim.y,
            sim.psi,
            sim.speed,
            sim.idx,
            self.track.centerline,
            self.plan,
            p.wheelbase,
            p.steer_lock_deg,
            p.steer_speed_ref,
            SAMPLE_SPACING,
            out,
        )
        return out


@dataclass(frozen=True, eq=False)
class ExpertLap:
    """One lap of the expert, sampled every ``time_step`` seconds."""

    track_name: str
    finished: bool
    lap_time: float | None
    times: NDArray[np.float64]
    positions: NDArray[np.float64]
    speeds_kmh: NDArray[np.float64]
    actions: NDArray[np.float64]
    wall_contacts: int
    frames: NDArray[np.uint8] | None


def run_expert(
    track: Track | str,
    *,
    record_frames: bool = True,
    max_time: float = 300.0,
    time_step: float = 0.05,
) -> ExpertLap:
    """Drive one lap with the expert; decisions every ``time_step`` seconds (20 Hz).

    The lap time is the simulator's race time at the finish line (interpolated within the
    10 ms physics substep and rounded to the millisecond, as the game reports it).
    """
    trk = load_track(track)
    sim = Simulator(trk, 1)
    expert = ExpertDriver(trk, sim.params)
    n_sub = sim.substeps(time_step)
    times, pos, spd, acts = [0.0], [sim.positions[0].copy()], [0.0], []
    frames = [sim.render_rgb(WINDOW_WIDTH, WINDOW_HEIGHT)[0]] if record_frames else []
    t = 0.0
    while t < max_time and not sim.finished[0]:
        a = expert.act(sim)
        sim.step(a, n_sub)
        t += time_step
        acts.append(a[0].copy())
        times.append(t)
        pos.append(sim.positions[0].copy())
        spd.append(float(sim.speed_kmh[0]))
        if record_frames:
            frames.append(sim.render_rgb(WINDOW_WIDTH, WINDOW_HEIGHT)[0])
    finished = bool(sim.finished[0])
    lap = round(float(sim.finish_time[0]), 3) if finished else None
    return ExpertLap(
        track_name=trk.name,
        finished=finished,
        lap_time=lap,
        times=np.asarray(times),
        positions=np.asarray(pos),
        speeds_kmh=np.asarray(spd),
        actions=np.asarray(acts).reshape(-1, 3),
        wall_contacts=int(sim.contacts[0]),
        frames=np.asarray(frames, dtype=np.uint8) if record_frames else None,
    )
