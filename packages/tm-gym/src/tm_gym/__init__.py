"""tm-gym: TrackMania 2020 as a Gymnasium environment, with a built-in simulator.

Importing this package registers two environment ids (entry points are strings, so importing is
cheap and loads neither the simulator nor any game driver):

* ``TrackMania-v0``: the live game by default (``backend="game"``: OpenPlanet telemetry, screen
  capture, virtual gamepad or keyboard, in real time through rtgym); ``backend="sim"`` selects
  the simulator.
* ``TrackMania-Sim-v0``: the built-in simulator (``realtime=True`` runs it on the wall clock
  behind the same real-time layer), with a native vector environment for
  ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``.

The factory :func:`tm_gym.backends.factory.make_env` documents each backend's arguments
(backends are registered in :mod:`tm_gym.backends.registry`).

See :class:`tm_gym.envs.trackmania.TrackManiaEnv` for spaces, reward and arguments.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

__all__ = ["__version__"]

__version__ = "0.1.0"


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
