"""The checkpoint format: its files, ``state.json``'s header, JSON data and integrity checks.

A checkpoint is a directory of three files that hold data only:

* ``weights.safetensors`` (:data:`WEIGHTS_NAME`): every tensor, under flat names;
* ``state.json`` (:data:`STATE_NAME`): the format tag :data:`FORMAT` and :data:`VERSION`, the
  model's structure, counters, optimizer state, random generator state, replay buffer scalars,
  the caller's ``meta``, and the size and SHA-256 of each other file (``files``);
* ``replay_buffer.npz`` (:data:`BUFFER_NAME`, off-policy algorithms): the replay buffer's
  arrays, numeric only.

This module reads and checks the header and the files' integrity; it imports no PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tm_algos.errors import InvalidTypeError, TMAlgosError
from tm_algos.version import __version__

__all__ = [
    "BUFFER_NAME",
    "FORMAT",
    "STATE_NAME",
    "VERSION",
    "WEIGHTS_NAME",
    "CheckpointError",
    "NonFiniteStateError",
    "check_file",
    "plain",
    "read_state",
    "sha256",
]

FORMAT = "tm-algos-checkpoint"
VERSION = 1
STATE_NAME = "state.json"
WEIGHTS_NAME = "weights.safetensors"
BUFFER_NAME = "replay_buffer.npz"

_CHUNK = 1 << 20


class CheckpointError(TMAlgosError, ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model it is loaded into."""


class NonFiniteStateError(CheckpointError):
    """The state to save holds NaN or infinity (weights, optimizer state, other tensors):
    nothing is written, so that the last good checkpoint stays the latest one."""


def plain(value: Any, where: str) -> Any:
    """``value`` as JSON data (tuples become lists, NumPy scalars Python numbers).

    Raises:
        InvalidTypeError: (a ``TypeError``) naming ``where``, when ``value`` holds anything else.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        value = value.item()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidTypeError(f"{where} is {value}; JSON stores finite numbers only")
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidTypeError(
                    f"{where} has the key {k!r}; JSON objects take string keys only"
                )
            out[k] = plain(v, f"{where}[{k!r}]")
        return out
    raise InvalidTypeError(
        f"{where} is a {type(value).__name__} ({value!r:.60}); expected JSON data: None, bool, "
        "int, float, str, and lists and string-keyed dicts of those"
    )


def sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, in hexadecimal."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load_json(path: Path) -> Any:
    file = path / STATE_NAME
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no checkpoint directory here; pass a directory written by "
            "save_checkpoint (latest_checkpoint(root) finds the newest one)"
        )
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{file} is missing: {path} is not a complete checkpoint (an interrupted copy?); "
            "use another checkpoint, e.g. latest_checkpoint(root)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(
            f"{file} is not valid JSON ({e}); the file is corrupt, use another checkpoint"
        ) from e


def read_state(path: Path) -> dict[str, Any]:
    """The content of checkpoint ``path``'s ``state.json``, with its header checked (format,
    version, the list of files)."""
    file = path / STATE_NAME
    state = _load_json(path)
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


def check_file(path: Path, name: str, expected: Any, *, hash_it: bool) -> None:
    """Check that checkpoint ``path``'s file ``name`` has the size (and, with ``hash_it``, the
    SHA-256) that ``state.json`` lists for it (``expected``)."""
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
    if hash_it and sha256(file) != expected.get("sha256"):
        raise CheckpointError(
            f"{file} does not match the SHA-256 in {STATE_NAME}: the file is corrupt; "
            "use another checkpoint"
        )
