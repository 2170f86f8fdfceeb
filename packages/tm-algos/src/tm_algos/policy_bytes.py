"""Policies as bytes: safetensors weights + a JSON description, for sending over a network.

The same content as a policy directory (:func:`tm_algos.export.export_policy`), held in memory:
tm-dist's trainer broadcasts it to its workers, which rebuild the policy from the allow-listed
classes and load the weights with safetensors — nothing executable travels.

>>> from tm_algos.policy_bytes import policy_from_bytes, policy_to_bytes
>>> weights, config_json = policy_to_bytes(model)  # doctest: +SKIP
>>> policy = policy_from_bytes(weights, config_json)  # doctest: +SKIP
>>> policy.act(obs)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from tm_algos.export import FORMAT, build_policy, check_config, describe_policy, set_weights
from tm_algos.loaded_policy import LoadedPolicy, PolicyFileError

__all__ = ["policy_from_bytes", "policy_to_bytes", "update_weights"]

_WHERE = "policy bytes"


def policy_to_bytes(
    model: BaseAlgorithm, env_settings: Mapping[str, Any] | None = None
) -> tuple[bytes, str]:
    """``(safetensors bytes, JSON text)`` describing ``model``'s policy."""
    config, tensors = describe_policy(model, env_settings)
    return save_tensors(tensors, metadata={"format": FORMAT}), json.dumps(config)


def _tensors(weights: bytes) -> dict[str, torch.Tensor]:
    try:
        return load_tensors(weights)
    except (SafetensorError, ValueError, OSError) as e:
        raise PolicyFileError(
            f"{_WHERE}: {len(weights)} bytes are not a readable safetensors blob ({e})"
        ) from e


def policy_from_bytes(
    weights: bytes, config_json: str, *, device: str | torch.device = "cpu"
) -> LoadedPolicy:
    """Rebuild a policy from :func:`policy_to_bytes` output, without executing anything."""
    try:
        config = json.loads(config_json)
    except (json.JSONDecodeError, TypeError) as e:
        raise PolicyFileError(f"{_WHERE}: the description is not valid JSON ({e})") from e
    config = check_config(config, _WHERE)
    policy = build_policy(config, _WHERE)
    set_weights(policy, _tensors(weights), _WHERE)
    policy = policy.to(device)
    policy.set_training_mode(False)
    return LoadedPolicy(policy, config)


def update_weights(policy: LoadedPolicy | BasePolicy, weights: bytes) -> None:
    """Load new ``weights`` (same network) into an already built policy."""
    target = policy.policy if isinstance(policy, LoadedPolicy) else policy
    device = next(target.parameters()).device
    tensors = {k: v.to(device) for k, v in _tensors(weights).items()}
    set_weights(target, tensors, _WHERE)
