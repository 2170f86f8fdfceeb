"""How episodes end, seen through the environment: finishing, failing and truncation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tm_gym.envs.sim_core import default_reference
from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.reward import ReferenceTrajectory, RewardConfig
from tm_gym.sim.expert import run_expert
from tm_gym.sim.tracks import load_track


def run(env: TrackManiaEnv, policy, max_steps: int = 5000) -> dict:
    obs, info = env.reset(seed=0)
    rewards, infos, observations = [], [info], [obs]
    for _ in range(max_steps):
        obs, r, term, trunc, info = env.step(policy(env))
        rewards.append(r)
        infos.append(info)
        observations.append(obs)
        if term or trunc:
            return {
                "rewards": np.array(rewards),
                "infos": infos,
                "obs": observations,
                "terminated": term,
                "truncated": trunc,
            }
    raise AssertionError("the episode did not end")


def expert(env: TrackManiaEnv) -> np.ndarray:
    return env.expert_action()


def idle(env: TrackManiaEnv) -> np.ndarray:
    return np.zeros(3, np.float32)


@pytest.fixture(scope="module")
def expert_episode() -> dict:
    return run(TrackManiaEnv(obs_type="lidar_progress"), expert)


def test_expert_finishes_the_default_track(expert_episode: dict) -> None:
    ep = expert_episode
    info = ep["infos"][-1]
    assert ep["terminated"] and not ep["truncated"]
    assert info["finished"] and not info["failed"]
    track = load_track("default")
    assert info["checkpoint"] == info["checkpoints_total"] == len(track.checkpoints_s)
    lap = run_expert("default", record_frames=False).lap_time
    assert lap is not None
    assert info["lap_time"] == pytest.approx(lap, abs=0.2)
    assert info["race_time"] >= info["lap_time"]
    assert info["wall_contacts"] == 0
    # 1.0 per 10 m of the race, plus the finish bonus; the last capture may be a few metres
    # past the line
    total = ep["rewards"].sum()
    assert track.length / 10 + 100 - 0.05 < total < track.length / 10 + 100 + 0.5
    assert ep["rewards"][-1] >= 100.0
    assert np.all(ep["rewards"][:-1] < 100.0), "the bonus is paid once, at the end"
    assert np.all(ep["rewards"] >= 0.0)


def test_info_tracks_the_race(expert_episode: dict) -> None:
    infos = expert_episode["infos"]
    cps = [i["checkpoint"] for i in infos]
    assert cps[0] == 0 and np.all(np.diff(cps) >= 0) and set(cps) == {0, 1, 2, 3, 4}
    assert all(i["lap_time"] == math.inf for i in infos[:-1])
    assert not any(i["finished"] for i in infos[:-1])
    prog = np.array([i["progress"] for i in infos])
    assert np.all(np.diff(prog) >= 0) and prog[-1] > 0.99
    # the observed progress is the info's progress (float32)
    obs_prog = np.array([o["progress"][0] for o in expert_episode["obs"]])
    np.testing.assert_array_equal(obs_prog, prog.astype(np.float32))
    speeds = np.array([i["speed_kmh"] for i in infos])
    assert speeds.max() > 200.0
    pos = np.array([i["position"] for i in infos])
    np.testing.assert_array_equal(pos[:, 1], 0.0)  # y is up, the track is flat
    track = load_track("default")
    np.testing.assert_allclose(pos[0, [0, 2]], track.start_xy)


def test_idle_car_fails_after_the_countdown() -> None:
    """Defaults (as TMRL): no failure during the first 70 steps, then more than 10 steps
    without progress end the episode: an idle car fails at step 70 + 10 + 1."""
    ep = run(TrackManiaEnv(obs_type="lidar"), idle)
    assert ep["terminated"] and not ep["truncated"]
    assert ep["infos"][-1]["failed"] and not ep["infos"][-1]["finished"]
    assert not any(i["failed"] for i in ep["infos"][:-1])
    assert len(ep["rewards"]) == 70 + 10 + 1
    assert ep["rewards"].sum() == 0.0


def test_stuck_car_fails_after_the_countdown() -> None:
    """Drive off, then brake and hold the brake (reversing): the episode ends 11 steps after
    the last new ground."""

    def policy(env: TrackManiaEnv) -> np.ndarray:
        t = env.core.sim.race_time[0]
        return np.array([1.0, 0.0, 0.0] if t < 5.0 else [0.0, 1.0, 0.0], np.float32)

    ep = run(TrackManiaEnv(obs_type="lidar"), policy)
    assert ep["terminated"] and ep["infos"][-1]["failed"]
    gained = np.flatnonzero(ep["rewards"] > 0)
    assert len(gained) > 10
    steps = len(ep["rewards"])
    assert steps > 70
    assert steps - gained[-1] - 1 == 11


def test_custom_failure_rule() -> None:
    env = TrackManiaEnv(
        obs_type="lidar", reward_config=RewardConfig(min_steps=20, max_no_progress=5)
    )
    ep = run(env, idle)
    assert ep["terminated"] and ep["infos"][-1]["failed"]
    assert len(ep["rewards"]) == 20 + 5 + 1


def test_truncation_at_ep_max_length() -> None:
    env = TrackManiaEnv(obs_type="lidar", ep_max_length=50)
    ep = run(env, expert)
    assert ep["truncated"] and not ep["terminated"]
    assert len(ep["rewards"]) == 50
    assert not ep["infos"][-1]["failed"] and not ep["infos"][-1]["finished"]
    assert ep["rewards"].sum() > 2.0


def test_three_dimensional_reference_file(tmp_path: Path) -> None:
    """A game-style (x, y up, z) reference gives the same rewards as the built-in one."""
    track = load_track("default")
    ref = default_reference(track).points
    ref3 = np.column_stack([ref[:, 0], np.full(len(ref), 12.5), ref[:, 1]])
    path = ReferenceTrajectory(ref3).save(tmp_path / "ref3.npz")
    plain = TrackManiaEnv(obs_type="lidar", ep_max_length=200)
    from_file = TrackManiaEnv(obs_type="lidar", ep_max_length=200, reward_trajectory=str(path))
    a, b = run(plain, expert), run(from_file, expert)
    np.testing.assert_array_equal(a["rewards"], b["rewards"])
    assert a["rewards"].sum() > 20.0


def test_track_from_a_file(tmp_path: Path) -> None:
    path = load_track("gen:2").save(tmp_path / "g2.json")
    ep = run(TrackManiaEnv(obs_type="lidar", track=str(path)), expert)
    assert ep["terminated"] and ep["infos"][-1]["finished"]
    lap = run_expert("gen:2", record_frames=False).lap_time
    assert lap is not None and ep["infos"][-1]["lap_time"] == pytest.approx(lap, abs=0.2)
