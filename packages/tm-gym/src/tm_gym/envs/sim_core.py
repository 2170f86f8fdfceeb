"""rtgym's real-time semantics, run synchronously on N simulated cars at once.

How rtgym times a step (and therefore what the game does), for step duration ``d`` and capture
delay ``c``:

* ``reset()`` respawns, returns the first observation, then starts a time step that applies the
  default action; the observation of that time step is captured ``c`` after it starts.
* ``step(a)`` waits for the running time step to end, appends ``a`` to the action buffer, returns
  the observation captured during the time step that just ended (with the buffer), and — unless
  the episode is over — starts a new time step that applies ``a`` from its first instant.
  So the very last action of an episode is never applied.

The simulator reproduces that order exactly, only without waiting: each ``step`` runs the
``d − c`` tail of the previous time step under the previous action, then ``c`` of the new time
step under ``a``, and captures the next observation. Everything is batched over cars so the
single environment and the vector environment share this code.

Respawning also draws what varies from one episode to the next, with the environment's seeded
random generator (:attr:`SimCore.rng`): each car's look when ``visuals`` has ranges
(:class:`~tm_gym.core.visuals.VisualsSpec`), then the start perturbation when ``start_jitter``
is above 0 (:data:`START_JITTER_LATERAL_M`, :data:`START_JITTER_HEADING_DEG`,
:data:`START_JITTER_SPEED_KMH` at 1.0). Nothing is drawn otherwise, so the defaults reproduce
the standard start and look exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.config import Rule
from tm_gym.core.geometry import LIDAR_BEAMS
from tm_gym.core.info import batch_info
from tm_gym.core.settings import EnvSettings
from tm_gym.core.visuals import VisualsSpec
from tm_gym.reward import ProgressReward, ReferenceTrajectory, RewardConfig
from tm_gym.sim.expert import ExpertDriver
from tm_gym.sim.lidar import lidar
from tm_gym.sim.physics import CarParams
from tm_gym.sim.simulator import PHYSICS_DT, Simulator
from tm_gym.sim.track import Track
from tm_gym.sim.tracks import load_track

__all__ = [
    "MAX_START_JITTER",
    "START_JITTER_HEADING_DEG",
    "START_JITTER_LATERAL_M",
    "START_JITTER_SPEED_KMH",
    "SimCore",
    "check_start_jitter",
    "default_reference",
]

START_JITTER_LATERAL_M = 0.5
"""At ``start_jitter=1``: the car starts up to this many metres left or right of the centre line."""
START_JITTER_HEADING_DEG = 2.0
"""At ``start_jitter=1``: its heading is up to this many degrees off the track's direction."""
START_JITTER_SPEED_KMH = 3.0
"""At ``start_jitter=1``: it starts rolling forward at up to this speed."""
MAX_START_JITTER = 3.0
"""The largest ``start_jitter`` accepted."""
_START_JITTER_RULE = Rule(
    "float", low=0.0, high=MAX_START_JITTER, hint="0 = the exact standard start, 1 = the default"
)


def check_start_jitter(value: object) -> float:
    """``value`` as a float if it is a valid ``start_jitter``.

    Raises:
        ConfigError: naming the value and the allowed range.
    """
    return float(_START_JITTER_RULE.check(value, "start_jitter"))


Obs = dict[str, NDArray[Any]]


def default_reference(track: Track) -> ReferenceTrajectory:
    """The track's centre line from the start to 5 m past the finish, every 0.1 m."""
    s = np.arange(track.start_s, min(track.finish_s + 5.0, track.total_length), 0.1)
    return ReferenceTrajectory.from_polyline(track.point_at(s))


class SimCore:
    """N simulated cars behind rtgym's timing, producing batched observations."""

    def __init__(
        self,
        num_envs: int,
        settings: EnvSettings,
        track: str | Track,
        reward_trajectory: str | None = None,
        reward_config: RewardConfig | None = None,
        car_params: CarParams | None = None,
        physics_dt: float = PHYSICS_DT,
        visuals: VisualsSpec | None = None,
        start_jitter: float = 0.0,
    ) -> None:
        self.n = num_envs
        self.settings = s = settings
        self.track = load_track(track)
        self.visuals = VisualsSpec() if visuals is None else visuals
        self.start_jitter = check_start_jitter(start_jitter)
        self.rng = np.random.default_rng()
        """Draws looks and start perturbations; the environments set their seeded generator."""
        self.sim = Simulator(
            self.track,
            num_envs,
            params=car_params,
            physics_dt=physics_dt,
            visuals=self.visuals.base,
        )
        self.n_obs = self.sim.substeps(s.start_obs_capture)
        self.n_tail = self.sim.substeps(s.time_step_duration) - self.n_obs
        ref = (
            ReferenceTrajectory.load(reward_trajectory)
            if reward_trajectory
            else default_reference(self.track)
        )
        if ref.points.shape[1] == 3:  # game convention (x, y up, z) -> ground plane (x, z)
            ref = ReferenceTrajectory(np.ascontiguousarray(ref.points[:, [0, 2]]))
        self.reward = ProgressReward(ref, num_envs, reward_config)
        self._expert: ExpertDriver | None = None
        n = num_envs
        self.applied = np.zeros((n, 3))
        self.act_buf = np.zeros((n, s.act_buf_len, 3), dtype=np.float32)
        self.steps = np.zeros(n, dtype=np.int64)
        if s.obs_type == "images":
            self.frames = np.zeros((n, s.image_channels, s.img_size, s.img_size), np.uint8)
        else:
            self.scans = np.zeros((n, s.img_hist_len, LIDAR_BEAMS), np.float32)
        self.pend_reward = np.zeros(n)
        self.pend_term = np.zeros(n, dtype=bool)
        self.pend_failed = np.zeros(n, dtype=bool)
        self._next = np.zeros((n, 3))
        self._pos = np.zeros((n, 2))
        self.with_infos = True

    # -- capture -------------------------------------------------------------------------
    def _render(self, sel: NDArray[np.intp] | None) -> NDArray[np.uint8]:
        """Frames (n, channels, H, W) of all cars or of those in ``sel``."""
        s, sim = self.settings, self.sim
        cars = None if sel is None else sel.astype(np.int64)
        if s.grayscale:
            return sim.render_gray(s.img_size, s.img_size, cars=cars)[:, None]
        return sim.render_rgb(s.img_size, s.img_size, cars=cars).transpose(0, 3, 1, 2)

    def _capture_all(self) -> None:
        """Push a new capture into every car's history."""
        if self.settings.obs_type == "images":
            new = self._render(None)
            k = new.shape[1]
            self.frames[:, :-k] = self.frames[:, k:]
            self.frames[:, -k:] = new
        else:
            self.scans[:, :-1] = self.scans[:, 1:]
            self.scans[:, -1] = self.sim.lidar()

    def _capture_fresh(self, fresh: NDArray[np.intp]) -> None:
        """Fill the history of just-reset cars with copies of their first capture."""
        s = self.settings
        if s.obs_type == "images":
            self.frames[fresh] = np.tile(self._render(fresh), (1, s.img_hist_len, 1, 1))
        else:
            sim = self.sim
            scan = lidar(sim.raster, sim.x[fresh], sim.y[fresh], sim.psi[fresh])
            self.scans[fresh] = scan[:, None, :]

    # -- observation assembly ----------------------------------------------------------------
    def observe(self, idx: NDArray[np.intp] | None = None) -> Obs:
        """Copies of the current observations (all cars, or those in ``idx``)."""
        sim, s = self.sim, self.settings
        sel: Any = slice(None) if idx is None else idx
        obs: Obs = {"speed": sim.speed_kmh[sel].astype(np.float32)[:, None]}
        if s.obs_type == "images":
            obs["gear"] = sim.gear[sel].astype(np.float32)[:, None]
            obs["rpm"] = sim.rpm[sel].astype(np.float32)[:, None]
            obs["images"] = self.frames[sel].copy()
        else:
            obs["lidar"] = self.scans[sel].copy()
            if s.obs_type == "lidar_progress":
                obs["progress"] = self.reward.progress[sel].astype(np.float32)[:, None]
        obs["actions"] = self.act_buf[sel].copy()
        return obs

    def infos(self, idx: NDArray[np.intp] | None = None) -> dict[str, NDArray[Any]]:
        """Per-car info arrays describing the last capture (all cars or those in ``idx``)."""
        sim = self.sim
        sel: Any = slice(None) if idx is None else idx
        fin = sim.finished[sel]
        return batch_info(
            race_time=sim.race_time[sel],
            progress=self.reward.progress[sel],
            checkpoint=sim.checkpoint[sel].copy(),
            checkpoints_total=len(self.track.checkpoints_s),
            finished=fin.copy(),
            finish_time=sim.finish_time[sel],
            position=np.stack([sim.x[sel], np.zeros(len(fin)), sim.y[sel]], axis=1),
            speed_kmh=sim.speed_kmh[sel],
            gear=sim.gear[sel].copy(),
            rpm=sim.rpm[sel].copy(),
            wall_contacts=sim.contacts[sel].copy(),
            failed=self.pend_failed[sel].copy(),
        )

    # -- transitions -----------------------------------------------------------------------
    def reset(
        self, mask: NDArray[np.bool_], on_respawn: Callable[[], None] | None = None
    ) -> tuple[Obs, dict[str, NDArray[Any]]]:
        """Respawn the cars in ``mask``; returns their first observations and infos.

        The other cars do not move: their state, history and reward bookkeeping are exactly as
        before the call. ``on_respawn`` is called once the cars stand at their (possibly
        perturbed) start with their new look, before anything is captured (the single
        environment records that state).
        """
        if mask.all():
            return self._begin(None, np.zeros(self.n, dtype=bool), mask, on_respawn)
        # The respawn runs as within a step (every car of the running time step advances), then
        # each per-car array of the cars that were not reset is put back as it was.
        # (by attribute name: a step may bind an attribute to a new array).
        kept = np.flatnonzero(~mask)
        saved = [(owner, name, arr[kept].copy()) for owner, name, arr in self._per_car_state()]
        out = self._begin(None, np.zeros(self.n, dtype=bool), mask, on_respawn)
        for owner, name, values in saved:
            getattr(owner, name)[kept] = values
        return out

    def _per_car_state(self) -> list[tuple[object, str, NDArray[Any]]]:
        """Every array of the core, its simulator and its reward that holds one row per car."""
        return [
            (owner, name, arr)
            for owner in (self, self.sim, self.reward)
            for name, arr in vars(owner).items()
            if isinstance(arr, np.ndarray) and arr.ndim >= 1 and arr.shape[0] == self.n
        ]

    def step(
        self, actions: NDArray[np.float32], reset: NDArray[np.bool_] | None = None
    ) -> tuple[
        Obs,
        NDArray[np.float64],
        NDArray[np.bool_],
        NDArray[np.bool_],
        dict[str, NDArray[Any]] | None,
    ]:
        """One step for every car; cars in ``reset`` are respawned instead (their action is
        ignored, their entries are reset observations with zero reward, not done).

        Returns (obs, reward, terminated, truncated, infos); infos is None when
        ``with_infos`` is False on the core (the single env builds its own).
        """
        any_reset = reset is not None and bool(reset.any())
        ab = self.act_buf
        if any_reset:
            assert reset is not None
            run = ~reset
            ab[run, :-1] = ab[run, 1:]
            ab[run, -1] = actions[run]
            self.steps[run] += 1
        else:
            run = None
            ab[:, :-1] = ab[:, 1:]
            ab[:, -1] = actions
            self.steps += 1
        obs = self.observe()
        info = self.infos() if self.with_infos else None
        if run is not None:
            rew = np.where(run, self.pend_reward, 0.0)
            term = run & self.pend_term
        else:
            rew = self.pend_reward.copy()
            term = self.pend_term.copy()
        trunc = ~term & (self.steps >= self.settings.ep_max_length)
        if run is not None:
            trunc &= run
        done = term | trunc
        if any_reset:
            assert reset is not None and run is not None
            r_obs, r_info = self._begin(actions, run & ~done, reset)
            fresh = np.flatnonzero(reset)
            for k, v in r_obs.items():
                obs[k][fresh] = v
            if info is not None:
                for k, v in r_info.items():
                    info[k][fresh] = v
        elif not done.any():
            # hot path: the tail of the running step, then the new step, in one kernel call
            np.copyto(self._next, actions)
            self.sim.step_split(self.applied, self.n_tail, self._next, self.n_obs)
            self.applied, self._next = self._next, self.applied
            self._finish_capture()
        elif not done.all():
            self._begin(actions, ~done, np.zeros(self.n, dtype=bool))
        return obs, rew, term, trunc, info

    def _begin(
        self,
        actions: NDArray[np.float32] | None,
        advance: NDArray[np.bool_],
        reset: NDArray[np.bool_],
        on_respawn: Callable[[], None] | None = None,
    ) -> tuple[Obs, dict[str, NDArray[Any]]]:
        """Finish the running time step, respawn ``reset`` cars, start the next time step.

        Cars in ``advance`` apply their row of ``actions``, reset cars the default action; the
        others are finished episodes waiting for a reset, and what they do is discarded.
        """
        sim = self.sim
        if not reset.all():
            sim.step(self.applied, self.n_tail)
        fresh = np.flatnonzero(reset)
        r_obs: Obs = {}
        r_info: dict[str, NDArray[Any]] = {}
        if len(fresh):
            self._respawn(reset, fresh)
            if on_respawn is not None:
                on_respawn()
            self.act_buf[fresh] = 0.0
            self.steps[fresh] = 0
            self.pend_failed[fresh] = False
            self._update_pos()
            self.reward.reset(self._pos, reset)
            self._capture_fresh(fresh)
            r_obs = self.observe(fresh)
            r_info = self.infos(fresh)
        if actions is not None:
            self.applied[advance] = actions[advance]
        self.applied[reset] = 0.0
        sim.step(self.applied, self.n_obs)
        self._finish_capture()
        return r_obs, r_info

    def _respawn(self, reset: NDArray[np.bool_], fresh: NDArray[np.intp]) -> None:
        """Draw the new looks and start offsets of the cars in ``fresh`` and respawn them."""
        sim, rng = self.sim, self.rng
        if self.visuals.random:
            sim.set_visuals([self.visuals.draw(rng) for _ in fresh], fresh)
        j = self.start_jitter
        if j <= 0.0:
            sim.reset(reset)
            return
        k = len(fresh)
        u = rng.uniform(-1.0, 1.0, size=(k, 2))
        v = rng.uniform(0.0, 1.0, size=k)
        sim.reset(
            reset,
            lateral_m=j * START_JITTER_LATERAL_M * u[:, 0],
            heading_rad=math.radians(j * START_JITTER_HEADING_DEG) * u[:, 1],
            speed_ms=j * START_JITTER_SPEED_KMH / 3.6 * v,
        )

    def _update_pos(self) -> None:
        self._pos[:, 0] = self.sim.x
        self._pos[:, 1] = self.sim.y

    def _finish_capture(self) -> None:
        """Capture the new observation and score it."""
        self._capture_all()
        self._update_pos()
        r, term = self.reward.update(self._pos, self.sim.finished)
        self.pend_reward = r
        self.pend_failed = term & ~self.sim.finished
        self.pend_term = term

    def expert_actions(self) -> NDArray[np.float32]:
        """The scripted expert's actions (N, 3) for the current state of every car."""
        if self._expert is None:
            self._expert = ExpertDriver(self.track, self.sim.params)
        return self._expert.act(self.sim).astype(np.float32)
