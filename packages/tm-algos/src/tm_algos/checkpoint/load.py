"""Loading a checkpoint into a model built with the same settings, every file checked first."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch as th
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.torch import load_file
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import BaseBuffer

import tm_algos.checkpoint.model_state as model_state
from tm_algos.checkpoint.buffer_state import check_buffer, load_buffer
from tm_algos.checkpoint.format import (
    BUFFER_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    check_file,
    read_state,
)
from tm_algos.checkpoint.rng import restore_rng

__all__ = ["load_checkpoint"]

logger = logging.getLogger(__name__)


def _read_weights(path: Path, state: dict[str, Any]) -> dict[str, th.Tensor]:
    check_file(path, WEIGHTS_NAME, state["files"][WEIGHTS_NAME], hash_it=True)
    try:
        return load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS_NAME} cannot be read ({e}); it is corrupt") from e


def _buffer_to_load(
    model: BaseAlgorithm, path: Path, state: dict[str, Any]
) -> tuple[BaseBuffer, dict[str, NDArray[Any]]] | None:
    """The model's replay buffer and its arrays, checked against the saved ones; None when
    the model has no buffer or the checkpoint holds none."""
    found = getattr(model, "replay_buffer", None)
    if not isinstance(found, BaseBuffer) or state.get("replay_buffer") is None:
        return None
    check_file(path, BUFFER_NAME, state["files"].get(BUFFER_NAME), hash_it=True)
    return found, check_buffer(path, state["replay_buffer"], found)


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
    :raises CheckpointError: a file is missing, corrupt or does not fit ``model``, or a value
        of ``state.json`` is not what :func:`~tm_algos.checkpoint.save_checkpoint` writes (a
        counter that is not a count, ``meta`` that is not an object); the error names the
        file, the key and the value. Nothing is changed then.
    """
    path = Path(path_dir)
    state = read_state(path)
    meta = state.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path / STATE_NAME}: meta is {meta!r:.60}, expected an object (save_checkpoint "
            "writes one): the file was edited or is corrupt; load another checkpoint"
        )
    tensors = _read_weights(path, state)
    where = str(path / STATE_NAME)
    try:
        checked = model_state.check(model, state, tensors, path, where)
        buffer = _buffer_to_load(model, path, state) if replay_buffer else None
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{where} or its weights are malformed ({e!r}); it is corrupt") from e

    # Everything fits: restore.
    model_state.restore(model, checked, tensors)
    if buffer is not None:
        load_buffer(path / BUFFER_NAME, buffer[0], buffer[1], state["replay_buffer"]["scalars"])
    if rng:
        try:
            restore_rng(model, state["rng"], tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{where}: random generator state unusable ({e})") from e
    model._last_obs = None  # the next learn() resets the environment
    logger.info("loaded checkpoint %s (%d timesteps)", path, model.num_timesteps)
    return dict(meta)
