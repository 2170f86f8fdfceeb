"""The ``TrackMania-v0`` / ``TrackMania-Sim-v0`` Gymnasium environment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from tm_gym.core.actions import action_space, check_actions
from tm_gym.core.capture import Capture
from tm_gym.core.info import NO_LAP, step_info
from tm_gym.core.settings import EnvSettings, observation_space
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.core.visuals import Visuals, VisualsSpec
from tm_gym.envs.sim_core import SimCore
from tm_gym.error import BackendUnavailableError, EnvStateError
from tm_gym.reward import RewardConfig
from tm_gym.sim.physics import CarParams
from tm_gym.sim.track import Track

__all__ = ["TrackManiaEnv"]

_CaptureState = tuple[TelemetryRecord, NDArray[np.float64], NDArray[np.uint8] | None]
"""What a capture for recordings is built from: telemetry, position, the full window (or None)."""


class TrackManiaEnv(gym.Env[dict[str, NDArray[Any]], NDArray[np.float32]]):
    """TrackMania 2020 as a Gymnasium environment (built-in simulator or the live game).

    A car races from the start line to the finish of a track. Observations, actions, timing and
    reward are those of TMRL's TrackMania environments, with Dict observations that
    Stable-Baselines3 accepts.

    ## Action Space
    ``Box(-1, 1, (3,), float32)`` = ``[gas, brake, steer]``. Gas and brake act above 0 (analog,
    0…1); steer is −1 full left … +1 full right. Values outside [-1, 1] are clipped; NaN or inf
    raises :class:`~tm_gym.error.InvalidActionError`. The default action (applied at reset) is
    zeros.

    ## Observation Space
    A ``Dict``; ``H`` = ``img_hist_len``, ``S`` = ``img_size``, ``A`` = ``act_buf_len``:

    ================  ===================  ===========================================  =======
    key               shape / dtype         meaning                                      obs_type
    ================  ===================  ===========================================  =======
    ``speed``         (1,) float32          forward speed, km/h (negative in reverse)   all
    ``gear``          (1,) float32          gear, 0 = neutral, 1–5                       images
    ``rpm``           (1,) float32          engine rpm (1,000–11,000)                    images
    ``images``        (H, S, S) uint8       last H grayscale frames, oldest first;       images
                                            (3H, S, S) RGB if ``grayscale=False``
    ``lidar``         (H, 19) float32       last H LIDAR scans, metres to the borders,   lidar*
                                            beams from 90° left to 90° right
    ``progress``      (1,) float32          fraction of the reference covered            lidar_progress
    ``actions``       (A, 3) float32        last A actions sent, oldest first            all
    ================  ===================  ===========================================  =======

    ## Rewards
    Progress along a reference trajectory (the track's centre line unless
    ``reward_trajectory`` is given): 1.0 per 10 m of *new* ground (driving back and forth earns
    nothing), plus ``finish_bonus`` (100) when crossing the finish line.

    ## Episode End
    Terminated at the finish, or when the car makes no new progress for more than 10 steps in a
    row after the first 70 (``info["failed"]``). Truncated after ``ep_max_length`` steps.

    ## Timing
    rtgym's real-time semantics: the action of step t is applied from the start of step t, the
    observation is captured ``start_obs_capture`` s into the step, a step lasts
    ``time_step_duration`` s, the observation returned by ``step`` is the one captured during
    the step that just ended, the very last action of an episode is never applied, and reset
    applies the default action. The simulator runs this synchronously, as fast as it can.

    ## Info
    ``race_time`` (s), ``progress`` (0…1), ``checkpoint`` (checkpoints crossed) and
    ``checkpoints_total``, ``finished``, ``lap_time`` (s, +inf until finished), ``position``
    (x, y, z in metres, y up as in the game), ``speed_kmh``, ``gear``, ``rpm``,
    ``wall_contacts`` (substeps spent touching a wall), ``failed``.

    ## Arguments
    * ``backend``: this class is the synchronous simulator (``"sim"``). ``gymnasium.make``
      routes ``"game"`` (the live game, ``TrackMania-v0``'s default), ``"sim"`` with
      ``realtime=True``, and ``"replay"`` (``recording=PATH``, ``mode="mock"|"realtime"``) to
      the real-time and replay environments with the same spaces, reward and info: see
      :mod:`tm_gym.backends.factory` for their extra arguments.
    * ``obs_type``: ``"images"``, ``"lidar"`` or ``"lidar_progress"``.
    * ``track``: built-in track name, ``"gen:SEED"`` (procedural) or path to a track JSON
      file (simulator).
    * ``img_size`` (64), ``img_hist_len`` (4), ``grayscale`` (True), ``act_buf_len`` (2),
      ``time_step_duration`` (0.05), ``start_obs_capture`` (0.04), ``ep_max_length`` (1000).
    * ``reward_trajectory``: path to a ``.npz``/``.json`` reference (see :mod:`tm_gym.reward`).
    * ``reward_config``: :class:`~tm_gym.reward.RewardConfig`; ``car_params``:
      :class:`~tm_gym.sim.physics.CarParams` (simulator only).
    * ``visuals`` (simulator only): how the world looks in the image observations and the
      ``rgb_array`` window (the LIDAR is unaffected). ``None`` (default) or ``{}``: the
      standard look, bit for bit. A mapping of :class:`~tm_gym.core.visuals.Visuals` keys
      fixes values, the others keep the standard ones: ``sky``, ``grass``, ``road``,
      ``border_dark``, ``border_light`` (RGB triples 0–255; ``sky`` is the top of the sky,
      ``sky_horizon`` its colour at the horizon), ``brightness`` (factor on every colour, 1.0 =
      standard, in (0, 4]), ``camera_height_m`` (2.6, in [0.5, 30]), ``camera_pitch_deg`` (9,
      degrees below the horizon, in [-30, 89]), ``fov_deg`` (90, horizontal, in (10, 170)).
      ``"random"``: a new look at every reset, drawn with the environment's seeded generator
      (so ``reset(seed=...)`` reproduces it) from
      :data:`~tm_gym.core.visuals.DEFAULT_VISUAL_RANGES` (colours around the standard ones,
      brightness 0.75–1.3, camera 2.2–3.0 m, pitch 7–11°, field of view 80–100°). Own ranges:
      a :class:`~tm_gym.core.visuals.VisualRanges`, or a mapping with a ``"random"`` key, e.g.
      ``{"sky": [40, 60, 200], "random": {"brightness": [0.6, 1.4], "grass": [[40, 100, 30],
      [120, 200, 110]]}}`` (only the keys listed there are drawn). Unknown keys, wrong types
      and out-of-range values raise :class:`~tm_gym.core.config.ConfigError`. The current
      look is :attr:`visuals`.
    * ``start_jitter`` (simulator only, default 0.0): a random perturbation of the start, drawn
      at every reset with the environment's seeded generator (the same seed gives the same
      start). 0.0 is the exact standard start, bit for bit. At 1.0 the car starts up to 0.5 m
      left or right of the centre line, its heading up to 2° off the track's direction, and
      rolling forward at 0–3 km/h (each uniform); other values scale these linearly, up to
      3.0. The scripted expert finishes every built-in track from such starts at 1.0.
    * ``render_mode``: ``"rgb_array"`` returns the 256×128 driver's view.

    ## Example
    >>> import gymnasium as gym, tm_gym
    >>> env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

    ## Version History
    * v0: initial release; ``visuals`` and ``start_jitter`` added (defaults unchanged).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        backend: str = "sim",
        *,
        obs_type: str = "images",
        track: str | Track = "default",
        img_size: int = 64,
        img_hist_len: int = 4,
        grayscale: bool = True,
        act_buf_len: int = 2,
        time_step_duration: float = 0.05,
        start_obs_capture: float = 0.04,
        ep_max_length: int = 1000,
        reward_trajectory: str | None = None,
        reward_config: RewardConfig | None = None,
        car_params: CarParams | None = None,
        visuals: Visuals | VisualsSpec | Mapping[str, Any] | str | None = None,
        start_jitter: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        if backend not in ("sim", "game"):
            raise ValueError(f"backend={backend!r}: expected 'sim' (or 'game' via make_env)")
        if backend == "game":
            raise BackendUnavailableError(
                "TrackManiaEnv is the synchronous simulator; the live game runs behind the "
                "real-time layer: gymnasium.make('TrackMania-v0', ...) or "
                "tm_gym.backends.make_env(backend='game', ...)"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        self.settings = EnvSettings(
            obs_type=obs_type,
            img_size=img_size,
            img_hist_len=img_hist_len,
            grayscale=grayscale,
            act_buf_len=act_buf_len,
            time_step_duration=time_step_duration,
            start_obs_capture=start_obs_capture,
            ep_max_length=ep_max_length,
        )
        self.backend = backend
        self.render_mode = render_mode
        self.observation_space = observation_space(self.settings)  # type: ignore[assignment]
        self.action_space = action_space()  # type: ignore[assignment]
        self.core = SimCore(
            1,
            self.settings,
            track,
            reward_trajectory,
            reward_config,
            car_params,
            visuals=VisualsSpec.parse(visuals),
            start_jitter=start_jitter,
        )
        self.core.with_infos = False
        self.track = self.core.track
        self._n_cps = len(self.track.checkpoints_s)
        self._running = False
        self._all = np.ones(1, dtype=bool)
        self._none = np.zeros(1, dtype=bool)
        self._keep: bool | None = None  # None: no captures kept; else whether with full frames
        self._capture: Capture | None = None

    @staticmethod
    def _first(batch: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return {k: v[0] for k, v in batch.items()}

    def _info(self) -> dict[str, Any]:
        sim = self.core.sim
        return step_info(
            race_time=float(sim.race_time[0]),
            progress=float(self.core.reward.progress[0]),
            checkpoint=int(sim.checkpoint[0]),
            checkpoints_total=self._n_cps,
            finished=bool(sim.finished[0]),
            lap_time=float(sim.finish_time[0]),
            position=np.array([sim.x[0], 0.0, sim.y[0]]),
            speed_kmh=float(sim.speed_kmh[0]),
            gear=int(sim.gear[0]),
            rpm=float(sim.rpm[0]),
            wall_contacts=int(sim.contacts[0]),
            failed=bool(self.core.pend_failed[0]),
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        super().reset(seed=seed)
        self.core.rng = self.np_random
        respawned: list[_CaptureState] = []  # the state the first observation is captured in
        hook = None if self._keep is None else (lambda: respawned.append(self._capture_state()))
        obs, binfo = self.core.reset(self._all, hook)  # infos taken at the respawn itself
        if self._keep is not None:
            self._capture = self._capture_of(self._first(obs), *respawned[0])
        self._running = True
        info = {k: v[0] for k, v in binfo.items()}  # NumPy scalars, as step() gives
        info["lap_time"] = np.float64(NO_LAP)
        return self._first(obs), info

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[dict[str, NDArray[Any]], SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._running:
            raise EnvStateError(
                "step() called before reset() or after the episode ended; call reset() first"
            )
        a = check_actions(action, 1)
        failed = bool(self.core.pend_failed[0])
        info = self._info()  # describes the capture being returned (taken before advancing)
        info["failed"] = failed
        if self._keep is not None:
            rec_window = self._capture_state()  # the state the returned obs was captured in
        obs, rew, term, trunc, _ = self.core.step(a)
        if self._keep is not None:
            self._capture = self._capture_of(self._first(obs), *rec_window)
        if term[0] or trunc[0]:
            self._running = False
        return self._first(obs), float(rew[0]), bool(term[0]), bool(trunc[0]), info

    def render(self) -> NDArray[np.uint8] | None:
        if self.render_mode is None:
            return None
        return self.core.sim.render_rgb()[0]

    @property
    def visuals(self) -> Visuals:
        """The car's current look (drawn at each reset when ``visuals`` has ranges)."""
        return self.core.sim.visuals[0]

    # -- captures for recordings ---------------------------------------------------------
    def keep_captures(self, full_frames: bool = False) -> None:
        """Keep what each observation was built from, for :meth:`last_capture` (recording).

        ``full_frames`` also keeps the 256×128 driver's view (the game window) of each capture.
        """
        self._keep = bool(full_frames)

    def last_capture(self) -> Capture | None:
        """The capture behind the observation last returned by :meth:`reset` or :meth:`step`
        (None unless :meth:`keep_captures` was called before it)."""
        return self._capture

    def _capture_state(self) -> _CaptureState:
        sim = self.core.sim
        rec = sim.telemetry_record(0)
        pos = np.array([sim.x[0], 0.0, sim.y[0]], dtype=np.float64)
        window = sim.render_rgb()[0].copy() if self._keep else None
        return rec, pos, window

    def _capture_of(
        self,
        obs: dict[str, NDArray[Any]],
        rec: TelemetryRecord,
        pos: NDArray[np.float64],
        window: NDArray[np.uint8] | None,
    ) -> Capture:
        s = self.settings
        if s.obs_type == "images":
            k = 1 if s.grayscale else 3
            return Capture(rec, obs["images"][-k:].copy(), None, window, pos)
        return Capture(rec, None, obs["lidar"][-1].copy(), window, pos)

    def expert_action(self) -> NDArray[np.float32]:
        """The scripted expert's action for the current state (for demonstrations)."""
        return self.core.expert_actions()[0]
