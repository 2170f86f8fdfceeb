"""Policies as bytes (tm_algos.policy.as_bytes): full and actor-only round trips, bad input."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from tm_algos.factory import make_model, make_vec_env
from tm_algos.policy import PolicyFileError, policy_from_bytes, policy_to_bytes, update_weights
from tm_algos.presets import apply_overrides, load_preset


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(name: str) -> tuple[Any, dict[str, np.ndarray]]:
    preset = apply_overrides(load_preset(name), ["policy.net_arch=[32, 32]"])
    env = make_vec_env(preset, n_envs=1, seed=3)
    model = make_model(preset, env, seed=3, device="cpu")
    obs = env.reset()
    return model, {k: v[0] for k, v in obs.items()}


def _nudge(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("name", ["lidar-sac", "images-sac", "lidar-crossq"])
def test_actor_only_weights_act_like_the_model_and_follow_updates(name: str) -> None:
    model, obs = _model(name)
    full, _ = policy_to_bytes(model)
    actor, config = policy_to_bytes(model, only="actor.")
    assert len(actor) < len(full) / 2  # the critics stay home
    assert json.loads(config)["weights_subset"] == "actor."
    policy = policy_from_bytes(actor, config)
    np.testing.assert_allclose(policy.act(obs), model.predict(obs, deterministic=True)[0])
    _nudge(model.actor)  # FastImageSAC: also the encoder shared with the critics
    before = policy.act(obs)
    update_weights(policy, policy_to_bytes(model, only="actor.")[0], subset="actor.")
    after = policy.act(obs)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, model.predict(obs, deterministic=True)[0], atol=1e-6)


def test_full_weights_round_trip() -> None:
    model, obs = _model("lidar-sac")
    weights, config = policy_to_bytes(model)
    policy = policy_from_bytes(weights, config)
    np.testing.assert_allclose(policy.act(obs), model.predict(obs, deterministic=True)[0])


def test_bad_bytes_and_mismatched_subsets_are_refused() -> None:
    model, _ = _model("lidar-sac")
    weights, config = policy_to_bytes(model, only="actor.")
    with pytest.raises(PolicyFileError, match="safetensors"):
        policy_from_bytes(b"\x00" * 64, config)
    with pytest.raises(PolicyFileError, match="JSON"):
        policy_from_bytes(weights, "{not json")
    with pytest.raises(PolicyFileError, match="no tensor"):
        policy_to_bytes(model, only="nothing.")
    policy = policy_from_bytes(weights, config)
    critic_only, _ = policy_to_bytes(model, only="critic.")
    with pytest.raises(PolicyFileError, match="do not match"):
        update_weights(policy, critic_only, subset="actor.")
    other, _ = _model("lidar-tqc")
    tqc_actor, _ = policy_to_bytes(other, only="actor.")
    with pytest.raises(PolicyFileError):
        update_weights(policy, tqc_actor, subset="actor.")
