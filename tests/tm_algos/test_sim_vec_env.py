"""SimVecEnv: the simulator's native vector env with Stable-Baselines3's VecEnv semantics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

import tm_algos
from tm_algos.factory import make_vec_env
from tm_algos.presets import load_preset
from tm_algos.sim_vec_env import SimVecEnv

N = 3
KWARGS: dict[str, Any] = {"obs_type": "lidar", "ep_max_length": 25}


def actions(steps: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    a = rng.uniform(-1, 1, (steps, N, 3)).astype(np.float32)
    a[:, :, 0] = np.abs(a[:, :, 0])  # mostly forward: some cars finish nothing, all time out
    return a


def run(venv: Any, acts: np.ndarray) -> list[tuple[Any, ...]]:
    venv.seed(0)
    out: list[tuple[Any, ...]] = [(venv.reset(),)]
    for a in acts:
        obs, rew, done, infos = venv.step(a)
        out.append((obs, rew, done, infos))
    return out


def test_steps_like_dummy_vec_env_of_scalar_envs() -> None:
    import gymnasium as gym

    import tm_gym  # noqa: F401

    acts = actions(60)  # two resets per car (25-step episodes)
    native = run(SimVecEnv("TrackMania-Sim-v0", N, **KWARGS), acts)
    dummy = run(
        DummyVecEnv([lambda: gym.make("TrackMania-Sim-v0", **KWARGS) for _ in range(N)]), acts
    )
    for t, (got, want) in enumerate(zip(native, dummy, strict=True)):
        for key in want[0]:
            np.testing.assert_array_equal(got[0][key], want[0][key], err_msg=f"t={t} {key}")
        if t == 0:
            continue
        np.testing.assert_array_equal(got[1], want[1])  # rewards
        np.testing.assert_array_equal(got[2], want[2])  # dones: reset within the same step
        for g, w in zip(got[3], want[3], strict=True):
            assert set(g) == set(w)
            for key in ("lap_time", "progress", "race_time", "TimeLimit.truncated"):
                if key in w:
                    assert g[key] == w[key], (t, key)
            if "terminal_observation" in w:
                for key, value in w["terminal_observation"].items():
                    np.testing.assert_array_equal(g["terminal_observation"][key], value)
    assert sum(int(step[2].sum()) for step in native[1:]) == 2 * N


def test_cars_that_end_at_different_steps_keep_consecutive_observations() -> None:
    """Random drivers fail at different steps: each car's next observation is its previous
    one shifted by a scan, or at a reset its terminal observation is."""
    venv = SimVecEnv("TrackMania-Sim-v0", 4, obs_type="lidar")
    venv.seed(0)
    obs = venv.reset()
    rng = np.random.default_rng(0)
    ends: list[int] = []
    for t in range(400):
        new, _, done, infos = venv.step(rng.uniform(-1, 1, (4, 3)).astype(np.float32))
        for i in range(4):
            nxt = infos[i]["terminal_observation"]["lidar"] if done[i] else new["lidar"][i]
            np.testing.assert_array_equal(nxt[:-1], obs["lidar"][i][1:], err_msg=f"t={t} car {i}")
        ends += [t] * int(done.sum())
        obs = new
    assert len(set(ends)) > 1  # the episodes did not all end together
    venv.close()


def test_make_vec_env_uses_it_for_several_simulated_cars() -> None:
    venv = tm_algos.make_vec_env("TrackMania-Sim-v0", 4, obs_type="lidar", ep_max_length=20)
    try:
        assert isinstance(venv, VecMonitor) and isinstance(venv.venv, SimVecEnv)
        venv.reset()
        for _ in range(20):
            _, _, done, infos = venv.step(np.tile([1.0, 0.0, 0.0], (4, 1)))
        assert done.all()
        episode = infos[0]["episode"]
        assert episode["l"] == 20 and episode["lap_time"] == float("inf")
        assert 0.0 < episode["progress"] < 1.0
    finally:
        venv.close()
    one = make_vec_env("TrackMania-Sim-v0", obs_type="lidar")
    assert isinstance(one, DummyVecEnv)  # one car: a plain env
    one.close()
    preset = load_preset("lidar-sac")
    assert isinstance(make_vec_env(preset, 2, native=False), DummyVecEnv)


def test_sb3_learns_on_it() -> None:
    venv = make_vec_env("TrackMania-Sim-v0", 4, obs_type="lidar", ep_max_length=40)
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0)
    model.learn(256)
    assert model.num_timesteps == 256
    venv.close()


@pytest.mark.parametrize("n", [0, -1, True, 1.5])
def test_bad_sizes_are_refused(n: Any) -> None:
    with pytest.raises(ValueError, match="n_envs"):
        make_vec_env("TrackMania-Sim-v0", n, obs_type="lidar")
