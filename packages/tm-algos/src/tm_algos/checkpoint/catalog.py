"""The checkpoints under a directory: the complete ones, the latest good one, and pruning.

A checkpoint is *complete* when its ``state.json`` reads and every file it lists is there with
its size; checkpoints are ordered by timesteps, then by when they were saved. A complete
checkpoint is *good* (:func:`is_good_checkpoint`) when, moreover, every file matches its
SHA-256, its step counter is an int >= 0 and every floating-point tensor of its weights file
is finite: one that would load, and would not bring back a diverged state.
:func:`save_checkpoint` never writes a non-finite state, but a checkpoint of an older version,
a damaged file or a hand-edited one may be anything.

:func:`latest_checkpoint` gives the newest good checkpoint (what a resumed run starts from),
and :func:`prune_checkpoints` never deletes it, however many bad ones came after it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from tm_algos.checkpoint.format import (
    WEIGHTS_NAME,
    CheckpointError,
    check_file,
    read_state,
)
from tm_algos.checkpoint.model_state import non_finite

__all__ = [
    "complete_checkpoints",
    "is_good_checkpoint",
    "latest_checkpoint",
    "prune_checkpoints",
]

logger = logging.getLogger(__name__)


def _steps(state: dict[str, Any]) -> int:
    steps = state["counters"]["num_timesteps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"counters['num_timesteps'] = {steps!r:.60}: expected an int >= 0")
    return steps


def complete_checkpoints(root_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoints under ``root_dir`` whose files are all there with their sizes, oldest first;
    an empty list if ``root_dir`` does not exist."""
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
            state = read_state(child)
            for name, expected in state["files"].items():
                check_file(child, str(name), expected, hash_it=False)
            steps = _steps(state)
            found.append(((steps, int(state.get("saved_at_ns", 0)), child.name), child))
        except (CheckpointError, KeyError, TypeError, ValueError, OSError) as e:
            logger.debug("skipping %s: %s", child, e)
    return [path for _, path in sorted(found)]


def _why_bad(path: Path) -> str | None:
    """None if checkpoint ``path`` is good, else the reason."""
    try:
        state = read_state(path)
        for name, expected in state["files"].items():
            check_file(path, str(name), expected, hash_it=True)
        _steps(state)
        tensors = load_file(str(path / WEIGHTS_NAME))
    except (CheckpointError, SafetensorError, KeyError, TypeError, ValueError, OSError) as e:
        return f"it does not load ({e})"
    bad = non_finite(tensors)
    if bad:
        return f"{len(bad)} tensors hold NaN or infinity ({', '.join(bad[:3])})"
    return None


def is_good_checkpoint(path_dir: str | os.PathLike[str]) -> bool:
    """Whether the checkpoint ``path_dir`` is complete, matches its hashes, has a valid step
    counter and only finite tensors (reads and hashes every file: costs a full read)."""
    return _why_bad(Path(path_dir)) is None


def _latest_good(done: list[Path]) -> Path | None:
    for path in reversed(done):
        why = _why_bad(path)
        if why is None:
            return path
        logger.warning("checkpoint %s is not usable: %s; looking at the one before it", path, why)
    return None


def latest_checkpoint(root_dir: str | os.PathLike[str]) -> Path | None:
    """The good checkpoint under ``root_dir`` (:func:`is_good_checkpoint`) with the most
    timesteps (the latest saved among equals); None if there is none or ``root_dir`` does not
    exist. Newer checkpoints that are damaged or hold NaN/infinity are skipped with a
    warning."""
    return _latest_good(complete_checkpoints(root_dir))


def prune_checkpoints(root_dir: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints under ``root_dir``, except the
    newest good one (:func:`is_good_checkpoint`), which is always kept: a run whose latest
    checkpoints are bad can still resume from it."""
    done = complete_checkpoints(root_dir)
    good = _latest_good(done)
    for old in done[: -keep if keep > 0 else None]:
        if old != good:
            shutil.rmtree(old)
