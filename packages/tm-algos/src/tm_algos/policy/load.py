"""Load a policy file: rebuild the policy from allow-listed classes, then load its weights.

Nothing in the file is executed: ``policy.json`` names classes that are looked up in
:mod:`tm_algos.policy.allow_lists` and arguments that are plain JSON, and the weights are read
with safetensors. :func:`load_policy` gives a :class:`~tm_algos.policy.loaded.LoadedPolicy`.

>>> from tm_algos.policy import load_policy
>>> policy = load_policy("runs/lidar-sac/best")  # doctest: +SKIP
>>> action = policy.act(obs)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from stable_baselines3.common.policies import BasePolicy

import tm_algos.policy.allow_lists as allow_lists
from tm_algos.policy.format import (
    JSON_NAME,
    WEIGHTS_NAME,
    PolicyFileError,
    check_network,
    read_config,
)
from tm_algos.policy.loaded import LoadedPolicy
from tm_algos.policy.spaces import space_from_description

__all__ = ["build_policy", "load_policy", "set_weights"]


def _constant_schedule(_progress: float) -> float:
    return 0.0


_BUILD_ERRORS = (
    TypeError,
    ValueError,
    AssertionError,
    RuntimeError,
    MemoryError,
    OverflowError,
    IndexError,
    KeyError,
)
"""What building a policy from arguments it does not accept raises (torch, SB3, extractors)."""


def build_policy(config: dict[str, Any], where: Path | str) -> BasePolicy:
    """A fresh policy of the network ``config`` (a checked ``policy.json``) describes; errors
    name ``where``.

    Every size is bounded before anything is built (:func:`~tm_algos.policy.format.
    check_network`, and the spaces' sizes), and whatever the constructors raise for arguments
    they do not accept becomes a :class:`PolicyFileError`.

    Raises:
        PolicyFileError: a class that is not allowed, a size out of bounds, or arguments the
            policy cannot be built from; the message names the key and the value.
    """
    check_network(config, where)
    algo = config["algorithm"]
    allow_lists.lookup(algo, allow_lists.ALGORITHM_CLASSES, "algorithm")
    policy_cls = allow_lists.lookup(
        config["policy_class"], allow_lists.POLICY_CLASSES[algo], f"{algo} policy class"
    )
    extractor = allow_lists.lookup(
        config.get("features_extractor"), allow_lists.FEATURE_EXTRACTORS, "feature extractor"
    )
    activation = allow_lists.lookup(config.get("activation"), allow_lists.ACTIVATIONS, "activation")
    extra = config.get("policy_kwargs", {})
    fe_kwargs = config.get("features_extractor_kwargs", {})
    if not isinstance(extra, dict) or not isinstance(fe_kwargs, dict):
        raise PolicyFileError(
            f"{where}: policy_kwargs and features_extractor_kwargs must be JSON objects"
        )
    kwargs = dict(extra)
    kwargs["net_arch"] = config.get("net_arch")
    try:
        policy = policy_cls(
            observation_space=space_from_description(
                config["observation_space"], "observation_space"
            ),
            action_space=space_from_description(config["action_space"], "action_space"),
            lr_schedule=_constant_schedule,
            activation_fn=activation,
            features_extractor_class=extractor,
            features_extractor_kwargs=fe_kwargs,
            **kwargs,
        )
    except _BUILD_ERRORS as e:
        if isinstance(e, PolicyFileError):
            raise
        raise PolicyFileError(
            f"{where}: could not build {algo} {config['policy_class']} from the stored "
            f"arguments ({type(e).__name__}: {e}); the file may be edited or from another "
            "version of tm-algos"
        ) from e
    assert isinstance(policy, BasePolicy)
    return policy


def _load_weights(policy: BasePolicy, path: Path) -> None:
    try:
        tensors = load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise PolicyFileError(f"{path} does not exist; re-export the policy") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise PolicyFileError(f"{path} is not a readable safetensors file ({e})") from e
    set_weights(policy, tensors, path)


def set_weights(policy: BasePolicy, tensors: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Load ``tensors`` into ``policy`` after checking names and shapes (errors name ``path``)."""
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: {tuple(tensors[k].shape)} in the file, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            more = " ..." if len(unexpected) > 5 else ""
            parts.append(f"unexpected tensors {unexpected[:5]}{more}")
        if wrong:
            parts.append(f"wrong shapes [{'; '.join(wrong[:5])}]")
        raise PolicyFileError(
            f"{path} does not match the network described in {JSON_NAME}: "
            f"{', '.join(parts)}; the two files must come from the same export_policy call"
        )
    policy.load_state_dict(tensors, strict=True)


def load_policy(path_dir: str | Path, *, device: str | torch.device = "cpu") -> LoadedPolicy:
    """Rebuild a policy written by :func:`~tm_algos.policy.export_policy`, without unpickling
    anything.

    Classes come from the allow lists only; weights are read with safetensors. The policy is
    put in evaluation mode on ``device`` (the CPU by default).
    """
    d = Path(path_dir)
    config = read_config(d / JSON_NAME)
    policy = build_policy(config, d / JSON_NAME)
    _load_weights(policy, d / WEIGHTS_NAME)
    policy = policy.to(device)
    policy.set_training_mode(False)
    return LoadedPolicy(policy, config)
