"""Export a trained policy as a policy file: weights in safetensors, everything else in JSON.

An SB3 ``.zip`` holds objects in Python's code-running serialisation format, and unpickling
runs whatever code the file asks for: never load one that a stranger sent you.
:func:`export_policy` writes a trained policy as the two files of
:mod:`tm_algos.policy.format` instead, naming every class by its name in the allow lists of
:mod:`tm_algos.policy.allow_lists`; :func:`tm_algos.policy.load_policy` rebuilds it without
unpickling anything.

>>> from tm_algos.policy import export_policy, load_policy
>>> export_policy(model, "runs/sac-lidar/policy")  # doctest: +SKIP
>>> policy = load_policy("runs/sac-lidar/policy")  # doctest: +SKIP
>>> action = policy.act(obs)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import stable_baselines3
import torch
from safetensors.torch import save_file
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm

import tm_algos.policy.allow_lists as allow_lists
from tm_algos.policy.format import (
    FORMAT,
    JSON_NAME,
    WEIGHTS_NAME,
    PolicyFileError,
    check_json,
)
from tm_algos.policy.spaces import describe_space
from tm_algos.registry import algorithm_by_class_name
from tm_algos.version import __version__

__all__ = ["describe_policy", "export_policy", "write_policy"]

# Constructor arguments handled on their own (classes and spaces), or not needed to act.
_SPECIAL = {
    "observation_space",
    "action_space",
    "activation_fn",
    "features_extractor_class",
    "features_extractor_kwargs",
    "lr_schedule",
    "optimizer_class",
    "optimizer_kwargs",
    "features_extractor",  # an instance, rebuilt from its class and kwargs
    "features_dim",  # computed by the extractor
    "net_arch",  # stored at the top level
}


def _env_settings(model: BaseAlgorithm) -> dict[str, Any] | None:
    """tm-gym's EnvSettings of the model's environment, when it has one."""
    env = model.get_env()
    if env is None:
        return None
    try:
        found = env.get_attr("settings", indices=[0])[0]
    except AttributeError:
        return None
    if dataclasses.is_dataclass(found) and not isinstance(found, type):
        try:
            return dict(check_json(dataclasses.asdict(found), "env_settings"))
        except PolicyFileError:
            return None
    return None


# -- export ----------------------------------------------------------------------------------


def _policy_kwargs(policy: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """The policy's other constructor arguments, those a loader passes back as they are."""
    kwargs = {k: v for k, v in params.items() if k not in _SPECIAL}
    if hasattr(policy, "share_features_extractor"):
        kwargs["share_features_extractor"] = policy.share_features_extractor
    if isinstance(policy, RecurrentActorCriticPolicy):
        n_layers, _, hidden = policy.lstm_hidden_state_shape
        kwargs.update(
            lstm_hidden_size=hidden,
            n_lstm_layers=n_layers,
            shared_lstm=policy.shared_lstm,
            enable_critic_lstm=policy.enable_critic_lstm,
            lstm_kwargs=policy.lstm_kwargs,
        )
    return kwargs


def _deterministic_action(algo: str, policy: Any) -> dict[str, Any]:
    """How the policy's deterministic action is computed, in words, for the people reading."""
    spec = algorithm_by_class_name(algo)
    squash = bool(policy.squash_output)
    return {
        "rule": "mean of the squashed Gaussian (tanh)"
        if spec is not None and spec.squashed
        else "mode of the action distribution",
        "squash_output": squash,
        "to_action_space": "rescale [-1, 1] to [low, high]" if squash else "clip to [low, high]",
        "recurrent": isinstance(policy, RecurrentActorCriticPolicy),
    }


def describe_policy(
    model: BaseAlgorithm, env_settings: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON description and the CPU tensors that :func:`export_policy` writes."""
    algorithms = allow_lists.ALGORITHM_CLASSES
    algo = allow_lists.name_of(
        type(model), algorithms, "algorithm", f"export a model of {sorted(algorithms)}"
    )
    policy = model.policy
    policy_name = allow_lists.name_of(
        type(policy),
        allow_lists.POLICY_CLASSES[algo],
        f"{algo} policy class",
        "register it with tm_algos.policy.register_policy",
    )
    params = policy._get_constructor_parameters()
    extractor_cls = params.get("features_extractor_class", type(policy.features_extractor))
    extractor = allow_lists.name_of(
        extractor_cls,
        allow_lists.FEATURE_EXTRACTORS,
        "feature extractor",
        "register it with tm_algos.policy.register_extractor",
    )
    activation = allow_lists.name_of(
        params["activation_fn"],
        allow_lists.ACTIVATIONS,
        "activation",
        "use one of the allowed activations",
    )
    if env_settings is None:
        settings = _env_settings(model)
    else:
        settings = check_json(env_settings, "env_settings")
    config = {
        "format": FORMAT,
        "algorithm": algo,
        "policy_class": policy_name,
        "observation_space": describe_space(policy.observation_space),
        "action_space": describe_space(policy.action_space),
        "features_extractor": extractor,
        "features_extractor_kwargs": check_json(
            params.get("features_extractor_kwargs") or {}, "features_extractor_kwargs"
        ),
        "net_arch": check_json(params.get("net_arch"), "net_arch"),
        "activation": activation,
        "policy_kwargs": check_json(_policy_kwargs(policy, params), "policy_kwargs"),
        "deterministic_action": _deterministic_action(algo, policy),
        "env_settings": settings,
        "versions": {
            "tm_algos": __version__,
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
        },
    }
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in policy.state_dict().items()}
    return config, tensors


def export_policy(
    model: BaseAlgorithm,
    path_dir: str | Path,
    *,
    env_settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s policy to ``path_dir`` as ``policy.safetensors`` + ``policy.json``.

    ``model`` is a model of one of :data:`tm_algos.registry.ALGORITHMS` (SAC, TQC, REDQ,
    FastImageSAC, DictCrossQ, PPO, RecurrentPPO).
    ``env_settings`` (JSON data) is stored for the people and tools that run the policy; by
    default tm-gym's ``EnvSettings`` of the model's environment, when it has one. Returns the
    directory. Raises :class:`PolicyFileError` when the policy uses a class outside the allow
    lists or keyword arguments that JSON cannot hold.
    """
    config, tensors = describe_policy(model, env_settings)
    return write_policy(config, tensors, path_dir)


def write_policy(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], path_dir: str | Path
) -> Path:
    """Write what :func:`describe_policy` returned as a policy directory."""
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(out / WEIGHTS_NAME), metadata={"format": FORMAT})
    (out / JSON_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
