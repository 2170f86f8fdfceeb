"""FrameStackReplayBuffer: exact against SB3's DictReplayBuffer, small, and usable by SAC."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples

import tm_gym  # noqa: F401  (registers TrackMania-Sim-v0)
from tm_algos.buffers import FrameStackReplayBuffer

ACTION_SPACE = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
CONTINUE, TERMINATE, TRUNCATE = 0, 1, 2


def obs_space(frame_key: str, hist: int, channels: int = 1, side: int = 2) -> spaces.Dict:
    """A tm-gym-like Dict space with small frames."""
    scalar = spaces.Box(-1000.0, 1000.0, shape=(1,), dtype=np.float32)
    acts = spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float32)
    if frame_key == "images":
        stack = spaces.Box(0, 255, shape=(hist * channels, side, side), dtype=np.uint8)
        return spaces.Dict({"speed": scalar, "gear": scalar, "images": stack, "actions": acts})
    stack_l = spaces.Box(0.0, 150.0, shape=(hist, 3), dtype=np.float32)
    return spaces.Dict({"speed": scalar, "lidar": stack_l, "actions": acts})


class FakeEpisodes:
    """n_envs episodic streams stacked as tm-gym stacks them, with SB3's auto-reset convention:
    at a done, next_obs is the terminal observation and the env's next obs is a fresh stack."""

    def __init__(
        self, space: spaces.Dict, frame_key: str, channels: int, n_envs: int, seed: int, levels: int
    ) -> None:
        self.space, self.key, self.c, self.n = space, frame_key, channels, n_envs
        self.rng = np.random.default_rng(seed)
        self.levels = levels  # few levels: frames repeat often (ambiguous-looking stacks)
        self.hist = space[frame_key].shape[0] // channels
        self.obs = [self._fresh() for _ in range(n_envs)]

    def _frame(self) -> NDArray[Any]:
        shape = (self.c, *self.space[self.key].shape[1:])
        values = self.rng.integers(0, self.levels, size=shape)
        return values.astype(self.space[self.key].dtype) * (37 if self.key == "images" else 1.5)

    def _small(self, obs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        for k, s in self.space.spaces.items():
            if k != self.key:
                obs[k] = self.rng.standard_normal(s.shape).astype(s.dtype)
        return obs

    def _fresh(self) -> dict[str, NDArray[Any]]:
        return self._small({self.key: np.concatenate([self._frame()] * self.hist)})

    def step(self, ends: tuple[int, ...]) -> tuple[Any, ...]:
        obs = {k: np.stack([o[k] for o in self.obs]) for k in self.space.spaces}
        nexts, infos = [], []
        for e, end in enumerate(ends):
            stack = self.obs[e][self.key]
            nxt = self._small({self.key: np.concatenate([stack[self.c :], self._frame()])})
            nexts.append(nxt)
            infos.append({"TimeLimit.truncated": True} if end == TRUNCATE else {})
            self.obs[e] = self._fresh() if end != CONTINUE else nxt
        next_obs = {k: np.stack([o[k] for o in nexts]) for k in self.space.spaces}
        action = self.rng.uniform(-1, 1, size=(self.n, 3)).astype(np.float32)
        reward = self.rng.standard_normal(self.n).astype(np.float32)
        done = np.array([end != CONTINUE for end in ends])
        return obs, next_obs, action, reward, done, infos


def expected(naive: DictReplayBuffer, b: NDArray[np.int64], e: NDArray[np.int64]) -> dict[str, Any]:
    return {
        "obs": {k: v[b, e] for k, v in naive.observations.items()},
        "next_obs": {k: v[b, e] for k, v in naive.next_observations.items()},
        "actions": naive.actions[b, e],
        "rewards": naive.rewards[b, e].reshape(-1, 1),
        "dones": (naive.dones[b, e] * (1 - naive.timeouts[b, e])).reshape(-1, 1),
    }


def assert_same(got: DictReplayBufferSamples, want: dict[str, Any]) -> None:
    assert list(got.observations) == list(want["obs"])
    for k in want["obs"]:
        np.testing.assert_array_equal(got.observations[k].numpy(), want["obs"][k], err_msg=k)
        np.testing.assert_array_equal(
            got.next_observations[k].numpy(), want["next_obs"][k], err_msg=f"next {k}"
        )
    np.testing.assert_array_equal(got.actions.numpy(), want["actions"])
    np.testing.assert_array_equal(got.rewards.numpy(), want["rewards"])
    np.testing.assert_array_equal(got.dones.numpy(), want["dones"])


def fill(
    frame_key: str,
    hist: int,
    channels: int,
    n_envs: int,
    size: int,
    ends: list[tuple[int, ...]],
    seed: int,
    levels: int,
    frame_capacity: int | None,
) -> tuple[FrameStackReplayBuffer, DictReplayBuffer]:
    space = obs_space(frame_key, hist, channels)
    kw: dict[str, Any] = {"device": "cpu", "n_envs": n_envs}
    ours = FrameStackReplayBuffer(
        size * n_envs,
        space,
        ACTION_SPACE,
        frame_key=frame_key,
        frame_channels=channels,
        frame_capacity=frame_capacity,
        **kw,
    )
    naive = DictReplayBuffer(size * n_envs, space, ACTION_SPACE, **kw)
    stream = FakeEpisodes(space, frame_key, channels, n_envs, seed, levels)
    for step_ends in ends:
        transition = stream.step(step_ends)
        ours.add(*transition)
        naive.add(*transition)
    return ours, naive


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n_envs = draw(st.sampled_from([1, 2]))
    size = draw(st.integers(1, 12))
    end = st.sampled_from([CONTINUE, CONTINUE, CONTINUE, TERMINATE, TRUNCATE])
    ends = draw(st.lists(st.tuples(*[end] * n_envs), min_size=1, max_size=3 * size + 5))
    return {
        "frame_key": draw(st.sampled_from(["images", "lidar"])),
        "hist": draw(st.integers(1, 4)),
        "n_envs": n_envs,
        "size": size,
        "ends": ends,
        "seed": draw(st.integers(0, 2**16)),
        "levels": draw(st.sampled_from([2, 256])),
    }


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(sc=scenarios(), channels=st.sampled_from([1, 3]))
def test_every_transition_matches_dict_replay_buffer(sc: dict[str, Any], channels: int) -> None:
    """With room for every frame, each stored transition, rebuilt, equals SB3's copy, across
    episode ends (terminal next_obs), length-1 episodes, truncations and wrap-around."""
    if sc["frame_key"] == "lidar":
        channels = 1
    ample = 2 * sc["size"] + sc["hist"] + 2
    ours, naive = fill(channels=channels, frame_capacity=ample, **sc)
    assert ours.size() == naive.size()
    b, e = np.meshgrid(np.arange(naive.size()), np.arange(sc["n_envs"]), indexing="ij")
    b, e = b.ravel(), e.ravel()
    assert ours.sampleable(b, e).all()
    assert_same(ours._get_samples(b, env_indices=e), expected(naive, b, e))


@settings(max_examples=200, deadline=None)
@given(sc=scenarios(), capacity_extra=st.integers(0, 6))
def test_small_frame_ring_never_samples_lost_frames(
    sc: dict[str, Any], capacity_extra: int
) -> None:
    """With a frame ring smaller than short episodes need, transitions that lost frames are
    reported and never sampled; the others stay exact; the newest always remain."""
    cap = sc["hist"] + 2 + capacity_extra
    ours, naive = fill(channels=1, frame_capacity=cap, **sc)
    n = sc["n_envs"]
    b, e = np.meshgrid(np.arange(naive.size()), np.arange(n), indexing="ij")
    b, e = b.ravel(), e.ravel()
    ok = ours.sampleable(b, e)
    newest = (ours.pos - 1) % ours.buffer_size
    assert ours.sampleable(np.full(n, newest), np.arange(n)).all()
    assert_same(ours._get_samples(b[ok], env_indices=e[ok]), expected(naive, b[ok], e[ok]))

    drawn: list[tuple[NDArray[np.int64], NDArray[np.int64]]] = []
    original = ours._get_samples

    def spy(batch_inds: Any, env: Any = None, env_indices: Any = None) -> Any:
        drawn.append((batch_inds.copy(), env_indices.copy()))
        return original(batch_inds, env=env, env_indices=env_indices)

    ours._get_samples = spy  # type: ignore[method-assign]
    np.random.seed(sc["seed"])  # noqa: NPY002  (SB3 buffers draw from it)
    got = ours.sample(64)
    (bi, ei) = drawn[0]
    assert ours.sampleable(bi, ei).all()
    assert_same(got, expected(naive, bi, ei))


@pytest.mark.parametrize("frame_key", ["images", "lidar"])
@pytest.mark.parametrize("n_envs", [1, 2])
def test_sample_draws_like_sb3_under_the_same_seed(frame_key: str, n_envs: int) -> None:
    ends = [(TERMINATE if i % 7 == 6 else CONTINUE,) * n_envs for i in range(45)]
    ours, naive = fill(frame_key, 4, 1, n_envs, 20, ends, seed=3, levels=256, frame_capacity=None)
    for seed in range(3):
        np.random.seed(seed)  # noqa: NPY002
        got = ours.sample(32)
        np.random.seed(seed)  # noqa: NPY002
        want = naive.sample(32)
        for k in want.observations:
            assert th.equal(got.observations[k], want.observations[k])
            assert th.equal(got.next_observations[k], want.next_observations[k])
        assert th.equal(got.actions, want.actions)
        assert th.equal(got.rewards, want.rewards)
        assert th.equal(got.dones, want.dones)


def tm_images_space() -> spaces.Dict:
    env = gym.make("TrackMania-Sim-v0", obs_type="images")
    space = env.observation_space
    env.close()
    assert isinstance(space, spaces.Dict)
    return space


@pytest.mark.parametrize("n_envs", [1, 4])
def test_images_transition_takes_under_5_kb(n_envs: int) -> None:
    """tm-gym's images observation (4×64×64 + telemetry + actions): one 4 KB frame per
    transition plus 1/16 spare frames and ~100 bytes, against ~32 KB for DictReplayBuffer."""
    space = tm_images_space()
    size = 100_000  # np.zeros does not touch the pages: cheap to allocate
    buf = FrameStackReplayBuffer(size, space, ACTION_SPACE, device="cpu", n_envs=n_envs)
    per_transition = buf.nbytes / size
    assert 4096 < per_transition <= 5000, per_transition
    # what DictReplayBuffer allocates (computed: allocating it may warn about memory)
    obs_bytes = sum(int(np.prod(b.shape)) * b.dtype.itemsize for b in space.spaces.values())
    naive_bytes = (2 * obs_bytes + 3 * 4 + 3 * 4) * size
    assert naive_bytes / size > 6 * per_transition


def test_lidar_transition_is_small() -> None:
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    space = env.observation_space
    env.close()
    assert isinstance(space, spaces.Dict)
    buf = FrameStackReplayBuffer(10_000, space, ACTION_SPACE, device="cpu", frame_key="lidar")
    assert buf.nbytes / 10_000 < 200  # one 76-byte scan + speed + action history + bookkeeping


def test_length_one_episodes_with_the_default_ring() -> None:
    """Episodes of one step need two frames a transition: with the default ring, the oldest
    transitions lose their frames; sample() still draws only complete, exact ones."""
    n_envs, size = 2, 32
    ends = [(TERMINATE, TRUNCATE)] * 80
    ours, naive = fill("images", 4, 1, n_envs, size, ends, seed=5, levels=256, frame_capacity=None)
    b, e = np.meshgrid(np.arange(size), np.arange(n_envs), indexing="ij")
    ok = ours.sampleable(b.ravel(), e.ravel())
    assert 0 < ok.sum() < ok.size
    drawn: list[tuple[NDArray[np.int64], NDArray[np.int64]]] = []
    original = ours._get_samples

    def spy(batch_inds: Any, env: Any = None, env_indices: Any = None) -> Any:
        drawn.append((batch_inds.copy(), env_indices.copy()))
        return original(batch_inds, env=env, env_indices=env_indices)

    ours._get_samples = spy  # type: ignore[method-assign]
    got = ours.sample(256)
    bi, ei = drawn[0]
    assert ours.sampleable(bi, ei).all()
    assert_same(got, expected(naive, bi, ei))


# -- errors -------------------------------------------------------------------------------
def test_missing_frame_key_names_the_keys() -> None:
    with pytest.raises(ValueError, match=r"frame_key='images' is not in .*'lidar'"):
        FrameStackReplayBuffer(10, obs_space("lidar", 4), ACTION_SPACE, device="cpu")


@pytest.mark.parametrize(
    ("key", "channels"), [("speed", 1), ("images", 3)], ids=["flat", "channels"]
)
def test_non_stack_shapes_are_refused(key: str, channels: int) -> None:
    space = obs_space("images", 4)  # images (4, 2, 2): 4 is not a multiple of 3
    with pytest.raises(ValueError, match=r"expected a Box stacking frames along axis 0"):
        FrameStackReplayBuffer(
            10, space, ACTION_SPACE, device="cpu", frame_key=key, frame_channels=channels
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimize_memory_usage": True}, "already stores each frame once"),
        ({"frame_capacity": 5}, r"frame_capacity=5: expected an integer >= 6"),
        ({"frame_channels": 0}, r"frame_channels=0"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FrameStackReplayBuffer(10, obs_space("images", 4), ACTION_SPACE, device="cpu", **kwargs)


def test_stacks_it_cannot_rebuild_are_refused() -> None:
    space = obs_space("images", 4)
    buf = FrameStackReplayBuffer(10, space, ACTION_SPACE, device="cpu")
    stream = FakeEpisodes(space, "images", 1, 1, seed=0, levels=256)
    obs, next_obs, action, reward, done, infos = stream.step((CONTINUE,))
    mixed = dict(obs, images=np.arange(16, dtype=np.uint8).reshape(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"obs\['images'\] of env 0 is not a frame stack"):
        buf.add(mixed, next_obs, action, reward, done, infos)
    unshifted = dict(next_obs, images=np.zeros((1, 4, 2, 2), dtype=np.uint8) + 7)
    with pytest.raises(ValueError, match=r"not obs\['images'\] shifted by one frame"):
        buf.add(obs, unshifted, action, reward, done, infos)
    assert buf.size() == 0  # nothing half-added
    buf.add(obs, next_obs, action, reward, done, infos)
    with pytest.raises(ValueError, match=r"has shape \(1, 4, 2\); expected \(1, 4, 2, 2\)"):
        buf.add(dict(obs, images=obs["images"][..., 0]), next_obs, action, reward, done, infos)


def test_reset_without_done_starts_a_new_episode() -> None:
    """An env reset that no done announced (a new learn() call) is recognised by its fresh stack."""
    space = obs_space("lidar", 3)
    ours = FrameStackReplayBuffer(10, space, ACTION_SPACE, device="cpu", frame_key="lidar")
    naive = DictReplayBuffer(10, space, ACTION_SPACE, device="cpu")
    stream = FakeEpisodes(space, "lidar", 1, 1, seed=1, levels=256)
    for i in range(6):
        if i == 3:
            stream.obs[0] = stream._fresh()
        t = stream.step((CONTINUE,))
        ours.add(*t)
        naive.add(*t)
    b, e = np.arange(6), np.zeros(6, dtype=np.int64)
    assert_same(ours._get_samples(b, env_indices=e), expected(naive, b, e))


# -- with SAC -----------------------------------------------------------------------------
@pytest.mark.slow  # trains SAC
@pytest.mark.parametrize("obs_type", ["images", "lidar"])
def test_sac_learns_with_the_buffer(obs_type: str) -> None:
    """SAC runs with replay_buffer_class on two tm-gym envs whose short episodes end (terminal
    observations from the VecEnv); every add() checked the stacks it was given."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import DummyVecEnv

    th.set_num_threads(1)
    venv = DummyVecEnv(
        [lambda: gym.make("TrackMania-Sim-v0", obs_type=obs_type, ep_max_length=15)] * 2
    )
    key = "images" if obs_type == "images" else "lidar"
    model = SAC(
        "MultiInputPolicy",
        venv,
        buffer_size=1_000,
        learning_starts=40,
        batch_size=16,
        train_freq=4,
        replay_buffer_class=FrameStackReplayBuffer,
        replay_buffer_kwargs={"frame_key": key},
        policy_kwargs={"net_arch": [16], "features_extractor_kwargs": {"cnn_output_dim": 8}}
        if obs_type == "images"
        else {"net_arch": [16]},
        device="cpu",
        seed=0,
    )
    model.learn(100)
    buf = model.replay_buffer
    assert isinstance(buf, FrameStackReplayBuffer)
    assert buf.size() >= 50 and buf.dones.sum() >= 4  # 100 steps over 2 envs, 15-step episodes
    batch = buf.sample(8)
    assert batch.observations[key].shape == (8, *venv.observation_space[key].shape)
    venv.close()
