"""Car physics through the Simulator: engine, gearbox, brakes, tyres, walls, and the
independence of the result from how the physics substeps are batched."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tm_gym.sim.physics import CarParams
from tm_gym.sim.simulator import PHYSICS_DT, Simulator
from tm_gym.sim.track import FORMAT, Track, track_from_dict

GAS = np.array([[1.0, 0.0, 0.0]])
BRAKE = np.array([[0.0, 1.0, 0.0]])
COAST = np.zeros((1, 3))


@pytest.fixture(scope="module")
def long_straight() -> Track:
    """A 2.5 km straight, 80 m wide: room to reach top speed and to slide without walls."""
    return track_from_dict(
        {"format": FORMAT, "name": "drag-strip", "width": 80, "segments": [{"straight": 2500}]}
    )


def drive_until(sim: Simulator, controls: np.ndarray, cond, max_s: float = 60.0) -> float:
    """Step one substep at a time under ``controls`` until ``cond(sim)``; returns race time."""
    for _ in range(int(max_s / sim.physics_dt)):
        if cond(sim):
            return float(sim.race_time[0])
        sim.step(controls, 1)
    raise AssertionError(f"condition not reached in {max_s} s (speed {sim.speed_kmh[0]:.1f})")


def test_zero_to_200_on_speedway() -> None:
    sim = Simulator("speedway")
    assert sim.speed_kmh[0] == 0.0
    t = drive_until(sim, GAS, lambda s: s.speed_kmh[0] >= 200.0)
    assert 3.5 <= t <= 5.5, f"0-200 km/h took {t:.2f} s"
    assert sim.s[0] < 450.0, "still on the first straight"
    assert sim.contacts[0] == 0
    assert abs(sim.lat[0]) < 1e-9, "full gas with no steering drives dead straight"


def test_speedway_first_straight_exceeds_300() -> None:
    sim = Simulator("speedway")
    drive_until(sim, GAS, lambda s: s.s[0] >= 440.0)
    assert sim.speed_kmh[0] > 300.0


@pytest.mark.slow  # drives 2.4 km
def test_speed_after_one_km_and_top_speed(long_straight: Track) -> None:
    sim = Simulator(long_straight)
    start = float(sim.s[0])
    drive_until(sim, GAS, lambda s: s.s[0] - start >= 1000.0)
    assert sim.speed_kmh[0] > 300.0
    # top speed: the power limit balances drag (and rolling) below 450 km/h
    p = CarParams()
    roots = np.roots([p.drag, 0.0, p.rolling, -p.power])
    v_top = max(r.real for r in roots if abs(r.imag) < 1e-9)
    assert 380.0 < v_top * 3.6 < 450.0
    drive_until(sim, GAS, lambda s: s.s[0] > 2400.0)
    assert sim.speed_kmh[0] < v_top * 3.6


def test_gearbox_and_rpm() -> None:
    sim = Simulator("speedway")
    assert sim.gear[0] == 0 and sim.rpm[0] == 1000.0
    sim.step(COAST, 20)
    assert sim.gear[0] == 0, "at rest without gas the gearbox stays in neutral"
    gears, rpms, speeds = [], [], []
    for _ in range(1200):
        sim.step(GAS, 1)
        gears.append(int(sim.gear[0]))
        rpms.append(float(sim.rpm[0]))
        speeds.append(float(sim.speed_kmh[0]))
        if sim.s[0] > 440.0:
            break
    g = np.array(gears)
    v = np.array(speeds)
    assert g[0] == 1
    assert np.all(np.diff(g) >= 0), "accelerating never shifts down"
    assert set(g.tolist()) == {1, 2, 3, 4, 5}
    assert np.all((np.array(rpms) >= 1000.0) & (np.array(rpms) <= 11000.0))
    # shift points (CarParams.upshift_kmh = 60, 110, 170, 240)
    assert np.all(g[v < 59.0] == 1)
    assert np.all(g[v > 241.0] == 5)
    assert np.all(g[(v > 111.0) & (v < 169.0)] == 3)
    # rpm drops at each upshift
    ups = np.flatnonzero(np.diff(g) > 0) + 1
    assert len(ups) == 4
    r = np.array(rpms)
    assert np.all(r[ups] < r[ups - 1])


def test_braking_and_reversing() -> None:
    sim = Simulator("speedway")
    drive_until(sim, GAS, lambda s: s.speed_kmh[0] >= 200.0)
    s0, t0 = float(sim.s[0]), float(sim.race_time[0])
    t1 = drive_until(sim, BRAKE, lambda s: s.speed[0] <= 0.0)
    dist = float(sim.s[0]) - s0
    # (200 / 3.6)² / (2 · 22 m/s²) = 70 m, a little less with drag and rolling resistance
    assert 55.0 < dist < 80.0, f"stopped in {dist:.1f} m"
    assert 2.0 < t1 - t0 < 3.0
    assert sim.speed[0] == 0.0, "braking does not overshoot into reverse"
    sim.step(BRAKE, 200)  # keep holding the brake at a standstill: reverse
    assert sim.speed_kmh[0] < -20.0
    assert sim.speed[0] >= -CarParams().reverse_max - 1e-9
    assert sim.gear[0] >= 1
    s_rev = float(sim.s[0])
    sim.step(BRAKE, 50)
    assert sim.s[0] < s_rev, "going backwards along the track"


def test_coasting_slows_down_but_not_into_reverse() -> None:
    sim = Simulator("speedway")
    drive_until(sim, GAS, lambda s: s.speed_kmh[0] >= 50.0)
    sim.step(COAST, 6000)
    assert sim.speed[0] == 0.0


def _slide(track: Track, steer: float, kmh: float, gas: float = 1.0) -> tuple[Simulator, float]:
    """Reach ``kmh`` going straight, then hold ``steer`` for 1 s; returns the simulator and the
    largest sideways speed (m/s) seen meanwhile."""
    sim = Simulator(track)
    drive_until(sim, GAS, lambda s: s.speed_kmh[0] >= kmh)
    lateral = 0.0
    for _ in range(100):
        sim.step(np.array([[gas, 0.0, steer]]), 1)
        c, s = np.cos(sim.psi[0]), np.sin(sim.psi[0])
        lateral = max(lateral, abs(-sim.vx[0] * s + sim.vy[0] * c))
    return sim, lateral


def test_full_steering_at_speed_slides(long_straight: Track) -> None:
    straight, slip_straight = _slide(long_straight, 0.0, 200.0)
    turned, slip_turned = _slide(long_straight, 1.0, 200.0)
    assert straight.contacts[0] == 0 and turned.contacts[0] == 0, "no wall involved"
    assert slip_straight < 1e-9
    assert slip_turned > 1.0, "tyres saturated: the car slides"
    loss = straight.speed_kmh[0] - turned.speed_kmh[0]
    assert loss > 10.0, f"sliding cost only {loss:.1f} km/h"
    assert turned.lat[0] < -3.0, "steer +1 turns right"


def test_full_steering_at_low_speed_grips(long_straight: Track) -> None:
    # 30 km/h at full lock needs about 10 m/s² of the tyres' 25
    sim, slip = _slide(long_straight, -1.0, 30.0, gas=0.0)
    assert sim.contacts[0] == 0
    assert slip < 1e-9
    assert sim.lat[0] > 0.5, "steer -1 turns left"


def test_wall_holds_the_car() -> None:
    """Full right lock at speed on the default track's first straight (east along y = 0, 20 m
    wide): the car reaches the right wall, stays on the road and loses speed."""
    sim = Simulator("default")
    ref = Simulator("default")
    p = sim.params
    w = float(sim.track.widths[0])
    assert sim.track.widths[:300].max() == w  # constant width on this straight
    lim = w / 2 - p.half_width
    drive_until(sim, GAS, lambda s: s.speed_kmh[0] >= 150.0)
    drive_until(ref, GAS, lambda s: s.speed_kmh[0] >= 150.0)
    right = np.array([[0.0, 0.0, 1.0]])
    straight = COAST
    lowest = 0.0
    for _ in range(150):
        sim.step(right, 1)
        ref.step(straight, 1)
        lowest = min(lowest, float(sim.y[0]))
        assert abs(sim.lat[0]) <= lim + 1e-6
        # independent of the simulator's own localisation: the straight is the x axis
        assert sim.y[0] >= -lim - 1e-6, f"car at y={sim.y[0]:.3f} went through the wall"
        assert sim.x[0] < 165.0
    assert sim.contacts[0] > 0
    assert lowest == pytest.approx(-lim, abs=1e-6), "the car reached the right wall"
    assert sim.speed_kmh[0] < ref.speed_kmh[0] - 10.0, "hitting the wall costs speed"
    assert ref.contacts[0] == 0


def test_wall_at_the_end_of_the_road(long_straight: Track) -> None:
    sim = Simulator(long_straight)
    sim.step(BRAKE, 300)  # reverse into the wall behind the start (3 s at up to 43 km/h)
    assert sim.contacts[0] > 0
    assert sim.x[0] >= sim.params.half_width - 1e-6
    assert sim.s[0] >= sim.params.half_width - 1e-9


def _state(sim: Simulator) -> dict[str, np.ndarray]:
    names = (
        "x",
        "y",
        "psi",
        "vx",
        "vy",
        "yaw",
        "gear",
        "rpm",
        "idx",
        "s",
        "lat",
        "race_time",
        "finished",
        "finish_time",
        "checkpoint",
        "driven",
        "contacts",
    )
    return {k: getattr(sim, k).copy() for k in names}


def _assert_same_state(a: Simulator, b: Simulator) -> None:
    sa, sb = _state(a), _state(b)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def _control_sequence(n_cars: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, size=(n, n_cars, 3))
    c[:, :, 0] = np.abs(c[:, :, 0]) + 0.3  # mostly gas, so the cars go somewhere
    return c


def test_substep_batching_is_bit_identical() -> None:
    """Advancing 10 substeps in one call equals 10 calls of one substep, bit for bit."""
    one_call, many_calls = Simulator("technical", 3), Simulator("technical", 3)
    for c in _control_sequence(3, 150, seed=1):
        one_call.step(c, 10)
        for _ in range(10):
            many_calls.step(c, 1)
    assert one_call.contacts.sum() > 0, "the random drive should touch walls"
    assert float(one_call.race_time[0]) == pytest.approx(150 * 10 * PHYSICS_DT)
    _assert_same_state(one_call, many_calls)


def test_step_split_equals_two_steps() -> None:
    fused, plain = Simulator("default", 2), Simulator("default", 2)
    seq = _control_sequence(2, 80, seed=2)
    for a, b in itertools.pairwise(seq):
        fused.step_split(np.ascontiguousarray(a), 1, np.ascontiguousarray(b), 4)
        plain.step(a, 1)
        plain.step(b, 4)
    _assert_same_state(fused, plain)
    np.testing.assert_array_equal(fused.controls, plain.controls)


def test_cars_are_independent() -> None:
    """Three cars in one simulator behave exactly like three separate simulators."""
    seq = _control_sequence(3, 100, seed=3)
    together = Simulator("default", 3)
    alone = [Simulator("default", 1) for _ in range(3)]
    for c in seq:
        together.step(c, 5)
        for i, sim in enumerate(alone):
            sim.step(c[i : i + 1], 5)
    for i, sim in enumerate(alone):
        for k, v in _state(sim).items():
            np.testing.assert_array_equal(_state(together)[k][i], v[0], err_msg=k)
    assert len({float(x) for x in together.x}) == 3, "different controls, different places"


def test_reset_mask_only_resets_selected() -> None:
    sim = Simulator("default", 2)
    sim.step(np.array([[1.0, 0, 0], [1.0, 0, 0]]), 100)
    moved = float(sim.x[1])
    sim.reset(np.array([True, False]))
    assert sim.x[0] == pytest.approx(sim.track.start_xy[0])
    assert sim.race_time[0] == 0.0 and sim.speed[0] == 0.0
    assert sim.x[1] == moved and sim.race_time[1] == pytest.approx(1.0)


def test_substeps_rejects_fractional_durations() -> None:
    sim = Simulator("default")
    assert sim.substeps(0.05) == 5
    with pytest.raises(ValueError, match=r"0\.055"):
        sim.substeps(0.055)


@pytest.mark.parametrize(
    "kwargs", [{"grip": -1.0}, {"power": float("nan")}, {"upshift_kmh": (60.0, 50.0, 170.0, 240.0)}]
)
def test_car_params_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CarParams(**kwargs)
