"""REDQ-SAC: the subset-minimum target, update counts, training on tm-gym, save/load, seeding."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import Logger

import tm_gym  # noqa: F401  (registers TrackMania-Sim-v0)
from tm_algos.buffers import FrameStackReplayBuffer
from tm_algos.extractors import policy_kwargs_for
from tm_algos.redq import REDQ, redq_target_q, sample_critic_subset

th.set_num_threads(1)

TINY_LIDAR: dict[str, Any] = {**policy_kwargs_for("lidar", hidden=(32,)), "net_arch": [32]}


def lidar_env() -> gym.Env[Any, Any]:
    return gym.make("TrackMania-Sim-v0", obs_type="lidar", ep_max_length=60)


def quiet(model: REDQ) -> REDQ:
    """A logger with no output: values stay in ``name_to_value`` until the next dump."""
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def tiny_lidar(seed: int = 0, **kwargs: Any) -> REDQ:
    args: dict[str, Any] = {
        "buffer_size": 2_000,
        "learning_starts": 100,
        "batch_size": 32,
        "n_critics": 5,
        "policy_kwargs": TINY_LIDAR,
        "seed": seed,
        "device": "cpu",
    }
    args.update(kwargs)
    return quiet(REDQ("MultiInputPolicy", lidar_env(), **args))


def params(model: REDQ) -> list[th.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


# --- the target -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(10, 2), (5, 3), (3, 1), (4, 4)])
def test_subsets_are_m_distinct_sorted_indices_and_all_occur(n: int, m: int) -> None:
    gen = th.Generator().manual_seed(1)
    seen = set()
    for _ in range(600):
        idx = sample_critic_subset(n, m, gen)
        assert idx.dtype == th.int64 and idx.shape == (m,)
        values = idx.tolist()
        assert values == sorted(set(values)), values  # distinct and sorted
        assert all(0 <= v < n for v in values)
        seen.add(tuple(values))
    assert len(seen) == math.comb(n, m)


def test_target_is_the_min_over_the_drawn_subset() -> None:
    n, b = 10, 7
    next_q = th.randn(n, b, 1, generator=th.Generator().manual_seed(0))
    for seed in range(20):
        got = redq_target_q(next_q, 2, th.Generator().manual_seed(seed))
        idx = sample_critic_subset(n, 2, th.Generator().manual_seed(seed))
        assert got.shape == (b, 1)
        assert th.equal(got, next_q[idx].min(dim=0).values)


def test_target_never_takes_the_same_critic_twice() -> None:
    """Critic i predicts i everywhere: with M=2 distinct critics the minimum is never N-1
    (drawing with replacement would give it about 1 time in N²), and one subset serves the
    whole batch."""
    n, m = 6, 2
    next_q = th.arange(n, dtype=th.float32).reshape(n, 1, 1).expand(n, 5, 1)
    gen = th.Generator().manual_seed(3)
    mins = []
    for _ in range(2_000):
        t = redq_target_q(next_q, m, gen)
        assert th.all(t == t[0])
        mins.append(float(t[0, 0]))
    assert max(mins) == n - 2
    # The minimum of M of N values drawn without replacement from 0..N-1 has mean (N+1)/(M+1)-1.
    assert abs(np.mean(mins) - ((n + 1) / (m + 1) - 1)) < 0.1


def test_subset_of_all_critics_is_the_plain_minimum() -> None:
    next_q = th.randn(4, 9, 1)
    assert th.equal(redq_target_q(next_q, 4), next_q.min(dim=0).values)


@pytest.mark.parametrize("m", [0, 11, -1, 1.5, True, "2", None])
def test_bad_subset_size_is_refused(m: Any) -> None:
    with pytest.raises(ValueError, match=r"subset_size=.*1 <= M <= n_critics \(n_critics=10\)"):
        redq_target_q(th.zeros(10, 3, 1), m)


@pytest.mark.parametrize("bad", [th.zeros(3), th.zeros(0, 4, 1), np.zeros((3, 4, 1))])
def test_bad_next_q_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"next_q has shape .* expected a tensor \(n_critics"):
        redq_target_q(bad, 1)


# --- construction -----------------------------------------------------------------------------


def test_n_critics_reaches_the_policy() -> None:
    env = lidar_env()
    default = REDQ("MultiInputPolicy", env, buffer_size=100, policy_kwargs=TINY_LIDAR)
    assert default.n_critics == 10 and len(default.policy.critic.q_networks) == 10
    assert len(default.policy.critic_target.q_networks) == 10
    both = REDQ(
        "MultiInputPolicy",
        env,
        buffer_size=100,
        n_critics=3,
        policy_kwargs={**TINY_LIDAR, "n_critics": 3},
    )
    assert len(both.policy.critic.q_networks) == 3
    kw_only = REDQ(
        "MultiInputPolicy", env, buffer_size=100, policy_kwargs={**TINY_LIDAR, "n_critics": 4}
    )
    assert kw_only.n_critics == 4 and kw_only.subset_size == 2
    assert "n_critics" not in TINY_LIDAR  # the caller's dict is not modified


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_critics": 5, "policy_kwargs": {"n_critics": 4}}, r"n_critics=5 disagrees with"),
        ({"n_critics": 0}, r"n_critics=0: expected an integer >= 1"),
        ({"policy_kwargs": {"n_critics": "3"}}, r"policy_kwargs\[\"n_critics\"\]='3'"),
        ({"n_critics": 3, "subset_size": 4}, r"subset_size=4: .*\(n_critics=3\)"),
        ({"subset_size": 0}, r"subset_size=0"),
        ({"actor_update_interval": 0}, r"actor_update_interval=0: expected None .* or an int"),
        ({"actor_update_interval": 2.0}, r"actor_update_interval=2.0"),
        ({"target_update_interval": 0}, r"target_update_interval=0"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        REDQ("MultiInputPolicy", lidar_env(), **kwargs)


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run() -> Iterator[tuple[REDQ, list[th.Tensor]]]:
    """300 steps on the LIDAR simulator: 200 train() calls of 3 critic updates, default
    actor_update_interval (one actor update per call), frame-stacking buffer on 'lidar'.
    Also gives the parameters before training."""
    model = tiny_lidar(
        gradient_steps=3,
        replay_buffer_class=FrameStackReplayBuffer,
        replay_buffer_kwargs={"frame_key": "lidar"},
    )
    before = params(model)
    model.learn(300)
    yield model, before
    assert model.env is not None
    model.env.close()


@pytest.fixture
def trained(trained_run: tuple[REDQ, list[th.Tensor]]) -> REDQ:
    return trained_run[0]


@pytest.mark.slow  # the trained fixture: 300 steps of REDQ
def test_lidar_training_updates_critics_g_times_per_actor_update(
    trained_run: tuple[REDQ, list[th.Tensor]],
) -> None:
    trained, before = trained_run
    assert trained.num_timesteps == 300
    assert trained.actor_updates == 200  # one per train() call: steps 101..300
    assert trained.critic_updates == 3 * trained.actor_updates == trained._n_updates
    log = trained.logger.name_to_value
    assert log["train/n_updates"] == trained.critic_updates
    assert log["train/actor_updates"] == trained.actor_updates
    for key in ("train/critic_loss", "train/actor_loss", "train/ent_coef", "train/ent_coef_loss"):
        assert np.isfinite(log[key]), key
    assert log["train/ent_coef"] < 1.0  # "auto" temperature moved from its initial 1.0
    changed = [not th.equal(a, b) for a, b in zip(before, params(trained), strict=True)]
    assert all(changed)  # every critic, target critic, actor and extractor weight moved


def test_actor_update_interval_counts_critic_updates_across_calls() -> None:
    model = tiny_lidar(learning_starts=40, gradient_steps=2, actor_update_interval=3)
    model.learn(60)  # 20 train() calls of 2 critic updates
    assert model.critic_updates == 40 and model.actor_updates == 40 // 3
    model.logger.dump()
    model.train(gradient_steps=1, batch_size=8)  # update 41: no actor update
    assert model.actor_updates == 13 and "train/actor_loss" not in model.logger.name_to_value
    assert "train/critic_loss" in model.logger.name_to_value
    model.train(gradient_steps=1, batch_size=8)  # update 42: actor update
    assert model.actor_updates == 14 and "train/actor_loss" in model.logger.name_to_value
    model.train(gradient_steps=7, batch_size=8)  # updates 43..49: at 45 and 48
    assert (model.critic_updates, model.actor_updates) == (49, 16)


@pytest.mark.slow  # the trained fixture: 300 steps of REDQ
def test_actor_loss_is_against_the_mean_of_all_critics(trained: REDQ) -> None:
    env = lidar_env()
    obs, _ = env.reset(seed=0)
    env.close()
    obs_t, _ = trained.policy.obs_to_tensor(obs)
    alpha = th.tensor(0.3)
    state = {k: v.clone() for k, v in trained.policy.state_dict().items()}
    actor_opt = trained.actor.optimizer.state_dict()
    ent_opt = trained.ent_coef_optimizer.state_dict() if trained.ent_coef_optimizer else None
    log_ent = trained.log_ent_coef.detach().clone() if trained.log_ent_coef is not None else None
    count = trained.actor_updates
    try:
        with th.no_grad():
            th.manual_seed(5)
            actions, log_prob = trained.actor.action_log_prob(obs_t)
            qs = th.cat(trained.critic(obs_t, actions), dim=1)
            want = float((alpha * log_prob.reshape(-1, 1) - qs.mean(dim=1, keepdim=True)).mean())
            min_based = float((alpha * log_prob.reshape(-1, 1) - qs.min(dim=1).values).mean())
        th.manual_seed(5)
        got, _ = trained._update_actor(obs_t, alpha)
        assert got == pytest.approx(want, rel=1e-5)
        assert abs(want - min_based) > 1e-4  # the check tells the mean from SAC's minimum
    finally:  # leave the shared model as it was
        trained.policy.load_state_dict(state)
        trained.actor.optimizer.load_state_dict(actor_opt)
        if trained.ent_coef_optimizer is not None and ent_opt is not None:
            trained.ent_coef_optimizer.load_state_dict(ent_opt)
        if log_ent is not None and trained.log_ent_coef is not None:
            with th.no_grad():
                trained.log_ent_coef.copy_(log_ent)
        trained.actor_updates = count


def test_images_with_small_cnn_and_frame_stack_buffer() -> None:
    env = gym.make("TrackMania-Sim-v0", obs_type="images", ep_max_length=30)
    model = quiet(
        REDQ(
            "MultiInputPolicy",
            env,
            buffer_size=64,
            learning_starts=24,
            batch_size=8,
            gradient_steps=2,
            n_critics=3,
            replay_buffer_class=FrameStackReplayBuffer,
            policy_kwargs={
                **policy_kwargs_for("images", "small", features_dim=32),
                "net_arch": [16],
            },
            seed=0,
            device="cpu",
        )
    )
    try:
        model.learn(32)
        assert isinstance(model.replay_buffer, FrameStackReplayBuffer)
        assert (model.critic_updates, model.actor_updates) == (16, 8)
        assert np.isfinite(model.logger.name_to_value["train/critic_loss"])
        obs, _ = env.reset(seed=1)
        action, _ = model.predict(obs, deterministic=True)
        assert action.shape == (3,) and np.all(np.abs(action) <= 1)
    finally:
        env.close()


# --- save / load and seeding ------------------------------------------------------------------


@pytest.mark.slow  # the trained fixture: 300 steps of REDQ
def test_save_load_round_trip(trained: REDQ, tmp_path: Path) -> None:
    path = tmp_path / "redq.zip"
    trained.save(path)
    env = lidar_env()
    try:
        loaded = REDQ.load(path, env=env, device="cpu")
        assert type(loaded) is REDQ
        assert (loaded.n_critics, loaded.subset_size, loaded.actor_update_interval) == (5, 2, None)
        assert (loaded.critic_updates, loaded.actor_updates) == (600, 200)
        for a, b in zip(params(trained), params(loaded), strict=True):
            assert th.equal(a, b)
        obs, _ = env.reset(seed=4)
        for _ in range(5):
            want, _ = trained.predict(obs, deterministic=True)
            got, _ = loaded.predict(obs, deterministic=True)
            np.testing.assert_array_equal(got, want)
            obs, *_ = env.step(want)
        quiet(loaded).learn(20, reset_num_timesteps=False)  # training goes on after loading
        assert loaded.critic_updates == 660 and loaded.actor_updates == 220
    finally:
        env.close()


def test_same_seed_same_run_other_seed_other_run() -> None:
    runs = []
    for seed in (7, 7, 8):
        model = tiny_lidar(seed=seed, learning_starts=60, n_critics=4, gradient_steps=2)
        model.learn(90)
        runs.append(params(model))
        assert model.env is not None
        model.env.close()
    assert all(th.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(th.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_subsets_follow_the_seed_and_update_count() -> None:
    """Two models with one seed draw the same subsets; reseeding after k updates gives the
    stream a loaded model with k updates gets."""
    a, b = tiny_lidar(seed=3), tiny_lidar(seed=3)
    draws_a = [sample_critic_subset(5, 2, a._subset_rng).tolist() for _ in range(10)]
    draws_b = [sample_critic_subset(5, 2, b._subset_rng).tolist() for _ in range(10)]
    assert draws_a == draws_b
    a.critic_updates = b.critic_updates = 12
    a.set_random_seed(3)
    b.set_random_seed(3)
    assert th.equal(
        sample_critic_subset(5, 2, a._subset_rng), sample_critic_subset(5, 2, b._subset_rng)
    )
    c = tiny_lidar(seed=4)
    draws_c = [sample_critic_subset(5, 2, c._subset_rng).tolist() for _ in range(10)]
    assert draws_c != draws_a
