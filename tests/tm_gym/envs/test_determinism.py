"""Same seed and same actions give bit-identical episodes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tm_gym.envs.trackmania import TrackManiaEnv

OBS_TYPES = ["images", "lidar", "lidar_progress"]


def actions(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1.0, 1.0, size=(n, 3)).astype(np.float32)
    a[:, 0] = np.abs(a[:, 0])  # mostly accelerating: the car gets somewhere and hits walls
    a[:, 1] -= 0.7  # braking one step in seven
    return a


def record(env: TrackManiaEnv, acts: np.ndarray, seed: int) -> list[tuple[Any, ...]]:
    """Every reset and step outcome of ``env`` driven by ``acts`` (resetting after each end)."""
    out: list[tuple[Any, ...]] = [("reset", *env.reset(seed=seed))]
    for a in acts:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append(("step", obs, reward, terminated, truncated, info))
        if terminated or truncated:
            out.append(("reset", *env.reset()))
    return out


def assert_identical(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{k}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float):
        assert type(b) is type(a) and (a == b or (a != a and b != b)), f"{where}: {a!r} != {b!r}"
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_same_seed_same_actions_same_episode(obs_type: str) -> None:
    acts = actions(160, seed=11)
    runs = [
        record(TrackManiaEnv(obs_type=obs_type, ep_max_length=70), acts, seed=5) for _ in range(2)
    ]
    assert len(runs[0]) == len(runs[1])
    assert sum(1 for r in runs[0] if r[0] == "reset") >= 3, "episodes ended and restarted"
    for k, (a, b) in enumerate(zip(*runs, strict=True)):
        assert_identical(list(a), list(b), f"{obs_type} record {k}")
    # and the run was not trivial: the car moved and the observations changed
    infos = [r[5] for r in runs[0] if r[0] == "step"]
    assert max(i["speed_kmh"] for i in infos) > 50.0
    assert sum(r[2] for r in runs[0] if r[0] == "step") > 1.0


def test_reset_restores_the_initial_observation() -> None:
    env = TrackManiaEnv(obs_type="images")
    first, _ = env.reset(seed=1)
    for a in actions(40, seed=2):
        env.step(a)
    again, _ = env.reset()
    assert_identical(first, again, "reset")


def test_different_actions_give_different_episodes() -> None:
    """The comparison above can fail: different actions are visible in the observations."""
    a, b = TrackManiaEnv(obs_type="lidar"), TrackManiaEnv(obs_type="lidar")
    a.reset(seed=0)
    b.reset(seed=0)
    for x, y in zip(actions(30, seed=1), actions(30, seed=2), strict=True):
        oa, *_ = a.step(x)
        ob, *_ = b.step(y)
    assert not np.array_equal(oa["lidar"], ob["lidar"])
