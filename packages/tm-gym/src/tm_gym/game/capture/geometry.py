"""Where a window's picture is on the screen: :class:`WindowGeometry`, shared by the platforms."""

from __future__ import annotations

from dataclasses import dataclass

from tm_gym.error import CaptureError

__all__ = ["HOW_TO_START", "WindowGeometry"]

HOW_TO_START = (
    "start TrackMania (or `tm-gym emulate`), or pass window_title=... with its exact title"
)
"""The end of every "no such window" message: what brings the window up."""


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
