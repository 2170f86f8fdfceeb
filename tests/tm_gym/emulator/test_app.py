"""The emulator's core (no window): keys drive the car, the clock drives physics, respawn holds
the car for the countdown, and telemetry reaches a real client over TCP."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.emulator.app import EmulatorConfig, EmulatorCore, controls_from_keys
from tm_gym.error import TelemetryError
from tm_gym.game.record_reward import record_reference
from tm_gym.game.telemetry_client import TelemetryClient


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def core() -> tuple[EmulatorCore, FakeClock]:
    clock = FakeClock()
    emu = EmulatorCore(EmulatorConfig(port=0, countdown=1.0), clock=clock)
    emu.open()
    try:
        yield emu, clock
    finally:
        emu.close()


def test_controls_from_keys() -> None:
    assert controls_from_keys({"up"}).tolist() == [1.0, 0.0, 0.0]
    assert controls_from_keys({"down", "left"}).tolist() == [0.0, 1.0, -1.0]
    assert controls_from_keys({"left", "right"}).tolist() == [0.0, 0.0, 0.0]
    assert controls_from_keys({"right", "up"}).tolist() == [1.0, 0.0, 1.0]


def test_countdown_holds_the_car_then_gas_moves_it(core: tuple[EmulatorCore, FakeClock]) -> None:
    emu, clock = core
    emu.key_down("Up")
    clock.t += 0.9
    emu.tick()
    assert emu.record().speed_kmh == 0.0 and emu.record().race_time == 0.0
    clock.t += 1.1  # 1.0 s of gas after the countdown
    emu.tick()
    rec = emu.record()
    assert rec.race_time == pytest.approx(1.0, abs=0.011)
    assert 30.0 < rec.speed_kmh < 80.0
    assert rec.x > 10.0 and rec.gear >= 1 and rec.gas == 1.0


def test_keys_steer_and_release(core: tuple[EmulatorCore, FakeClock]) -> None:
    emu, clock = core
    clock.t += 1.0
    emu.tick()
    emu.key_down("Up")
    emu.key_down("Left")
    clock.t += 1.5
    emu.tick()
    assert emu.record().z > 0.5  # turned left: the simulator's +y is the game's +z
    emu.key_up("Up")
    emu.key_up("Left")
    assert emu.held == set()
    assert emu.record().steer == -1.0  # the controls of the last advance


def test_respawn_key_resets_and_restarts_the_countdown(
    core: tuple[EmulatorCore, FakeClock],
) -> None:
    emu, clock = core
    emu.key_down("Up")
    clock.t += 3.0
    emu.tick()
    assert emu.record().x > 20.0
    n = emu.respawns
    emu.key_down("BackSpace")
    assert emu.respawns == n + 1
    rec = emu.record()
    assert (rec.x, rec.z, rec.speed_kmh, rec.race_time) == (10.0, 0.0, 0.0, 0.0)
    clock.t += 0.5
    emu.tick()
    assert emu.record().speed_kmh == 0.0  # still in the countdown


def test_a_long_stall_does_not_fast_forward_for_ages(core: tuple[EmulatorCore, FakeClock]) -> None:
    emu, clock = core
    clock.t += 60.0
    emu.tick()
    assert emu.record().race_time <= 5.0 + 1e-9


def test_telemetry_reaches_a_client(core: tuple[EmulatorCore, FakeClock]) -> None:
    emu, clock = core
    with TelemetryClient("127.0.0.1", emu.port, timeout=5.0) as client:
        emu.key_down("Up")
        got: list[TelemetryRecord] = []
        for _ in range(200):
            clock.t += 0.05
            emu.tick()
            if client.records_received:
                got.append(client.latest())
                if len(got) > 5 and got[-1].speed_kmh > 50:
                    break
            threading.Event().wait(0.002)
        assert client.protocol_version == 2
        assert got and got[-1].speed_kmh > 50
        assert got[-1].race_time > 0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="protocol"):
        EmulatorConfig(protocol=3)
    with pytest.raises(ValueError, match="port"):
        EmulatorConfig(port=70000)


class ListSource:
    """A TelemetrySource replaying a list of records (for record_reference)."""

    def __init__(self, records: list[TelemetryRecord]) -> None:
        self.records = records
        self.i = 0

    def open(self) -> None: ...

    def close(self) -> None: ...

    def latest(self) -> TelemetryRecord:
        return self.records[min(self.i, len(self.records) - 1)]

    def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
        if self.i >= len(self.records):
            raise TelemetryError("no more records")
        rec = self.records[self.i]
        self.i += 1
        return rec


def _rec(x: float, z: float, finished: bool = False) -> TelemetryRecord:
    return TelemetryRecord(0.0, 0.0, x, 0.0, z, 0.0, 0.0, 0.0, finished, 0, 1000.0)


def test_record_reference_from_first_move_to_finish() -> None:
    still = [_rec(10.0, 0.0)] * 5
    moving = [_rec(10.0 + 0.5 * k, 0.0) for k in range(1, 101)]  # 50 m straight
    moving[-1] = _rec(60.0, 0.0, finished=True)
    lap = record_reference(ListSource(still + moving))  # type: ignore[arg-type]
    assert lap.finished
    pts = lap.reference.points
    assert pts.shape[1] == 3
    assert pts[0, 0] == pytest.approx(10.0) and pts[-1, 0] == pytest.approx(60.0, abs=0.1)
    assert np.allclose(np.linalg.norm(np.diff(pts, axis=0), axis=1), 0.1, atol=1e-6)
    assert lap.reference.length == pytest.approx(50.0, abs=0.1)


def test_record_reference_without_movement_fails_clearly() -> None:
    with pytest.raises(TelemetryError, match=r"more records|fewer than two"):
        record_reference(ListSource([_rec(10.0, 0.0)] * 20))  # type: ignore[arg-type]


def test_record_reference_stops_on_request() -> None:
    stop = threading.Event()
    recs = [_rec(10.0 + 0.5 * k, 0.0) for k in range(400)]

    class Stopping(ListSource):
        def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
            if self.i == 50:
                stop.set()
            return super().wait_fresh(timeout)

    lap = record_reference(Stopping(recs), stop=stop)  # type: ignore[arg-type]
    assert not lap.finished
    assert math.isclose(lap.reference.length, 24.5, abs_tol=0.6)
