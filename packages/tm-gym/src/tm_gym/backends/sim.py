"""The ``sim`` backend: the built-in simulator, synchronous or on the wall clock.

``realtime=False`` (the default) is :class:`~tm_gym.envs.trackmania.TrackManiaEnv`, as fast as
the machine runs. ``realtime=True`` puts one car of the simulator on the wall clock
(:class:`~tm_gym.sim.wallclock.WallClockSim`) behind the same real-time layer as the game
(:class:`~tm_gym.realtime.env.TrackManiaRealtimeEnv`), through the ports of
:func:`sim_backend`: the whole game code path, paced by rtgym, without the game.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym

from tm_gym.backends.common import env_settings
from tm_gym.envs.sim_core import default_reference
from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.realtime.env import TrackManiaRealtimeEnv
from tm_gym.realtime.interface import RealtimeBackend
from tm_gym.reward import ReferenceTrajectory, RewardConfig
from tm_gym.sim.physics import CarParams
from tm_gym.sim.track import Track
from tm_gym.sim.wallclock import SimController, SimFrames, SimTelemetry, WallClockSim

__all__ = ["make_sim_env", "sim_backend"]


def sim_backend(sim: WallClockSim, *, exact_lidar: bool = True) -> RealtimeBackend:
    """The real-time backend of ``sim``: its three ports, no start-lights wait, the exact LIDAR
    (unless ``exact_lidar=False``: then LIDAR is read from the frames, as in the game) and the
    track's checkpoint count."""
    return RealtimeBackend(
        telemetry=SimTelemetry(sim),
        frames=SimFrames(sim),
        controller=SimController(sim),
        respawn_wait=0.0,
        lidar_source=sim.exact_lidar if exact_lidar else None,
        checkpoints_total=len(sim.track.checkpoints_s),
        wall_contacts=sim.wall_contacts,
    )


def make_sim_env(
    *,
    realtime: bool = False,
    track: str | Track = "default",
    reward_trajectory: str | None = None,
    reward_config: RewardConfig | None = None,
    render_mode: str | None = None,
    respawn_wait: float | None = None,
    time_step_timeout_factor: float = 1.0,
    **kwargs: Any,
) -> gym.Env[Any, Any]:
    """The simulator (see the module docstring); ``kwargs`` are the environment's settings."""
    if not realtime:
        paced = {"respawn_wait": respawn_wait, "time_step_timeout_factor": time_step_timeout_factor}
        given = [k for k, v in paced.items() if v not in (None, 1.0)]
        if given:
            raise TypeError(
                f"{given} apply to the real-time simulator only: pass realtime=True, or drop them"
            )
        return TrackManiaEnv(
            "sim",
            track=track,
            reward_trajectory=reward_trajectory,
            reward_config=reward_config,
            render_mode=render_mode,
            **kwargs,
        )
    car_params: CarParams | None = kwargs.pop("car_params", None)
    settings = env_settings(kwargs, "the real-time simulator (it also takes car_params)")
    sim = WallClockSim(track, params=car_params)
    reference = (
        ReferenceTrajectory.load(reward_trajectory)
        if reward_trajectory
        else default_reference(sim.track)
    )
    backend = sim_backend(sim)
    if respawn_wait is not None:
        backend = dataclasses.replace(backend, respawn_wait=respawn_wait)
    return TrackManiaRealtimeEnv(
        backend,
        reference,
        settings,
        reward_config,
        time_step_timeout_factor=time_step_timeout_factor,
        render_mode=render_mode,
    )
