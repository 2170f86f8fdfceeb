"""The random generators' states in a checkpoint, so that a resumed run draws what it would have.

The global generators (PyTorch, CUDA, NumPy's legacy one, Python's ``random``) and the model's
action space generator: their large parts as tensors, the rest as JSON data.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from tm_algos.checkpoint.format import CheckpointError, plain

__all__ = ["BIT_GENERATORS", "restore_rng", "rng_state"]

BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    cls.__name__: cls
    for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox)
}
"""NumPy bit generators an action space's random generator may use, by name."""


def rng_state(model: BaseAlgorithm, tensors: dict[str, th.Tensor]) -> dict[str, Any]:
    """Store the global generators (PyTorch, CUDA, NumPy, Python) and ``model``'s action
    space generator: their large parts in ``tensors``, the rest returned as JSON data."""
    tensors["rng/torch"] = th.get_rng_state().clone()
    n_cuda = 0
    if th.cuda.is_available() and th.cuda.is_initialized():
        for i, s in enumerate(th.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s.clone()
            n_cuda += 1
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    tensors["rng/numpy"] = th.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["rng/python"] = th.tensor(internal, dtype=th.int64)
    space_rng = getattr(model.action_space, "_np_random", None)
    return {
        "cuda": n_cuda,
        "numpy": plain({"kind": kind, "pos": pos, "has_gauss": has_gauss, "cached": cached}, "np"),
        "python": plain({"version": version, "gauss_next": gauss_next}, "random"),
        "action_space": None
        if space_rng is None
        else plain(space_rng.bit_generator.state, "action_space RNG"),
    }


def _restore_action_space_rng(model: BaseAlgorithm, space_state: Any) -> None:
    kind = space_state.get("bit_generator")
    if kind not in BIT_GENERATORS:
        raise CheckpointError(
            f"action space RNG {kind!r} is not one of {sorted(BIT_GENERATORS)}; the file is corrupt"
        )
    bit_generator = BIT_GENERATORS[kind]()
    bit_generator.state = space_state
    model.action_space._np_random = np.random.Generator(bit_generator)


def restore_rng(model: BaseAlgorithm, rng: Any, tensors: Mapping[str, th.Tensor]) -> None:
    """Set the generators saved by :func:`rng_state` (CUDA's only with as many devices)."""
    th.set_rng_state(tensors["rng/torch"])
    n_cuda = int(rng.get("cuda", 0))
    if n_cuda and th.cuda.is_available() and th.cuda.device_count() == n_cuda:
        th.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(n_cuda)])
    np_state = rng["numpy"]
    keys = tensors["rng/numpy"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (np_state["kind"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached"])
    )
    py = rng["python"]
    internal = tuple(int(v) for v in tensors["rng/python"].tolist())
    random.setstate((py["version"], internal, py["gauss_next"]))
    space_state = rng.get("action_space")
    if space_state is not None:
        _restore_action_space_rng(model, space_state)
