"""The small ports a real-time backend is made of.

A backend (the live game, the emulator, the simulator following the wall clock, a recording)
supplies three things, each a context manager with ``close()``; nothing starts a thread or opens
a socket before ``open()`` / ``__enter__``:

* a :class:`TelemetrySource` — the newest telemetry record of the car;
* a :class:`FrameSource` — a screenshot of the game window's client area (RGB);
* a :class:`Controller` — applies an action and respawns the car.

The real-time layer (:mod:`tm_gym.realtime`) only talks to these protocols, so every backend is
driven by the same code, and each adapter can be tested on its own.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.telemetry import TelemetryRecord

__all__ = ["Controller", "FrameSource", "Port", "TelemetrySource"]


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
