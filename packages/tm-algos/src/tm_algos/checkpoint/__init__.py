"""Training checkpoints in safe formats (safetensors, JSON, npz), written atomically.

SB3's ``model.save`` writes a zip whose data can only be read back by running Python's object
deserializer, which executes whatever the file asks for. A checkpoint written by
:func:`save_checkpoint` is a directory of three files that hold data only
(:mod:`~tm_algos.checkpoint.format`): ``weights.safetensors``, ``state.json`` and, for
off-policy algorithms, ``replay_buffer.npz``. The pieces:

* :mod:`~tm_algos.checkpoint.format` — file names, ``state.json``'s header, integrity checks,
  :class:`CheckpointError`;
* :mod:`~tm_algos.checkpoint.model_state` — modules, optimizers, tensors, counters and episode
  statistics of the model;
* :mod:`~tm_algos.checkpoint.buffer_state` — the replay buffer (numeric arrays only);
* :mod:`~tm_algos.checkpoint.rng` — the random generators;
* :mod:`~tm_algos.checkpoint.atomic` — writing the directory so that a reader never sees half
  of it;
* :mod:`~tm_algos.checkpoint.save` / :mod:`~tm_algos.checkpoint.load` — :func:`save_checkpoint`
  and :func:`load_checkpoint`, which restores into a model built with the same settings,
  checking every file first;
* :mod:`~tm_algos.checkpoint.catalog` — :func:`latest_checkpoint` (the newest *good*
  checkpoint: it loads and holds no NaN/infinity), :func:`is_good_checkpoint` and
  :func:`prune_checkpoints`, which never deletes the newest good one.

A checkpoint never persists a diverged state: :func:`save_checkpoint` refuses NaN or infinity
in any tensor (weights, optimizer state) with :class:`NonFiniteStateError` and writes nothing.

>>> from tm_algos.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
>>> save_checkpoint(model, "runs/sac/ckpt/step_0010000", meta={"run": "sac"})  # doctest: +SKIP
>>> model = SAC("MultiInputPolicy", env, **same_settings)  # doctest: +SKIP
>>> meta = load_checkpoint(model, latest_checkpoint("runs/sac/ckpt"))  # doctest: +SKIP
>>> model.learn(100_000, reset_num_timesteps=False)  # doctest: +SKIP
"""

from __future__ import annotations

from tm_algos.checkpoint.catalog import (
    is_good_checkpoint,
    latest_checkpoint,
    prune_checkpoints,
)
from tm_algos.checkpoint.format import (
    BUFFER_NAME,
    FORMAT,
    STATE_NAME,
    VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    NonFiniteStateError,
)
from tm_algos.checkpoint.load import load_checkpoint
from tm_algos.checkpoint.save import save_checkpoint

__all__ = [
    "BUFFER_NAME",
    "FORMAT",
    "STATE_NAME",
    "VERSION",
    "WEIGHTS_NAME",
    "CheckpointError",
    "NonFiniteStateError",
    "is_good_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]
