"""The checkpoints under a directory: the complete ones, the latest, and pruning the old ones.

A checkpoint counts when its ``state.json`` reads and every file it lists is there with its
size; checkpoints are ordered by timesteps, then by when they were saved.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from tm_algos.checkpoint.format import CheckpointError, check_file, read_state

__all__ = ["complete_checkpoints", "latest_checkpoint", "prune_checkpoints"]

logger = logging.getLogger(__name__)


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
            steps = int(state["counters"]["num_timesteps"])
            found.append(((steps, int(state.get("saved_at_ns", 0)), child.name), child))
        except (CheckpointError, KeyError, TypeError, ValueError, OSError) as e:
            logger.debug("skipping %s: %s", child, e)
    return [path for _, path in sorted(found)]


def latest_checkpoint(root_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint under ``root_dir`` with the most timesteps (the latest saved
    among equals); None if there is none or ``root_dir`` does not exist."""
    done = complete_checkpoints(root_dir)
    return done[-1] if done else None


def prune_checkpoints(root_dir: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints under ``root_dir``."""
    for old in complete_checkpoints(root_dir)[: -keep if keep > 0 else None]:
        shutil.rmtree(old)
