"""FastImageSAC: trains on images, encoder updated by the critic only, EMA target encoder,
SB3 save/load and tm-algos export round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.sac.policies import MultiInputPolicy

import tm_gym  # noqa: F401  (registers the environments)
from tm_algos import policy as policy_files
from tm_algos.buffers import FrameStackReplayBuffer
from tm_algos.extractors import TMCNNExtractor
from tm_algos.fast_sac import FastImageSAC, FastSACPolicy

Obs = dict[str, NDArray[Any]]
TINY: dict[str, Any] = {
    "net_arch": [32, 32],
    "features_extractor_kwargs": {"arch": "small", "features_dim": 32},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _env() -> gym.Env[Any, Any]:
    return gym.make("TrackMania-Sim-v0", obs_type="images")


def _model(**kwargs: Any) -> FastImageSAC:
    settings: dict[str, Any] = {
        "buffer_size": 400,
        "batch_size": 16,
        "learning_starts": 40,
        "seed": 0,
        "device": "cpu",
        "policy_kwargs": dict(TINY),
    }
    settings.update(kwargs)
    return FastImageSAC("MultiInputPolicy", _env(), **settings)


@pytest.fixture(scope="module")
def trained() -> FastImageSAC:
    return _model().learn(200)


@pytest.fixture(scope="module")
def observations() -> list[Obs]:
    env = _env()
    obs, _ = env.reset(seed=3)
    out = [obs]
    env.action_space.seed(3)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
        out.append(obs)
    return out


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow  # the trained fixture: 200 image steps
def test_trains_on_images_with_the_frame_stack_buffer(trained: FastImageSAC) -> None:
    assert isinstance(trained.policy, FastSACPolicy)
    assert isinstance(trained.replay_buffer, FrameStackReplayBuffer)
    assert trained.num_timesteps == 200
    assert trained._n_updates == 200 - 40
    assert trained.policy.actor.features_extractor is trained.policy.critic.features_extractor
    assert isinstance(trained.policy.encoder, TMCNNExtractor)
    assert trained.policy.encoder.arch == "small"
    for p in trained.policy.parameters():
        assert torch.isfinite(p).all()
    assert trained.env is not None
    action, _ = trained.predict(trained.env.reset(), deterministic=True)  # type: ignore[arg-type]
    assert action.shape == (1, 3)
    assert np.all(np.abs(action) <= 1.0)


def test_an_explicit_replay_buffer_class_is_kept() -> None:
    model = _model(replay_buffer_class=DictReplayBuffer)
    assert type(model.replay_buffer) is DictReplayBuffer
    model.learn(45)  # a few updates through SB3's own buffer
    assert model._n_updates == 5


@pytest.mark.slow  # the trained fixture: 200 image steps
def test_optimisers_split_the_encoder_to_the_critic(trained: FastImageSAC) -> None:
    policy = trained.policy
    enc = {id(p) for p in policy.encoder.parameters()}
    actor_params = {id(p) for g in policy.actor.optimizer.param_groups for p in g["params"]}
    critic_params = {id(p) for g in policy.critic.optimizer.param_groups for p in g["params"]}
    assert enc <= critic_params
    assert not enc & actor_params
    assert not {id(p) for p in policy.target_encoder.parameters()} & (enc | actor_params)


def test_actor_and_temperature_steps_leave_the_encoder_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _model().learn(60)
    policy = model.policy
    monkeypatch.setattr(policy.critic.optimizer, "step", lambda *a, **k: None)
    enc, actor_mlp = _params(policy.encoder), _params(policy.actor.latent_pi)
    model.train(gradient_steps=3, batch_size=16)
    assert _same(enc, _params(policy.encoder))  # the actor's loss never reaches it
    assert not _same(actor_mlp, _params(policy.actor.latent_pi))  # but the actor learned
    monkeypatch.undo()
    model.train(gradient_steps=1, batch_size=16)
    assert not _same(enc, _params(policy.encoder))  # the critic's step moves it


def test_only_the_critic_loss_gives_the_encoder_a_gradient() -> None:
    model = _model().learn(60)
    policy = model.policy
    critic_opt, actor_opt = policy.critic.optimizer, policy.actor.optimizer
    critic_step, actor_step = critic_opt.step, actor_opt.step
    seen: list[str] = []

    def encoder_grads() -> str:
        grads = [p.grad for p in policy.encoder.parameters()]
        return (
            "all"
            if all(g is not None for g in grads)
            else "none"
            if not any(g is not None for g in grads)
            else "some"
        )

    def spied_critic_step(*args: Any, **kwargs: Any) -> Any:
        seen.append(f"critic:{encoder_grads()}")
        out = critic_step(*args, **kwargs)
        policy.encoder.zero_grad(set_to_none=True)  # whatever comes next starts from None
        return out

    def spied_actor_step(*args: Any, **kwargs: Any) -> Any:
        seen.append(f"actor:{encoder_grads()}")
        return actor_step(*args, **kwargs)

    critic_opt.step = spied_critic_step  # type: ignore[method-assign]
    actor_opt.step = spied_actor_step  # type: ignore[method-assign]
    model.train(gradient_steps=2, batch_size=16)
    assert seen == ["critic:all", "actor:none"] * 2


def test_target_encoder_is_an_exponential_moving_average() -> None:
    model = _model(tau=0.1).learn(41)
    policy = model.policy
    before = _params(policy.target_encoder)
    model.train(gradient_steps=1, batch_size=16)
    online, after = _params(policy.encoder), _params(policy.target_encoder)
    for old, new, src in zip(before, after, online, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * src, rtol=1e-5, atol=1e-6)
    assert not _same(after, online)  # a moving average, not a copy


@pytest.mark.slow  # the trained fixture: 200 image steps
def test_save_and_load_predict_the_same(
    trained: FastImageSAC, observations: list[Obs], tmp_path: Path
) -> None:
    trained.save(tmp_path / "model.zip")
    loaded = FastImageSAC.load(tmp_path / "model.zip", device="cpu")
    assert isinstance(loaded.policy, FastSACPolicy)
    assert loaded.policy.actor.features_extractor is loaded.policy.critic.features_extractor
    for obs in observations:
        np.testing.assert_array_equal(
            loaded.predict(obs, deterministic=True)[0], trained.predict(obs, deterministic=True)[0]
        )
    loaded.set_env(_env())
    loaded.learn(5, reset_num_timesteps=False)  # and it keeps training


@pytest.mark.slow  # the trained fixture: 200 image steps
def test_export_and_load_policy_give_the_same_actions(
    trained: FastImageSAC,
    observations: list[Obs],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(policy_files.ALGORITHM_CLASSES, "FastImageSAC", FastImageSAC)
    monkeypatch.setitem(policy_files.POLICY_CLASSES, "FastImageSAC", {})
    policy_files.register_policy("FastImageSAC", FastSACPolicy)
    out = policy_files.export_policy(trained, tmp_path / "policy")
    loaded = policy_files.load_policy(out)
    assert isinstance(loaded.policy, FastSACPolicy)
    for obs in observations:
        expected, _ = trained.predict(obs, deterministic=True)
        np.testing.assert_array_equal(loaded.act(obs), expected)
    batch = {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    np.testing.assert_array_equal(loaded.act(batch), trained.predict(batch, deterministic=True)[0])


@pytest.mark.slow  # the trained fixture: 200 image steps
def test_channels_last_does_not_change_actions(
    trained: FastImageSAC, observations: list[Obs]
) -> None:
    plain = FastSACPolicy(
        trained.observation_space,
        trained.action_space,  # type: ignore[arg-type]
        lambda _: 1e-3,
        channels_last=False,
        **TINY,
    )
    plain.load_state_dict(trained.policy.state_dict())
    plain.set_training_mode(False)
    for obs in observations:
        got, _ = plain.predict(obs, deterministic=True)
        want, _ = trained.predict(obs, deterministic=True)
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"policy_kwargs": {**TINY, "augment_shift": 2}},
        {"next_actions_from_target": False},
        {"policy_kwargs": {**TINY, "optimizer_kwargs": {}}},
    ],
    ids=["augment", "online-next-actions", "plain-adam"],
)
def test_variants_train(kwargs: dict[str, Any]) -> None:
    model = _model(**kwargs).learn(44)
    assert model._n_updates == 4
    for p in model.policy.parameters():
        assert torch.isfinite(p).all()


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(ValueError, match="share_features_extractor=False"):
        _model(policy_kwargs={"share_features_extractor": False})
    with pytest.raises(ValueError, match="augment_shift=-1"):
        _model(policy_kwargs={"augment_shift": -1})
    with pytest.raises(ValueError, match="channels_last='yes'"):
        _model(policy_kwargs={"channels_last": "yes"})
    with pytest.raises(TypeError, match="needs a FastSACPolicy, got MultiInputPolicy"):
        FastImageSAC(MultiInputPolicy, _env(), buffer_size=100)


def test_warm_up_follows_the_policy_when_asked() -> None:
    model = _model(learning_starts=1000)
    env = _env()
    obs, _ = env.reset(seed=0)
    model._last_obs = {k: v[None] for k, v in obs.items()}
    mu, log_std = model.actor.mu, model.actor.log_std
    assert isinstance(mu, torch.nn.Linear) and isinstance(log_std, torch.nn.Linear)
    with torch.no_grad():  # a policy that always asks for (0.9, -0.9, 0.5), nearly noiseless
        mu.weight.zero_()
        mu.bias.copy_(torch.atanh(torch.tensor([0.9, -0.9, 0.5])))
        log_std.weight.zero_()
        log_std.bias.fill_(-20.0)
    random = np.concatenate([model._sample_action(1000)[0] for _ in range(20)])
    assert np.abs(random - [0.9, -0.9, 0.5]).max() > 0.5  # uniform warm-up actions
    model.warmup_with_policy = True
    follows = np.concatenate([model._sample_action(1000)[0] for _ in range(20)])
    np.testing.assert_allclose(follows, np.tile([0.9, -0.9, 0.5], (20, 1)), atol=1e-3)
