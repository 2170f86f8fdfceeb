"""The step info every backend returns: one schema, built in one place.

``reset()`` and ``step()`` of every tm-gym environment return an info dict with the keys of
:data:`INFO_KEYS` (replays and real-time environments add a few of their own):

=====================  =================================================================
key                    meaning
=====================  =================================================================
``race_time``          seconds since the start, rounded to the millisecond
``progress``           fraction of the reward's reference covered, 0…1
``checkpoint``         checkpoints crossed (-1 when the telemetry does not say)
``checkpoints_total``  checkpoints on the track (-1 when unknown)
``finished``           whether the car crossed the finish line
``lap_time``           the race time at the finish (s, to the ms), +inf until finished
``position``           (x, y, z) metres, game axes (y up)
``speed_kmh``          forward speed
``gear``, ``rpm``      gear (0 = neutral) and engine rpm
``wall_contacts``      physics substeps spent touching a wall (-1 when unknown)
``failed``             the episode ended for lack of progress
=====================  =================================================================

Every value is a NumPy scalar or array of a fixed dtype and shape from the first step on
(``lap_time`` is a float64, +inf until the finish, never None), so recorders that store infos
in typed arrays work: Minari's ``DataCollector(record_infos=True)``, TorchRL's info readers
(which read each value's ``dtype``). Floats are ``np.float64``, a subclass of Python's float;
counters are ``np.int64`` and flags ``np.bool_`` (``int()``/``bool()`` them for JSON). +inf rather than NaN: an
unfinished lap is slower than any finished one (``min`` and ``<=`` stay right), and it equals
itself, so Gymnasium's ``check_env`` (which compares two infos exactly) passes.
:func:`lap_time_of` reads the lap time back as ``float | None``.

:func:`step_info` builds it from values, :class:`RecordInfo` from telemetry records (what the
real-time backends and the replays see), :func:`batch_info` for N cars at once (the vector
environment).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.telemetry import TelemetryRecord

__all__ = ["INFO_KEYS", "NO_LAP", "RecordInfo", "batch_info", "lap_time_of", "step_info"]

INFO_KEYS = (
    "race_time",
    "progress",
    "checkpoint",
    "checkpoints_total",
    "finished",
    "lap_time",
    "position",
    "speed_kmh",
    "gear",
    "rpm",
    "wall_contacts",
    "failed",
)
"""The keys of every step info, in order (see the module docstring)."""

NO_LAP = math.inf
"""``info["lap_time"]`` before the finish."""


def lap_time_of(info: Mapping[str, Any]) -> float | None:
    """The lap time in ``info`` (s), or None when the car has not finished (``lap_time`` not finite
    or missing, or ``finished`` false)."""
    lap = info.get("lap_time")
    if not info.get("finished", False) or lap is None:
        return None
    value = float(lap)
    return value if math.isfinite(value) else None


def step_info(
    *,
    race_time: float,
    progress: float,
    checkpoint: int,
    checkpoints_total: int,
    finished: bool,
    lap_time: float | None,
    position: NDArray[np.float64],
    speed_kmh: float,
    gear: int,
    rpm: float,
    wall_contacts: int,
    failed: bool,
) -> dict[str, Any]:
    """The info of one car; ``race_time`` and ``lap_time`` are rounded to the millisecond, and
    ``lap_time`` is :data:`NO_LAP` (+inf) unless ``finished``."""
    return {
        "race_time": np.float64(round(race_time, 3)),
        "progress": np.float64(progress),
        "checkpoint": np.int64(checkpoint),
        "checkpoints_total": np.int64(checkpoints_total),
        "finished": np.bool_(finished),
        "lap_time": np.float64(round(lap_time, 3) if finished and lap_time is not None else NO_LAP),
        "position": position,
        "speed_kmh": np.float64(speed_kmh),
        "gear": np.int64(gear),
        "rpm": np.float64(rpm),
        "wall_contacts": np.int64(wall_contacts),
        "failed": np.bool_(failed),
    }


class RecordInfo:
    """Step infos of one car from its telemetry records.

    The race time is the record's, or ``elapsed()`` when the record has none (TMRL's layout);
    the lap time is the race time of the first finished record since :meth:`reset`.

    Args:
        checkpoints_total: checkpoints on the track (-1 when unknown).
    """

    def __init__(self, checkpoints_total: int = -1) -> None:
        self.checkpoints_total = checkpoints_total
        self.lap_time: float | None = None

    def reset(self) -> None:
        """A new episode: no lap time yet."""
        self.lap_time = None

    def info(
        self,
        rec: TelemetryRecord,
        *,
        progress: float,
        failed: bool,
        elapsed: Callable[[], float],
        wall_contacts: int = -1,
    ) -> dict[str, Any]:
        """The info of ``rec`` (``elapsed`` is called only when the record has no race time)."""
        race_time = rec.race_time
        if not math.isfinite(race_time):
            race_time = elapsed()
        if rec.finished and self.lap_time is None:
            self.lap_time = round(race_time, 3)
        return step_info(
            race_time=race_time,
            progress=progress,
            checkpoint=rec.checkpoint,
            checkpoints_total=self.checkpoints_total,
            finished=rec.finished,
            lap_time=self.lap_time,
            position=np.array(rec.position, dtype=np.float64),
            speed_kmh=rec.speed_kmh,
            gear=rec.gear,
            rpm=rec.rpm,
            wall_contacts=wall_contacts,
            failed=failed,
        )


def batch_info(
    *,
    race_time: NDArray[np.float64],
    progress: NDArray[np.float64],
    checkpoint: NDArray[np.int64],
    checkpoints_total: int,
    finished: NDArray[np.bool_],
    finish_time: NDArray[np.float64],
    position: NDArray[np.float64],
    speed_kmh: NDArray[np.float64],
    gear: NDArray[Any],
    rpm: NDArray[np.float64],
    wall_contacts: NDArray[Any],
    failed: NDArray[np.bool_],
) -> dict[str, NDArray[Any]]:
    """The infos of N cars as arrays (N,) (``position`` (N, 3)), one per key of
    :data:`INFO_KEYS`; ``lap_time`` is ``finish_time`` where finished, +inf elsewhere.

    The arrays are used as given (pass copies of state that will change)."""
    return {
        "race_time": np.round(race_time, 3),
        "progress": progress,
        "checkpoint": checkpoint,
        "checkpoints_total": np.full(len(finished), checkpoints_total),
        "finished": finished,
        "lap_time": np.where(finished, np.round(finish_time, 3), np.inf),
        "position": position,
        "speed_kmh": speed_kmh,
        "gear": gear,
        "rpm": rpm,
        "wall_contacts": wall_contacts,
        "failed": failed,
    }
