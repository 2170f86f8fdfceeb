"""Screen capture of the game window's client area: a :class:`~tm_gym.core.ports.FrameSource`.

:func:`find_window` locates a window by its exact title and returns the position and size of
its client area (the picture without the title bar and borders) in screen coordinates:

* Linux / X11: ``xdotool search`` finds the visible windows whose title matches, ``xdotool
  getwindowname`` confirms the exact title and ``xwininfo`` reads the geometry (install them
  with ``sudo apt-get install xdotool x11-utils``). Under Wayland the game (Proton) runs in
  XWayland, where reading the screen may be refused: use an X11 session.
* Windows: ``FindWindowW``, ``GetClientRect`` and ``ClientToScreen`` through ctypes, with the
  process made DPI-aware so that coordinates are physical pixels.

:class:`ScreenCapture` grabs that area with `mss <https://github.com/BoboTiG/python-mss>`_
(``pip install mss``) and returns (H, W, 3) uint8 RGB arrays. An mss object is created lazily in
each thread that grabs (X11 connections must not be shared across threads) and all of them are
closed by :meth:`ScreenCapture.close`. Every ``refresh_interval`` seconds a grab re-reads the
window's geometry, so a moved window is followed and a closed one raises
:class:`~tm_gym.error.CaptureError`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.error import BackendUnavailableError, CaptureError, DependencyNotInstalled

__all__ = ["ScreenCapture", "WindowGeometry", "find_window", "window_geometry"]

logger = logging.getLogger(__name__)

_TOOL_TIMEOUT = 5.0
_APT = {"xdotool": "xdotool", "xwininfo": "x11-utils"}
_HOW_TO_START = (
    "start TrackMania (or `tm-gym emulate`), or pass window_title=... with its exact title"
)


@dataclass(frozen=True)
class WindowGeometry:
    """A window's client area in screen coordinates (pixels).

    ``window_id`` is the X11 window id or the Windows HWND; 0 means a fixed screen region that
    belongs to no window (it is then never re-read).
    """

    window_id: int
    left: int
    top: int
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("window_id", "left", "top", "width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"WindowGeometry.{name}={v!r}: expected an int")
        if self.width < 1 or self.height < 1:
            raise CaptureError(
                f"window client area is {self.width}×{self.height}; expected a positive size "
                "(is the window minimised?)"
            )

    @property
    def region(self) -> dict[str, int]:
        """The area as mss expects it."""
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}


# -- finding windows -----------------------------------------------------------------------------
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
        from tm_gym.game.capture_windows import win32_find

        return win32_find(title)
    if sys.platform == "darwin":
        raise BackendUnavailableError(
            "screen capture of the game is not supported on macOS (TrackMania runs on Windows, "
            "or on Linux through Proton)"
        )
    return _x11_find(title)


def window_geometry(window_id: int) -> WindowGeometry:
    """Re-read the client area of a window found by :func:`find_window`.

    Raises:
        CaptureError: the window no longer exists or is not visible.
    """
    if sys.platform == "win32":
        from tm_gym.game.capture_windows import win32_geometry

        return win32_geometry(window_id)
    if sys.platform == "darwin":
        raise BackendUnavailableError("screen capture is not supported on macOS")
    return _x11_geometry(window_id)


def _display() -> str:
    display = os.environ.get("DISPLAY", "")
    if not display:
        raise CaptureError(
            "DISPLAY is not set, so there is no X server to find the game window on; run from "
            "the desktop session that shows the game (or under Xvfb for tests: "
            "`Xvfb :99 & export DISPLAY=:99`)"
        )
    return display


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [tool, *args],
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT,
            check=False,
            errors="replace",
        )
    except FileNotFoundError:
        raise DependencyNotInstalled(
            f"{tool} is not installed; it is needed to find the game window on Linux. Install "
            f"it with `sudo apt-get install {_APT.get(tool, tool)}`"
        ) from None
    except subprocess.TimeoutExpired:
        raise CaptureError(
            f"`{tool} {' '.join(args)}` did not answer within {_TOOL_TIMEOUT} s; is the X "
            f"server on DISPLAY={os.environ.get('DISPLAY')!r} responding?"
        ) from None


def _title_pattern(title: str) -> str:
    """An anchored POSIX extended regex matching ``title`` literally.

    xdotool cannot match non-ASCII characters of a title, so each run of them becomes ``.*``;
    candidates are then compared with the exact title.
    """
    out: list[str] = []
    for ch in title:
        if ord(ch) > 127:
            if not out or out[-1] != ".*":
                out.append(".*")
        elif ch in "\\.[](){}*+?^$|":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "^" + "".join(out) + "$"


def _x11_find(title: str) -> WindowGeometry:
    display = _display()
    res = _run("xdotool", "search", "--onlyvisible", "--name", _title_pattern(title))
    if res.returncode not in (0, 1) or (res.returncode == 1 and res.stderr.strip()):
        raise CaptureError(
            f"`xdotool search` failed on DISPLAY={display!r}: {res.stderr.strip() or res.returncode}"
        )
    near: list[str] = []
    for token in res.stdout.split():
        try:
            wid = int(token)
        except ValueError:
            continue
        name = _run("xdotool", "getwindowname", str(wid))
        if name.returncode != 0:
            continue  # closed in the meantime
        found = name.stdout.rstrip("\n")
        if found != title:
            near.append(found)
            continue
        try:
            geom = _x11_geometry(wid)
        except CaptureError as exc:
            logger.debug("skipping window %#x titled %r: %s", wid, title, exc)
            continue
        logger.info("found window %r: %s", title, geom)
        return geom
    hint = f" (windows with similar titles: {sorted(set(near))})" if near else ""
    raise CaptureError(
        f"no visible window titled exactly {title!r} on DISPLAY={display!r}{hint}; " + _HOW_TO_START
    )


_XWININFO_FIELDS = {
    "left": re.compile(r"Absolute upper-left X:\s*(-?\d+)"),
    "top": re.compile(r"Absolute upper-left Y:\s*(-?\d+)"),
    "width": re.compile(r"^\s*Width:\s*(\d+)", re.MULTILINE),
    "height": re.compile(r"^\s*Height:\s*(\d+)", re.MULTILINE),
}


def _x11_geometry(window_id: int) -> WindowGeometry:
    _display()
    res = _run("xwininfo", "-id", str(window_id))
    if res.returncode != 0:
        raise CaptureError(
            f"window {window_id:#x} is gone (closed or restarted?): "
            f"{res.stderr.strip() or 'xwininfo failed'}; " + _HOW_TO_START
        )
    values = {}
    for key, rx in _XWININFO_FIELDS.items():
        m = rx.search(res.stdout)
        if m is None:
            raise CaptureError(f"cannot read `{key}` from xwininfo's output: {res.stdout!r}")
        values[key] = int(m.group(1))
    if "IsViewable" not in res.stdout:
        raise CaptureError(
            f"window {window_id:#x} is not visible (minimised or on another workspace?); "
            "show it on screen"
        )
    return WindowGeometry(window_id=window_id, **values)


# -- capture -------------------------------------------------------------------------------------
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
