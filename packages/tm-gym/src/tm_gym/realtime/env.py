"""``TrackManiaRealtimeEnv``: any real-time backend behind rtgym, with TrackManiaEnv's spaces."""

from __future__ import annotations

import logging
import math
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray
from rtgym import DEFAULT_CONFIG_DICT
from rtgym.envs import RealTimeEnvTS

from tm_gym.core.actions import action_space, check_actions
from tm_gym.core.capture import Capture
from tm_gym.core.settings import EnvSettings, observation_space
from tm_gym.error import BackendUnavailableError, EnvStateError
from tm_gym.realtime.interface import CAPTURE_KEY, RealtimeBackend, TMRealtimeInterface
from tm_gym.reward import ReferenceTrajectory, RewardConfig

__all__ = ["TrackManiaRealtimeEnv", "rtgym_config"]

logger = logging.getLogger(__name__)

Obs = dict[str, NDArray[Any]]

# rtgym 0.16 keeps its clock and thread controls in private (name-mangled) attributes; the
# subclass below reads them to count time-step timeouts and to stop the thread. Checked at
# construction so that another rtgym version fails with a clear message, not a hang.
_T_START = "_RealTimeEnvTS__t_start"
_T_END = "_RealTimeEnvTS__t_end"
_DIE = "_RealTimeEnvTS__die"
_EV_START = "_RealTimeEnvTS__ev_start_ts"


class _CountingRealTimeEnv(RealTimeEnvTS):
    """rtgym's single-thread real-time env, counting time-step timeouts instead of warning.

    rtgym signals a late ``step()`` with ``warnings.warn("Time-step timed out...")`` from its
    background thread, at the start of the next time step — after ``step()`` has returned, so a
    ``catch_warnings`` block in the caller's thread races with it (and ``catch_warnings`` is not
    thread-safe), and under ``-W error`` the warning becomes an exception that kills rtgym's
    thread. Here the thread counts the timeout instead: it tells rtgym the environment was
    paused (which silences the warning) and compares the new time step's start with the end of
    the previous one, exactly rtgym's own test.

    After :meth:`wait` (an episode ended with ``wait_on_done``, or a reset cut one short) the
    next time step always restarts the clock. rtgym itself restarts it only if the reset took
    longer than the elasticity; after a quick reset (the simulator's) it would keep the old
    schedule, and the new episode's first observation would be captured early.
    """

    is_waiting: bool
    timeouts: int
    """Time-step timeouts since creation."""
    episode_timeouts: int
    """Time-step timeouts since the caller last set it to 0 (at each reset)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.timeouts = 0
        self.episode_timeouts = 0
        super().__init__(config)
        missing = [a for a in (_T_START, _T_END, _DIE, _EV_START) if not hasattr(self, a)]
        if missing:
            self.shutdown()
            import rtgym

            raise BackendUnavailableError(
                f"rtgym {getattr(rtgym, '__version__', '?')} lacks {missing}; tm-gym's "
                "real-time layer supports rtgym 0.16: pip install 'rtgym==0.16'"
            )

    def _update_timestamps(self) -> None:
        paused = self.is_waiting
        if paused:  # after wait(): the clock restarts now, whenever the reset came
            setattr(self, _T_END, -math.inf)
        t_end = getattr(self, _T_END)
        self.is_waiting = True  # rtgym: no warning, the clock restarts if the step was late
        super()._update_timestamps()
        if getattr(self, _T_START) != t_end and not paused:
            self.timeouts += 1
            self.episode_timeouts += 1
        self.is_waiting = False

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop the background thread (after the running time step); True once it is gone."""
        if hasattr(self, _DIE) and hasattr(self, _EV_START):
            setattr(self, _DIE, True)
            getattr(self, _EV_START).set()
        self._at_thread.join(timeout)
        return not self._at_thread.is_alive()


def rtgym_config(
    interface: TMRealtimeInterface,
    settings: EnvSettings,
    *,
    time_step_timeout_factor: float = 1.0,
    reset_act_buf: bool = True,
    wait_on_done: bool = True,
    benchmark: bool = True,
) -> dict[str, Any]:
    """rtgym's configuration dict for ``interface`` (usable with ``gymnasium.make(
    "real-time-gym-ts-v1", config=...)``)."""
    cfg = dict(DEFAULT_CONFIG_DICT)
    cfg.update(
        {
            "interface": lambda: interface,
            "interface_args": (),
            "interface_kwargs": {},
            "time_step_duration": settings.time_step_duration,
            "start_obs_capture": settings.start_obs_capture,
            "time_step_timeout_factor": time_step_timeout_factor,
            "ep_max_length": settings.ep_max_length,
            "act_in_obs": True,
            "act_buf_len": settings.act_buf_len,
            "reset_act_buf": reset_act_buf,
            "benchmark": benchmark,
            "wait_on_done": wait_on_done,
            "last_act_on_reset": False,
        }
    )
    return cfg


class TrackManiaRealtimeEnv(gym.Env[dict[str, NDArray[Any]], NDArray[np.float32]]):
    """A real-time TrackMania backend (the game, the emulator, the wall-clock simulator) as a
    Gymnasium environment, timed by rtgym.

    Observations, actions, rewards, episode ends and info are those of
    :class:`~tm_gym.envs.trackmania.TrackManiaEnv` for the same :class:`EnvSettings` (see its
    docstring); the difference is that time runs by itself: a step lasts
    ``time_step_duration`` of wall-clock time, and a caller that takes longer than that breaks
    the rhythm (a *time-step timeout*).

    ## Timing
    rtgym's single-thread environment (``real-time-gym-ts-v1``, what TMRL uses on Linux): one
    background thread, started at the first :meth:`reset` and stopped by :meth:`close`, owns the
    interface and runs every time step. ``step(a)`` waits for the running time step to end,
    returns the observation captured ``start_obs_capture`` into it, and starts the next one
    applying ``a``. A step called more than ``time_step_timeout_factor`` × duration after the
    previous one ended is a timeout: rtgym restarts its clock. Timeouts are counted, never
    warned: ``info["timeouts"]`` (this episode) and ``info["timeouts_total"]``. A timeout is
    detected when the late time step starts, so it shows in the info of the step after (a
    reset that itself started late shows in the first step's info).
    With ``wait_on_done`` the inputs are released when an episode ends and the clock pauses
    until the next reset. rtgym's timing statistics: :meth:`timing_stats`.

    ## Errors
    An error of a port (for example :class:`~tm_gym.error.TelemetryError` when the game stops
    sending telemetry) raised in rtgym's thread ends the episode and is re-raised, as is, by
    the :meth:`step` or :meth:`reset` that sees it.

    ## Arguments
    * ``backend``: the :class:`RealtimeBackend`; the environment owns its ports (opened at the
      first reset, closed by :meth:`close`).
    * ``reference``: the reward's :class:`~tm_gym.reward.ReferenceTrajectory`.
    * ``settings``: :class:`EnvSettings` (observation type, sizes, time step, episode length).
    * ``reward_config``: :class:`~tm_gym.reward.RewardConfig`.
    * ``time_step_timeout_factor`` (1.0), ``reset_act_buf`` (True), ``wait_on_done`` (True),
      ``benchmark`` (True): rtgym's options of the same names.
    * ``render_mode``: ``"rgb_array"`` returns the last screenshot captured.

    ## Example
    >>> from tm_gym.envs.sim_core import default_reference
    >>> from tm_gym.backends.sim import sim_backend
    >>> from tm_gym.sim.wallclock import WallClockSim
    >>> sim = WallClockSim("default")
    >>> with TrackManiaRealtimeEnv(sim_backend(sim), default_reference(sim.track)) as env:
    ...     obs, info = env.reset()
    ...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        backend: RealtimeBackend,
        reference: ReferenceTrajectory,
        settings: EnvSettings | None = None,
        reward_config: RewardConfig | None = None,
        *,
        time_step_timeout_factor: float = 1.0,
        reset_act_buf: bool = True,
        wait_on_done: bool = True,
        benchmark: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        f: object = time_step_timeout_factor
        if not (isinstance(f, (int, float)) and 0 <= f < float("inf")):
            raise ValueError(
                f"time_step_timeout_factor={f!r}: expected a finite number of time steps >= 0"
            )
        self.backend = backend
        self.settings = settings = settings or EnvSettings()
        self.render_mode = render_mode
        self.observation_space = observation_space(settings)  # type: ignore[assignment]
        self.action_space = action_space()  # type: ignore[assignment]
        self.interface = TMRealtimeInterface(
            backend,
            settings,
            reference,
            reward_config,
            defer_errors=True,
            keep_frames=render_mode == "rgb_array",
        )
        self._config = rtgym_config(
            self.interface,
            settings,
            time_step_timeout_factor=float(time_step_timeout_factor),
            reset_act_buf=reset_act_buf,
            wait_on_done=wait_on_done,
            benchmark=benchmark,
        )
        self._keys = self.interface.builder.keys
        self._rt: _CountingRealTimeEnv | None = None
        self._running = False
        self._closed = False
        self._capture: Capture | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def _start(self) -> _CountingRealTimeEnv:
        if self._closed:
            raise EnvStateError("the environment is closed; create a new one")
        if self._rt is None:
            self.backend.open()
            try:
                self._rt = _CountingRealTimeEnv(self._config)
            except BaseException:
                self.backend.close()
                raise
        return self._rt

    def close(self) -> None:
        """Stop rtgym's thread, release the inputs and close every port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        rt, self._rt = self._rt, None
        if rt is None:
            return  # the ports were never opened
        try:
            if not rt.shutdown():
                logger.warning("rtgym's thread did not stop within 5 s; it is a daemon thread")
        finally:
            try:
                self.backend.controller.release()
            except Exception as e:
                logger.warning("releasing the inputs failed: %s", e)
            finally:
                self.backend.close()

    # -- API -----------------------------------------------------------------------------
    def _raise_pending(self) -> None:
        err = self.interface.pop_error()
        if err is not None:
            self._running = False
            raise err

    def _to_dict(self, parts: tuple[Any, ...]) -> Obs:
        n = len(self._keys)
        obs: Obs = dict(zip(self._keys, parts[:n], strict=True))
        obs["actions"] = np.stack(
            [np.asarray(a, dtype=np.float32) for a in parts[n:]], axis=0
        ).astype(np.float32, copy=False)
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        rt = self._start()
        if self._running and self._config["wait_on_done"]:
            rt.wait()  # an episode was cut short: release the inputs, pause rtgym's clock
        else:
            rt.stop()  # let a time step in flight end (and count its timeout, if any)
        self._running = False
        self.interface.pop_error()  # anything left from the interrupted episode is moot
        rt.episode_timeouts = 0
        parts, info = rt.reset(seed=seed, options=options)
        self._raise_pending()
        self._running = True
        info = dict(info)
        self._capture = info.pop(CAPTURE_KEY, None)
        info["timeouts"] = 0
        info["timeouts_total"] = rt.timeouts
        return self._to_dict(parts), info

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[Obs, SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._running or self._rt is None:
            raise EnvStateError(
                "step() called before reset() or after the episode ended; call reset() first"
            )
        rt = self._rt
        a = check_actions(action, 1)[0]
        parts, rew, terminated, truncated, info = rt.step(a)
        self._raise_pending()
        if terminated or truncated:
            self._running = False
        info = dict(info)
        self._capture = info.pop(CAPTURE_KEY, None)
        info["timeouts"] = rt.episode_timeouts
        info["timeouts_total"] = rt.timeouts
        return self._to_dict(parts), float(rew), bool(terminated), bool(truncated), info

    def render(self) -> NDArray[np.uint8] | None:
        if self.render_mode is None:
            return None
        return self.interface.render()

    # -- captures for recordings ---------------------------------------------------------
    def keep_captures(self, full_frames: bool = False) -> None:
        """Keep what each observation was built from, for :meth:`last_capture` (recording):
        every capture then grabs the window's screenshot, even when the observation does not
        need it. (The screenshot is always full resolution; ``full_frames`` changes nothing.)"""
        self.interface.record_captures = True

    def last_capture(self) -> Capture | None:
        """The capture behind the observation last returned by :meth:`reset` or :meth:`step`
        (None unless :meth:`keep_captures` was called before it)."""
        return self._capture

    def timing_stats(self) -> dict[str, tuple[float | None, float]]:
        """rtgym's benchmarks: running (average, average deviation) of each duration, seconds.

        Keys: ``time_step_duration``, ``step_duration``, ``join_duration``,
        ``inference_duration``, ``send_control_duration``, ``get_obs_duration``.
        """
        if not self._config["benchmark"]:
            raise EnvStateError("timing statistics need benchmark=True")
        if self._rt is None:
            raise EnvStateError("no timing statistics before the first reset()")
        stats: dict[str, tuple[float | None, float]] = self._rt.benchmarks()
        return stats
