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

__all__ = ["SpaceFormatError", "describe_space", "space_from_description"]


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


def space_from_description(d: Any, where: str = "space") -> spaces.Space[Any]:
    """The inverse of :func:`describe_space`, validating every field."""
    if not isinstance(d, Mapping):
        raise SpaceFormatError(f"{where}={d!r}: expected an object with a 'kind'")
    kind = d.get("kind")
    if kind == "Dict":
        subs = d.get("spaces")
        if not isinstance(subs, Mapping) or not subs:
            raise SpaceFormatError(f"{where}.spaces={subs!r}: expected a non-empty object")
        return spaces.Dict(
            {str(k): space_from_description(v, f"{where}.{k}") for k, v in subs.items()}
        )
    if kind == "Box":
        shape = d.get("shape")
        if not (
            isinstance(shape, list)
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        ):
            raise SpaceFormatError(f"{where}.shape={shape!r}: expected a list of positive ints")
        if d.get("dtype") not in _DTYPES:
            raise SpaceFormatError(f"{where}.dtype={d.get('dtype')!r}: expected one of {_DTYPES}")
        dtype = np.dtype(d["dtype"])
        low = _unbound(d.get("low"), tuple(shape), dtype, f"{where}.low")
        high = _unbound(d.get("high"), tuple(shape), dtype, f"{where}.high")
        return spaces.Box(low, high, shape=tuple(shape), dtype=dtype.type)
    raise SpaceFormatError(f"{where}.kind={kind!r}: expected 'Box' or 'Dict'")
