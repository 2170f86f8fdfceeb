"""TorchRL drives TrackMania-Sim-v0 in its own spawned workers (ParallelEnv), infos included.

Its workers start fresh interpreters, so the id is written ``tm_gym:TrackMania-Sim-v0``; its info
reader reads each info value's dtype, so every value is a NumPy scalar or array of a fixed dtype
(lap_time a float64, +inf until the finish).
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterator
from types import ModuleType

import pytest


@pytest.fixture
def torchrl_envs() -> Iterator[ModuleType]:
    """torchrl.envs, imported here: importing it sets the process-wide multiprocessing start
    method to "spawn", which is put back afterwards so the rest of the suite is unaffected."""
    before = multiprocessing.get_start_method(allow_none=True)
    try:
        yield pytest.importorskip("torchrl.envs")
    finally:
        multiprocessing.set_start_method(before, force=True)


def make_env() -> object:
    import torchrl.envs as torchrl_envs
    from torchrl.envs import gym_like

    env = torchrl_envs.GymEnv("tm_gym:TrackMania-Sim-v0", obs_type="lidar", ep_max_length=20)
    env.set_info_dict_reader(
        gym_like.default_info_dict_reader(["lap_time", "progress", "finished", "wall_contacts"])
    )
    return env


@pytest.mark.slow  # two spawned worker processes
def test_parallel_env_rolls_out_with_infos(torchrl_envs: ModuleType) -> None:
    env = torchrl_envs.ParallelEnv(2, make_env)
    try:
        td = env.rollout(25, break_when_any_done=False)  # crosses one episode end per worker
    finally:
        env.close()
    assert td.batch_size == (2, 25)
    assert td["next", "lidar"].shape[-1] == 19
    assert bool((td["next", "lap_time"] == math.inf).all())  # nobody finishes in 20 steps
    assert int(td["next", "done"].sum()) == 2
