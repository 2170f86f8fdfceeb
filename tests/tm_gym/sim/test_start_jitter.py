"""Start variation: the simulator's start offsets and the environments' seeded ``start_jitter``."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import tm_gym  # noqa: F401  (registers the environments)
from tm_gym.core.config import ConfigError
from tm_gym.envs.sim_core import (
    START_JITTER_HEADING_DEG,
    START_JITTER_LATERAL_M,
    START_JITTER_SPEED_KMH,
)
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.tracks import builtin_track_names


def test_offsets_move_only_the_selected_cars() -> None:
    sim = Simulator("default", 3)
    standard = (sim.x.copy(), sim.y.copy(), sim.psi.copy())
    sim.reset(
        np.array([False, True, True]),
        lateral_m=np.array([0.5, -1.0]),
        heading_rad=np.array([0.02, -0.03]),
        speed_ms=np.array([0.5, 0.0]),
    )
    nrm = sim.track.normals[int(np.argmin(np.abs(sim.track.s - sim.track.start_s)))]
    assert (sim.x[0], sim.y[0], sim.psi[0]) == (standard[0][0], standard[1][0], standard[2][0])
    np.testing.assert_allclose([sim.x[1], sim.y[1]], [standard[0][1], standard[1][1]] + 0.5 * nrm)
    np.testing.assert_allclose([sim.x[2], sim.y[2]], [standard[0][2], standard[1][2]] - 1.0 * nrm)
    assert sim.lat.tolist() == [0.0, 0.5, -1.0]
    np.testing.assert_allclose(sim.psi[1:] - standard[2][1:], [0.02, -0.03])
    np.testing.assert_allclose(sim.speed[1:], [0.5, 0.0])
    assert sim.gear.tolist() == [0, 1, 0]  # rolling at 1.8 km/h: first gear
    with pytest.raises(ValueError, match="lateral_m: expected 2 finite values"):
        sim.reset(np.array([False, True, True]), lateral_m=np.array([0.1]))


def _start(env: gym.Env, seed: int | None) -> tuple[float, ...]:
    """x, y, heading and speed (km/h) once reset() returns (0.04 s after the respawn: the car
    may have rolled a few centimetres; its heading has not changed)."""
    env.reset(seed=seed)
    sim = env.unwrapped.core.sim  # type: ignore[attr-defined]
    return float(sim.x[0]), float(sim.y[0]), float(sim.psi[0]), float(sim.speed_kmh[0])


def test_jitter_follows_the_seed_and_stays_in_its_bounds() -> None:
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar", start_jitter=1.0)
    standard = _start(gym.make("TrackMania-Sim-v0", obs_type="lidar"), 0)
    starts = [_start(env, seed) for seed in range(20)]
    assert _start(env, 3) == starts[3]  # the same seed, the same start
    assert len(set(starts)) == 20  # different seeds, different starts
    assert len({_start(env, None) for _ in range(3)}) == 3  # unseeded resets go on drawing
    track = env.unwrapped.track  # type: ignore[attr-defined]
    nrm = track.normals[int(np.argmin(np.abs(track.s - track.start_s)))]
    for x, y, psi, kmh in starts:
        lateral = (x - standard[0]) * nrm[0] + (y - standard[1]) * nrm[1]
        assert abs(lateral) <= START_JITTER_LATERAL_M + 0.01
        assert abs(psi - standard[2]) <= math.radians(START_JITTER_HEADING_DEG) + 1e-12
        assert 0.0 <= kmh <= START_JITTER_SPEED_KMH + 1e-9
    spread = np.ptp(np.array(starts), axis=0)
    assert spread[1] > 0.5 and spread[3] > 1.5  # the draws use most of their range


def test_jitter_scales_linearly() -> None:
    small = gym.make("TrackMania-Sim-v0", obs_type="lidar", start_jitter=0.5)
    large = gym.make("TrackMania-Sim-v0", obs_type="lidar", start_jitter=2.0)
    standard = np.array(_start(gym.make("TrackMania-Sim-v0", obs_type="lidar"), 0))
    for seed in range(3):
        d_small = np.array(_start(small, seed)) - standard
        d_large = np.array(_start(large, seed)) - standard
        assert d_large[2] == pytest.approx(4.0 * d_small[2], abs=1e-12)  # heading
        np.testing.assert_allclose(d_large[:2], 4.0 * d_small[:2], atol=0.02)  # position
        assert d_large[3] == pytest.approx(4.0 * d_small[3], abs=0.2)  # speed


def test_zero_jitter_is_exactly_the_standard_start() -> None:
    def episode(start_jitter: float | None = None) -> list[np.ndarray]:
        kwargs: dict[str, Any] = {} if start_jitter is None else {"start_jitter": start_jitter}
        env = gym.make("TrackMania-Sim-v0", **kwargs)
        obs, _ = env.reset(seed=5)
        frames = [obs["images"]]
        for _ in range(30):
            obs, *_ = env.step(env.unwrapped.expert_action())  # type: ignore[attr-defined]
            frames.append(obs["images"])
        return frames

    plain, zero, jittered = episode(), episode(start_jitter=0.0), episode(start_jitter=1.0)
    for a, b in zip(plain, zero, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(plain[-1], jittered[-1])


def test_vector_env_draws_per_car_and_on_autoreset() -> None:
    def starts(seed: int) -> np.ndarray:
        env = gym.make_vec(
            "TrackMania-Sim-v0",
            num_envs=3,
            vectorization_mode="vector_entry_point",
            obs_type="lidar",
            start_jitter=1.0,
        )
        env.reset(seed=seed)
        sim = env.unwrapped.core.sim  # type: ignore[attr-defined]
        first = sim.psi.copy()
        env.reset(options={"reset_mask": np.array([False, True, False])})
        return np.concatenate([first, sim.psi])  # headings: rolling does not turn the car

    a, b, c = starts(0), starts(0), starts(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(set(a[:3].tolist())) == 3  # each car its own start
    assert a[3] == a[0] and a[5] == a[2]  # cars not reset keep their heading
    assert a[4] != a[1]  # the reset car draws a new start


@pytest.mark.parametrize("bad", [-0.1, 3.5, float("nan"), "1", True])
def test_bad_jitter_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"start_jitter: got .*from 0 to 3"):
        gym.make("TrackMania-Sim-v0", start_jitter=bad)


@pytest.mark.slow
@pytest.mark.parametrize("track", builtin_track_names())
def test_the_expert_finishes_from_jittered_starts(track: str) -> None:
    env = gym.make("TrackMania-Sim-v0", track=track, obs_type="lidar", start_jitter=1.0)
    for seed in range(10):
        env.reset(seed=seed)
        done, info = False, dict[str, Any]()
        while not done:
            _, _, terminated, truncated, info = env.step(env.unwrapped.expert_action())  # type: ignore[attr-defined]
            done = terminated or truncated
        assert info["finished"], f"{track}, seed {seed}: the expert did not finish"


def test_recordings_capture_the_jittered_start() -> None:
    """The capture behind the first observation is the car where it was respawned."""

    def first_capture(jitter: float) -> tuple[float, float, float]:
        env = gym.make("TrackMania-Sim-v0", obs_type="lidar", start_jitter=jitter)
        env.unwrapped.keep_captures()  # type: ignore[attr-defined]
        env.reset(seed=4)
        cap = env.unwrapped.last_capture()  # type: ignore[attr-defined]
        return cap.record.x, cap.record.z, cap.record.speed_kmh

    x0, z0, v0 = first_capture(0.0)
    track = gym.make("TrackMania-Sim-v0").unwrapped.track  # type: ignore[attr-defined]
    np.testing.assert_allclose([x0, z0], track.start_xy)
    assert v0 == 0.0
    x, z, v = first_capture(2.0)
    assert (x, z) != (x0, z0) and 0.0 < v <= 2.0 * START_JITTER_SPEED_KMH
