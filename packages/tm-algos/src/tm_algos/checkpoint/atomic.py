"""Writing a checkpoint directory atomically: a reader never sees half a checkpoint.

The files go into a hidden sibling directory, are flushed to disk, then the directory is renamed
into place; an existing checkpoint of the same name is renamed away first and deleted only once
the new one is in place (put back if the rename fails).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tm_algos.checkpoint.format import sha256

__all__ = ["seal", "write_directory", "write_file"]


def seal(path: Path) -> dict[str, Any]:
    """Flush ``path`` to disk; its size and SHA-256, as ``state.json`` lists them."""
    with path.open("r+b") as f:
        os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def write_file(path: Path, write: Callable[[IO[bytes]], object]) -> dict[str, Any]:
    """Create ``path``, fill it with ``write(file)``, and :func:`seal` it."""
    with path.open("wb") as f:
        write(f)
    return seal(path)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def write_directory(target: Path, fill: Callable[[Path], None]) -> Path:
    """Make the directory ``target`` atomically: ``fill(tmp)`` writes the files into a hidden
    sibling ``tmp``, which then replaces ``target``. Nothing is left behind when it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        _fsync_dir(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
