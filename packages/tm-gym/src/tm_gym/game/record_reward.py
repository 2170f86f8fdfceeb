"""Record a reference trajectory by driving the track once (for the progress reward).

Drive the track (yourself, the expert in the emulator, or any policy) while this listens to the
telemetry: positions are collected from the first movement until the finish flag (or until
``stop()`` is called / ``max_time`` passes), then resampled every 0.1 m and saved as ``.npz``
or ``.json`` — never pickle (TMRL stores its reward trajectory as a pickle).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from tm_gym.core.ports import TelemetrySource
from tm_gym.error import TelemetryError
from tm_gym.reward import ReferenceTrajectory

__all__ = ["RecordedLap", "record_reference"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedLap:
    """What :func:`record_reference` collected."""

    reference: ReferenceTrajectory
    raw_points: int
    finished: bool
    duration: float
    """Seconds between the first movement and the end of the recording."""


def record_reference(
    telemetry: TelemetrySource,
    *,
    max_time: float = 600.0,
    min_move: float = 0.05,
    stop: threading.Event | None = None,
    record_timeout: float = 10.0,
) -> RecordedLap:
    """Collect the car's positions (game axes x, y, z) until the finish flag.

    Recording starts once the car has moved ``min_move`` metres from where it first was, and
    ends at the finish flag, when ``stop`` is set, or after ``max_time`` seconds.

    Raises:
        TelemetryError: no telemetry (the source's own error), or fewer than two distinct
            positions were recorded.
    """
    stop = stop or threading.Event()
    first = telemetry.wait_fresh(record_timeout)
    origin = np.array(first.position)
    points: list[tuple[float, float, float]] = []
    started_at: float | None = None
    finished = False
    t_end = time.monotonic() + max_time
    while not stop.is_set() and time.monotonic() < t_end:
        rec = telemetry.wait_fresh(record_timeout)
        pos = rec.position
        if started_at is None:
            if math.dist(pos, origin) < min_move:
                continue
            started_at = time.monotonic()
            points.append(tuple(origin))
            log.info("car moving: recording")
        if not points or math.dist(pos, points[-1]) > 1e-3:
            points.append(pos)
        if rec.finished:
            finished = True
            break
    if len(points) < 2:
        raise TelemetryError(
            "recorded fewer than two positions: drive the car from the start to the finish while "
            "recording (the recording starts when the car moves)"
        )
    ref = ReferenceTrajectory.from_polyline(np.asarray(points, dtype=np.float64))
    duration = time.monotonic() - (started_at or time.monotonic())
    return RecordedLap(reference=ref, raw_points=len(points), finished=finished, duration=duration)
