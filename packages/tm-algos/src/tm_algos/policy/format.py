"""The policy file format: what ``policy.json`` must hold, and the error for a file that does not.

A policy is two files in a directory (or the same two contents in memory, see
:mod:`tm_algos.policy.as_bytes`):

* ``policy.safetensors`` (:data:`WEIGHTS_NAME`): the policy's ``state_dict`` (tensors only,
  contiguous, on the CPU), with the metadata ``{"format": FORMAT}``;
* ``policy.json`` (:data:`JSON_NAME`): the format tag :data:`FORMAT`, the algorithm, the policy
  class, the observation and action spaces (:mod:`tm_algos.policy.spaces`), the network's shape
  (feature extractor and its keyword arguments, ``net_arch``, activation, other policy keyword
  arguments), how a deterministic action is computed, the env settings it was trained with and
  the versions that wrote it. Classes are named, never given as import paths: a loader looks
  them up in its allow lists (:mod:`tm_algos.policy.allow_lists`).

This module checks the JSON half; it imports no network code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tm_algos.policy.spaces import SpaceFormatError

__all__ = [
    "FORMAT",
    "JSON_NAME",
    "REQUIRED_KEYS",
    "WEIGHTS_NAME",
    "PolicyFileError",
    "check_config",
    "check_json",
    "read_config",
]

FORMAT = "tm-algos-policy/1"
JSON_NAME = "policy.json"
WEIGHTS_NAME = "policy.safetensors"
REQUIRED_KEYS = ("algorithm", "policy_class", "observation_space", "action_space")
"""Keys every ``policy.json`` has; the others have defaults."""


class PolicyFileError(SpaceFormatError):
    """A policy file (or an observation given to a loaded policy) is not what it must be."""


def check_json(value: Any, where: str) -> Any:
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
        return [check_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise PolicyFileError(f"{where} has the key {k!r}: expected string keys")
            out[k] = check_json(v, f"{where}[{k!r}]")
        return out
    raise PolicyFileError(
        f"{where}={value!r} ({type(value).__name__}) cannot be written to JSON: policy files "
        "hold numbers, strings, booleans, lists and dicts only; give the extractor a name or "
        "a number instead of an object (e.g. 'relu' rather than nn.ReLU)"
    )


def check_config(config: Any, path: Path | str) -> dict[str, Any]:
    """``config`` if it is a policy description of this format, else :class:`PolicyFileError`."""
    if not isinstance(config, dict):
        raise PolicyFileError(f"{path} holds {type(config).__name__}: expected a JSON object")
    if config.get("format") != FORMAT:
        raise PolicyFileError(
            f"{path}: format={config.get('format')!r}, expected {FORMAT!r}; this file was not "
            "written by tm_algos.policy.export_policy (or by a newer version)"
        )
    for key in REQUIRED_KEYS:
        if key not in config:
            raise PolicyFileError(f"{path} has no {key!r}; re-export the policy")
    return config


def read_config(path: Path) -> dict[str, Any]:
    """The checked content of the ``policy.json`` at ``path``."""
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
