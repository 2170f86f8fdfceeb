"""``gymnasium.make`` entry point: picks the environment class for the backend asked for.

* ``backend="sim"`` (``TrackMania-Sim-v0``): the synchronous simulator,
  :class:`~tm_gym.envs.trackmania.TrackManiaEnv`; with ``realtime=True`` the simulator follows
  the wall clock behind the real-time layer, :class:`~tm_gym.realtime.env.TrackManiaRealtimeEnv`.
* ``backend="game"`` (``TrackMania-v0``): the live game (or ``tm-gym emulate``) through
  OpenPlanet telemetry, screen capture and a virtual gamepad or the keyboard, behind the same
  real-time layer.

* ``backend="replay"`` (``TrackMania-v0``): a recording (``recording=PATH``, a ``.tmrec`` file)
  played back through the game's observation pipeline, ``mode="mock"`` (synchronous, actions
  ignored) or ``mode="realtime"`` (paced by the real-time layer); see
  :mod:`tm_gym.recording.replay`. Only observation settings may be given (obs_type, img_size,
  img_hist_len, grayscale, act_buf_len, ep_max_length); the rest comes from the recording.

Every backend has the same observation and action spaces, reward and info; the arguments are
those of :class:`~tm_gym.envs.trackmania.TrackManiaEnv`, plus, for the real-time backends:

================================  ===========================================================
``controller``                    ``"gamepad"`` (vgamepad, default), ``"keyboard"``, or
                                  ``"none"`` (sends nothing: a person drives, for recording)
``telemetry_host``                ``"127.0.0.1"``
``telemetry_port``                ``9000`` — one port per game instance
``telemetry_timeout``             seconds without telemetry before a clear error (10)
``window_title``                  ``"Trackmania"`` — one title per game instance
``reward_trajectory``             path to the reference (``tm-gym record-reward``); required
                                  for the game
``respawn_wait``                  seconds waited after a respawn (1.5 for the start lights)
``camera``                        :class:`~tm_gym.core.geometry.CameraSpec` of the game's camera,
                                  for the LIDAR read from screenshots
``time_step_timeout_factor``      rtgym's (1.0)
================================  ===========================================================
"""

from __future__ import annotations

import dataclasses
from types import TracebackType
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from tm_gym.core.geometry import CameraSpec
from tm_gym.core.settings import BACKENDS, EnvSettings
from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.error import BackendUnavailableError
from tm_gym.reward import ReferenceTrajectory, RewardConfig
from tm_gym.sim.track import Track

__all__ = ["KeyboardForWindow", "make_env"]

_SETTINGS = (
    "obs_type",
    "img_size",
    "img_hist_len",
    "grayscale",
    "act_buf_len",
    "time_step_duration",
    "start_obs_capture",
    "ep_max_length",
)


class KeyboardForWindow:
    """The keyboard controller aimed at the window titled ``window_title`` (found on open)."""

    def __init__(self, window_title: str) -> None:
        self.window_title = window_title
        self._inner: Any = None

    def open(self) -> None:
        from tm_gym.game.capture import find_window
        from tm_gym.game.keyboard import KeyboardController

        if self._inner is None:
            geometry = find_window(self.window_title)
            inner = KeyboardController(window_id=geometry.window_id or None)
            inner.open()
            self._inner = inner

    def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()

    def __enter__(self) -> KeyboardForWindow:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ctl(self) -> Any:
        if self._inner is None:
            self.open()
        return self._inner

    def apply(self, action: NDArray[np.float32]) -> None:
        self._ctl().apply(action)

    def respawn(self) -> None:
        self._ctl().respawn()

    def release(self) -> None:
        if self._inner is not None:
            self._inner.release()


def make_env(
    backend: str = "sim",
    *,
    realtime: bool = False,
    track: str | Track = "default",
    controller: str = "gamepad",
    telemetry_host: str = "127.0.0.1",
    telemetry_port: int = 9000,
    telemetry_timeout: float = 10.0,
    window_title: str = "Trackmania",
    reward_trajectory: str | None = None,
    reward_config: RewardConfig | None = None,
    respawn_wait: float | None = None,
    camera: CameraSpec | None = None,
    time_step_timeout_factor: float = 1.0,
    render_mode: str | None = None,
    recording: str | None = None,
    mode: str = "mock",
    **kwargs: Any,
) -> gym.Env[Any, Any]:
    """Build the environment for ``backend`` (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {list(BACKENDS)}")
    if backend == "replay":
        from tm_gym.recording.replay import make_replay_env

        extra: dict[str, Any] = {"reward_config": reward_config, "render_mode": render_mode}
        if mode == "realtime":
            extra["time_step_timeout_factor"] = time_step_timeout_factor
        return make_replay_env(recording, mode=mode, **extra, **kwargs)
    if recording is not None:
        raise ValueError(
            f"recording={recording!r} is only used with backend='replay' (got {backend!r})"
        )
    if backend == "sim" and not realtime:
        return TrackManiaEnv(
            "sim",
            track=track,
            reward_trajectory=reward_trajectory,
            reward_config=reward_config,
            render_mode=render_mode,
            **kwargs,
        )
    unknown = set(kwargs) - set(_SETTINGS) - {"car_params"}
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)} for backend={backend!r}")
    settings = EnvSettings(**{k: v for k, v in kwargs.items() if k in _SETTINGS})
    from tm_gym.realtime.env import TrackManiaRealtimeEnv
    from tm_gym.realtime.interface import GAME_RESPAWN_WAIT, RealtimeBackend

    if backend == "sim":
        from tm_gym.envs.sim_core import default_reference
        from tm_gym.realtime.sim_ports import WallClockSim, sim_backend

        sim = WallClockSim(track, params=kwargs.get("car_params"))
        reference = (
            ReferenceTrajectory.load(reward_trajectory)
            if reward_trajectory
            else default_reference(sim.track)
        )
        rt_backend = sim_backend(sim)
    else:
        if reward_trajectory is None:
            raise BackendUnavailableError(
                "TrackMania-v0 needs reward_trajectory=PATH, the reference the progress reward "
                "follows: drive the track once while `tm-gym record-reward --out PATH.npz` runs"
            )
        reference = ReferenceTrajectory.load(reward_trajectory)
        from tm_gym.game.capture import ScreenCapture
        from tm_gym.game.telemetry_client import TelemetryClient

        ctl: Any
        if controller == "gamepad":
            from tm_gym.game.gamepad import GamepadController

            ctl = GamepadController()
        elif controller == "keyboard":
            ctl = KeyboardForWindow(window_title)
        elif controller == "none":
            from tm_gym.game.person import PersonController

            ctl = PersonController()
        else:
            raise ValueError(
                f"controller={controller!r}: expected 'gamepad', 'keyboard' or 'none' (a person "
                "drives)"
            )
        rt_backend = RealtimeBackend(
            telemetry=TelemetryClient(telemetry_host, telemetry_port, timeout=telemetry_timeout),
            frames=ScreenCapture(window_title),
            controller=ctl,
            respawn_wait=GAME_RESPAWN_WAIT if respawn_wait is None else respawn_wait,
            camera=camera,
        )
    if respawn_wait is not None and backend == "sim":
        rt_backend = dataclasses.replace(rt_backend, respawn_wait=respawn_wait)
    return TrackManiaRealtimeEnv(
        rt_backend,
        reference,
        settings,
        reward_config,
        time_step_timeout_factor=time_step_timeout_factor,
        render_mode=render_mode,
    )
