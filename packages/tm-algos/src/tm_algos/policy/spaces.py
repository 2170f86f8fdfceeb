"""Gymnasium spaces as plain JSON (for policy files): describe a Box or Dict-of-Box space and
rebuild it, with bounds written compactly (one number when every element shares it).

>>> from gymnasium import spaces
>>> describe_space(spaces.Box(-1.0, 1.0, (3,)))
{'kind': 'Box', 'shape': [3], 'dtype': 'float32', 'low': -1.0, 'high': 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from tm_algos.errors import TMAlgosError

__all__ = [
    "MAX_DICT_KEYS",
    "MAX_SPACE_ELEMENTS",
    "SpaceFormatError",
    "describe_space",
    "space_from_description",
]

MAX_SPACE_ELEMENTS = 2**24
"""Most elements of one Box a description may give (16 Mi: 4 frames of 1024 x 1024 x 4)."""
MAX_DICT_KEYS = 64
"""Most entries of one Dict space; Dicts nest at most ``_MAX_DEPTH`` deep."""
_MAX_DIMS = 8
_MAX_DEPTH = 4


class SpaceFormatError(TMAlgosError, ValueError):
    """A space cannot be described in JSON, or a description is malformed."""


def _bound(a: NDArray[Any]) -> Any:
    """One number when every element is equal, else the nested list; infinities as strings."""

    def one(x: Any) -> float | int | str:
        f = float(x)
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return int(x) if np.issubdtype(a.dtype, np.integer) else f

    flat = a.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return one(flat[0])
    return np.vectorize(one, otypes=[object])(a).tolist()


def describe_space(space: spaces.Space[Any]) -> dict[str, Any]:
    """A JSON description of a Box or a Dict of Boxes: kind, shape, dtype, low and high."""
    if isinstance(space, spaces.Dict):
        return {"kind": "Dict", "spaces": {k: describe_space(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {
            "kind": "Box",
            "shape": list(space.shape),
            "dtype": np.dtype(space.dtype).name,
            "low": _bound(space.low),
            "high": _bound(space.high),
        }
    raise SpaceFormatError(
        f"space {space!r}: only Box and Dict-of-Box spaces can be exported (tm-gym's spaces)"
    )


_DTYPES = ("float32", "float64", "uint8", "int8", "int16", "int32", "int64")


def _unbound(value: Any, shape: tuple[int, ...], dtype: np.dtype[Any], where: str) -> NDArray[Any]:
    def one(x: Any) -> float:
        if x in ("inf", "-inf"):
            return float(x)
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise SpaceFormatError(f"{where} holds {x!r}: expected a number, 'inf' or '-inf'")
        return float(x)

    if isinstance(value, list):
        arr = np.vectorize(one, otypes=[np.float64])(np.array(value, dtype=object))
        if arr.shape != shape:
            raise SpaceFormatError(f"{where} has shape {arr.shape}: expected {shape}")
    else:
        arr = np.full(shape, one(value), dtype=np.float64)
    return arr.astype(dtype)


def _check_shape(shape: Any, where: str) -> tuple[int, ...]:
    if not (
        isinstance(shape, list)
        and len(shape) <= _MAX_DIMS
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise SpaceFormatError(
            f"{where}.shape={shape!r:.80}: expected a list of at most {_MAX_DIMS} positive ints"
        )
    if math.prod(shape) > MAX_SPACE_ELEMENTS:
        raise SpaceFormatError(
            f"{where}.shape={shape!r:.80}: {math.prod(shape):,} elements, at most "
            f"{MAX_SPACE_ELEMENTS:,} allowed; this is not a space tm-gym makes"
        )
    return tuple(shape)


def space_from_description(d: Any, where: str = "space", _depth: int = 0) -> spaces.Space[Any]:
    """The inverse of :func:`describe_space`, validating every field; sizes are bounded
    (:data:`MAX_SPACE_ELEMENTS` per Box, :data:`MAX_DICT_KEYS` per Dict) before anything is
    allocated."""
    if not isinstance(d, Mapping):
        raise SpaceFormatError(f"{where}={d!r}: expected an object with a 'kind'")
    kind = d.get("kind")
    if kind == "Dict":
        subs = d.get("spaces")
        if not isinstance(subs, Mapping) or not subs or len(subs) > MAX_DICT_KEYS:
            raise SpaceFormatError(
                f"{where}.spaces={subs!r:.80}: expected an object of 1 to {MAX_DICT_KEYS} spaces"
            )
        if _depth >= _MAX_DEPTH:
            raise SpaceFormatError(f"{where}: Dict spaces nested more than {_MAX_DEPTH} deep")
        return spaces.Dict(
            {str(k): space_from_description(v, f"{where}.{k}", _depth + 1) for k, v in subs.items()}
        )
    if kind == "Box":
        shape = _check_shape(d.get("shape"), where)
        if d.get("dtype") not in _DTYPES:
            raise SpaceFormatError(f"{where}.dtype={d.get('dtype')!r}: expected one of {_DTYPES}")
        dtype = np.dtype(d["dtype"])
        low = _unbound(d.get("low"), shape, dtype, f"{where}.low")
        high = _unbound(d.get("high"), shape, dtype, f"{where}.high")
        return spaces.Box(low, high, shape=shape, dtype=dtype.type)
    raise SpaceFormatError(f"{where}.kind={kind!r}: expected 'Box' or 'Dict'")
