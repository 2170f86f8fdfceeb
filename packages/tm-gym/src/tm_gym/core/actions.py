"""The action every backend takes, and its validation.

An action is ``[gas, brake, steer]`` in [-1, 1] (float32): gas and brake act above 0 (analog,
0…1), steer is −1 full left … +1 full right. :func:`check_actions` is what every environment
runs on the actions it receives: shape checked, NaN/inf rejected, values clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from tm_gym.error import InvalidActionError

__all__ = ["action_space", "check_actions"]


def action_space() -> spaces.Box:
    """[gas, brake, steer] in [-1, 1]; gas and brake act above 0, steer +1 is full right."""
    return spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)


def check_actions(action: Any, n: int) -> NDArray[np.float32]:
    """Validate actions: shape (3,) for one car or (n, 3); finite; clipped to [-1, 1].

    Returns:
        the actions as an (n, 3) float32 array.

    Raises:
        InvalidActionError: the shape is wrong or a value is NaN or infinite.
    """
    a = np.asarray(action, dtype=np.float32)
    if a.shape not in ((3,), (n, 3)) or (a.shape == (3,) and n != 1):
        raise InvalidActionError(
            f"action has shape {a.shape}; expected "
            f"{'(3,)' if n == 1 else f'({n}, 3)'} = [gas, brake, steer]"
        )
    a = a.reshape(n, 3)
    if not np.all(np.isfinite(a)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise InvalidActionError(
            f"action contains a non-finite value {float(a[bad])} at index {bad}; "
            "check the policy's outputs (a NaN usually means training diverged)"
        )
    return np.clip(a, -1.0, 1.0)
