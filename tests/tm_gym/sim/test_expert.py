"""The scripted expert proves every track drivable and sets its reference lap time."""

from __future__ import annotations

import numpy as np
import pytest

from tm_gym.sim.expert import ExpertDriver, ExpertLap, run_expert
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.tracks import builtin_track_names, load_track

TRACKS = [*builtin_track_names(), *(f"gen:{i}" for i in range(5))]


@pytest.fixture(scope="module")
def laps() -> dict[str, ExpertLap]:
    return {name: run_expert(name, record_frames=False) for name in TRACKS}


@pytest.mark.slow  # the laps fixture drives every track
@pytest.mark.parametrize("name", TRACKS)
def test_expert_finishes(name: str, laps: dict[str, ExpertLap]) -> None:
    lap = laps[name]
    track = load_track(name)
    assert lap.finished, f"the expert did not finish {name}"
    assert lap.track_name == name
    assert lap.lap_time is not None
    # average speed between 100 and 300 km/h
    assert track.length / (300 / 3.6) < lap.lap_time < track.length / (100 / 3.6)
    assert lap.wall_contacts <= 10, f"{lap.wall_contacts} substeps against a wall"
    # the finish was crossed during the last 50 ms decision interval
    assert lap.times[-2] < lap.lap_time <= lap.times[-1] + 1e-9
    assert lap.lap_time == round(lap.lap_time, 3)
    # samples are consistent with each other
    n = len(lap.times)
    assert np.allclose(np.diff(lap.times), 0.05)
    assert lap.positions.shape == (n, 2) and lap.speeds_kmh.shape == (n,)
    assert lap.actions.shape == (n - 1, 3)
    assert np.all(np.abs(lap.actions) <= 1.0)
    assert lap.speeds_kmh.max() < 450.0
    assert lap.frames is None
    # it drove along the track: start near the start line, end past the finish line
    assert np.allclose(lap.positions[0], track.start_xy)
    d_end = np.linalg.norm(track.centerline - lap.positions[-1], axis=1)
    assert track.s[np.argmin(d_end)] > track.finish_s - 1.0


@pytest.mark.slow  # the laps fixture drives every track
def test_default_lap_time(laps: dict[str, ExpertLap]) -> None:
    lap = laps["default"]
    assert lap.lap_time is not None and 30.0 < lap.lap_time < 50.0
    assert lap.wall_contacts == 0


@pytest.mark.slow  # the laps fixture drives every track
def test_speedway_is_fastest(laps: dict[str, ExpertLap]) -> None:
    """The high-speed track has the highest average speed; the technical one the lowest."""
    avg = {}
    for name in builtin_track_names():
        lap_time = laps[name].lap_time
        assert lap_time is not None
        avg[name] = load_track(name).length / lap_time
    assert avg["speedway"] > avg["default"] > avg["technical"]
    assert laps["speedway"].speeds_kmh.max() > 300.0


@pytest.mark.slow  # the laps fixture drives every track
def test_expert_is_deterministic(laps: dict[str, ExpertLap]) -> None:
    again = run_expert("technical", record_frames=False)
    assert again.lap_time == laps["technical"].lap_time
    np.testing.assert_array_equal(again.positions, laps["technical"].positions)


def test_unfinished_lap_with_frames() -> None:
    lap = run_expert("default", record_frames=True, max_time=1.0)
    assert not lap.finished and lap.lap_time is None
    assert lap.frames is not None
    assert lap.frames.shape == (len(lap.times), 128, 256, 3)
    assert lap.frames.dtype == np.uint8
    assert not np.array_equal(lap.frames[0], lap.frames[-1]), "the view changes as it drives"


def test_expert_driver_batches_cars() -> None:
    """The expert's controls for N cars are those it computes for each car alone."""
    track = load_track("technical")
    sim = Simulator(track, 3)
    expert = ExpertDriver(track)
    rng = np.random.default_rng(0)
    sim.step(rng.uniform(0, 1, (3, 3)) * [1, 0, 2] - [0, 0, 1], 150)
    batch = expert.act(sim)
    assert batch.shape == (3, 3)
    assert np.all((batch[:, :2] >= 0) & (batch[:, :2] <= 1))
    assert np.all(np.abs(batch[:, 2]) <= 1)
    assert len({tuple(row) for row in batch.tolist()}) == 3, "three different situations"
    for i in range(3):
        one = Simulator(track, 1)
        for k in ("x", "y", "psi", "vx", "vy", "idx"):
            getattr(one, k)[0] = getattr(sim, k)[i]
        np.testing.assert_array_equal(expert.act(one)[0], batch[i])
