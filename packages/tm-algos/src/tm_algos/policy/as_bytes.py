"""Policies as bytes: safetensors weights + a JSON description, for sending over a network.

The same content as a policy directory (:func:`tm_algos.policy.export_policy`), held in memory:
tm-dist's trainer broadcasts it to its workers, which rebuild the policy from the allow-listed
classes and load the weights with safetensors — nothing executable travels.

>>> from tm_algos.policy import policy_from_bytes, policy_to_bytes
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

from tm_algos.policy.export import describe_policy
from tm_algos.policy.format import FORMAT, PolicyFileError, check_config
from tm_algos.policy.load import build_policy, set_weights
from tm_algos.policy.loaded import LoadedPolicy

__all__ = ["policy_from_bytes", "policy_to_bytes", "update_weights"]

_WHERE = "policy bytes"


def policy_to_bytes(
    model: BaseAlgorithm,
    env_settings: Mapping[str, Any] | None = None,
    *,
    only: str | None = None,
) -> tuple[bytes, str]:
    """``(safetensors bytes, JSON text)`` describing ``model``'s policy.

    ``only``: keep just the tensors whose names start with it — ``"actor."`` for SAC-like
    policies, whose actions need no critic (a fraction of the bytes). The receiver's other
    parameters keep their values (freshly initialised ones, on a first build).
    """
    config, tensors = describe_policy(model, env_settings)
    if only is not None:
        tensors = {k: v for k, v in tensors.items() if k.startswith(only)}
        if not tensors:
            raise PolicyFileError(f"only={only!r}: the policy has no tensor with that prefix")
        config["weights_subset"] = only
    return save_tensors(tensors, metadata={"format": FORMAT}), json.dumps(config)


def _load(policy: BasePolicy, weights: bytes, subset: Any) -> None:
    tensors = _tensors(weights)
    if subset is None:
        set_weights(policy, tensors, _WHERE)
        return
    if not isinstance(subset, str):
        raise PolicyFileError(f"{_WHERE}: weights_subset={subset!r}: expected a string")
    full = policy.state_dict()
    needed = {k for k in full if k.startswith(subset)}
    missing = sorted(needed - set(tensors))
    outside = sorted(set(tensors) - needed)
    if missing or outside:
        raise PolicyFileError(
            f"{_WHERE}: weights for {subset!r} do not match the network: missing "
            f"{missing[:5]}, unexpected {outside[:5]}; trainer and worker must use the same "
            "tm-algos version and preset"
        )
    wrong = [k for k, v in tensors.items() if tuple(v.shape) != tuple(full[k].shape)]
    if wrong:
        raise PolicyFileError(f"{_WHERE}: wrong shapes for {wrong[:5]}; same preset needed")
    # only the subset is loaded: a module shared with the rest (e.g. one encoder for actor and
    # critics) takes the new values instead of being overwritten again by stale copies
    policy.load_state_dict(tensors, strict=False)


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
    except (json.JSONDecodeError, TypeError, RecursionError) as e:
        raise PolicyFileError(f"{_WHERE}: the description is not valid JSON ({e!r:.200})") from e
    config = check_config(config, _WHERE)
    policy = build_policy(config, _WHERE)
    _load(policy, weights, config.get("weights_subset"))
    policy = policy.to(device)
    policy.set_training_mode(False)
    return LoadedPolicy(policy, config)


def update_weights(
    policy: LoadedPolicy | BasePolicy, weights: bytes, *, subset: str | None = None
) -> None:
    """Load new ``weights`` (same network; only the ``subset`` prefix if given) into a policy."""
    target = policy.policy if isinstance(policy, LoadedPolicy) else policy
    device = next(target.parameters()).device
    target.to("cpu")
    try:
        _load(target, weights, subset)
    finally:
        target.to(device)
