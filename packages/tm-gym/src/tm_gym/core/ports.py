"""The small ports a real-time backend is made of.

A backend (the live game, the emulator, the simulator following the wall clock, a recording)
supplies three things, each a context manager with ``close()``; nothing starts a thread or opens
a socket before ``open()`` / ``__enter__``:

* a :class:`TelemetrySource` — the newest telemetry record of the car;
* a :class:`FrameSource` — a screenshot of the game window's client area (RGB);
* a :class:`Controller` — applies an action and respawns the car.

A controller may also be a :class:`FinishDismisser`: it can close the pop-up the game shows
after a finish (the end-of-race menu with its "Improve" button), which otherwise swallows the
respawn input. The capability is optional: a controller without ``dismiss_finish()`` is still a
:class:`Controller`, and the real-time layer then leaves the pop-up alone.

The real-time layer (:mod:`tm_gym.realtime`) only talks to these protocols, so every backend is
driven by the same code, and each adapter can be tested on its own.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.telemetry import TelemetryRecord

__all__ = [
    "FINISH_BUTTON",
    "Controller",
    "FinishDismisser",
    "FrameSource",
    "Port",
    "TelemetrySource",
]

FINISH_BUTTON: tuple[float, float] = (0.55, 0.60)
"""Where the finish pop-up's "Improve" button is, as fractions ``(across, down)`` of the game
window's client area (0, 0 = top-left corner; 1, 1 = bottom-right).

Taken from TMRL, which clicks at screen (550, 320) for its 958×488 window and (138, 108) for its
256×128 one, both placed at the top-left of the screen: about 52-57 % across and 59-60 % down
once the title bar is taken off. Nobody has checked this spot in the real game on our side; it is
a default that can be changed (``make_env(..., finish_button=(x, y))``). ``tm-gym emulate`` draws
its button around this spot."""


@runtime_checkable
class Port(Protocol):
    """Anything holding a resource: opened explicitly, closed explicitly (idempotent)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Port: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class TelemetrySource(Port, Protocol):
    """Newest telemetry of one car."""

    def latest(self) -> TelemetryRecord:
        """The newest complete record (raises :class:`~tm_gym.error.TelemetryError` when the
        stream has stalled or closed for longer than the source's timeout)."""
        ...

    def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
        """Block until a record newer than the last one returned arrives, and return it."""
        ...


@runtime_checkable
class FrameSource(Port, Protocol):
    """Screenshots of the game window's client area."""

    def grab(self) -> NDArray[np.uint8]:
        """(H, W, 3) uint8 RGB."""
        ...


@runtime_checkable
class Controller(Port, Protocol):
    """Sends inputs to the car."""

    def apply(self, action: NDArray[np.float32]) -> None:
        """Apply ``[gas, brake, steer]`` (gas/brake active above 0, steer +1 = right)."""
        ...

    def respawn(self) -> None:
        """Restart the car at the start (the game's respawn / restart input)."""
        ...

    def release(self) -> None:
        """Release every input (neutral)."""
        ...


@runtime_checkable
class FinishDismisser(Protocol):
    """An optional controller capability: close the game's finish pop-up.

    After a finish the game shows its end-of-race menu; until that menu is closed, the respawn
    input does nothing (TMRL closes it with the gamepad's A button, or a mouse click on the
    "Improve" button when it drives with the keyboard). The real-time layer calls
    :meth:`dismiss_finish` at the reset after a finished episode, when the controller has it.
    """

    def dismiss_finish(self) -> None:
        """Close the finish pop-up (blocks for as long as the press or click takes).

        The real-time layer calls it only right after a respawn that followed a finish, and
        respawns once more afterwards, so a press or click the game did not need is undone.
        Raises :class:`~tm_gym.error.ControllerError` when the input cannot be sent.
        """
        ...
