"""The native vector environment equals N independent single environments, bit for bit,
including episode ends and Gymnasium's NEXT_STEP autoreset."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import tm_gym  # noqa: F401  (registers the ids)
from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.envs.vector import TrackManiaVectorEnv
from tm_gym.reward import RewardConfig

N = 3
STEPS = 75
# short episodes: truncation after 30 steps, and a stalled car fails within about ten
KWARGS: dict[str, Any] = {
    "ep_max_length": 30,
    "reward_config": RewardConfig(min_steps=5, max_no_progress=3),
}


def action_sequences(seed: int = 0) -> np.ndarray:
    """(STEPS, N, 3): car 0 drives on full gas, car 1 does random things, car 2 idles with
    bursts of gas: their episodes end at different steps."""
    rng = np.random.default_rng(seed)
    a = np.zeros((STEPS, N, 3), np.float32)
    a[:, 0] = [1.0, 0.0, 0.0]
    a[:, 1] = rng.uniform(-1, 1, (STEPS, 3))
    a[:, 1, 0] = np.abs(a[:, 1, 0])
    a[::7, 2, 0] = 1.0
    return a


def make_vec(obs_type: str) -> TrackManiaVectorEnv:
    venv = gym.make_vec(
        "TrackMania-Sim-v0",
        num_envs=N,
        vectorization_mode="vector_entry_point",
        obs_type=obs_type,
        **KWARGS,
    )
    assert isinstance(venv, TrackManiaVectorEnv), type(venv)
    return venv


def single_run(obs_type: str, acts: np.ndarray) -> list[dict[str, Any]]:
    """What N separate envs give for ``acts`` under NEXT_STEP autoreset: per vector step, the
    observations, rewards, terminations, truncations and infos of every env."""
    envs = [TrackManiaEnv(obs_type=obs_type, **KWARGS) for _ in range(N)]
    first = [e.reset(seed=i) for i, e in enumerate(envs)]
    records = [
        {
            "obs": [o for o, _ in first],
            "info": [i for _, i in first],
            "reward": [0.0] * N,
            "terminated": [False] * N,
            "truncated": [False] * N,
            "reset": [True] * N,
        }
    ]
    done = [False] * N
    for t in range(STEPS):
        rec: dict[str, list[Any]] = {k: [] for k in records[0]}
        for i, env in enumerate(envs):
            if done[i]:
                obs, info = env.reset()
                r, te, tr, was_reset = 0.0, False, False, True
            else:
                obs, r, te, tr, info = env.step(acts[t, i])
                was_reset = False
            done[i] = te or tr
            for k, v in (
                ("obs", obs),
                ("info", info),
                ("reward", r),
                ("terminated", te),
                ("truncated", tr),
                ("reset", was_reset),
            ):
                rec[k].append(v)
        records.append(rec)
    return records


def vector_run(venv: gym.vector.VectorEnv, acts: np.ndarray) -> list[dict[str, Any]]:
    obs, info = venv.reset(seed=0)
    records = [
        {
            "obs": obs,
            "info": info,
            "reward": np.zeros(N),
            "terminated": np.zeros(N, bool),
            "truncated": np.zeros(N, bool),
        }
    ]
    for t in range(STEPS):
        obs, r, te, tr, info = venv.step(acts[t])
        records.append({"obs": obs, "info": info, "reward": r, "terminated": te, "truncated": tr})
    return records


def compare_infos(vinfo: dict[str, Any], sinfo: dict[str, Any], i: int, where: str) -> None:
    for k, v in sinfo.items():
        assert vinfo[f"_{k}"][i], where
        np.testing.assert_array_equal(vinfo[k][i], v, err_msg=f"{where}: info[{k!r}]")


@pytest.mark.parametrize("obs_type", ["images", "lidar", "lidar_progress"])
def test_vector_equals_single_envs(obs_type: str) -> None:
    acts = action_sequences()
    expected = single_run(obs_type, acts)
    got = vector_run(make_vec(obs_type), acts)
    ends = []
    for t, (exp, vec) in enumerate(zip(expected, got, strict=True)):
        for i in range(N):
            where = f"{obs_type} step {t} env {i}"
            for k, v in exp["obs"][i].items():
                assert vec["obs"][k][i].dtype == v.dtype, where
                np.testing.assert_array_equal(vec["obs"][k][i], v, err_msg=f"{where}: obs[{k!r}]")
            assert vec["reward"][i] == exp["reward"][i], where
            assert vec["terminated"][i] == exp["terminated"][i], where
            assert vec["truncated"][i] == exp["truncated"][i], where
            if not exp["reset"][i]:
                compare_infos(vec["info"], exp["info"][i], i, where)
            if exp["terminated"][i] or exp["truncated"][i]:
                ends.append((t, i, bool(exp["terminated"][i])))
    # the scenario exercised what it should: ends at different steps, both kinds of end,
    # and more than one episode per env
    assert len({t for t, _, _ in ends}) >= 3, ends
    assert any(term for *_, term in ends) and any(not term for *_, term in ends), ends
    for i in range(N):
        assert sum(1 for _, j, _ in ends if j == i) >= 2, ends


def test_reset_infos_match_single_env() -> None:
    """The reset info describes the respawn capture, as in the single env."""
    venv = make_vec("lidar")
    _, vinfo = venv.reset(seed=0)
    env = TrackManiaEnv(obs_type="lidar", **KWARGS)
    _, sinfo = env.reset(seed=0)
    for i in range(N):
        compare_infos(vinfo, sinfo, i, f"reset env {i}")


def test_returned_infos_do_not_change_afterwards() -> None:
    """An info dict describes its own step: later steps must not rewrite its arrays."""
    venv = make_vec("lidar")
    venv.reset(seed=0)
    gas = np.tile([1.0, 0.0, 0.0], (N, 1))
    _, _, _, _, info = venv.step(gas)
    snapshot = {k: np.array(v, copy=True) for k, v in info.items()}
    assert snapshot["gear"].tolist() == [0] * N, "first capture: at rest under the default action"
    for _ in range(5):
        venv.step(gas)
    for k, v in snapshot.items():
        np.testing.assert_array_equal(info[k], v, err_msg=f"info[{k!r}] changed")


def test_autoreset_step_ignores_action_and_pays_nothing() -> None:
    venv = make_vec("lidar")
    first, _ = venv.reset(seed=0)
    for _ in range(30):
        *_, trunc, _ = venv.step(np.tile([1.0, 0.0, 0.0], (N, 1)))
    assert trunc.all()
    obs, r, te, tr, info = venv.step(np.tile([1.0, 1.0, 1.0], (N, 1)))
    np.testing.assert_array_equal(r, 0.0)
    assert not te.any() and not tr.any()
    for k in first:
        np.testing.assert_array_equal(obs[k], first[k], err_msg=k)
    np.testing.assert_array_equal(obs["actions"], 0.0)
    np.testing.assert_array_equal(info["race_time"], 0.0)


def test_vector_metadata_and_spaces() -> None:
    venv = make_vec("images")
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.num_envs == N
    assert venv.single_observation_space["images"].shape == (4, 64, 64)
    assert venv.observation_space["images"].shape == (N, 4, 64, 64)
    assert venv.action_space.shape == (N, 3)
    obs, info = venv.reset(seed=0)
    assert venv.observation_space.contains(obs)
    assert set(info) >= {"race_time", "_race_time", "lap_time", "_lap_time"}
    assert info["_lap_time"].all() and np.all(info["lap_time"] == np.inf)


def test_matches_gymnasium_sync_vector_env() -> None:
    acts = action_sequences(seed=3)
    native = vector_run(make_vec("lidar_progress"), acts)
    sync = SyncVectorEnv(
        [lambda: TrackManiaEnv(obs_type="lidar_progress", **KWARGS)] * N,
        autoreset_mode=AutoresetMode.NEXT_STEP,
    )
    reference = vector_run(sync, acts)
    for t, (a, b) in enumerate(zip(native, reference, strict=True)):
        for k in b["obs"]:
            np.testing.assert_array_equal(a["obs"][k], b["obs"][k], err_msg=f"step {t} {k}")
        for k in ("reward", "terminated", "truncated"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"step {t} {k}")


def test_partial_reset_with_mask() -> None:
    venv = make_vec("lidar")
    first, _ = venv.reset(seed=0)
    for _ in range(10):
        before, *_ = venv.step(np.tile([1.0, 0.0, 0.0], (N, 1)))
    obs, info = venv.reset(options={"reset_mask": np.array([False, True, False])})
    for k in first:
        np.testing.assert_array_equal(obs[k][1], first[k][1], err_msg=k)
    assert info["race_time"][1] == 0.0
    assert info["race_time"][0] > 0.4
    # ... and go on as if nothing had happened: the same as a fleet that was never reset
    nxt, rew, *_ = venv.step(np.tile([1.0, 0.0, 0.0], (N, 1)))
    twin = make_vec("lidar")
    twin.reset(seed=0)
    for _ in range(11):
        want, want_rew, *_ = twin.step(np.tile([1.0, 0.0, 0.0], (N, 1)))
    for k in want:
        np.testing.assert_array_equal(nxt[k][[0, 2]], want[k][[0, 2]], err_msg=k)
        # reset() showed the other cars' pending observation, the one this step returns
        np.testing.assert_array_equal(obs[k][[0, 2]], nxt[k][[0, 2]], err_msg=k)
    np.testing.assert_array_equal(rew[[0, 2]], want_rew[[0, 2]])
    assert before["speed"][0, 0] < nxt["speed"][0, 0]
    assert nxt["speed"][1, 0] == 0.0  # the reset car's next capture is under the default action
