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

This module checks the JSON half; it imports no network code. :func:`check_config` also
bounds every size the file gives (:func:`check_network`: layer widths and counts, critics,
quantiles, extractor sizes) before a network is built, so that a hostile or damaged file gives a
:class:`PolicyFileError` naming the key and the value, never a raw error or an allocation of
gigabytes.
"""

from __future__ import annotations

import itertools
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
    "MAX_HIDDEN_PARAMS",
    "MAX_LAYERS",
    "MAX_WIDTH",
    "REQUIRED_KEYS",
    "SIZE_LIMITS",
    "WEIGHTS_NAME",
    "PolicyFileError",
    "check_config",
    "check_json",
    "check_network",
    "read_config",
]

FORMAT = "tm-algos-policy/1"
JSON_NAME = "policy.json"
WEIGHTS_NAME = "policy.safetensors"
REQUIRED_KEYS = ("algorithm", "policy_class", "observation_space", "action_space")
"""Keys every ``policy.json`` has; the others have defaults."""


MAX_WIDTH = 8192
"""Widest layer (``net_arch`` entries, ``hidden``, ``features_dim``, LSTM size) a file may ask."""
MAX_LAYERS = 32
"""Most layers in one ``net_arch`` list (or ``hidden``, ``depth``, LSTM layers)."""
MAX_HIDDEN_PARAMS = 2**26
"""Most weights between the layers of one ``net_arch`` list (64 Mi, 256 MiB in float32)."""
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "features_dim": (1, MAX_WIDTH),
    "dim": (1, MAX_WIDTH),
    "lstm_hidden_size": (1, MAX_WIDTH),
    "depth": (1, MAX_LAYERS),
    "n_lstm_layers": (1, MAX_LAYERS),
    "heads": (1, 64),
    "patch": (1, 256),
    "n_critics": (1, 16),
    "n_quantiles": (1, 1024),
    "augment_shift": (0, 64),
}
"""Integer arguments of policies and extractors that decide sizes, with their allowed range,
wherever they appear in ``policy_kwargs`` or ``features_extractor_kwargs``."""
_WIDTH_LISTS = ("net_arch", "hidden")


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


def _widths(value: Any, where: str) -> None:
    """``value`` must be None or a list of layer widths, or a dict of such lists (pi, vf, qf)."""
    if value is None:
        return
    if isinstance(value, dict):
        for key, sub in value.items():
            if key not in ("pi", "vf", "qf"):
                raise PolicyFileError(
                    f"{where} has the key {key!r}: expected 'pi', 'vf' or 'qf'; re-export the "
                    "policy"
                )
            _widths(sub, f"{where}[{key!r}]")
        return
    ok = isinstance(value, list) and len(value) <= MAX_LAYERS
    if ok and all(_int_in(w, 1, MAX_WIDTH) for w in value):
        params = sum(a * b for a, b in itertools.pairwise(value))
        if params <= MAX_HIDDEN_PARAMS:
            return
        raise PolicyFileError(
            f"{where}={value!r:.80}: {params:,} weights between its layers, at most "
            f"{MAX_HIDDEN_PARAMS:,} allowed; this is not a policy tm-algos exports"
        )
    raise PolicyFileError(
        f"{where}={value!r:.80}: expected a list of at most {MAX_LAYERS} layer widths, each an "
        f"int in [1, {MAX_WIDTH}] (or an object of such lists under 'pi', 'vf', 'qf'); the file "
        "is damaged or was edited: re-export the policy"
    )


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _sizes(kwargs: Mapping[str, Any], where: str) -> None:
    for key, value in kwargs.items():
        if key in _WIDTH_LISTS:
            _widths(value, f"{where}[{key!r}]")
        elif key in SIZE_LIMITS:
            lo, hi = SIZE_LIMITS[key]
            if value is not None and not _int_in(value, lo, hi):
                raise PolicyFileError(
                    f"{where}[{key!r}]={value!r:.60}: expected an int in [{lo}, {hi}]; the "
                    "file is damaged or was edited: re-export the policy"
                )


def check_network(config: Mapping[str, Any], where: Path | str) -> None:
    """Check every size ``config`` (a ``policy.json``) gives before anything is built:
    ``net_arch`` and ``hidden`` lists (:data:`MAX_LAYERS` layers of at most :data:`MAX_WIDTH`,
    at most :data:`MAX_HIDDEN_PARAMS` weights), the integers of :data:`SIZE_LIMITS`, and that
    ``policy_kwargs`` and ``features_extractor_kwargs`` are objects.

    Raises:
        PolicyFileError: naming ``where``, the key and the value.
    """
    _widths(config.get("net_arch"), f"{where}: net_arch")
    for part in ("policy_kwargs", "features_extractor_kwargs"):
        kwargs = config.get(part, {})
        if not isinstance(kwargs, dict):
            raise PolicyFileError(
                f"{where}: {part}={kwargs!r:.60}: expected a JSON object; re-export the policy"
            )
        _sizes(kwargs, f"{where}: {part}")


def check_config(config: Any, path: Path | str) -> dict[str, Any]:
    """``config`` if it is a policy description of this format, else :class:`PolicyFileError`
    (numbers must be finite, sizes bounded: :func:`check_network`)."""
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
    try:
        check_json(config, str(path))  # NaN and infinity are refused (json.loads accepts them)
    except RecursionError:
        raise PolicyFileError(f"{path} is nested too deeply; re-export the policy") from None
    check_network(config, path)
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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise PolicyFileError(f"{path} is not valid JSON ({e!r:.200}); re-export the policy") from e
    return check_config(config, path)
