"""Finding a window's client area on Windows (user32 through ctypes).

Only imported on Windows (type-checked, not
exercised, on Linux CI).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from typing import Any

from tm_gym.error import BackendUnavailableError, CaptureError
from tm_gym.game.capture.geometry import HOW_TO_START, WindowGeometry

__all__ = ["win32_find", "win32_geometry"]

logger = logging.getLogger(__name__)

_win32_lock = threading.Lock()
_win32_user32: Any = None


def _win32_api() -> Any:
    """user32 with the prototypes we use, after making the process DPI-aware (once)."""
    global _win32_user32
    if sys.platform != "win32":
        raise BackendUnavailableError("the Win32 window API exists only on Windows")
    from ctypes import wintypes

    with _win32_lock:
        if _win32_user32 is not None:
            return _win32_user32
        user32 = ctypes.WinDLL("user32", use_last_error=True)
        # physical pixels, so that window coordinates and mss agree on high-DPI screens
        try:
            user32.SetProcessDpiAwarenessContext.restype = wintypes.BOOL
            user32.SetProcessDpiAwarenessContext.argtypes = [wintypes.HANDLE]
            aware = bool(user32.SetProcessDpiAwarenessContext(wintypes.HANDLE(-4)))
        except AttributeError:  # before Windows 10 1703
            aware = False
        if not aware:
            try:
                ctypes.WinDLL("shcore").SetProcessDpiAwareness(2)
            except (AttributeError, OSError):
                user32.SetProcessDPIAware()
        user32.FindWindowW.restype = wintypes.HWND
        user32.FindWindowW.argtypes = [wintypes.LPCWSTR, wintypes.LPCWSTR]
        for fn in ("IsWindow", "IsWindowVisible", "IsIconic"):
            getattr(user32, fn).restype = wintypes.BOOL
            getattr(user32, fn).argtypes = [wintypes.HWND]
        user32.GetClientRect.restype = wintypes.BOOL
        user32.GetClientRect.argtypes = [wintypes.HWND, ctypes.POINTER(wintypes.RECT)]
        user32.ClientToScreen.restype = wintypes.BOOL
        user32.ClientToScreen.argtypes = [wintypes.HWND, ctypes.POINTER(wintypes.POINT)]
        _win32_user32 = user32
        return user32


def win32_find(title: str) -> WindowGeometry:
    user32 = _win32_api()
    hwnd = user32.FindWindowW(None, title)
    if not hwnd:
        raise CaptureError(f"no window titled exactly {title!r}; " + HOW_TO_START)
    geom = win32_geometry(int(hwnd))
    logger.info("found window %r: %s", title, geom)
    return geom


def win32_geometry(window_id: int) -> WindowGeometry:
    if sys.platform != "win32":
        raise BackendUnavailableError("the Win32 window API exists only on Windows")
    from ctypes import wintypes

    user32 = _win32_api()
    hwnd = wintypes.HWND(window_id)
    if not user32.IsWindow(hwnd):
        raise CaptureError(f"window {window_id:#x} is gone (closed or restarted?); " + HOW_TO_START)
    if not user32.IsWindowVisible(hwnd) or user32.IsIconic(hwnd):
        raise CaptureError(f"window {window_id:#x} is minimised or hidden; show it on screen")
    rect = wintypes.RECT()
    origin = wintypes.POINT(0, 0)
    if not user32.GetClientRect(hwnd, ctypes.byref(rect)) or not user32.ClientToScreen(
        hwnd, ctypes.byref(origin)
    ):
        raise CaptureError(
            f"cannot read the client area of window {window_id:#x} "
            f"(Win32 error {ctypes.get_last_error()})"
        )
    return WindowGeometry(
        window_id=window_id,
        left=int(origin.x),
        top=int(origin.y),
        width=int(rect.right - rect.left),
        height=int(rect.bottom - rect.top),
    )
