"""Grabbing a window's client area: :class:`ScreenCapture`, and :func:`find_window` for any platform."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.error import BackendUnavailableError, CaptureError, DependencyNotInstalled
from tm_gym.game.capture.geometry import WindowGeometry
from tm_gym.game.capture.x11 import x11_find, x11_geometry

__all__ = ["ScreenCapture", "find_window", "window_geometry"]

logger = logging.getLogger(__name__)


def find_window(title: str) -> WindowGeometry:
    """The client area of the first visible window titled exactly ``title``.

    Raises:
        CaptureError: no such window, no display, or the tools failed.
        DependencyNotInstalled: ``xdotool`` is missing (Linux).
        BackendUnavailableError: the platform is neither X11 nor Windows.
    """
    name: Any = title
    if not isinstance(name, str) or not name:
        raise ValueError(f"title={title!r}: expected the window's exact title, e.g. 'Trackmania'")
    if sys.platform == "win32":
        from tm_gym.game.capture.windows import win32_find

        return win32_find(title)
    if sys.platform == "darwin":
        raise BackendUnavailableError(
            "screen capture of the game is not supported on macOS (TrackMania runs on Windows, "
            "or on Linux through Proton)"
        )
    return x11_find(title)


def window_geometry(window_id: int) -> WindowGeometry:
    """Re-read the client area of a window found by :func:`find_window`.

    Raises:
        CaptureError: the window no longer exists or is not visible.
    """
    if sys.platform == "win32":
        from tm_gym.game.capture.windows import win32_geometry

        return win32_geometry(window_id)
    if sys.platform == "darwin":
        raise BackendUnavailableError("screen capture is not supported on macOS")
    return x11_geometry(window_id)


def _mss_module() -> Any:
    try:
        import mss
    except ImportError:
        raise DependencyNotInstalled(
            "mss is not installed; it captures the game window. Install it with `pip install 'tm-gym[game]'` (or `pip install mss`)"
        ) from None
    return mss


class ScreenCapture:
    """Screenshots of a window's client area as (H, W, 3) uint8 RGB arrays.

    Args:
        window_title: exact title of the window to capture (TrackMania's is ``"Trackmania"``).
        geometry: capture this area instead of looking the window up by title; with
            ``window_id=0`` it is a fixed screen region that is never re-read.
        refresh_interval: seconds between two re-reads of the window's geometry during
            :meth:`grab` (following a moved window, detecting a closed one); ``None`` re-reads
            only on :meth:`refresh`. On Linux a re-read runs ``xwininfo`` (a few ms).

    Example:
        >>> with ScreenCapture("Trackmania") as cap:  # doctest: +SKIP
        ...     frame = cap.grab()  # (H, W, 3) uint8
    """

    def __init__(
        self,
        window_title: str = "Trackmania",
        *,
        geometry: WindowGeometry | None = None,
        refresh_interval: float | None = 1.0,
    ) -> None:
        title: Any = window_title
        if not isinstance(title, str) or not title:
            raise ValueError(f"window_title={window_title!r}: expected the window's exact title")
        given: Any = geometry
        if given is not None and not isinstance(given, WindowGeometry):
            raise TypeError(f"geometry={geometry!r}: expected a WindowGeometry or None")
        if refresh_interval is not None and not (
            math.isfinite(refresh_interval) and refresh_interval >= 0
        ):
            raise ValueError(
                f"refresh_interval={refresh_interval!r}: expected seconds ≥ 0, or None"
            )
        self.window_title = window_title
        self.refresh_interval = refresh_interval
        self._given = geometry
        self._geometry: WindowGeometry | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._instances: list[Any] = []
        self._open = False
        self._next_refresh = math.inf

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        """Find the window and connect to the screen (idempotent)."""
        if self._open:
            return
        _mss_module()
        geom = self._given if self._given is not None else find_window(self.window_title)
        self._geometry = geom
        self._open = True
        try:
            self._check_on_screen(geom)
        except BaseException:
            self.close()
            raise
        self._schedule()

    def close(self) -> None:
        """Close every mss instance (idempotent)."""
        with self._lock:
            instances, self._instances = self._instances, []
            self._local = threading.local()
            self._open = False
        for sct in instances:
            try:
                sct.close()
            except Exception as exc:  # closing must not fail; note it for debugging
                logger.debug("closing an mss instance failed: %s", exc)

    def __enter__(self) -> ScreenCapture:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------------
    @property
    def geometry(self) -> WindowGeometry | None:
        """The area captured (None before :meth:`open`)."""
        return self._geometry

    def refresh(self) -> WindowGeometry:
        """Re-read the window's geometry (after it moved or was resized) and return it. If the
        window was closed, a new window with the same title (the game restarted) is taken.

        Raises:
            CaptureError: no window has the title any more, or the capture is not open.
        """
        geom = self._require_open()
        if geom.window_id != 0:
            try:
                new = window_geometry(geom.window_id)
            except CaptureError as gone:
                if self._given is not None:
                    raise
                # the window is gone: the game may have been restarted; look it up again by title
                try:
                    new = find_window(self.window_title)
                except CaptureError:
                    raise gone from None
                logger.info("window %r re-found after it was closed", self.window_title)
            if new != geom:
                if (new.width, new.height) != (geom.width, geom.height):
                    logger.warning(
                        "window %r resized from %d×%d to %d×%d; frames change shape",
                        self.window_title,
                        geom.width,
                        geom.height,
                        new.width,
                        new.height,
                    )
                self._check_on_screen(new)
                self._geometry = geom = new
        self._schedule()
        return geom

    # -- grabbing ------------------------------------------------------------------------------
    def grab(self) -> NDArray[np.uint8]:
        """The window's client area now: (H, W, 3) uint8 RGB, C-contiguous.

        Raises:
            CaptureError: not open, the window is gone, or the screen cannot be read.
        """
        geom = self._require_open()
        if time.monotonic() >= self._next_refresh:
            geom = self.refresh()
        shot = self._grab_raw(geom)
        w, h = shot.size
        if (w, h) != (geom.width, geom.height):
            raise CaptureError(
                f"screenshot is {w}×{h}, expected the window's {geom.width}×{geom.height}"
            )
        bgra = np.frombuffer(shot.raw, dtype=np.uint8).reshape(h, w, 4)
        return np.ascontiguousarray(bgra[:, :, 2::-1])  # BGRA → RGB, the one copy

    def _grab_raw(self, geom: WindowGeometry) -> Any:
        sct = self._instance()
        try:
            return sct.grab(geom.region)
        except _mss_module().ScreenShotError as exc:
            raise CaptureError(
                f"cannot capture {geom.width}×{geom.height} at ({geom.left}, {geom.top}): {exc}; "
                "is the window fully on screen?"
            ) from exc

    def _instance(self) -> Any:
        """This thread's mss instance (created on first use)."""
        local = self._local
        sct = getattr(local, "sct", None)
        if sct is None:
            mss = _mss_module()
            factory = getattr(mss, "MSS", None) or mss.mss
            try:
                sct = factory()
            except mss.ScreenShotError as exc:
                raise CaptureError(
                    f"cannot connect to the screen: {exc}; check DISPLAY "
                    f"({os.environ.get('DISPLAY')!r}) on Linux"
                ) from exc
            with self._lock:
                if not self._open or local is not self._local:
                    sct.close()
                    raise CaptureError("the capture was closed while grabbing; open it again")
                self._instances.append(sct)
            local.sct = sct
        return sct

    def _require_open(self) -> WindowGeometry:
        if not self._open or self._geometry is None:
            raise CaptureError(
                "the screen capture is not open; call open() first or use "
                "`with ScreenCapture(...) as cap:`"
            )
        return self._geometry

    def _schedule(self) -> None:
        i = self.refresh_interval
        self._next_refresh = math.inf if i is None else time.monotonic() + i

    def _check_on_screen(self, geom: WindowGeometry) -> None:
        """Raise when the area is not entirely on the screen (mss cannot grab beyond it)."""
        screen = self._instance().monitors[0]
        inside = (
            geom.left >= screen["left"]
            and geom.top >= screen["top"]
            and geom.left + geom.width <= screen["left"] + screen["width"]
            and geom.top + geom.height <= screen["top"] + screen["height"]
        )
        if not inside:
            raise CaptureError(
                f"the window's client area ({geom.width}×{geom.height} at ({geom.left}, "
                f"{geom.top})) is not entirely on the screen ({screen['width']}×"
                f"{screen['height']} at ({screen['left']}, {screen['top']})); move the window "
                "fully onto the screen"
            )
