"""tm-gym: TrackMania 2020 as a Gymnasium environment, with a built-in simulator.

Importing this package registers two environment ids (entry points are strings, so importing is
cheap and loads neither the simulator nor any game driver):

* ``TrackMania-v0``: the live game by default (``backend="game"``: OpenPlanet telemetry, screen
  capture, virtual gamepad or keyboard, in real time through rtgym); ``backend="sim"`` selects
  the simulator, ``backend="replay"`` a recording.
* ``TrackMania-Sim-v0``: the built-in simulator (``realtime=True`` runs it on the wall clock
  behind the same real-time layer), with a native vector environment for
  ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``.

The factory :func:`tm_gym.backends.factory.make_env` documents each backend's arguments
(backends are registered in :mod:`tm_gym.backends.registry`).
See :class:`tm_gym.envs.trackmania.TrackManiaEnv` for spaces, reward and arguments.

The public API is importable from ``tm_gym`` itself; each name is loaded on first use (PEP 562),
so ``import tm_gym`` stays cheap (no Numba, no PyTorch)::

    import gymnasium as gym
    import tm_gym

    env = gym.make("TrackMania-Sim-v0", track=tm_gym.load_track("gen:7"), obs_type="lidar")
    env = gym.make("TrackMania-Sim-v0", car_params=tm_gym.CarParams(grip=18.0))

The layers, lowest first (each imports only from those below it; tests/test_architecture.py
checks it): ``error`` → ``core`` (shared types) → ``reward``, ``preprocess``, ``viz`` → ``sim``,
``game`` → ``realtime`` → ``recording`` → ``envs`` → ``backends`` → ``emulator``, ``testing``,
``human`` → ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # name → the module that defines it
    "TrackMasterError": "tm_gym.error",
    "TMGymError": "tm_gym.error",
    "EnvSettings": "tm_gym.core.settings",
    "OBS_TYPES": "tm_gym.core.settings",
    "TelemetryRecord": "tm_gym.core.telemetry",
    "Capture": "tm_gym.core.capture",
    "CameraSpec": "tm_gym.core.geometry",
    "action_space": "tm_gym.core.actions",
    "observation_space": "tm_gym.core.settings",
    "RewardConfig": "tm_gym.reward",
    "ReferenceTrajectory": "tm_gym.reward",
    "Track": "tm_gym.sim.track",
    "load_track": "tm_gym.sim.tracks",
    "builtin_track_names": "tm_gym.sim.tracks",
    "generate_track": "tm_gym.sim.generator",
    "CarParams": "tm_gym.sim.physics",
    "TrackManiaEnv": "tm_gym.envs.trackmania",
    "TrackManiaVectorEnv": "tm_gym.envs.vector",
    "TrackManiaRealtimeEnv": "tm_gym.realtime.env",
    "Recording": "tm_gym.recording.format",
    "load_recording": "tm_gym.recording.format",
    "save_recording": "tm_gym.recording.format",
    "RecordEpisodes": "tm_gym.recording.recorder",
    "ReplayEnv": "tm_gym.recording.replay",
    "make_env": "tm_gym.backends.factory",
    "register_backend": "tm_gym.backends.registry",
    "backend_names": "tm_gym.backends.registry",
}

__all__ = [
    "OBS_TYPES",
    "CameraSpec",
    "Capture",
    "CarParams",
    "EnvSettings",
    "RecordEpisodes",
    "Recording",
    "ReferenceTrajectory",
    "ReplayEnv",
    "RewardConfig",
    "TMGymError",
    "TelemetryRecord",
    "Track",
    "TrackManiaEnv",
    "TrackManiaRealtimeEnv",
    "TrackManiaVectorEnv",
    "TrackMasterError",
    "__version__",
    "action_space",
    "backend_names",
    "builtin_track_names",
    "generate_track",
    "load_recording",
    "load_track",
    "make_env",
    "observation_space",
    "register_backend",
    "save_recording",
]

if TYPE_CHECKING:
    from tm_gym.backends.factory import make_env
    from tm_gym.backends.registry import backend_names, register_backend
    from tm_gym.core.actions import action_space
    from tm_gym.core.capture import Capture
    from tm_gym.core.geometry import CameraSpec
    from tm_gym.core.settings import OBS_TYPES, EnvSettings, observation_space
    from tm_gym.core.telemetry import TelemetryRecord
    from tm_gym.envs.trackmania import TrackManiaEnv
    from tm_gym.envs.vector import TrackManiaVectorEnv
    from tm_gym.error import TMGymError, TrackMasterError
    from tm_gym.realtime.env import TrackManiaRealtimeEnv
    from tm_gym.recording.format import Recording, load_recording, save_recording
    from tm_gym.recording.recorder import RecordEpisodes
    from tm_gym.recording.replay import ReplayEnv
    from tm_gym.reward import ReferenceTrajectory, RewardConfig
    from tm_gym.sim.generator import generate_track
    from tm_gym.sim.physics import CarParams
    from tm_gym.sim.track import Track
    from tm_gym.sim.tracks import builtin_track_names, load_track


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tm_gym' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _register() -> None:
    if "TrackMania-v0" not in registry:
        register(
            id="TrackMania-v0",
            entry_point="tm_gym.backends.factory:make_env",
            vector_entry_point="tm_gym.envs.vector:TrackManiaVectorEnv",
            kwargs={"backend": "game"},
        )
    if "TrackMania-Sim-v0" not in registry:
        register(
            id="TrackMania-Sim-v0",
            entry_point="tm_gym.backends.factory:make_env",
            vector_entry_point="tm_gym.envs.vector:TrackManiaVectorEnv",
            kwargs={"backend": "sim"},
        )


_register()
