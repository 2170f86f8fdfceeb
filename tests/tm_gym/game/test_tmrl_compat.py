"""The TMRL-compatible layout is value for value what TMRL's plugin sends.

TMRL's client (``tmrl/custom/tm/utils/tools.py``, TM2020OpenPlanetClient) reads the socket into a
byte string, keeps the newest complete 44-byte record and ``struct.unpack("<11f")`` it; its
environment then reads ``data[0]`` speed, ``data[2:5]`` position, ``data[8]`` finished,
``data[9]`` gear, ``data[10]`` rpm. TMRL's plugin fills those from ``CSmScriptPlayer``: Speed
(m/s), Distance, Position.x/y/z, InputSteer, InputGasPedal, InputIsBraking (1/0), the finish
sequence (1/0), EngineCurGear, EngineRpm.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from importlib import resources

import pytest

from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.game.telemetry import MS_TO_KMH, TMRL_FLOATS, decode_record, encode_record

RECORD = TelemetryRecord(
    speed_kmh=180.0,
    distance=512.25,
    x=100.5,
    y=9.0,
    z=-42.75,
    steer=-0.5,
    gas=1.0,
    brake=1.0,
    finished=True,
    gear=4,
    rpm=9876.0,
)


def tmrl_client_decode(stream: bytes) -> tuple[float, ...]:
    """What TMRL's client does with the bytes it received: the newest complete 11-float record."""
    nb_bytes = 4 * 11
    div = len(stream) // nb_bytes
    data_used = stream[(div - 1) * nb_bytes : div * nb_bytes]
    return struct.unpack("<" + "f" * 11, data_used)


def test_tmrl_client_reads_what_tmrl_plugin_would_send() -> None:
    older = dataclasses.replace(RECORD, speed_kmh=36.0, finished=False)
    stream = encode_record(older, 1) + encode_record(RECORD, 1) + b"\x00" * 10  # a partial one
    data = tmrl_client_decode(stream)
    assert len(data) == TMRL_FLOATS
    assert data[0] == pytest.approx(50.0)  # CSmScriptPlayer.Speed: m/s, not km/h
    assert data[1] == 512.25  # Distance
    assert (data[2], data[3], data[4]) == (100.5, 9.0, -42.75)  # Position.x, .y (up), .z
    assert (data[5], data[6], data[7]) == (-0.5, 1.0, 1.0)  # steer, gas, braking as 1.0
    assert bool(data[8]) is True  # TMRL: end_of_track = bool(data[8])
    assert data[9] == 4.0 and data[10] == 9876.0  # EngineCurGear as a float, EngineRpm


def test_a_tmrl_plugin_packet_decodes_to_km_h() -> None:
    # 11 floats as TMRL's plugin writes them: 25 m/s, not finished, gear 2
    packet = struct.pack("<11f", 25.0, 80.0, 1.0, 2.0, 3.0, 0.25, 0.5, 0.0, 0.0, 2.0, 5000.0)
    rec = decode_record(packet, 1)
    assert rec.speed_kmh == pytest.approx(25.0 * MS_TO_KMH)
    assert rec.position == (1.0, 2.0, 3.0) and rec.finished is False and rec.gear == 2
    assert rec.version == 1 and rec.checkpoint == -1


def _plugin_source() -> str:
    return resources.files("tm_gym.game").joinpath("plugin", "main.as").read_text("utf-8")


def test_plugin_writes_tmrl_fields_in_tmrl_order_from_the_script_api() -> None:
    src = _plugin_source()
    body = re.search(r"void FillRecord\(.*?\n\}", src, re.S)
    assert body is not None
    tmrl_part = body.group(0).split("if (tmrl) return;")[0]
    writes = re.findall(r"buf\.Write\((.*?)\);", tmrl_part)
    assert writes == [
        "tmrl ? api.Speed : api.Speed * MS_TO_KMH",
        "api.Distance",
        "api.Position.x",
        "api.Position.y",
        "api.Position.z",
        "api.InputSteer",
        "api.InputGasPedal",
        "api.InputIsBraking ? 1.0f : 0.0f",
        "IsFinished(playground) ? 1.0f : 0.0f",
        "float(api.EngineCurGear)",
        "api.EngineRpm",
    ]
    # TMRL's finish test, and no speed or rpm from another object than the script API
    assert (
        "GameTerminals[0].UISequence_Current == SGamePlaygroundUIConfig::EUISequence::Finish" in src
    )
    assert "ViewingPlayerState" not in src and "GetRPM" not in src and "FrontSpeed" not in src
    # one write of the whole record per frame
    assert src.count("client.Write(buf)") == 2  # the magic once, then each record
