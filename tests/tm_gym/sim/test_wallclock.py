"""WallClockSim and its ports, driven by a fake clock (deterministic, no real waiting)."""

from __future__ import annotations

import threading
from typing import cast

import numpy as np
import pytest

from tm_gym.backends.sim import sim_backend
from tm_gym.core.ports import Controller, FrameSource, TelemetrySource
from tm_gym.error import CaptureError, ControllerError, InvalidActionError, TelemetryError
from tm_gym.realtime.interface import RealtimeBackend
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.wallclock import (
    SimController,
    SimFrames,
    SimTelemetry,
    WallClockSim,
)


def sim_ports(b: RealtimeBackend) -> tuple[SimTelemetry, SimFrames, SimController]:
    return cast(tuple[SimTelemetry, SimFrames, SimController], b.ports)


GAS = np.array([1.0, 0.0, 0.0])
BRAKE_LEFT = np.array([0.0, 1.0, -1.0])


class FakeClock:
    """A clock that only moves when told to (``sleep`` moves it too)."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_frozen_until_started(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    before = sim.telemetry_record()
    clock.t += 5.0
    assert sim.telemetry_record() == before
    assert not sim.started
    assert sim.seconds_to_next_substep() == np.inf


def test_catches_up_in_whole_substeps(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    sim.start()
    sim.set_controls(GAS)
    clock.t += 0.0999  # 9 whole substeps have elapsed, the 10th has not
    assert sim.stamp() == (1, 9)
    clock.t += 0.0001
    assert sim.stamp() == (1, 10)
    ref = Simulator("default")
    ref.step(GAS[None], 10)
    rec = sim.telemetry_record()
    assert rec.x == ref.x[0] and rec.z == ref.y[0] and rec.speed_kmh == ref.speed_kmh[0]
    assert rec.race_time == pytest.approx(0.1)


def test_controls_change_at_the_substep_in_progress(clock: FakeClock) -> None:
    """What elapsed ran under the old controls; the new ones apply from the current substep."""
    sim = WallClockSim("default", clock=clock)
    sim.start()
    sim.set_controls(GAS)
    clock.t += 0.5  # 50 substeps of gas
    clock.t += 0.004  # into substep 51
    sim.set_controls(BRAKE_LEFT)
    clock.t += 0.296  # to substep 80
    ref = Simulator("default")
    ref.step(GAS[None], 50)
    ref.step(BRAKE_LEFT[None], 30)
    rec = sim.telemetry_record()
    assert (rec.x, rec.z, rec.yaw) == (ref.x[0], ref.y[0], ref.psi[0])
    assert rec.brake == 1.0 and rec.gas == 0.0 and rec.steer == -1.0


def test_deterministic_given_the_same_clock_readings() -> None:
    def drive() -> list[tuple[float, ...]]:
        clock = FakeClock(t=7.0)
        sim = WallClockSim("default", clock=clock)
        sim.start()
        out: list[tuple[float, ...]] = []
        rng = np.random.default_rng(3)
        for _ in range(40):
            sim.set_controls(rng.uniform(-1, 1, 3))
            clock.t += float(rng.uniform(0.0, 0.07))
            r = sim.telemetry_record()
            out.append((r.x, r.z, r.speed_kmh, r.yaw, r.race_time))
        return out

    assert drive() == drive()


def test_telemetry_in_game_axes(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    sim.start()
    sim.set_controls(np.array([1.0, 0.0, 0.05]))
    clock.t += 2.0
    rec = sim.telemetry_record()
    s = sim.sim
    assert rec.version == 2
    assert (rec.x, rec.y, rec.z) == (s.x[0], 0.0, s.y[0])
    assert (rec.vx, rec.vy, rec.vz) == (s.vx[0], 0.0, s.vy[0])
    assert rec.speed_kmh == pytest.approx(3.6 * np.hypot(s.vx[0], s.vy[0]), rel=0.2)
    assert rec.speed_kmh > 20 and rec.gear >= 1 and rec.rpm > 1000
    assert rec.race_time == pytest.approx(2.0)
    assert rec.checkpoint == 0 and not rec.finished
    assert rec.distance > 0


def test_respawn_restarts_car_and_race_time(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    sim.start()
    start = sim.telemetry_record()
    sim.set_controls(GAS)
    clock.t += 1.0
    assert sim.telemetry_record().x != start.x
    sim.respawn()
    assert sim.stamp() == (2, 0)
    rec = sim.telemetry_record()
    assert (rec.x, rec.z, rec.speed_kmh, rec.race_time) == (start.x, start.z, 0.0, 0.0)
    assert rec.gas == 0.0  # controls are neutral after a respawn
    clock.t += 0.2
    assert sim.telemetry_record().speed_kmh == 0.0  # nobody pressed gas again


def test_frame_and_exact_lidar(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    sim.start()
    sim.set_controls(GAS)
    clock.t += 0.3
    f = sim.frame()
    assert f.shape == (128, 256, 3) and f.dtype == np.uint8
    scan = sim.exact_lidar()
    assert scan.shape == (19,) and scan.dtype == np.float32
    np.testing.assert_array_equal(scan, sim.sim.lidar()[0])


def test_invalid_controls_rejected(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    with pytest.raises(InvalidActionError, match="shape"):
        sim.set_controls(np.zeros(2))
    with pytest.raises(InvalidActionError, match="finite"):
        sim.set_controls(np.array([np.nan, 0.0, 0.0]))
    sim.set_controls(np.array([3.0, -2.0, 5.0]))
    np.testing.assert_array_equal(sim.controls, [1.0, -1.0, 1.0])


def test_ports_follow_the_protocols(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    assert isinstance(SimTelemetry(sim), TelemetrySource)
    assert isinstance(SimFrames(sim), FrameSource)
    assert isinstance(SimController(sim), Controller)


def test_closed_ports_raise_their_errors(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    tel, frames, ctl = SimTelemetry(sim), SimFrames(sim), SimController(sim)
    with pytest.raises(TelemetryError, match="open"):
        tel.latest()
    with pytest.raises(TelemetryError, match="open"):
        tel.wait_fresh()
    with pytest.raises(CaptureError, match="open"):
        frames.grab()
    with pytest.raises(ControllerError, match="open"):
        ctl.apply(np.zeros(3, np.float32))
    with pytest.raises(ControllerError, match="open"):
        ctl.respawn()
    ctl.release()  # releasing a closed controller is harmless


def test_ports_open_close_idempotent(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    with SimTelemetry(sim) as tel, SimController(sim) as ctl, SimFrames(sim) as frames:
        assert sim.started  # opening a port starts the car
        ctl.apply(np.array([1.0, 0.0, 0.0], np.float32))
        clock.t += 0.5
        assert tel.latest().speed_kmh > 0
        assert frames.grab().shape == (128, 256, 3)
        ctl.open()
        tel.open()
    for p in (tel, ctl, frames):
        assert not p.is_open
        p.close()
    assert sim.controls.tolist() == [0.0, 0.0, 0.0]  # closing the controller released it


def test_wait_fresh_waits_for_the_next_substep(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    with SimTelemetry(sim, sleep=clock.sleep) as tel:
        first = tel.wait_fresh()  # never read: fresh at once
        assert clock.sleeps == []
        assert first.race_time == 0.0
        clock.t += 0.004
        rec = tel.wait_fresh()
        assert rec.race_time == pytest.approx(0.01)
        assert sum(clock.sleeps) == pytest.approx(0.006)  # slept until the substep ended
        clock.sleeps.clear()
        clock.t += 0.025  # two substeps elapsed meanwhile: fresh without waiting
        assert tel.wait_fresh().race_time == pytest.approx(0.03)
        assert clock.sleeps == []
        sim.respawn()  # a respawn is news, even before a substep elapses
        assert tel.wait_fresh().race_time == 0.0
        assert clock.sleeps == []


def test_wait_fresh_times_out(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    with SimTelemetry(sim, sleep=clock.sleep) as tel:
        tel.latest()
        with pytest.raises(TelemetryError, match=r"within 0\.0 s"):
            tel.wait_fresh(timeout=0.0)


def test_sim_backend_wiring(clock: FakeClock) -> None:
    sim = WallClockSim("default", clock=clock)
    b = sim_backend(sim)
    assert isinstance(b, RealtimeBackend)
    assert b.respawn_wait == 0.0
    assert b.lidar_source is not None
    assert b.checkpoints_total == len(sim.track.checkpoints_s)
    assert sim_backend(sim, exact_lidar=False).lidar_source is None
    with b:
        assert all(p.is_open for p in sim_ports(b))
    assert not any(p.is_open for p in sim_ports(b))


def test_threads_share_one_car() -> None:
    """rtgym's thread and the caller's use it together: no errors, time only moves forward."""
    sim = WallClockSim("default")
    sim.start()
    errors: list[BaseException] = []
    stop = threading.Event()

    def controls() -> None:
        rng = np.random.default_rng(0)
        try:
            while not stop.is_set():
                sim.set_controls(rng.uniform(-1, 1, 3))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=controls)
    t.start()
    try:
        last = -1.0
        for _ in range(300):
            rec = sim.telemetry_record()
            assert rec.race_time >= last
            last = rec.race_time
            sim.frame()
    finally:
        stop.set()
        t.join()
    assert errors == []
