"""The keys of the keyboard controller: TMRL's thresholds, the scan codes, a backend's contract."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from tm_gym.error import InvalidActionError

__all__ = ["KEYS", "ORDER", "SCAN_CODES", "SCAN_RESPAWN", "KeyBackend", "keys_for", "ordered"]

KEYS = frozenset({"up", "down", "left", "right"})
"""The logical keys: up = gas, down = brake, left/right = steer."""

ORDER = ("up", "down", "left", "right")
"""The order in which keys are sent, so the commands are deterministic."""

SCAN_CODES = {"up": 0x11, "down": 0x1F, "left": 0x1E, "right": 0x20}
"""Windows scan codes (W, S, A, D) in DirectInput numbering, like TMRL."""
SCAN_RESPAWN = 0xD3
"""Delete (DirectInput ``DIK_DELETE``: an extended key, 0x53 with the E0 prefix)."""


def keys_for(action: Sequence[float] | Any) -> frozenset[str]:
    """The logical keys held for ``[gas, brake, steer]`` (TMRL's thresholds; pure)."""
    try:
        gas, brake, steer = (float(v) for v in action)
    except (TypeError, ValueError):
        raise InvalidActionError(
            f"action {action!r} is not three numbers; expected [gas, brake, steer]"
        ) from None
    if not (math.isfinite(gas) and math.isfinite(brake) and math.isfinite(steer)):
        raise InvalidActionError(
            f"action [{gas}, {brake}, {steer}] contains a non-finite value; expected finite "
            "[gas, brake, steer] (a NaN usually means the policy diverged)"
        )
    keys = set()
    if gas > 0:
        keys.add("up")
    if brake > 0:
        keys.add("down")
    if steer > 0.5:
        keys.add("right")
    elif steer < -0.5:
        keys.add("left")
    return frozenset(keys)


def ordered(keys: Iterable[str]) -> list[str]:
    """``keys`` in :data:`ORDER`."""
    s = set(keys)
    return [k for k in ORDER if k in s]


class KeyBackend(Protocol):
    """What sends the key events of one platform (used by the controller)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def change(self, up: list[str], down: list[str]) -> None:
        """Release the logical keys ``up``, then press ``down``."""
        ...

    def tap_respawn(self, hold: float) -> None: ...
