"""The pieces of :mod:`tm_algos.checkpoint`: JSON encoding of nested optimizer state, random
generator states, and replay buffers as npz arrays (read without running any code)."""

from __future__ import annotations

import math
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import BaseBuffer
from torch import nn

STATE_NAME = "state.json"
WEIGHTS_NAME = "weights.safetensors"
BUFFER_NAME = "replay_buffer.npz"
BUFFER_STATE = ("pos", "full")  # the replay buffer's scalars that change while training

BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    cls.__name__: cls
    for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox)
}
"""NumPy bit generators an action space's random generator may use, by name."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model it is loaded into."""


def plain(value: Any, where: str) -> Any:
    """``value`` as JSON data (tuples become lists, NumPy scalars Python numbers).

    :raises TypeError: naming ``where``, when ``value`` holds anything else.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        value = value.item()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value}; JSON stores finite numbers only")
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has the key {k!r}; JSON objects take string keys only")
            out[k] = plain(v, f"{where}[{k!r}]")
        return out
    raise TypeError(
        f"{where} is a {type(value).__name__} ({value!r:.60}); expected JSON data: None, bool, "
        "int, float, str, and lists and string-keyed dicts of those"
    )


def encode(value: Any, name: str, tensors: dict[str, th.Tensor]) -> Any:
    """``value`` (an optimizer's ``state_dict``) as JSON with its tensors moved to ``tensors``
    under names starting with ``name``. Tuples, dicts (any int or str keys) and tensors are
    tagged: ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}``, ``{"tensor": name}``."""
    if isinstance(value, th.Tensor):
        tensors[name] = value.detach().cpu().clone().contiguous()
        return {"tensor": name}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        pairs = []
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise TypeError(f"{name} has the key {k!r}; expected int or str keys")
            pairs.append([k, encode(v, f"{name}/{k}", tensors)])
        return {"dict": pairs}
    return plain(value, name)


def decode(value: Any, tensors: Mapping[str, th.Tensor], where: str) -> Any:
    """The inverse of :func:`encode`.

    :raises CheckpointError: naming ``where``, when the data is not what encode writes.
    """
    if isinstance(value, list):
        return [decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and isinstance(value.get("tensor"), str):
        if value["tensor"] not in tensors:
            raise CheckpointError(f"{where}: tensor {value['tensor']!r} is missing")
        return tensors[value["tensor"]]
    if len(value) == 1 and isinstance(value.get("tuple"), list):
        return tuple(decode(v, tensors, where) for v in value["tuple"])
    if len(value) == 1 and isinstance(value.get("dict"), list):
        out = {}
        for pair in value["dict"]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (int, str))):
                raise CheckpointError(f"{where}: malformed entry {pair!r:.60}; the file is corrupt")
            out[pair[0]] = decode(pair[1], tensors, where)
        return out
    raise CheckpointError(f"{where}: unexpected object {value!r:.60}; the file is corrupt")


# -- modules and optimizers -----------------------------------------------------------------


def check_module(path: Path, name: str, module: nn.Module, tensors: dict[str, th.Tensor]) -> None:
    """Check that the tensors named ``name/...`` in checkpoint ``path`` fit ``module``."""
    mine = module.state_dict()
    theirs = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}/")}
    missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    if missing or extra:
        raise CheckpointError(
            f"{path / WEIGHTS_NAME}: {name} does not fit the model: the model has "
            f"{len(missing)} tensors the checkpoint lacks {missing[:4]} and the checkpoint "
            f"{len(extra)} the model lacks {extra[:4]}; build the model with the same policy "
            "settings (net_arch, features extractor, ...)"
        )
    for key, t in mine.items():
        if theirs[key].shape != t.shape or theirs[key].dtype != t.dtype:
            raise CheckpointError(
                f"{path / WEIGHTS_NAME}: {name}/{key} is {theirs[key].dtype}"
                f"{list(theirs[key].shape)} in the checkpoint but {t.dtype}{list(t.shape)} in "
                "the model; build the model with the same policy settings (net_arch, ...)"
            )


def check_optimizer(where: str, opt: th.optim.Optimizer, saved: Any) -> None:
    """Check ``saved`` (decoded) against ``opt``'s parameter groups; turn the lists JSON gave
    back into tuples where ``opt`` has tuples (``betas``)."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{where}: the optimizer state is malformed; the file is corrupt")
    mine = [len(g["params"]) for g in opt.param_groups]
    theirs = [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups]
    if mine != theirs:
        raise CheckpointError(
            f"{where}: the model's optimizer has parameter groups of sizes {mine}, the "
            f"checkpoint's {theirs}; build the model with the same settings"
        )
    for group, current in zip(groups, opt.param_groups, strict=True):
        for key, value in current.items():  # JSON gives lists where torch had tuples
            if isinstance(value, tuple) and isinstance(group.get(key), list):
                group[key] = tuple(group[key])


# -- random generators ------------------------------------------------------------------------


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
        kind = space_state.get("bit_generator")
        if kind not in BIT_GENERATORS:
            raise CheckpointError(
                f"action space RNG {kind!r} is not one of {sorted(BIT_GENERATORS)}; "
                "the file is corrupt"
            )
        bit_generator = BIT_GENERATORS[kind]()
        bit_generator.state = space_state
        model.action_space._np_random = np.random.Generator(bit_generator)


# -- replay buffers ---------------------------------------------------------------------------


def buffer_parts(buffer: BaseBuffer) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """Every ndarray attribute of ``buffer`` (dicts of arrays as ``attr/key``) and its JSON
    scalar attributes (sizes, positions, flags, shapes)."""
    arrays: dict[str, NDArray[Any]] = {}
    scalars: dict[str, Any] = {}
    for attr, value in vars(buffer).items():
        if isinstance(value, np.ndarray):
            arrays[attr] = value
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, np.ndarray) for v in value.values())
        ):
            arrays.update({f"{attr}/{k}": v for k, v in value.items()})
        else:
            try:
                scalars[attr] = plain(value, attr)
            except TypeError:
                continue  # spaces, devices: given by the model's settings
    return arrays, scalars


def _npz_headers(file: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of each array in ``file``, from the headers only (no data is read)."""
    headers = {}
    try:
        with zipfile.ZipFile(file) as zf:
            for info in zf.infolist():
                with zf.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _fortran, dtype = read(f)
                headers[info.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{file} is not a readable .npz file ({e}); it is corrupt") from e
    return headers


def check_buffer(path: Path, info: Any, buffer: BaseBuffer) -> dict[str, NDArray[Any]]:
    """Check the saved buffer in checkpoint ``path`` against ``buffer`` (class, settings,
    array names, shapes and dtypes; object arrays are refused); ``buffer``'s arrays by name."""
    where = f"{path / STATE_NAME} (replay_buffer)"
    if not isinstance(info, dict) or not isinstance(info.get("scalars"), dict):
        raise CheckpointError(f"{where} is malformed; the file is corrupt")
    if info.get("class") != type(buffer).__name__:
        raise CheckpointError(
            f"{where}: the checkpoint holds a {info.get('class')}, the model has a "
            f"{type(buffer).__name__}; build the model with replay_buffer_class set as when "
            "it was saved, or load with replay_buffer=False"
        )
    file = path / BUFFER_NAME
    headers = _npz_headers(file)
    for name, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise CheckpointError(
                f"{file}: array {name!r} holds Python objects (dtype {dtype}); checkpoints "
                "hold plain numeric arrays only, so tm-algos did not write this file. It is "
                "refused unread: never load a checkpoint from an untrusted source"
            )
    arrays, scalars = buffer_parts(buffer)
    theirs = info["scalars"]
    for key in sorted(set(scalars) | set(theirs)):
        if key not in BUFFER_STATE and scalars.get(key) != theirs.get(key):
            raise CheckpointError(
                f"{where}: the model's replay buffer was built with {key}="
                f"{scalars.get(key)!r} but the checkpoint has {key}={theirs.get(key)!r}; build "
                "the model with the same buffer_size, n_envs and replay_buffer_kwargs"
            )
    if set(headers) != set(arrays):
        raise CheckpointError(
            f"{file} holds arrays {sorted(headers)}, the model's replay buffer has "
            f"{sorted(arrays)}; build the model with the replay buffer it was saved with"
        )
    for name, (shape, dtype) in headers.items():
        mine = arrays[name]
        if shape != mine.shape or dtype != mine.dtype:
            raise CheckpointError(
                f"{file}: replay buffer array {name!r} is {dtype}{list(shape)} in the "
                f"checkpoint but {mine.dtype}{list(mine.shape)} in the model; build the model "
                "with the same buffer_size, n_envs and replay_buffer_kwargs"
            )
    return arrays


def load_buffer(
    file: Path, buffer: BaseBuffer, arrays: Mapping[str, NDArray[Any]], scalars: Mapping[str, Any]
) -> None:
    """Copy the arrays of ``file`` into ``arrays`` (``buffer``'s, checked by
    :func:`check_buffer`), then set ``buffer``'s position."""
    try:
        with np.load(file) as npz:  # NumPy's default refuses object arrays
            for name, target in arrays.items():
                target[...] = npz[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{file} cannot be read ({e}); it is corrupt") from e
    for key in BUFFER_STATE:
        if key in scalars:
            setattr(buffer, key, scalars[key])
