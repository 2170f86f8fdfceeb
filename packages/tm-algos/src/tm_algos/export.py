"""Policy files that are safe to share: weights in safetensors, everything else in JSON.

An SB3 ``.zip`` holds objects in Python's code-running serialisation format, and unpickling runs whatever code the file asks
for: never load one that a stranger sent you. :func:`export_policy` writes a trained policy as
two files instead, and :func:`load_policy` rebuilds it without unpickling anything:

* ``policy.safetensors``: the policy's ``state_dict`` (tensors only, contiguous, on the CPU);
* ``policy.json``: the format tag ``"tm-algos-policy/1"``, the algorithm, the policy class, the
  observation and action spaces, the network's shape (feature extractor and its keyword
  arguments, ``net_arch``, activation) and how a deterministic action is computed.

Classes are named in the JSON and looked up in explicit allow lists
(:data:`POLICY_CLASSES`, :data:`FEATURE_EXTRACTORS`, :data:`ACTIVATIONS`); a dotted import path
found in a file is never imported. Register your own trusted classes with
:func:`register_extractor` and :func:`register_policy`.

>>> from tm_algos.export import export_policy, load_policy
>>> export_policy(model, "runs/sac-lidar/policy")  # doctest: +SKIP
>>> policy = load_policy("runs/sac-lidar/policy")  # doctest: +SKIP
>>> action = policy.act(obs)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import stable_baselines3
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sb3_contrib import TQC, RecurrentPPO
from sb3_contrib.common.recurrent.policies import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentMultiInputActorCriticPolicy,
)
from sb3_contrib.crossq.policies import CrossQPolicy
from sb3_contrib.tqc import policies as tqc_policies
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.sac import policies as sac_policies
from torch import nn

from tm_algos import __version__
from tm_algos.crossq import DictCrossQ
from tm_algos.extractors import TMCNNExtractor, TMLidarExtractor, TMViTExtractor
from tm_algos.fast_sac import FastImageSAC, FastSACPolicy
from tm_algos.loaded_policy import LoadedPolicy, PolicyFileError
from tm_algos.redq import REDQ
from tm_algos.spaces_json import describe_space, space_from_description

__all__ = [
    "ACTIVATIONS",
    "FEATURE_EXTRACTORS",
    "FORMAT",
    "JSON_NAME",
    "POLICY_CLASSES",
    "WEIGHTS_NAME",
    "LoadedPolicy",
    "PolicyFileError",
    "export_policy",
    "load_policy",
    "register_extractor",
    "register_policy",
]

FORMAT = "tm-algos-policy/1"
JSON_NAME = "policy.json"
WEIGHTS_NAME = "policy.safetensors"

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "SAC": SAC,
    "REDQ": REDQ,
    "FastImageSAC": FastImageSAC,
    "DictCrossQ": DictCrossQ,
    "TQC": TQC,
    "PPO": PPO,
    "RecurrentPPO": RecurrentPPO,
}
"""Algorithms whose policies can be exported, by name."""

SQUASHED_GAUSSIAN = {"SAC", "REDQ", "FastImageSAC", "DictCrossQ", "TQC"}
"""Algorithms whose deterministic action is the tanh of the Gaussian mean."""

POLICY_CLASSES: dict[str, dict[str, type[BasePolicy]]] = {
    "SAC": {
        "MlpPolicy": sac_policies.MlpPolicy,
        "CnnPolicy": sac_policies.CnnPolicy,
        "MultiInputPolicy": sac_policies.MultiInputPolicy,
    },
    "REDQ": {  # REDQ trains N critics but acts with SAC's actor
        "MlpPolicy": sac_policies.MlpPolicy,
        "CnnPolicy": sac_policies.CnnPolicy,
        "MultiInputPolicy": sac_policies.MultiInputPolicy,
    },
    "FastImageSAC": {"FastSACPolicy": FastSACPolicy},
    "DictCrossQ": {"CrossQPolicy": CrossQPolicy},
    "TQC": {
        "MlpPolicy": tqc_policies.MlpPolicy,
        "CnnPolicy": tqc_policies.CnnPolicy,
        "MultiInputPolicy": tqc_policies.MultiInputPolicy,
    },
    "PPO": {
        "ActorCriticPolicy": ActorCriticPolicy,
        "ActorCriticCnnPolicy": ActorCriticCnnPolicy,
        "MultiInputActorCriticPolicy": MultiInputActorCriticPolicy,
    },
    "RecurrentPPO": {
        "RecurrentActorCriticPolicy": RecurrentActorCriticPolicy,
        "RecurrentActorCriticCnnPolicy": RecurrentActorCriticCnnPolicy,
        "RecurrentMultiInputActorCriticPolicy": RecurrentMultiInputActorCriticPolicy,
    },
}
"""Allow list of policy classes: algorithm name → class name → class."""

FEATURE_EXTRACTORS: dict[str, type[BaseFeaturesExtractor]] = {
    "CombinedExtractor": CombinedExtractor,
    "FlattenExtractor": FlattenExtractor,
    "NatureCNN": NatureCNN,
    "TMCNNExtractor": TMCNNExtractor,
    "TMViTExtractor": TMViTExtractor,
    "TMLidarExtractor": TMLidarExtractor,
}
"""Allow list of feature extractors, by the name written in ``policy.json``."""

ACTIVATIONS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Mish)
}
"""Allow list of activation functions, by class name."""

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


def register_extractor(
    name: str, cls: type[BaseFeaturesExtractor], *, replace: bool = False
) -> None:
    """Allow ``cls`` as a feature extractor in policy files, under ``name``.

    Only register classes you trust: loading a file builds the class with the keyword arguments
    the file gives.
    """
    given: object = cls  # checked at run time: callers may pass anything
    if not (isinstance(given, type) and issubclass(given, BaseFeaturesExtractor)):
        raise TypeError(f"cls={cls!r}: expected a subclass of SB3's BaseFeaturesExtractor")
    known = FEATURE_EXTRACTORS.get(name)
    if known is not None and known is not cls and not replace:
        raise PolicyFileError(
            f"feature extractor name {name!r} is already taken by {known.__qualname__}; "
            "choose another name or pass replace=True"
        )
    FEATURE_EXTRACTORS[name] = cls


def register_policy(algorithm: str, cls: type[BasePolicy], *, replace: bool = False) -> None:
    """Allow the policy class ``cls`` for ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm not in POLICY_CLASSES:
        raise PolicyFileError(f"algorithm={algorithm!r}: expected one of {sorted(POLICY_CLASSES)}")
    given: object = cls  # checked at run time: callers may pass anything
    if not (isinstance(given, type) and issubclass(given, BasePolicy)):
        raise TypeError(f"cls={cls!r}: expected a subclass of SB3's BasePolicy")
    known = POLICY_CLASSES[algorithm].get(cls.__name__)
    if known is not None and known is not cls and not replace:
        raise PolicyFileError(
            f"policy class name {cls.__name__!r} is already taken for {algorithm} by "
            f"{known.__module__}.{known.__qualname__}; rename the class or pass replace=True"
        )
    POLICY_CLASSES[algorithm][cls.__name__] = cls


# -- JSON descriptions ---------------------------------------------------------------------


def _name_of(cls: type, registry: Mapping[str, type], what: str, how: str) -> str:
    for name, known in registry.items():
        if known is cls:
            return name
    raise PolicyFileError(
        f"{what} {cls.__module__}.{cls.__qualname__} is not in tm-algos' allow list "
        f"{sorted(registry)}; {how}"
    )


def _lookup(name: object, registry: Mapping[str, type], what: str) -> type:
    if not isinstance(name, str) or name not in registry:
        raise PolicyFileError(
            f"{what} {name!r} is not allowed: expected one of {sorted(registry)}. tm-algos never "
            "imports a class named in a file; if you trust this file, register the class first "
            "(tm_algos.export.register_extractor / register_policy)"
        )
    return registry[name]


def _check_json(value: Any, where: str) -> Any:
    """``value`` if it is plain JSON data (tuples become lists); else a clear error."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise PolicyFileError(f"{where}={value!r}: expected a finite number")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_check_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise PolicyFileError(f"{where} has the key {k!r}: expected string keys")
            out[k] = _check_json(v, f"{where}[{k!r}]")
        return out
    raise PolicyFileError(
        f"{where}={value!r} ({type(value).__name__}) cannot be written to JSON: policy files "
        "hold numbers, strings, booleans, lists and dicts only; give the extractor a name or "
        "a number instead of an object (e.g. 'relu' rather than nn.ReLU)"
    )


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
            return dict(_check_json(dataclasses.asdict(found), "env_settings"))
        except PolicyFileError:
            return None
    return None


# -- export ----------------------------------------------------------------------------------


def describe_policy(
    model: BaseAlgorithm, env_settings: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON description and the CPU tensors that :func:`export_policy` writes."""
    algo = _name_of(type(model), ALGORITHMS, "algorithm", f"export a model of {sorted(ALGORITHMS)}")
    policy = model.policy
    policy_name = _name_of(
        type(policy),
        POLICY_CLASSES[algo],
        f"{algo} policy class",
        "register it with tm_algos.export.register_policy",
    )
    params = policy._get_constructor_parameters()
    extractor_cls = params.get("features_extractor_class", type(policy.features_extractor))
    extractor = _name_of(
        extractor_cls,
        FEATURE_EXTRACTORS,
        "feature extractor",
        "register it with tm_algos.export.register_extractor",
    )
    activation = _name_of(
        params["activation_fn"], ACTIVATIONS, "activation", "use one of the allowed activations"
    )
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
    squash = bool(policy.squash_output)
    if env_settings is None:
        settings = _env_settings(model)
    else:
        settings = _check_json(env_settings, "env_settings")
    config = {
        "format": FORMAT,
        "algorithm": algo,
        "policy_class": policy_name,
        "observation_space": describe_space(policy.observation_space),
        "action_space": describe_space(policy.action_space),
        "features_extractor": extractor,
        "features_extractor_kwargs": _check_json(
            params.get("features_extractor_kwargs") or {}, "features_extractor_kwargs"
        ),
        "net_arch": _check_json(params.get("net_arch"), "net_arch"),
        "activation": activation,
        "policy_kwargs": _check_json(kwargs, "policy_kwargs"),
        "deterministic_action": {
            "rule": "mean of the squashed Gaussian (tanh)"
            if algo in SQUASHED_GAUSSIAN
            else "mode of the action distribution",
            "squash_output": squash,
            "to_action_space": "rescale [-1, 1] to [low, high]"
            if squash
            else "clip to [low, high]",
            "recurrent": isinstance(policy, RecurrentActorCriticPolicy),
        },
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

    ``model`` is an SB3 SAC or PPO model, or an sb3-contrib TQC or RecurrentPPO model.
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


# -- load ------------------------------------------------------------------------------------


def _constant_schedule(_progress: float) -> float:
    return 0.0


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyFileError(
            f"{path} does not exist: expected a directory written by export_policy, holding "
            f"{JSON_NAME} and {WEIGHTS_NAME}"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyFileError(f"{path} is not valid JSON ({e}); re-export the policy") from e
    return check_config(config, path)


def check_config(config: Any, path: Path | str) -> dict[str, Any]:
    """``config`` if it is a policy description of this format, else :class:`PolicyFileError`."""
    if not isinstance(config, dict):
        raise PolicyFileError(f"{path} holds {type(config).__name__}: expected a JSON object")
    if config.get("format") != FORMAT:
        raise PolicyFileError(
            f"{path}: format={config.get('format')!r}, expected {FORMAT!r}; this file was not "
            "written by tm_algos.export.export_policy (or by a newer version)"
        )
    for key in ("algorithm", "policy_class", "observation_space", "action_space"):
        if key not in config:
            raise PolicyFileError(f"{path} has no {key!r}; re-export the policy")
    return config


def build_policy(config: dict[str, Any], where: Path | str) -> BasePolicy:
    algo = config["algorithm"]
    _lookup(algo, ALGORITHMS, "algorithm")
    policy_cls = _lookup(config["policy_class"], POLICY_CLASSES[algo], f"{algo} policy class")
    extractor = _lookup(config.get("features_extractor"), FEATURE_EXTRACTORS, "feature extractor")
    activation = _lookup(config.get("activation"), ACTIVATIONS, "activation")
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
    except (TypeError, ValueError, AssertionError) as e:
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
    """Rebuild a policy written by :func:`export_policy`, without unpickling anything.

    Classes come from the allow lists only; weights are read with safetensors. The policy is
    put in evaluation mode on ``device`` (the CPU by default).
    """
    d = Path(path_dir)
    config = _read_config(d / JSON_NAME)
    policy = build_policy(config, d / JSON_NAME)
    _load_weights(policy, d / WEIGHTS_NAME)
    policy = policy.to(device)
    policy.set_training_mode(False)
    return LoadedPolicy(policy, config)
