"""What an environment observed at one capture, kept for recordings (:mod:`tm_gym.recording`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.telemetry import TelemetryRecord

__all__ = ["Capture"]


class Capture(NamedTuple):
    """What an environment observed at one capture: the telemetry record the observation was
    built from, and the picture and scan that went into it.

    Every environment that can be recorded returns the capture behind its last observation from
    ``last_capture()`` once ``keep_captures()`` was called.
    """

    record: TelemetryRecord
    frame: NDArray[np.uint8] | None
    """The frame the observation used: the agent's own frame (C, S, S) (``frame_kind="agent"``,
    the synchronous simulator) or the game window's RGB screenshot (H, W, 3) (``"window"``)."""
    lidar: NDArray[np.float32] | None
    """The (19,) LIDAR scan pushed into the observation, when it has one."""
    window: NDArray[np.uint8] | None = None
    """The full-resolution window (H, W, 3), when asked for and different from ``frame``."""
    position: NDArray[np.float64] | None = None
    """The exact (x, y, z) position in game axes, when the backend has more precision than
    the float32 telemetry (the simulators)."""
