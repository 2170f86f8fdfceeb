"""``gymnasium.make`` entry point: builds the environment of the backend asked for.

``TrackMania-Sim-v0`` is ``backend="sim"``; ``TrackMania-v0`` is ``backend="game"`` unless
``backend=`` says otherwise. :func:`make_env` looks the name up in the registry
(:mod:`tm_gym.backends.registry`), checks the keyword arguments against the backend's builder
(an argument the backend does not take is an error that lists the ones it does), and builds.

Every backend has the same observation and action spaces, reward and info; the arguments are
those of :class:`~tm_gym.envs.trackmania.TrackManiaEnv`, plus:

================================  ===========================================================
``realtime``                      ``sim`` only: ``True`` runs the simulator on the wall clock
                                  behind the real-time layer, like the game
``controller``                    ``game``: ``"gamepad"`` (vgamepad, default), ``"keyboard"``,
                                  or ``"none"`` (sends nothing: a person drives, for recording)
``telemetry_host``                ``game``: ``"127.0.0.1"``
``telemetry_port``                ``game``: ``9000`` — one port per game instance
``telemetry_timeout``             ``game``: seconds without telemetry before a clear error (10)
``window_title``                  ``game``: ``"Trackmania"`` — one title per game instance
``reward_trajectory``             path to the reference (``tm-gym record-reward``); required
                                  for the game
``respawn_wait``                  real-time backends: seconds waited after a respawn (1.5 for
                                  the game's start lights, 0 for the simulator)
``finish_popup``                  ``game``: ``"dismiss"`` (default: after a finished episode the
                                  next reset closes the game's finish pop-up like TMRL, gamepad
                                  A or a click on "Improve") or ``"ignore"``
``finish_settle``                 ``game``: seconds between the respawn and that press (0.5)
``finish_button``                 ``game``, keyboard: where "Improve" is, as fractions of the
                                  window's client area ((0.55, 0.60), TMRL's spot; unverified)
``camera``                        ``game``: :class:`~tm_gym.core.geometry.CameraSpec` of the
                                  game's camera, for the LIDAR read from screenshots
``time_step_timeout_factor``      real-time backends: rtgym's (1.0)
``recording``, ``mode``           ``replay``: the ``.tmrec`` file, ``"mock"`` or ``"realtime"``
================================  ===========================================================
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym

from tm_gym.backends.registry import backend_spec

__all__ = ["make_env"]


def make_env(backend: str = "sim", **kwargs: Any) -> gym.Env[Any, Any]:
    """Build the environment of ``backend`` (see the module docstring for the arguments).

    Raises:
        ValueError: ``backend`` is not registered.
        TypeError: an argument the backend does not take (the message lists those it takes).
        BackendUnavailableError: the backend cannot run here (no game, a missing package).
    """
    spec = backend_spec(backend)
    builder = spec.load()
    signature = inspect.signature(builder)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        takes = [p for p in signature.parameters if p != "kwargs"]
        raise TypeError(
            f"backend={backend!r}: {exc}; it takes {takes} (and the environment's settings)"
        ) from None
    env: gym.Env[Any, Any] = builder(**kwargs)
    return env
