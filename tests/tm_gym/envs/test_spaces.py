"""Spaces, registration, checkers and argument validation of the TrackMania environment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import tm_gym  # noqa: F401  (registers the ids)
from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.envs.vector import TrackManiaVectorEnv
from tm_gym.error import BackendUnavailableError, EnvStateError, InvalidActionError

OBS_TYPES = ["images", "lidar", "lidar_progress"]
# SB3 prefers 1-D or image observations; our (A, 3) actions and (H, 19) scans are neither.
# CombinedExtractor flattens them, so this warning is expected.
UNCONVENTIONAL = "ignore:Your observation .* has an unconventional shape:UserWarning"

EXPECTED = {
    "images": {
        "speed": ((1,), np.float32),
        "gear": ((1,), np.float32),
        "rpm": ((1,), np.float32),
        "images": ((4, 64, 64), np.uint8),
        "actions": ((2, 3), np.float32),
    },
    "lidar": {
        "speed": ((1,), np.float32),
        "lidar": ((4, 19), np.float32),
        "actions": ((2, 3), np.float32),
    },
    "lidar_progress": {
        "speed": ((1,), np.float32),
        "lidar": ((4, 19), np.float32),
        "progress": ((1,), np.float32),
        "actions": ((2, 3), np.float32),
    },
}


@pytest.fixture(scope="module", params=OBS_TYPES)
def env(request: pytest.FixtureRequest) -> TrackManiaEnv:
    # through gymnasium.make so that the env has a spec (the checker uses it), then unwrapped
    made = gym.make("TrackMania-Sim-v0", obs_type=request.param, render_mode="rgb_array")
    assert isinstance(made.unwrapped, TrackManiaEnv)
    return made.unwrapped


def _check_obs(obs: dict, expected: dict, space: spaces.Dict) -> None:
    assert set(obs) == set(expected)
    for k, (shape, dtype) in expected.items():
        assert obs[k].shape == shape, k
        assert obs[k].dtype == dtype, k
    assert space.contains(obs)


def test_spaces_and_observations(env: TrackManiaEnv) -> None:
    expected = EXPECTED[env.settings.obs_type]
    space = env.observation_space
    assert isinstance(space, spaces.Dict)
    assert set(space.spaces) == set(expected)
    for k, (shape, dtype) in expected.items():
        assert space[k].shape == shape and space[k].dtype == dtype, k
    assert env.action_space == spaces.Box(-1.0, 1.0, (3,), np.float32)
    obs, info = env.reset(seed=0)
    _check_obs(obs, expected, space)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0, 0.3]))
        _check_obs(obs, expected, space)
        assert isinstance(reward, float)
        assert terminated is False and truncated is False
    assert set(info) >= {
        "race_time",
        "progress",
        "checkpoint",
        "checkpoints_total",
        "finished",
        "lap_time",
        "position",
        "speed_kmh",
        "gear",
        "rpm",
        "wall_contacts",
        "failed",
    }
    assert info["position"].shape == (3,) and info["position"][1] == 0.0


def test_rgb_images_have_three_channels_per_frame() -> None:
    env = TrackManiaEnv(obs_type="images", grayscale=False)
    assert env.observation_space["images"].shape == (12, 64, 64)
    obs, _ = env.reset()
    assert obs["images"].shape == (12, 64, 64) and obs["images"].dtype == np.uint8
    # channel-first RGB: frame 0 is channels 0-2; sky at the top is blue
    top = obs["images"][0:3, 0].astype(int)
    assert np.all(top[2] > top[0])


@pytest.mark.parametrize(
    ("kwargs", "shapes"),
    [
        (
            {"img_size": 32, "img_hist_len": 2, "act_buf_len": 5},
            {"images": (2, 32, 32), "actions": (5, 3)},
        ),
        (
            {"obs_type": "lidar", "img_hist_len": 1, "act_buf_len": 1},
            {"lidar": (1, 19), "actions": (1, 3)},
        ),
    ],
)
def test_sizes_follow_arguments(kwargs: dict, shapes: dict) -> None:
    env = TrackManiaEnv(**kwargs)
    obs, _ = env.reset()
    for k, shape in shapes.items():
        assert env.observation_space[k].shape == shape
        assert obs[k].shape == shape


def test_gymnasium_env_checker(env: TrackManiaEnv) -> None:
    gym_check_env(env, skip_render_check=False)


@pytest.mark.filterwarnings(UNCONVENTIONAL)
def test_sb3_env_checker(env: TrackManiaEnv) -> None:
    sb3_check_env(env, warn=True)


def test_make_and_flatten() -> None:
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    assert isinstance(env.unwrapped, TrackManiaEnv)
    flat = gym.wrappers.FlattenObservation(env)
    assert flat.observation_space.shape == (1 + 4 * 19 + 2 * 3,)
    obs, _ = flat.reset(seed=0)
    assert obs.shape == flat.observation_space.shape
    obs, *_ = flat.step(flat.action_space.sample())
    assert flat.observation_space.contains(obs)
    env2 = gym.make("TrackMania-v0", backend="sim", obs_type="lidar_progress")
    assert isinstance(env2.unwrapped, TrackManiaEnv)


def test_game_backend_needs_a_reference_and_no_vector_env() -> None:
    with pytest.raises(BackendUnavailableError, match="record-reward"):
        gym.make("TrackMania-v0")
    with pytest.raises(BackendUnavailableError, match="TrackMania-v0"):
        TrackManiaEnv("game")
    with pytest.raises(BackendUnavailableError):
        TrackManiaVectorEnv(2, backend="game")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"obs_type": "foo"}, "obs_type='foo'"),
        ({"img_size": 0}, "img_size=0"),
        ({"img_size": 64.0}, "img_size=64.0"),
        ({"img_hist_len": 0}, "img_hist_len=0"),
        ({"act_buf_len": True}, "act_buf_len=True"),
        ({"ep_max_length": 0}, "ep_max_length=0"),
        ({"grayscale": 1}, "grayscale=1"),
        ({"start_obs_capture": 0.06}, "start_obs_capture=0.06"),
        ({"time_step_duration": 0.0}, "time_step_duration=0.0"),
        ({"time_step_duration": float("nan")}, "time_step_duration=nan"),
        ({"render_mode": "human"}, "render_mode='human'"),
        ({"backend": "xbox"}, "backend='xbox'"),
    ],
)
def test_bad_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        TrackManiaEnv(**kwargs)


def test_bad_num_envs() -> None:
    with pytest.raises(ValueError, match="num_envs=0"):
        TrackManiaVectorEnv(0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action(bad: float) -> None:
    env = TrackManiaEnv(obs_type="lidar")
    env.reset()
    with pytest.raises(InvalidActionError, match="non-finite") as e:
        env.step(np.array([1.0, bad, 0.0]))
    assert str(bad) in str(e.value)
    assert isinstance(e.value, ValueError)
    env.step(np.zeros(3))  # the env is still usable


def test_non_finite_action_message_is_readable() -> None:
    """The message shows plain numbers, not NumPy 2 scalar reprs like np.int64(0)."""
    env = TrackManiaEnv(obs_type="lidar")
    env.reset()
    with pytest.raises(InvalidActionError) as e:
        env.step(np.array([1.0, np.nan, 0.0]))
    msg = str(e.value)
    assert "np." not in msg, msg
    assert "nan at index (0, 1)" in msg, msg


@pytest.mark.parametrize("shape", [(2,), (4,), (1, 3, 1), ()])
def test_wrong_action_shape(shape: tuple) -> None:
    env = TrackManiaEnv(obs_type="lidar")
    env.reset()
    with pytest.raises(InvalidActionError, match="shape"):
        env.step(np.zeros(shape))


def test_out_of_range_actions_are_clipped() -> None:
    env = TrackManiaEnv(obs_type="lidar")
    env.reset()
    obs, *_ = env.step(np.array([5.0, -3.0, 1.5]))
    np.testing.assert_array_equal(obs["actions"][-1], [1.0, -1.0, 1.0])
    obs, *_ = env.step([0.5, 0.0, -0.25])  # plain lists are fine
    np.testing.assert_array_equal(obs["actions"], [[1.0, -1.0, 1.0], [0.5, 0.0, -0.25]])


def test_step_before_reset_and_after_the_end() -> None:
    env = TrackManiaEnv(obs_type="lidar", ep_max_length=3)
    with pytest.raises(EnvStateError, match="reset"):
        env.step(np.zeros(3))
    env.reset()
    for _ in range(3):
        *_, truncated, _ = env.step(np.zeros(3))
    assert truncated
    with pytest.raises(EnvStateError, match="reset"):
        env.step(np.zeros(3))
    env.reset()
    env.step(np.zeros(3))


def test_vector_env_misuse() -> None:
    venv = TrackManiaVectorEnv(2, obs_type="lidar")
    with pytest.raises(EnvStateError, match="reset"):
        venv.step(np.zeros((2, 3)))
    with pytest.raises(EnvStateError, match="first reset"):
        venv.reset(options={"reset_mask": np.array([True, False])})
    venv.reset()
    with pytest.raises(InvalidActionError):
        venv.step(np.zeros(3))
    with pytest.raises(InvalidActionError, match="non-finite"):
        venv.step(np.array([[0, 0, 0], [0, np.nan, 0]]))
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": np.array([True])})


def test_render(env: TrackManiaEnv) -> None:
    env.reset()
    frame = env.render()
    assert frame is not None
    assert frame.shape == (128, 256, 3) and frame.dtype == np.uint8
    assert TrackManiaEnv(obs_type="lidar").render() is None
    venv = TrackManiaVectorEnv(2, obs_type="lidar", render_mode="rgb_array")
    venv.reset()
    frames = venv.render()
    assert frames is not None and len(frames) == 2
    assert all(f.shape == (128, 256, 3) for f in frames)
