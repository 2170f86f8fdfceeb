"""A replay buffer in a checkpoint: its arrays as ``replay_buffer.npz``, its scalars as JSON.

Any SB3 buffer works (``ReplayBuffer``, ``DictReplayBuffer``,
:class:`~tm_algos.buffers.FrameStackReplayBuffer` with its frame ring and episode
bookkeeping): every ndarray attribute (dicts of arrays as ``attr/key``) is stored, and every
attribute JSON can hold. Only numeric arrays are written or read: an object array is refused
when saving, and when loading it is refused from the file's headers, before NumPy reads it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.buffers import BaseBuffer

from tm_algos.checkpoint.format import BUFFER_NAME, STATE_NAME, CheckpointError, plain
from tm_algos.errors import InvalidTypeError

__all__ = [
    "BUFFER_STATE",
    "buffer_parts",
    "buffer_to_save",
    "check_buffer",
    "load_buffer",
    "write_npz",
]

BUFFER_STATE = ("pos", "full")  # the replay buffer's scalars that change while training


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


def buffer_to_save(buffer: BaseBuffer) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """``buffer``'s arrays, and its entry for ``state.json`` (class, scalars, array names).

    Raises:
        InvalidTypeError: an array holds Python objects.
    """
    arrays, scalars = buffer_parts(buffer)
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise InvalidTypeError(
                f"replay buffer array {name!r} holds Python objects (dtype {array.dtype}); "
                "checkpoints store numeric arrays only"
            )
    info = {"class": type(buffer).__name__, "scalars": scalars, "arrays": sorted(arrays)}
    return arrays, info


def write_npz(f: IO[bytes], arrays: Mapping[str, NDArray[Any]]) -> None:
    """Write ``arrays`` to the open file ``f`` as an uncompressed ``.npz``."""
    savez: Callable[..., None] = np.savez  # its stubs mistake **arrays for its keyword flag
    savez(f, **arrays)


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


def _check_settings(where: str, theirs: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
    """The buffer's scalars that its settings decide must be those of the saved one."""
    for key in sorted(set(mine) | set(theirs)):
        if key not in BUFFER_STATE and mine.get(key) != theirs.get(key):
            raise CheckpointError(
                f"{where}: the model's replay buffer was built with {key}="
                f"{mine.get(key)!r} but the checkpoint has {key}={theirs.get(key)!r}; build "
                "the model with the same buffer_size, n_envs and replay_buffer_kwargs"
            )


def _check_arrays(
    file: Path,
    headers: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
    arrays: Mapping[str, NDArray[Any]],
) -> None:
    """The saved arrays must be the buffer's, with its shapes and dtypes."""
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
    _check_settings(where, info["scalars"], scalars)
    _check_arrays(file, headers, arrays)
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
