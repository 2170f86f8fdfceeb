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

from tm_gym.game.capture.geometry import WindowGeometry
from tm_gym.game.capture.screen import ScreenCapture, find_window, window_geometry

__all__ = ["ScreenCapture", "WindowGeometry", "find_window", "window_geometry"]
