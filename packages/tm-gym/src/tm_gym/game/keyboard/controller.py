"""The keyboard controller: holds the keys an action asks for, sends only the changes, and
clicks the finish pop-up's "Improve" button with the mouse (TMRL's keyboard fallback does too)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from tm_gym.core.ports import FINISH_BUTTON
from tm_gym.error import ControllerError
from tm_gym.game.capture import WindowGeometry, window_geometry
from tm_gym.game.keyboard.keys import (
    KeyBackend,
    check_relative_point,
    client_point,
    keys_for,
    ordered,
)
from tm_gym.game.keyboard.xdotool import XdotoolBackend

__all__ = ["BACKENDS", "KeyboardController"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "xdotool", "sendinput")
"""The keyboard backends; ``"auto"`` picks by platform."""


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _seconds_in(value: object, lo: float, hi: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and lo <= value <= hi
    )


class KeyboardController:
    """Drives the car with key presses (implements :class:`~tm_gym.core.ports.Controller` and
    :class:`~tm_gym.core.ports.FinishDismisser`).

    Args:
        backend: ``"xdotool"`` (Linux), ``"sendinput"`` (Windows) or ``"auto"`` (by platform).
        window_id: The game window (X11 window id on Linux, HWND on Windows) to focus once when
            opening; ``None`` sends to whatever window has the focus.
        display: X display for xdotool (``":1"``); ``None`` uses ``$DISPLAY``.
        respawn_hold: Seconds the respawn key is held down.
        finish_button: Where :meth:`dismiss_finish` clicks: ``(across, down)`` fractions of the
            game window's client area (default :data:`~tm_gym.core.ports.FINISH_BUTTON`, TMRL's
            spot for the "Improve" button, not verified in the game on our side).
        geometry: Reads a window's client area in screen pixels from its id (default
            :func:`tm_gym.game.capture.window_geometry`; tests pass a fake).

    Nothing is started before :meth:`open` (or ``with``); :meth:`close` releases every held key
    and stops the xdotool process, and may be called any number of times.
    """

    def __init__(
        self,
        *,
        backend: str = "auto",
        window_id: int | None = None,
        display: str | None = None,
        respawn_hold: float = 0.05,
        finish_button: tuple[float, float] = FINISH_BUTTON,
        geometry: Callable[[int], WindowGeometry] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ControllerError(
                f"keyboard backend {backend!r} is unknown; expected one of {', '.join(BACKENDS)}"
            )
        if window_id is not None and not _positive_int(window_id):
            raise ControllerError(
                f"window_id={window_id!r} is invalid; expected a positive window id (as printed "
                "by `xdotool search --name Trackmania`) or None"
            )
        if not _seconds_in(respawn_hold, 0.0, 5.0):
            raise ControllerError(
                f"respawn_hold={respawn_hold!r} is invalid; expected seconds in [0, 5]"
            )
        self.finish_button = check_relative_point("finish_button", finish_button)
        if backend == "auto":
            backend = "sendinput" if sys.platform == "win32" else "xdotool"
        self.backend = backend
        self.window_id = window_id
        self.display = display
        self.respawn_hold = float(respawn_hold)
        self._geometry = window_geometry if geometry is None else geometry
        self._impl: KeyBackend | None = None
        self._held: frozenset[str] = frozenset()

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Start the backend and focus ``window_id`` if given (does nothing if open)."""
        if self._impl is not None:
            return
        impl: KeyBackend
        if self.backend == "xdotool":
            impl = XdotoolBackend(window_id=self.window_id, display=self.display)
        else:
            from tm_gym.game.keyboard.sendinput import SendInputBackend

            impl = SendInputBackend(window_id=self.window_id)
        impl.open()
        self._impl = impl
        self._held = frozenset()

    def close(self) -> None:
        """Release every held key and stop the backend. Idempotent."""
        impl = self._impl
        if impl is None:
            return
        try:
            self.release()
        except ControllerError:
            logger.warning("could not release the held keys while closing", exc_info=True)
        finally:
            self._impl = None
            self._held = frozenset()
            impl.close()

    def __enter__(self) -> KeyboardController:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyboardController(backend={self.backend!r}, window_id={self.window_id!r})"

    # -- Controller --------------------------------------------------------------------------

    @property
    def held(self) -> frozenset[str]:
        """The logical keys held down now."""
        return self._held

    def apply(self, action: Sequence[float] | Any) -> None:
        """Hold the keys of ``[gas, brake, steer]``, sending only what changed."""
        self._set(keys_for(action))

    def release(self) -> None:
        """Lift every held key."""
        self._set(frozenset())

    def respawn(self) -> None:
        """Tap the respawn key (BackSpace on Linux, Delete on Windows)."""
        self._require().tap_respawn(self.respawn_hold)

    def click(self, x: int, y: int) -> None:
        """Click the left mouse button at screen pixel ``(x, y)``."""
        self._require().click(x, y)

    # -- FinishDismisser ---------------------------------------------------------------------

    def dismiss_finish(self) -> None:
        """Close the finish pop-up: click :attr:`finish_button` in the game window.

        The window's client area is read again first, so a moved window is followed.

        Raises:
            ControllerError: no ``window_id`` (the controller does not know where the game
                is), or the click cannot be sent.
            CaptureError: the window no longer exists.
        """
        impl = self._require()
        if self.window_id is None:
            raise ControllerError(
                "the keyboard controller cannot click the finish pop-up without the game "
                "window: pass window_id=... (make_env(controller='keyboard') does), or use "
                "finish_popup='ignore'"
            )
        x, y = client_point(self._geometry(self.window_id), self.finish_button)
        logger.debug("clicking the finish pop-up at screen (%d, %d)", x, y)
        impl.click(x, y)

    # -- internals ---------------------------------------------------------------------------

    def _require(self) -> KeyBackend:
        if self._impl is None:
            raise ControllerError(
                "the keyboard controller is not open; call open() or use it in a `with` block"
            )
        return self._impl

    def _set(self, want: frozenset[str]) -> None:
        impl = self._require()
        if want == self._held:
            return
        impl.change(ordered(self._held - want), ordered(want - self._held))
        self._held = want
