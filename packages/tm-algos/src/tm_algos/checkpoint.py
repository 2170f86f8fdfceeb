"""Training checkpoints in safe formats (safetensors, JSON, npz), written atomically.

SB3's ``model.save`` writes a zip whose data can only be read back by running Python's object
deserializer, which executes whatever the file asks for. A checkpoint written by
:func:`save_checkpoint` is a directory of three files that hold data only:

* ``weights.safetensors``: every tensor, under flat names: the state dicts of the modules and
  optimizers that the algorithm lists in ``_get_torch_save_params()`` (for SAC/TQC the policy
  with actor, critics and target critics, ``actor.optimizer``, ``critic.optimizer``,
  ``ent_coef_optimizer``; for PPO/RecurrentPPO the policy and ``policy.optimizer``), the other
  tensors it lists (``log_ent_coef``) and the random generators' states;
* ``state.json``: the format tag, the counters (``num_timesteps``, ``_n_updates``, ...; a
  subclass adds its own by naming them in a ``checkpoint_counters`` class attribute), the
  optimizers' non-tensor state and ``param_groups``, the replay buffer's scalars, the caller's
  ``meta``, and the size and SHA-256 of each other file;
* ``replay_buffer.npz`` (off-policy algorithms): every array of the replay buffer (SB3's
  ``ReplayBuffer``, ``DictReplayBuffer``, :class:`~tm_algos.buffers.FrameStackReplayBuffer` with
  its frame ring and episode bookkeeping), numeric arrays only: object arrays are refused
  when saving and loading, before NumPy reads them.

Files go into a hidden sibling directory, are flushed, then renamed into place: a reader
never sees half a checkpoint. :func:`load_checkpoint` restores into a model built with the
same settings, checking every file first; :func:`prune_checkpoints` keeps the newest ones.

>>> from tm_algos.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
>>> save_checkpoint(model, "runs/sac/ckpt/step_0010000", meta={"run": "sac"})  # doctest: +SKIP
>>> model = SAC("MultiInputPolicy", env, **same_settings)  # doctest: +SKIP
>>> meta = load_checkpoint(model, latest_checkpoint("runs/sac/ckpt"))  # doctest: +SKIP
>>> model.learn(100_000, reset_num_timesteps=False)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch as th
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.utils import get_device
from torch import nn

from tm_algos import __version__
from tm_algos._checkpoint_parts import (
    BUFFER_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    buffer_parts,
    check_buffer,
    check_module,
    check_optimizer,
    decode,
    encode,
    load_buffer,
    plain,
    restore_rng,
    rng_state,
)

__all__ = [
    "BUFFER_NAME",
    "FORMAT",
    "STATE_NAME",
    "VERSION",
    "WEIGHTS_NAME",
    "CheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT = "tm-algos-checkpoint"
VERSION = 1

_COUNTERS = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_current_progress_remaining",
    "_n_calls",
)
_INFO_BUFFERS = ("ep_info_buffer", "ep_success_buffer")
_CHUNK = 1 << 20


# -- collecting the state ---------------------------------------------------------------------


def _attr(model: BaseAlgorithm, name: str) -> Any:
    obj: Any = model
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _counters(model: BaseAlgorithm) -> tuple[str, ...]:
    """SB3's counters plus those a subclass names in ``checkpoint_counters``."""
    extra = getattr(model, "checkpoint_counters", ())
    if isinstance(extra, str) or not all(isinstance(k, str) for k in extra):
        raise TypeError(
            f"{type(model).__name__}.checkpoint_counters is {extra!r}; expected a tuple of "
            "attribute names, e.g. ('critic_updates',)"
        )
    return _COUNTERS + tuple(extra)


def _structure(model: BaseAlgorithm) -> dict[str, Any]:
    """Settings that decide the shapes of what a checkpoint holds."""
    out: dict[str, Any] = {
        "algorithm": type(model).__name__,
        "policy_class": type(model.policy).__name__,
        "n_envs": model.n_envs,
    }
    critic_kwargs = getattr(model.policy, "critic_kwargs", None)
    if isinstance(critic_kwargs, Mapping):
        for key in ("n_critics", "n_quantiles"):
            if key in critic_kwargs:
                out[key] = plain(critic_kwargs[key], key)
    return out


# -- writing ----------------------------------------------------------------------------------


def _seal(path: Path) -> dict[str, Any]:
    """Flush ``path`` to disk; its size and SHA-256."""
    with path.open("r+b") as f:
        os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write: Callable[[IO[bytes]], object]) -> dict[str, Any]:
    with path.open("wb") as f:
        write(f)
    return _seal(path)


def _write_npz(f: IO[bytes], arrays: Mapping[str, NDArray[Any]]) -> None:
    savez: Callable[..., None] = np.savez  # its stubs mistake **arrays for its keyword flag
    savez(f, **arrays)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is renamed away, then deleted."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    model: BaseAlgorithm,
    path_dir: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any] | None = None,
    replay_buffer: bool = True,
) -> Path:
    """Write ``model``'s training state to the directory ``path_dir``, atomically.

    :param model: an SB3 / sb3-contrib algorithm (SAC, TQC, PPO, RecurrentPPO, subclasses).
    :param path_dir: the checkpoint directory; replaced if it exists, parents created.
    :param meta: JSON-compatible data stored with the checkpoint, returned by
        :func:`load_checkpoint` (run name, config, ...).
    :param replay_buffer: also store the replay buffer (off-policy algorithms).
    :return: the checkpoint directory.
    :raises TypeError: when ``meta`` holds something JSON cannot store.
    """
    target = Path(path_dir)
    if target.exists() and not target.is_dir():
        raise CheckpointError(
            f"{target} exists and is not a directory; pass a directory path for the checkpoint"
        )
    meta_json = plain(dict(meta or {}), "meta")
    tensors: dict[str, th.Tensor] = {}
    modules: dict[str, list[str]] = {}
    optimizers: dict[str, Any] = {}
    state_dict_names, variable_names = model._get_torch_save_params()
    for name in state_dict_names:
        obj = _attr(model, name)
        if isinstance(obj, th.optim.Optimizer):
            optimizers[name] = encode(obj.state_dict(), name, tensors)
        elif isinstance(obj, nn.Module):
            sd = obj.state_dict()
            modules[name] = list(sd)
            for key, t in sd.items():
                tensors[f"{name}/{key}"] = t.detach().cpu().clone().contiguous()
        else:
            raise TypeError(
                f"{type(model).__name__}._get_torch_save_params() lists {name!r}, a "
                f"{type(obj).__name__}; expected a torch Module or Optimizer"
            )
    for name in variable_names:
        value = _attr(model, name)
        if not isinstance(value, th.Tensor):
            raise TypeError(f"{name!r} is a {type(value).__name__}; expected a torch Tensor")
        tensors[f"variables/{name}"] = value.detach().cpu().clone().contiguous()
    state: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "tm_algos_version": __version__,
        "saved_at_ns": time.time_ns(),
        "structure": _structure(model),
        "counters": {k: plain(getattr(model, k), k) for k in _counters(model) if hasattr(model, k)},
        "info_buffers": {},
        "modules": modules,
        "optimizers": optimizers,
        "variables": list(variable_names),
        "rng": rng_state(model, tensors),
        "replay_buffer": None,
        "meta": meta_json,
    }
    for name in _INFO_BUFFERS:
        try:
            state["info_buffers"][name] = plain(list(getattr(model, name) or ()), name)
        except TypeError:
            logger.debug("%s holds values JSON cannot store; not saved", name)
    buffer = getattr(model, "replay_buffer", None) if replay_buffer else None
    arrays: dict[str, NDArray[Any]] = {}
    if isinstance(buffer, BaseBuffer):
        arrays, scalars = buffer_parts(buffer)
        for name, array in arrays.items():
            if array.dtype.hasobject:
                raise TypeError(
                    f"replay buffer array {name!r} holds Python objects (dtype {array.dtype}); "
                    "checkpoints store numeric arrays only"
                )
        state["replay_buffer"] = {
            "class": type(buffer).__name__,
            "scalars": scalars,
            "arrays": sorted(arrays),
        }

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        files = {WEIGHTS_NAME: _seal(tmp / WEIGHTS_NAME)}
        if state["replay_buffer"] is not None:
            files[BUFFER_NAME] = _write_file(tmp / BUFFER_NAME, lambda f: _write_npz(f, arrays))
        state["files"] = files
        text = json.dumps(state, indent=1, allow_nan=False)
        _write_file(tmp / STATE_NAME, lambda f: f.write(text.encode()))
        _fsync_dir(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s (%d timesteps)", target, model.num_timesteps)
    return target


# -- reading ----------------------------------------------------------------------------------


def _read_state(path: Path) -> dict[str, Any]:
    file = path / STATE_NAME
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no checkpoint directory here; pass a directory written by "
            "save_checkpoint (latest_checkpoint(root) finds the newest one)"
        )
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{file} is missing: {path} is not a complete checkpoint (an interrupted copy?); "
            "use another checkpoint, e.g. latest_checkpoint(root)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(
            f"{file} is not valid JSON ({e}); the file is corrupt, use another checkpoint"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{file}: format {got!r}, expected {FORMAT!r}; this is not a tm-algos checkpoint"
        )
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{file}: format version {version!r}, this tm-algos ({__version__}) reads up to "
            f"{VERSION}; upgrade tm-algos to read it"
        )
    files = state.get("files")
    if not isinstance(files, dict) or WEIGHTS_NAME not in files:
        raise CheckpointError(f"{file} lists no {WEIGHTS_NAME}; the file is corrupt")
    return state


def _check_file(path: Path, name: str, expected: Any, *, hash_it: bool) -> None:
    file = path / name
    size = file.stat().st_size if file.is_file() else None
    want = expected.get("size") if isinstance(expected, dict) else None
    if size is None:
        raise CheckpointError(
            f"{file} is missing; the checkpoint is incomplete, use another checkpoint"
        )
    if size != want:
        raise CheckpointError(
            f"{file} has {size} bytes, {STATE_NAME} says {want}: the file is truncated or "
            "was replaced; use another checkpoint"
        )
    if hash_it and _sha256(file) != expected.get("sha256"):
        raise CheckpointError(
            f"{file} does not match the SHA-256 in {STATE_NAME}: the file is corrupt; "
            "use another checkpoint"
        )


def latest_checkpoint(root_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint under ``root_dir`` with the most timesteps (the latest saved
    among equals); None if there is none or ``root_dir`` does not exist."""
    done = _complete(root_dir)
    return done[-1] if done else None


def prune_checkpoints(root_dir: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints under ``root_dir``."""
    for old in _complete(root_dir)[: -keep if keep > 0 else None]:
        shutil.rmtree(old)


def _complete(root_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoints under ``root_dir`` whose files are all there with their sizes, oldest first."""
    root = Path(root_dir)
    if not root.exists():
        return []
    if not root.is_dir():
        raise CheckpointError(
            f"root_dir={str(root)!r} is a file; pass the directory holding checkpoint folders"
        )
    found: list[tuple[tuple[Any, ...], Path]] = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            state = _read_state(child)
            for name, expected in state["files"].items():
                _check_file(child, str(name), expected, hash_it=False)
            steps = int(state["counters"]["num_timesteps"])
            found.append(((steps, int(state.get("saved_at_ns", 0)), child.name), child))
        except (CheckpointError, KeyError, TypeError, ValueError, OSError) as e:
            logger.debug("skipping %s: %s", child, e)
    return [path for _, path in sorted(found)]


def load_checkpoint(
    model: BaseAlgorithm,
    path_dir: str | os.PathLike[str],
    *,
    replay_buffer: bool = True,
    rng: bool = True,
) -> dict[str, Any]:
    """Restore the training state saved in ``path_dir`` into ``model``; return its ``meta``.

    ``model`` must be built with the settings of the saved one (algorithm, policy, network,
    ``n_envs``, replay buffer class and size); every file is checked against it before
    anything changes. The next ``model.learn(..., reset_num_timesteps=False)`` resets the
    environment and carries on counting from the saved ``num_timesteps``.

    :param replay_buffer: also restore the replay buffer, when the checkpoint holds one.
    :param rng: also restore the random generators (PyTorch, NumPy, Python ``random``, the
        action space): training continues exactly as it would have without the break.
    :raises CheckpointError: a file is missing, corrupt or does not fit ``model``.
    """
    path = Path(path_dir)
    state = _read_state(path)
    files = state["files"]
    _check_file(path, WEIGHTS_NAME, files[WEIGHTS_NAME], hash_it=True)
    where = str(path / STATE_NAME)
    try:
        tensors = load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS_NAME} cannot be read ({e}); it is corrupt") from e
    theirs, mine = state.get("structure", {}), _structure(model)
    for key in mine:
        if theirs.get(key) != mine[key]:
            raise CheckpointError(
                f"{where}: the model was built with {key}={mine[key]!r} but the checkpoint "
                f"has {key}={theirs.get(key)!r}; build the model with {key}="
                f"{theirs.get(key)!r}, as when it was saved"
            )
    try:
        state_dict_names, variable_names = model._get_torch_save_params()
        optimizers: dict[str, tuple[th.optim.Optimizer, Any]] = {}
        for name in state_dict_names:
            obj = _attr(model, name)
            if isinstance(obj, th.optim.Optimizer):
                if name not in state["optimizers"]:
                    raise CheckpointError(
                        f"{where} has no state for the optimizer {name!r} (it has "
                        f"{sorted(state['optimizers'])}); build the model with the settings it "
                        "was saved with (e.g. ent_coef='auto' or a fixed value)"
                    )
                saved = decode(state["optimizers"][name], tensors, f"{where}: {name}")
                check_optimizer(f"{where}: {name}", obj, saved)
                optimizers[name] = (obj, saved)
            else:
                check_module(path, name, obj, tensors)
        variables = {}
        for name in variable_names:
            value, mine_t = tensors.get(f"variables/{name}"), _attr(model, name)
            if value is None or value.shape != mine_t.shape:
                got = "no such tensor" if value is None else f"shape {list(value.shape)}"
                raise CheckpointError(
                    f"{where}: the model needs the tensor {name!r} of shape "
                    f"{list(mine_t.shape)}, the checkpoint has {got} (its tensors: "
                    f"{state['variables']}); build the model with the settings it was saved "
                    "with (e.g. ent_coef='auto' or a fixed value)"
                )
            variables[name] = value
        found = getattr(model, "replay_buffer", None)
        buffer_info: Any = state.get("replay_buffer")
        buffer = found if isinstance(found, BaseBuffer) and buffer_info is not None else None
        arrays: dict[str, NDArray[Any]] = {}
        if replay_buffer and buffer is not None:
            _check_file(path, BUFFER_NAME, files.get(BUFFER_NAME), hash_it=True)
            arrays = check_buffer(path, buffer_info, buffer)
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{where} or its weights are malformed ({e!r}); it is corrupt") from e

    # Everything fits: restore.
    device = get_device(model.device)
    for name in state_dict_names:
        obj = _attr(model, name)
        if isinstance(obj, nn.Module):
            prefix = f"{name}/"
            obj.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
    for opt, saved in optimizers.values():
        opt.load_state_dict(saved)
    with th.no_grad():
        for name, value in variables.items():
            _attr(model, name).copy_(value.to(device))
    for key, value in state.get("counters", {}).items():
        if key in _counters(model) and isinstance(value, (int, float)):
            setattr(model, key, value)
    for name, items in state.get("info_buffers", {}).items():
        current = getattr(model, name, None)
        if name in _INFO_BUFFERS and isinstance(items, list):
            maxlen = current.maxlen if isinstance(current, deque) else model._stats_window_size
            setattr(model, name, deque(items, maxlen=maxlen))
    if replay_buffer and buffer is not None:
        load_buffer(path / BUFFER_NAME, buffer, arrays, buffer_info["scalars"])
    if rng:
        try:
            restore_rng(model, state["rng"], tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{where}: random generator state unusable ({e})") from e
    model._last_obs = None  # the next learn() resets the environment
    logger.info("loaded checkpoint %s (%d timesteps)", path, model.num_timesteps)
    meta = state.get("meta", {})
    return dict(meta) if isinstance(meta, dict) else {}
