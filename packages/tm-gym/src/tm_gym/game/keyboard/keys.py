"""The keys of the keyboard controller: TMRL's thresholds, the scan codes, a backend's contract,
and where in the game window the mouse clicks to close the finish pop-up."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from tm_gym.error import ControllerError, InvalidActionError
from tm_gym.game.capture.geometry import WindowGeometry

__all__ = [
    "KEYS",
    "ORDER",
    "SCAN_CODES",
    "SCAN_RESPAWN",
    "KeyBackend",
    "check_relative_point",
    "client_point",
    "keys_for",
    "ordered",
]

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


def check_relative_point(name: str, value: object) -> tuple[float, float]:
    """``value`` as ``(across, down)`` fractions of a window's client area, each in [0, 1].

    Raises:
        ControllerError: not two finite numbers in [0, 1] (the message names ``name``).
    """
    try:
        x, y = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        x = y = math.nan
    if isinstance(value, str) or not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ControllerError(
            f"{name}={value!r} is invalid; expected (across, down) fractions of the game "
            "window's client area, each in [0, 1], e.g. (0.55, 0.60)"
        )
    return (x, y)


def client_point(geometry: WindowGeometry, at: tuple[float, float]) -> tuple[int, int]:
    """The screen pixel ``at`` = (across, down) fractions of ``geometry``'s client area (pure).

    The result always lies inside the client area: fraction 1 is its last pixel.
    """
    x = geometry.left + min(int(at[0] * geometry.width), geometry.width - 1)
    y = geometry.top + min(int(at[1] * geometry.height), geometry.height - 1)
    return (x, y)


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

    def click(self, x: int, y: int) -> None:
        """Move the mouse pointer to screen pixel ``(x, y)`` and click the left button."""
        ...
