"""A controller that sends nothing: a person drives the game with their own keyboard or pad.

Used to record a person's runs (``tm-gym record --driver person``): the environment observes
and times the game as usual, and the person's inputs are read back from the telemetry (steer,
gas and brake are in every record).
"""

from __future__ import annotations

import logging
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.telemetry import TelemetryRecord

__all__ = ["PersonController", "inputs_from_telemetry"]

logger = logging.getLogger(__name__)


def inputs_from_telemetry(rec: TelemetryRecord) -> NDArray[np.float32]:
    """The [gas, brake, steer] action a person was applying, as the telemetry reports it."""
    return np.array(
        [
            min(max(rec.gas, 0.0), 1.0),
            1.0 if rec.brake > 0.5 else 0.0,
            min(max(rec.steer, -1.0), 1.0),
        ],
        dtype=np.float32,
    )


class PersonController:
    """Implements :class:`~tm_gym.core.ports.Controller` without touching any input device."""

    def __init__(self) -> None:
        self.respawns = 0

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> PersonController:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def apply(self, action: NDArray[np.float32]) -> None:
        return None

    def respawn(self) -> None:
        self.respawns += 1
        logger.info("new episode: restart the run in the game yourself")

    def release(self) -> None:
        return None
