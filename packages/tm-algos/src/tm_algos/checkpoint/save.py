"""Saving a model's full training state as a checkpoint directory, atomically."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch as th
from numpy.typing import NDArray
from safetensors.torch import save_file
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import BaseBuffer

import tm_algos.checkpoint.model_state as model_state
from tm_algos.checkpoint.atomic import seal, write_directory, write_file
from tm_algos.checkpoint.buffer_state import buffer_to_save, write_npz
from tm_algos.checkpoint.format import (
    BUFFER_NAME,
    FORMAT,
    STATE_NAME,
    VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    NonFiniteStateError,
    plain,
)
from tm_algos.checkpoint.rng import rng_state
from tm_algos.version import __version__

__all__ = ["save_checkpoint"]

logger = logging.getLogger(__name__)


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
        :func:`~tm_algos.checkpoint.load_checkpoint` (run name, config, ...).
    :param replay_buffer: also store the replay buffer (off-policy algorithms).
    :return: the checkpoint directory.
    :raises TypeError: when ``meta`` holds something JSON cannot store (a NaN or an infinity
        included).
    :raises NonFiniteStateError: a weight, an optimizer state or another tensor of the model
        is NaN or infinite; nothing is written, the previous checkpoints stay as they were.
        (The replay buffer is saved as it is: what enters it is the caller's to validate, and
        a buffer with one bad reward must not stop every later checkpoint.)
    """
    target = Path(path_dir)
    if target.exists() and not target.is_dir():
        raise CheckpointError(
            f"{target} exists and is not a directory; pass a directory path for the checkpoint"
        )
    meta_json = plain(dict(meta or {}), "meta")
    tensors: dict[str, th.Tensor] = {}
    state: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "tm_algos_version": __version__,
        "saved_at_ns": time.time_ns(),
        **model_state.collect(model, tensors),
        "rng": rng_state(model, tensors),
        "replay_buffer": None,
        "meta": meta_json,
    }
    bad = model_state.non_finite(tensors)
    if bad:
        raise NonFiniteStateError(
            f"not saving {target}: {len(bad)} tensors of the model hold NaN or infinity "
            f"({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}); a checkpoint never "
            "persists a diverged state. Resume from the last good checkpoint "
            "(latest_checkpoint) and lower the learning rate or check the rewards"
        )
    buffer = getattr(model, "replay_buffer", None) if replay_buffer else None
    arrays: dict[str, NDArray[Any]] = {}
    if isinstance(buffer, BaseBuffer):
        arrays, state["replay_buffer"] = buffer_to_save(buffer)

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        files = {WEIGHTS_NAME: seal(tmp / WEIGHTS_NAME)}
        if state["replay_buffer"] is not None:
            files[BUFFER_NAME] = write_file(tmp / BUFFER_NAME, lambda f: write_npz(f, arrays))
        state["files"] = files
        text = json.dumps(state, indent=1, allow_nan=False)
        write_file(tmp / STATE_NAME, lambda f: f.write(text.encode()))

    write_directory(target, fill)
    logger.info("saved checkpoint %s (%d timesteps)", target, model.num_timesteps)
    return target
