"""rtgym's real-time semantics as the simulator reproduces them.

Time step t starts when step(a_t) is called and applies a_t from its first instant; its
observation is captured start_obs_capture (c) later; the step lasts time_step_duration (d); the
observation returned by step(a_t) is the one captured during the previous time step."""

from __future__ import annotations

import numpy as np
import pytest

from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.sim.simulator import Simulator

GAS = np.array([1.0, 0.0, 0.0], np.float32)
BRAKE = np.array([0.0, 1.0, 0.0], np.float32)
BRAKE_RIGHT = np.array([0.0, 1.0, 1.0], np.float32)


def twin_envs(obs_type: str, **kw) -> tuple[TrackManiaEnv, TrackManiaEnv]:
    a, b = TrackManiaEnv(obs_type=obs_type, **kw), TrackManiaEnv(obs_type=obs_type, **kw)
    a.reset(seed=0)
    b.reset(seed=0)
    return a, b


@pytest.mark.parametrize("obs_type", ["lidar", "images"])
def test_observation_depends_on_previous_action_only(obs_type: str) -> None:
    a, b = twin_envs(obs_type)
    for _ in range(30):  # get up to speed
        a.step(GAS)
        b.step(GAS)
    oa, ra, *_ = a.step(GAS)
    ob, rb, *_ = b.step(BRAKE_RIGHT)
    # same observation (and reward) except for the action buffer's newest entry
    for k in oa:
        if k == "actions":
            np.testing.assert_array_equal(oa[k][:-1], ob[k][:-1])
            np.testing.assert_array_equal(oa[k][-1], GAS)
            np.testing.assert_array_equal(ob[k][-1], BRAKE_RIGHT)
        else:
            np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    assert ra == rb
    # the next observation shows the difference
    oa, ra, *_ = a.step(GAS)
    ob, rb, *_ = b.step(GAS)
    # 0.05 s of braking instead of gas: about 4 km/h slower by the next capture, and turned
    assert ob["speed"][0] < oa["speed"][0] - 3.0
    key = "lidar" if obs_type == "lidar" else "images"
    assert not np.array_equal(oa[key], ob[key])


def test_observations_follow_rtgym_schedule() -> None:
    """The env's speeds equal a Simulator driven by hand on rtgym's schedule, bit for bit."""
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (60, 3)).astype(np.float32)
    acts[:, 0] = np.abs(acts[:, 0])
    acts[:, 1] -= 0.7  # braking now and then
    env = TrackManiaEnv(obs_type="lidar")
    obs, _ = env.reset(seed=0)
    assert obs["speed"][0] == 0.0
    sim = Simulator("default")
    sim.step(np.zeros((1, 3)), 4)  # reset's time step: default action, captured at 0.04 s
    captures = [sim.speed_kmh.astype(np.float32)[0]]
    prev = np.zeros(3)
    for a in acts:
        sim.step(prev[None], 1)  # the last 0.01 s of the running time step
        sim.step(a[None].astype(np.float64), 4)  # the new one, up to its capture
        captures.append(sim.speed_kmh.astype(np.float32)[0])
        prev = a.astype(np.float64)
    for k, a in enumerate(acts):
        obs, *_ = env.step(a)
        assert obs["speed"][0] == captures[k], f"step {k + 1}"
    np.testing.assert_array_equal(env.core.sim.x, sim.x)
    assert max(captures) > 50.0


def test_action_buffer() -> None:
    env = TrackManiaEnv(obs_type="lidar", act_buf_len=3)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["actions"], np.zeros((3, 3)))
    acts = [np.array([0.1 * k, 0.0, -0.1 * k], np.float32) for k in range(1, 6)]
    for k, a in enumerate(acts):
        obs, *_ = env.step(a)
        last = acts[max(0, k - 2) : k + 1]
        expected = np.zeros((3, 3), np.float32)
        expected[3 - len(last) :] = last
        np.testing.assert_array_equal(obs["actions"], expected)  # oldest first
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["actions"], np.zeros((3, 3)))


@pytest.mark.parametrize("end", ["truncated", "finished", "failed"])
def test_last_action_is_never_applied(end: str) -> None:
    env = TrackManiaEnv(obs_type="lidar", ep_max_length=5 if end == "truncated" else 2000)
    sim = env.core.sim
    env.reset()
    done = False
    k = 0
    while not done:
        k += 1
        t_before, x_before = float(sim.race_time[0]), float(sim.x[0])
        controls_before = sim.controls.copy()
        if end == "finished":
            action = env.expert_action()
        elif end == "failed":
            action = np.zeros(3, np.float32)
        else:
            action = np.array([1.0, 0.0, 0.2 * (-1) ** k], np.float32)
        _, _, term, trunc, info = env.step(action)
        done = term or trunc
        if not done:
            assert sim.race_time[0] == pytest.approx(t_before + 0.05), "a running step advances"
    assert trunc == (end == "truncated")
    assert info["finished"] == (end == "finished")
    assert info["failed"] == (end == "failed")
    if end != "failed":
        assert not np.array_equal(action, controls_before[0]), "the final action is new"
    # the final step started no time step: nothing moved and its action was not applied
    assert sim.race_time[0] == t_before
    assert sim.x[0] == x_before
    np.testing.assert_array_equal(sim.controls, controls_before)
    # the next episode starts from rest under the default action
    obs, _ = env.reset()
    obs, *_ = env.step(GAS)
    assert obs["speed"][0] == 0.0


def test_race_time_per_step() -> None:
    env = TrackManiaEnv(obs_type="lidar")
    env.reset()
    times = []
    for _ in range(40):
        *_, info = env.step(GAS)
        times.append(info["race_time"])
    assert times[0] == 0.04  # the capture of reset's time step, start_obs_capture into it
    np.testing.assert_allclose(np.diff(times), 0.05, atol=1e-9)
    assert times == [round(0.04 + 0.05 * k, 3) for k in range(40)]


def test_reset_info_describes_the_respawn() -> None:
    """reset() returns the observation taken at the respawn (race time 0); its info must
    describe the same instant, not the first capture 0.04 s later."""
    env = TrackManiaEnv(obs_type="lidar")
    _, info = env.reset()
    assert info["race_time"] == 0.0
    assert info["speed_kmh"] == 0.0 and info["gear"] == 0


def test_longer_steps() -> None:
    env = TrackManiaEnv(obs_type="images", time_step_duration=0.1, start_obs_capture=0.05)
    obs, _ = env.reset()
    times = []
    for _ in range(20):
        obs, _, _, _, info = env.step(GAS)
        times.append(info["race_time"])
    assert times[0] == 0.05
    np.testing.assert_allclose(np.diff(times), 0.1, atol=1e-9)
    assert env.core.sim.race_time[0] == pytest.approx(20 * 0.1 + 0.05)
    assert obs["speed"][0] > 50.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"time_step_duration": 0.055}, "0.055"),
        ({"start_obs_capture": 0.045}, "0.045"),
        ({"time_step_duration": 0.1, "start_obs_capture": 0.033}, "0.033"),
    ],
)
def test_durations_must_be_whole_substeps(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        TrackManiaEnv(obs_type="lidar", **kwargs)


@pytest.mark.parametrize("grayscale", [True, False])
def test_image_history(grayscale: bool) -> None:
    env = TrackManiaEnv(obs_type="images", grayscale=grayscale)
    per = 1 if grayscale else 3
    obs, _ = env.reset()
    frames = obs["images"].reshape(4, per, 64, 64)
    for k in range(1, 4):
        np.testing.assert_array_equal(frames[k], frames[0])
    prev = obs["images"]
    changed_at = None
    for k in range(1, 40):
        obs, *_ = env.step(GAS)
        imgs = obs["images"]
        # the history shifts by one frame: oldest first, newest last
        np.testing.assert_array_equal(imgs[:-per], prev[per:])
        if changed_at is None and not np.array_equal(imgs[-per:], prev[-per:]):
            changed_at = k
        prev = imgs
    assert changed_at is not None, "the view never changed although the car drove off"
    # the first step's capture is under the default action (car still at rest): unchanged
    assert changed_at >= 2
    assert not np.array_equal(prev[-per:], prev[:per]), "the history spans a moving car"
