"""Policy files that are safe to share: weights in safetensors, everything else in JSON.

An SB3 ``.zip`` is read back by unpickling, which runs whatever code the file asks for. A
tm-algos policy file is two files holding data only, rebuilt from allow-listed classes:

* :mod:`tm_algos.policy.format` — the format (``policy.json`` + ``policy.safetensors``) and
  :class:`PolicyFileError`;
* :mod:`tm_algos.policy.spaces` — observation and action spaces as JSON;
* :mod:`tm_algos.policy.allow_lists` — the classes a file may name (algorithms and policy
  classes from :mod:`tm_algos.registry`, feature extractors, activations) and how to register
  your own;
* :mod:`tm_algos.policy.export` — :func:`export_policy`: a trained model's policy to a directory;
* :mod:`tm_algos.policy.load` — :func:`load_policy`: a directory back to a policy;
* :mod:`tm_algos.policy.loaded` — :class:`LoadedPolicy`: numpy observations in, actions out;
* :mod:`tm_algos.policy.as_bytes` — the same content in memory, for sending over a network.

>>> from tm_algos.policy import export_policy, load_policy
>>> export_policy(model, "runs/sac-lidar/policy")  # doctest: +SKIP
>>> policy = load_policy("runs/sac-lidar/policy")  # doctest: +SKIP
>>> action = policy.act(obs)  # doctest: +SKIP
"""

from __future__ import annotations

from tm_algos.policy.allow_lists import (
    ACTIVATIONS,
    ALGORITHM_CLASSES,
    FEATURE_EXTRACTORS,
    POLICY_CLASSES,
    register_extractor,
    register_policy,
)
from tm_algos.policy.as_bytes import policy_from_bytes, policy_to_bytes, update_weights
from tm_algos.policy.export import describe_policy, export_policy, write_policy
from tm_algos.policy.format import FORMAT, JSON_NAME, WEIGHTS_NAME, PolicyFileError, check_config
from tm_algos.policy.load import build_policy, load_policy, set_weights
from tm_algos.policy.loaded import LoadedPolicy
from tm_algos.policy.spaces import SpaceFormatError, describe_space, space_from_description

__all__ = [
    "ACTIVATIONS",
    "ALGORITHM_CLASSES",
    "FEATURE_EXTRACTORS",
    "FORMAT",
    "JSON_NAME",
    "POLICY_CLASSES",
    "WEIGHTS_NAME",
    "LoadedPolicy",
    "PolicyFileError",
    "SpaceFormatError",
    "build_policy",
    "check_config",
    "describe_policy",
    "describe_space",
    "export_policy",
    "load_policy",
    "policy_from_bytes",
    "policy_to_bytes",
    "register_extractor",
    "register_policy",
    "set_weights",
    "space_from_description",
    "update_weights",
    "write_policy",
]
