"""The OpenPlanet telemetry wire protocol: pure encode/decode of :class:`TelemetryRecord`.

Two wire formats share one TCP stream layout (little-endian float32, one record per rendered
frame, written by ``tm_gym/game/plugin/main.as``):

* **TMRL layout** (protocol 1: what TMRL's plugin sends, and ours with its *TMRL-compatible*
  setting): 11 floats, 44 bytes, no header. Value for value TMRL's: the speed is the game's
  ``CSmScriptPlayer.Speed`` **in m/s** (not km/h), the brake and finished flags are 1.0/0.0 and
  the gear is a float.
* **tm-gym v2** (protocol 2: what our plugin sends by default): the stream starts with the
  8-byte magic :data:`MAGIC_V2` (``b"TMGYM"`` + version byte 2 + two zero bytes), then records
  of :data:`V2_FLOATS` floats: the telemetry row of :mod:`tm_gym.core.telemetry` — the 11 above
  (the speed in km/h) followed by race time (s), checkpoints passed, velocity x, y, z (m/s),
  yaw, pitch, roll (rad).

Where each field comes from in the game. The plugin reads them all from one player — the one the
game terminal controls (``GameTerminals[0].ControlledPlayer``, or the arena's only player) —
through its script API ``api`` (``CSmScriptPlayer``), as TMRL's plugin does:

===  ==========  ==========================================  =================================
 #   field       game member                                 on the wire
===  ==========  ==========================================  =================================
 0   speed       ``api.Speed`` (m/s)                         TMRL: m/s; v2: km/h (× 3.6)
 1   distance    ``api.Distance``                            metres driven this race
 2   x           ``api.Position.x``                          metres, game axes
 3   y           ``api.Position.y``                          metres, up
 4   z           ``api.Position.z``                          metres
 5   steer       ``api.InputSteer``                          −1 left … +1 right
 6   gas         ``api.InputGasPedal``                       0 … 1
 7   brake       ``api.InputIsBraking``                      1.0 / 0.0
 8   finished    ``GameTerminals[0].UISequence_Current``     1.0 while the finish sequence
                 ``== Finish``                               shows, else 0.0
 9   gear        ``api.EngineCurGear``                       as a float
10   rpm         ``api.EngineRpm``
11   race time   ``api.CurrentRaceTime`` / 1000              v2 only; s, < 0 in the countdown
12   checkpoint  ``api.RaceWaypointTimes.Length`` (or the    v2 only
                 respawn-landmark changes in Time Attack)
13   vx, vy, vz  ``api.Velocity``                            v2 only; m/s
16   yaw, pitch  the same player's ``CSceneVehicleVisState``  v2 only; rad, NaN when unknown
18   roll        ``Dir``/``Up``/``Left`` (VehicleState)
===  ==========  ==========================================  =================================

Decoding turns both into the same :class:`TelemetryRecord` (``speed_kmh`` in km/h): a TMRL
record's speed is multiplied by :data:`MS_TO_KMH`, and :func:`encode_record` divides by it, so
the emulator sends exactly what TMRL's plugin would. The sign of ``api.Speed`` is whatever the
game reports (published plugins treat it as never negative).

A client tells the layouts apart from the first 8 bytes: the TMRL layout never starts with the
magic (it would be a speed of about 3.5e15 m/s).
"""

from __future__ import annotations

import math
import struct

from tm_gym.core.telemetry import ROW_SIZE, TMRL_FIELDS, TelemetryRecord
from tm_gym.error import TelemetryError

__all__ = [
    "MAGIC_V2",
    "MS_TO_KMH",
    "TMRL_FLOATS",
    "V2_FLOATS",
    "decode_record",
    "encode_record",
    "record_size",
]

MAGIC_V2 = b"TMGYM\x02\x00\x00"
MS_TO_KMH = 3.6
"""km/h per m/s: the TMRL layout's speed is in m/s, :attr:`TelemetryRecord.speed_kmh` in km/h."""
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
    if version == 1:
        vals = (vals[0] * MS_TO_KMH, *vals[1:], *_UNKNOWN)
    return TelemetryRecord.from_row(vals, version=version)


def encode_record(rec: TelemetryRecord, version: int = 1) -> bytes:
    """Encode ``rec`` in protocol ``version`` (used by the emulator and by tests).

    Version 1 writes what TMRL's plugin would: the speed in m/s (``speed_kmh / 3.6``).
    """
    record_size(version)  # checks the version
    row = rec.to_row().astype(float).tolist()
    if version == 1:
        row[0] = rec.speed_kmh / MS_TO_KMH
        return _TMRL.pack(*row[:TMRL_FLOATS])
    return _V2.pack(*row)
