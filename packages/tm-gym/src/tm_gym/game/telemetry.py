"""The OpenPlanet telemetry wire protocol: pure encode/decode of :class:`TelemetryRecord`.

Two wire formats share one TCP stream layout (little-endian float32, one record per frame):

* **TMRL layout** (what TMRL's plugin sends, and ours when asked to): 11 floats, 44 bytes, no
  header — speed (km/h), distance driven (m), x, y, z (m, y up), steer, gas, brake (1/0),
  finished (1/0), gear, rpm.
* **tm-gym v2** (what our plugin sends by default): the stream starts with the 8-byte magic
  :data:`MAGIC_V2` (``b"TMGYM"`` + version byte 2 + two zero bytes), then records of
  :data:`V2_FLOATS` floats: the telemetry row of :mod:`tm_gym.core.telemetry` — the 11 above
  followed by race time (s), checkpoint index, velocity x, y, z (m/s), yaw, pitch, roll (rad).

A client tells them apart from the first 8 bytes: the TMRL layout never starts with the magic
(it would be a speed of about 3.5e15 km/h).
"""

from __future__ import annotations

import math
import struct

from tm_gym.core.telemetry import ROW_SIZE, TMRL_FIELDS, TelemetryRecord
from tm_gym.error import TelemetryError

__all__ = [
    "MAGIC_V2",
    "TMRL_FLOATS",
    "V2_FLOATS",
    "decode_record",
    "encode_record",
    "record_size",
]

MAGIC_V2 = b"TMGYM\x02\x00\x00"
TMRL_FLOATS = TMRL_FIELDS
V2_FLOATS = ROW_SIZE
_TMRL = struct.Struct(f"<{TMRL_FLOATS}f")
_V2 = struct.Struct(f"<{V2_FLOATS}f")
_UNKNOWN = (math.nan,) * (V2_FLOATS - TMRL_FLOATS)
"""What the TMRL layout leaves out: NaN in the row (the checkpoint becomes -1)."""


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
    row = vals if version == 2 else vals + _UNKNOWN
    return TelemetryRecord.from_row(row, version=version)


def encode_record(rec: TelemetryRecord, version: int = 1) -> bytes:
    """Encode ``rec`` in protocol ``version`` (used by the emulator and by tests)."""
    size = record_size(version)  # checks the version
    row = rec.to_row().tolist()
    return (_TMRL if size == _TMRL.size else _V2).pack(*row[: size // 4])
