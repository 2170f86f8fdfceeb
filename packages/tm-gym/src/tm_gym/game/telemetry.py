"""The OpenPlanet telemetry protocol: a typed record and pure encode/decode functions.

Two wire formats share one TCP stream layout (little-endian float32, one record per frame):

* **TMRL layout** (what TMRL's plugin sends, and ours when asked to): 11 floats, 44 bytes, no
  header — speed (km/h), distance driven (m), x, y, z (m, y up), steer, gas, brake (1/0),
  finished (1/0), gear, rpm.
* **tm-gym v2** (what our plugin sends by default): the stream starts with the 8-byte magic
  :data:`MAGIC_V2` (``b"TMGYM"`` + version byte 2 + two zero bytes), then records of
  :data:`V2_FLOATS` floats: the 11 above followed by race time (s), checkpoint index, velocity
  x, y, z (m/s), yaw, pitch, roll (rad).

A client tells them apart from the first 8 bytes: the TMRL layout never starts with the magic
(it would be a speed of about 3.5e15 km/h).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields

from tm_gym.error import TelemetryError

__all__ = [
    "MAGIC_V2",
    "TMRL_FLOATS",
    "V2_FLOATS",
    "TelemetryRecord",
    "decode_record",
    "encode_record",
    "record_size",
]

MAGIC_V2 = b"TMGYM\x02\x00\x00"
TMRL_FLOATS = 11
V2_FLOATS = 19
_TMRL = struct.Struct(f"<{TMRL_FLOATS}f")
_V2 = struct.Struct(f"<{V2_FLOATS}f")


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


_FIELD_NAMES = [f.name for f in fields(TelemetryRecord)][:V2_FLOATS]


def record_size(version: int) -> int:
    """Bytes per record for protocol ``version`` (1 = TMRL, 2 = v2)."""
    if version == 1:
        return _TMRL.size
    if version == 2:
        return _V2.size
    raise TelemetryError(f"unknown telemetry protocol version {version!r}; expected 1 or 2")


def decode_record(data: bytes, version: int = 1) -> TelemetryRecord:
    """Decode one record of protocol ``version`` from exactly ``record_size(version)`` bytes."""
    size = record_size(version)
    if len(data) != size:
        raise TelemetryError(
            f"telemetry record of {len(data)} bytes; protocol v{version} records are {size} "
            "bytes — is the plugin version the one this client expects?"
        )
    vals = (_TMRL if version == 1 else _V2).unpack(data)
    if not all(math.isfinite(v) for v in vals[:TMRL_FLOATS]):
        raise TelemetryError(f"telemetry record contains non-finite values: {vals[:TMRL_FLOATS]}")
    kw: dict[str, float | int | bool] = dict(zip(_FIELD_NAMES, vals, strict=False))
    kw["finished"] = vals[8] > 0.5
    kw["gear"] = round(vals[9])
    if version == 2:
        kw["checkpoint"] = round(vals[12])
    kw["version"] = version
    return TelemetryRecord(**kw)  # type: ignore[arg-type]


def encode_record(rec: TelemetryRecord, version: int = 1) -> bytes:
    """Encode ``rec`` in protocol ``version`` (used by the emulator and by tests)."""
    base = [
        rec.speed_kmh,
        rec.distance,
        rec.x,
        rec.y,
        rec.z,
        rec.steer,
        rec.gas,
        rec.brake,
        1.0 if rec.finished else 0.0,
        float(rec.gear),
        rec.rpm,
    ]
    if version == 1:
        return _TMRL.pack(*base)
    if version == 2:
        extra = [
            rec.race_time,
            float(rec.checkpoint),
            rec.vx,
            rec.vy,
            rec.vz,
            rec.yaw,
            rec.pitch,
            rec.roll,
        ]
        return _V2.pack(*base, *extra)
    raise TelemetryError(f"unknown telemetry protocol version {version!r}; expected 1 or 2")
