"""Demonstrations during RL: the replay mix (RLPD) for LIDAR and image observations, the
behaviour-cloning term of the actor, ``[demos]`` settings, resume, and ``tm-train --demos`` for
images end to end."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from tm_algos.buffers import DemoMix, FrameStackReplayBuffer
from tm_algos.cli import train as train_cli
from tm_algos.errors import InvalidTypeError, InvalidValueError
from tm_algos.factory import env_kwargs_of, make_model, make_vec_env
from tm_algos.fast_sac import FastSACPolicy
from tm_algos.imitation.bc import BehaviourCloning
from tm_algos.imitation.demos import DemoError, Demonstrations, load_demonstrations
from tm_algos.imitation.mix import BCRegulariser, install_demo_terms
from tm_algos.presets import DemosConfig, PresetError, apply_overrides, load_preset
from tm_algos.training import TrainConfig, Trainer
from tm_gym.cli.main import main as tm_gym_main
from tm_gym.recording import builtin_recording

torch.set_num_threads(1)

LIDAR_DEMO = builtin_recording("sim-default-expert-lidar")
SENTINEL = -123.0  # the reward of every online transition: tells them from demonstrations
LIDAR_TINY = [
    "policy.net_arch=[16, 16]",
    "algo.hyperparameters.learning_starts=50",
    "algo.hyperparameters.buffer_size=5000",
    "algo.hyperparameters.batch_size=64",
]
IMAGES_TINY = [
    "policy.net_arch=[32, 32]",
    "policy.extractor_kwargs.features_dim=16",
    "algo.hyperparameters.learning_starts=20",
    "algo.hyperparameters.buffer_size=2000",
    "algo.hyperparameters.batch_size=16",
]


@pytest.fixture(scope="module")
def images_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short expert recording with image observations, made by ``tm-gym record``."""
    out = tmp_path_factory.mktemp("demos") / "expert-images.tmrec"
    args = ["record", "--out", str(out), "--obs-type", "images", "--driver", "expert"]
    assert tm_gym_main([*args, "--max-steps", "40"]) == 0
    return out


def model_of(name: str, overrides: list[str], seed: int = 0) -> BaseAlgorithm:
    preset = apply_overrides(load_preset(name), overrides)
    return make_model(preset, make_vec_env(preset, n_envs=1, seed=seed), seed=seed)


def demos_for(model: BaseAlgorithm, path: Path, name: str) -> Demonstrations:
    preset = load_preset(name)
    return load_demonstrations([path], model.observation_space, env_kwargs_of(preset))


def fill_online(model: BaseAlgorithm, steps: int, seed: int = 0) -> FrameStackReplayBuffer:
    """``steps`` random transitions in the model's buffer, each with the SENTINEL reward."""
    buffer = model.replay_buffer  # type: ignore[attr-defined]
    assert isinstance(buffer, FrameStackReplayBuffer)
    env = model.get_env()
    assert env is not None
    env.seed(seed)
    obs = env.reset()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        action = rng.uniform(-1, 1, (env.num_envs, 3)).astype(np.float32)
        new_obs, _, dones, infos = env.step(action)
        nxt = {k: v.copy() for k, v in new_obs.items()}  # type: ignore[union-attr]
        for i, done in enumerate(dones):
            if done:
                for k, v in infos[i]["terminal_observation"].items():
                    nxt[k][i] = v
        buffer.add(obs, nxt, action, np.full(env.num_envs, SENTINEL), dones, infos)  # type: ignore[arg-type]
        obs = new_obs
    return buffer


# -- the replay mix ----------------------------------------------------------------------------


@pytest.mark.parametrize("obs_type", ["lidar", "images"])
def test_every_batch_holds_the_configured_share_of_demonstrations(
    obs_type: str, images_demo: Path
) -> None:
    name, path, tiny = (
        ("lidar-sac", LIDAR_DEMO, LIDAR_TINY)
        if obs_type == "lidar"
        else ("images-sac-rl", images_demo, IMAGES_TINY)
    )
    model = model_of(name, tiny)
    online = fill_online(model, 60)
    demos = demos_for(model, path, name)
    demo_buffer = demos.replay_buffer(online)
    assert demo_buffer.size() == demos.num_steps  # every transition, once
    recorded = {tuple(a) for ep in demos.episodes for a in ep.actions.tolist()}
    for fraction, batch, expected in ((0.25, 64, 16), (0.5, 10, 5), (0.0, 32, 0), (1.0, 8, 8)):
        online.attach_demos(DemoMix(demo_buffer, fraction))
        for _ in range(5):
            s = online.sample(batch)
            rewards = s.rewards.numpy().ravel()
            from_demos = rewards != SENTINEL
            assert from_demos.sum() == expected
            assert from_demos[batch - expected :].all()  # the last rows
            for row in s.actions[from_demos].numpy().tolist():
                assert tuple(row) in recorded
            assert s.observations[online.frame_key].shape[0] == batch
    online.attach_demos(None)
    assert (online.sample(32).rewards.numpy() == SENTINEL).all()


def test_a_mix_with_other_observations_is_refused() -> None:
    lidar = model_of("lidar-sac", LIDAR_TINY)
    online = fill_online(lidar, 10)
    other = FrameStackReplayBuffer(
        100,
        online.observation_space,
        online.action_space,
        frame_key=online.frame_key,
    )
    with pytest.raises(InvalidValueError, match="empty"):
        DemoMix(other, 0.5)
    with pytest.raises(InvalidValueError, match=r"fraction=1\.5"):
        DemoMix(online, 1.5)
    demos = demos_for(lidar, LIDAR_DEMO, "lidar-sac").replay_buffer(online)
    demos.frame_channels = 2  # as if built for another stacking
    with pytest.raises(InvalidValueError, match="frame channels"):
        online.attach_demos(DemoMix(demos, 0.5))


def test_demos_settings_are_checked() -> None:
    preset = apply_overrides(load_preset("lidar-sac"), ["demos.mix=0.25", "demos.bc_weight=2"])
    assert preset.demos == DemosConfig(pretrain=True, mix=0.25, bc_weight=2.0)
    assert preset.to_dict()["demos"]["mix"] == 0.25
    assert load_preset("lidar-sac").demos.mix == 0.5  # RLPD's symmetric sampling by default
    with pytest.raises(PresetError, match=r"demos\.mix.*from 0 to 1"):
        apply_overrides(preset, ["demos.mix=2"])
    with pytest.raises(PresetError, match="no key 'ratio'"):
        apply_overrides(preset, ["demos.ratio=0.5"])


# -- the behaviour-cloning term ----------------------------------------------------------------


def trained_copy(bc_weight: float, steps: int) -> tuple[BaseAlgorithm, Demonstrations]:
    """A tiny lidar SAC trained ``steps`` gradient steps on random online transitions with
    the demonstrations' behaviour-cloning term at ``bc_weight``: the same numbers each call."""
    model = model_of("lidar-sac", LIDAR_TINY)
    fill_online(model, 100)
    demos = demos_for(model, LIDAR_DEMO, "lidar-sac")
    install_demo_terms(model, DemosConfig(mix=0.0, bc_weight=bc_weight), demos=demos, seed=1)
    model._setup_learn(0)  # the logger the training step writes to
    np.random.seed(0)  # noqa: NPY002 - SB3's buffers sample with NumPy's global generator
    torch.manual_seed(0)
    if steps:
        model.train(steps, batch_size=64)  # type: ignore[attr-defined]
    return model, demos


def test_bc_weight_zero_leaves_the_update_as_before() -> None:
    plain, _ = trained_copy(0.0, 5)
    again, _ = trained_copy(0.0, 5)
    pulled, _ = trained_copy(1.0, 5)
    for (name, a), b in zip(
        plain.policy.state_dict().items(), again.policy.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    actor = [k for k in plain.policy.state_dict() if k.startswith("actor.mu")]
    assert any(
        not torch.equal(plain.policy.state_dict()[k], pulled.policy.state_dict()[k]) for k in actor
    )


@pytest.mark.slow
def test_the_bc_term_pulls_the_actor_towards_the_demonstrated_actions() -> None:
    start, demos = trained_copy(0.0, 0)
    free, _ = trained_copy(0.0, 300)
    pulled, _ = trained_copy(5.0, 300)
    obs, labels = demos.dataset.sample(256, np.random.default_rng(0))
    err = {
        name: BehaviourCloning(m.policy).action_error(obs, labels)
        for name, m in (("start", start), ("free", free), ("pulled", pulled))
    }
    # measured: start 0.245, SAC alone 0.199, SAC with the term 0.103
    assert err["pulled"] < 0.7 * min(err["free"], err["start"]), err


def test_the_bc_term_leaves_the_fast_sac_encoder_to_the_critics(images_demo: Path) -> None:
    model = model_of("images-sac-rl", IMAGES_TINY)
    demos = demos_for(model, images_demo, "images-sac-rl")
    reg = BCRegulariser(model, demos.dataset, 3.0, batch_size=8)
    reg.attach()
    policy = model.policy
    assert isinstance(policy, FastSACPolicy)
    encoder = [p.detach().clone() for p in policy.encoder.parameters()]
    head = policy.actor.mu
    assert isinstance(head, torch.nn.Linear)
    mu = head.weight.detach().clone()
    optimizer = policy.actor.optimizer
    optimizer.zero_grad()
    optimizer.step()  # no actor loss of its own: the step is the BC term's alone
    assert reg.updates == 1 and np.isfinite(reg.last_loss)
    assert not torch.equal(mu, head.weight)
    for before, p in zip(encoder, policy.encoder.parameters(), strict=True):
        assert torch.equal(before, p) and p.grad is None
    reg.detach()
    optimizer.step()
    assert reg.updates == 1


def test_bc_term_needs_an_actor() -> None:
    lidar = model_of("lidar-sac", LIDAR_TINY)
    dataset = demos_for(lidar, LIDAR_DEMO, "lidar-sac").dataset
    no_actor = SimpleNamespace(policy=object())  # as PPO's policy: no SAC-style actor
    with pytest.raises(InvalidTypeError, match=r"set demos\.bc_weight = 0"):
        BCRegulariser(no_actor, dataset, 1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="bc_weight=-1"):
        BCRegulariser(lidar, dataset, -1.0)


# -- training runs -----------------------------------------------------------------------------


def lidar_trainer(run: Path, steps: int, **kwargs: object) -> Trainer:
    return Trainer(
        TrainConfig(
            preset="lidar-sac",
            run_dir=run,
            overrides=kwargs.pop("overrides", LIDAR_TINY),  # type: ignore[arg-type]
            total_timesteps=steps,
            eval_every=10_000,
            tensorboard=False,
            n_envs=1,
            **kwargs,  # type: ignore[arg-type]
        )
    )


def test_a_run_mixes_demonstrations_and_resumes_reading_them_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = lidar_trainer(run, 120, demos=[str(LIDAR_DEMO)])
    first.run()
    terms = first.demo_terms
    assert terms is not None and terms.mix is not None
    assert terms.mix.rows_sampled == terms.mix.batches * 32 > 0  # half of every 64
    buffer = first.model.replay_buffer  # type: ignore[attr-defined]
    assert buffer.size() == first.model.num_timesteps  # the online buffer: the agent's only
    first.close()

    again = lidar_trainer(run, 200, resume=True, overrides=())
    again.run()
    assert again.demo_terms is not None and again.demo_terms.mix is not None
    assert again.demo_terms.mix.demos.size() == 300  # read again from the recording
    assert again.demo_terms.mix.rows_sampled > 0
    assert again.model.replay_buffer.size() == again.model.num_timesteps  # type: ignore[attr-defined]
    again.close()


def test_resume_without_the_recording_says_how_to_continue(tmp_path: Path) -> None:
    demo = tmp_path / "demo.tmrec"
    demo.write_bytes(LIDAR_DEMO.read_bytes())
    run = tmp_path / "run"
    lidar_trainer(run, 60, demos=[str(demo)]).run()
    demo.unlink()
    with pytest.raises(DemoError, match=r"demo\.tmrec.*--set demos\.mix=0"):
        lidar_trainer(run, 120, resume=True, overrides=()).run()
    resumed = lidar_trainer(run, 120, resume=True, overrides=["demos.mix=0", "demos.bc_weight=0"])
    assert resumed.run().timesteps >= 120


def test_mix_zero_puts_the_demonstrations_in_the_buffer_once(tmp_path: Path) -> None:
    trainer = lidar_trainer(
        tmp_path / "run", 60, demos=[str(LIDAR_DEMO)], overrides=[*LIDAR_TINY, "demos.mix=0"]
    )
    trainer.run()
    assert trainer.demo_terms is None
    assert trainer.model.replay_buffer.size() == 300 + trainer.model.num_timesteps  # type: ignore[attr-defined]


@pytest.mark.slow
def test_tm_train_images_with_demos_end_to_end(
    tmp_path: Path, images_demo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    args = ["images-sac-rl", "--run-dir", str(run), "--steps", "60", "--eval-every", "1000"]
    args += ["--no-tensorboard", "--threads", "1", "--demos", str(images_demo)]
    args += [f"--set={o}" for o in [*IMAGES_TINY, "demos.bc_weight=1"]]
    with caplog.at_level(logging.INFO, logger="tm_algos"):
        assert train_cli.main(args) == 0
    text = caplog.text
    bc = re.search(
        r"behaviour cloning on 40 demonstration steps.*action error ([\d.]+) -> ([\d.]+)", text
    )
    assert bc is not None, text
    assert float(bc.group(2)) < float(bc.group(1))
    assert "replay mix: 50% of every batch from 40 demonstration transitions" in text
    rows = re.search(r"replay mix: (\d+) demonstration rows in (\d+) batches", text)
    assert rows is not None and int(rows.group(1)) == 8 * int(rows.group(2)) > 0
    reg = re.search(r"behaviour-cloning term: (\d+) actor updates, last loss ([\d.]+)", text)
    assert reg is not None and int(reg.group(1)) > 0
    assert (run / "policy" / "policy.json").is_file()
