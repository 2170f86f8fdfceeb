"""The backend registry: which function builds the environment for ``backend="NAME"``.

A backend is a name, an entry point ``"module:function"`` and a one-line summary. The function
takes the backend's keyword arguments and returns a Gymnasium environment with TrackMania's
spaces, reward and info. Entry points are strings, so the registry loads nothing until an
environment is made: the live game's drivers are never imported for the simulator.

The three built-in backends:

===========  ===========================================================================
``sim``      the built-in simulator (:mod:`tm_gym.backends.sim`), synchronous or on the
             wall clock (``realtime=True``)
``game``     TrackMania 2020 (or ``tm-gym emulate``) through OpenPlanet telemetry, screen
             capture and a virtual gamepad or the keyboard (:mod:`tm_gym.backends.game`)
``replay``   a ``.tmrec`` recording played through the game's pipeline
             (:mod:`tm_gym.backends.replay`)
===========  ===========================================================================

:func:`register_backend` adds one of your own, which ``gymnasium.make("TrackMania-v0",
backend="NAME", ...)`` then builds.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tm_gym.error import BackendUnavailableError

__all__ = ["BackendSpec", "backend_names", "backend_spec", "register_backend"]

_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class BackendSpec:
    """One registered backend."""

    name: str
    entry_point: str
    """``"package.module:function"``; the function builds the environment from keyword arguments."""
    summary: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"backend name {self.name!r}: expected lower-case letters, digits, '-' or '_' "
                "(at most 32, starting with a letter)"
            )
        if not _ENTRY_POINT.match(self.entry_point):
            raise ValueError(
                f"entry_point={self.entry_point!r}: expected 'package.module:function'"
            )

    def load(self) -> Callable[..., Any]:
        """Import the entry point and return the builder.

        Raises:
            BackendUnavailableError: the module or the function cannot be found.
        """
        module_name, _, attr = self.entry_point.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend {self.name!r}: cannot import {module_name} ({exc}); install the "
                "package that provides it"
            ) from exc
        builder = getattr(module, attr, None)
        if not callable(builder):
            raise BackendUnavailableError(
                f"backend {self.name!r}: {module_name} has no function {attr!r}; check the "
                "entry point given to register_backend"
            )
        return builder


_REGISTRY: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("sim", "tm_gym.backends.sim:make_sim_env", "the built-in simulator"),
        BackendSpec(
            "game", "tm_gym.backends.game:make_game_env", "TrackMania 2020 or tm-gym emulate"
        ),
        BackendSpec(
            "replay", "tm_gym.backends.replay:make_replay_env", "a .tmrec recording played back"
        ),
    )
}


def register_backend(name: str, entry_point: str, summary: str, *, replace: bool = False) -> None:
    """Make ``backend=name`` build environments with the function at ``entry_point``.

    Raises:
        ValueError: a malformed name or entry point, or ``name`` is taken (pass
            ``replace=True`` to replace it on purpose).
    """
    spec = BackendSpec(name, entry_point, summary)
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"backend {name!r} is already registered ({_REGISTRY[name].entry_point}); pass "
            "replace=True to replace it"
        )
    _REGISTRY[name] = spec


def backend_names() -> tuple[str, ...]:
    """The registered backend names, built-ins first."""
    return tuple(_REGISTRY)


def backend_spec(name: str) -> BackendSpec:
    """The registered backend ``name``.

    Raises:
        ValueError: no backend of that name.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"backend={name!r}: expected one of {list(_REGISTRY)} (or one added with "
            "tm_gym.backends.register_backend)"
        ) from None
