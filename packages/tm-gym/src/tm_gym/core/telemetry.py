"""The telemetry record of one car, and its one row layout.

:class:`TelemetryRecord` is what every telemetry source produces (the game's OpenPlanet plugin,
the emulator, the simulator) and what observations, rewards and recordings are built from. Its
19 numeric fields, in the order of :data:`ROW_FIELDS`, are *the* row layout of tm-gym: the
tm-gym v2 wire record (:mod:`tm_gym.game.telemetry`), a ``.tmrec`` file's ``telemetry`` array and
a Minari dataset's ``infos/telemetry`` all use it, through :meth:`TelemetryRecord.to_row` and
:meth:`TelemetryRecord.from_row`:

===  ===============  =====================================================================
 #   field            meaning
===  ===============  =====================================================================
 0   ``speed_kmh``    forward speed, km/h
 1   ``distance``     distance driven, metres
 2   ``x``            position, metres (game axes: x and z horizontal, y up)
 3   ``y``
 4   ``z``
 5   ``steer``        steering input, −1 left … +1 right
 6   ``gas``          gas input, 0…1
 7   ``brake``        brake input, 1.0 or 0.0
 8   ``finished``     1.0 once the finish sequence shows
 9   ``gear``         gear, 0 = neutral
10   ``rpm``          engine rpm
11   ``race_time``    seconds since the start (NaN when unknown: TMRL's 11-float layout)
12   ``checkpoint``   checkpoints crossed (NaN or −1 when unknown)
13   ``vx``           velocity, m/s (NaN when unknown)
14   ``vy``
15   ``vz``
16   ``yaw``          orientation, radians (NaN when unknown)
17   ``pitch``
18   ``roll``
===  ===============  =====================================================================

>>> rec = TelemetryRecord(120.0, 35.5, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0, False, 3, 7000.0)
>>> TelemetryRecord.from_row(rec.to_row()) == rec
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ROW_FIELDS", "ROW_SIZE", "TMRL_FIELDS", "TelemetryRecord"]

ROW_SIZE = 19
"""Floats in one telemetry row."""
TMRL_FIELDS = 11
"""The first fields, those TMRL's plugin sends (speed … rpm); the others are unknown there."""


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    """One telemetry record (game axes: x and z horizontal, y up).

    Fields beyond ``rpm`` are only sent by the v2 protocol; with the TMRL layout they are NaN
    (``race_time``, velocities, angles) or -1 (``checkpoint``).
    """

    speed_kmh: float
    distance: float
    x: float
    y: float
    z: float
    steer: float
    gas: float
    brake: float
    finished: bool
    gear: int
    rpm: float
    race_time: float = math.nan
    checkpoint: int = -1
    vx: float = math.nan
    vy: float = math.nan
    vz: float = math.nan
    yaw: float = math.nan
    pitch: float = math.nan
    roll: float = math.nan
    version: int = 1
    """1 = TMRL layout, 2 = tm-gym v2."""

    @property
    def position(self) -> tuple[float, float, float]:
        return (self.x, self.y, self.z)

    def to_row(self) -> NDArray[np.float32]:
        """The (19,) float32 row of this record (``finished`` as 1.0/0.0, ``gear`` and
        ``checkpoint`` as floats); ``version`` is not part of the row."""
        return np.array([float(getattr(self, name)) for name in ROW_FIELDS], dtype=np.float32)

    @classmethod
    def from_row(cls, row: Any, *, version: int | None = None) -> TelemetryRecord:
        """The record of a row of :data:`ROW_SIZE` numbers (any float dtype).

        ``finished`` is ``row[8] > 0.5``, ``gear`` and ``checkpoint`` are rounded (a non-finite
        checkpoint is -1). ``version`` defaults to 2 when the race time is known, else 1.

        Raises:
            ValueError: the row does not hold :data:`ROW_SIZE` numbers.
        """
        values = np.asarray(row, dtype=np.float64)
        if values.shape != (ROW_SIZE,):
            raise ValueError(
                f"a telemetry row has shape {values.shape}; expected ({ROW_SIZE},) numbers in "
                f"the order of tm_gym.core.telemetry.ROW_FIELDS"
            )
        kw: dict[str, Any] = {name: float(v) for name, v in zip(ROW_FIELDS, values, strict=True)}
        kw["finished"] = bool(values[8] > 0.5)
        kw["gear"] = round(float(values[9]))
        checkpoint = float(values[12])
        kw["checkpoint"] = round(checkpoint) if math.isfinite(checkpoint) else -1
        if version is None:
            version = 2 if math.isfinite(float(values[11])) else 1
        return cls(**kw, version=version)


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TelemetryRecord))[:ROW_SIZE]
"""The record's fields in row order (see the module docstring)."""
