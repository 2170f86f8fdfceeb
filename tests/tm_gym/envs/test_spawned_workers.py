"""Environments made in spawned worker processes (TorchRL's ParallelEnv, SB3's SubprocVecEnv
with start_method="spawn", multiprocessing on macOS and Windows).

A spawned process starts a fresh interpreter that has not imported tm_gym, so the bare id is
unknown there; ``"tm_gym:TrackMania-Sim-v0"`` makes Gymnasium import tm_gym first.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest


def _make_and_step(env_id: str) -> tuple[tuple[int, ...], bool]:
    import gymnasium as gym
    import numpy as np

    env = gym.make(env_id, obs_type="lidar")
    try:
        obs, _ = env.reset(seed=0)
        obs, _, terminated, _, _ = env.step(np.array([1.0, 0.0, 0.0], np.float32))
        return tuple(obs["lidar"].shape), bool(terminated)
    finally:
        env.close()


def _run_in_spawned_worker(env_id: str) -> tuple[tuple[int, ...], bool]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_make_and_step, (env_id,))


@pytest.mark.slow
def test_the_module_qualified_id_works_in_a_spawned_worker() -> None:
    shape, terminated = _run_in_spawned_worker("tm_gym:TrackMania-Sim-v0")
    assert shape[-1] == 19
    assert not terminated


@pytest.mark.slow
def test_the_bare_id_needs_tm_gym_imported_in_the_worker() -> None:
    import gymnasium as gym

    with pytest.raises(gym.error.NameNotFound, match="TrackMania-Sim"):
        _run_in_spawned_worker("TrackMania-Sim-v0")
