"""``tm-gym emulate``: the simulator as a stand-in for TrackMania 2020.

The emulator speaks the game's interfaces for real, so the live backend's code path can be run
end to end without the game:

* a real window titled like the game (default ``"Trackmania"``) whose client area shows the
  driver's view, re-drawn ``fps`` times per second;
* the OpenPlanet plugin's telemetry protocol on a TCP port (one record per drawn frame);
* the car driven by the keys the keyboard controller sends: Up/W gas, Down/S brake, Left/A and
  Right/D steer, BackSpace or Delete to respawn.

Physics follow the wall clock in 10 ms substeps. After a respawn the car is held for
``countdown`` seconds (the game's start lights; TMRL waits 1.5 s) and the race time starts when
it is released.

The finish pop-up, like the game's end-of-race menu: when the car crosses the finish line the
window shows a panel with an "IMPROVE" button centred on ``finish_button`` (fractions of the
client area; default :data:`~tm_gym.core.ports.FINISH_BUTTON`, the spot TMRL clicks). While it
shows, the car gets no inputs, the respawn keys do nothing and the telemetry keeps
``finished = 1``. A left click inside the button closes it and restarts the run (Improve = play
again), with the countdown. Only the mouse closes it: no key does (the gamepad's A cannot reach
the emulator, which reads the keyboard only). ``finish_popup=False`` turns the pop-up off.

:class:`EmulatorCore` holds everything but the window and is driven by ``tick()``;
:class:`TkEmulator` puts it in a Tk window.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.ports import FINISH_BUTTON
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.core.visuals import Visuals
from tm_gym.emulator.telemetry_server import TelemetryServer
from tm_gym.sim.physics import CarParams
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.track import Track
from tm_gym.sim.tracks import load_track

__all__ = [
    "KEYSYMS",
    "EmulatorConfig",
    "EmulatorCore",
    "PopupLayout",
    "TkEmulator",
    "controls_from_keys",
    "draw_finish_popup",
    "finish_popup_layout",
]

log = logging.getLogger(__name__)

KEYSYMS: dict[str, str] = {
    "Up": "up",
    "w": "up",
    "W": "up",
    "Down": "down",
    "s": "down",
    "S": "down",
    "Left": "left",
    "a": "left",
    "A": "left",
    "Right": "right",
    "d": "right",
    "D": "right",
    "BackSpace": "respawn",
    "Delete": "respawn",
}


def controls_from_keys(held: set[str] | frozenset[str]) -> NDArray[np.float64]:
    """[gas, brake, steer] from held logical keys (steer +1 = right)."""
    steer = (1.0 if "right" in held else 0.0) - (1.0 if "left" in held else 0.0)
    return np.array(
        [1.0 if "up" in held else 0.0, 1.0 if "down" in held else 0.0, steer], dtype=np.float64
    )


Rect = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in client-area pixels, right and bottom excluded."""

_GLYPHS: dict[str, tuple[str, ...]] = {
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "F": ("11111", "10000", "10000", "11110", "10000", "10000", "10000"),
    "H": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "I": ("11111", "00100", "00100", "00100", "00100", "00100", "11111"),
    "M": ("10001", "11011", "10101", "10101", "10001", "10001", "10001"),
    "N": ("10001", "11001", "10101", "10011", "10001", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "S": ("01111", "10000", "10000", "01110", "00001", "00001", "11110"),
    "V": ("10001", "10001", "10001", "10001", "10001", "01010", "00100"),
}
"""A 5×7 pixel font, just the letters of FINISH and IMPROVE."""

_PANEL = (24, 24, 32)
_BUTTON = (230, 200, 40)
_BUTTON_TEXT = (20, 20, 20)
_TITLE_TEXT = (240, 240, 240)


@dataclass(frozen=True)
class PopupLayout:
    """Where the finish pop-up is drawn, in client-area pixels."""

    panel: Rect
    button: Rect
    scale: int
    """Pixels per font pixel."""

    def in_button(self, x: int, y: int) -> bool:
        """Whether client pixel ``(x, y)`` is on the button."""
        left, top, right, bottom = self.button
        return left <= x < right and top <= y < bottom


def finish_popup_layout(width: int, height: int, at: tuple[float, float]) -> PopupLayout:
    """The pop-up of a ``width``×``height`` client area whose button is centred on ``at``
    (fractions across and down; pure). The button is about a quarter of the width and an eighth
    of the height, so TMRL's spots (52-57 % across, 59-60 % down) are all on it."""
    scale = max(1, min(width // 256, height // 128))
    cx, cy = int(at[0] * width), int(at[1] * height)
    bw = max(int(0.26 * width), 7 * 6 * scale + 4)
    bh = max(int(0.13 * height), 7 * scale + 4)
    button = (cx - bw // 2, cy - bh // 2, cx - bw // 2 + bw, cy - bh // 2 + bh)
    panel = (
        min(int(0.18 * width), button[0] - 4),
        min(int(0.22 * height), button[1] - 9 * scale - 4),
        max(int(0.82 * width), button[2] + 4),
        max(int(0.80 * height), button[3] + 4),
    )
    return PopupLayout(panel, button, scale)


def _fill(rgb: NDArray[np.uint8], rect: Rect, colour: tuple[int, int, int]) -> None:
    h, w = rgb.shape[:2]
    left, top, right, bottom = rect
    rgb[max(top, 0) : min(bottom, h), max(left, 0) : min(right, w)] = colour


def _text(
    rgb: NDArray[np.uint8], text: str, cx: int, cy: int, scale: int, colour: tuple[int, int, int]
) -> None:
    """Draw ``text`` (letters of :data:`_GLYPHS`) centred on ``(cx, cy)``."""
    x0 = cx - (len(text) * 6 - 1) * scale // 2
    y0 = cy - 7 * scale // 2
    for k, ch in enumerate(text):
        for row, bits in enumerate(_GLYPHS[ch]):
            for col, bit in enumerate(bits):
                if bit == "1":
                    x = x0 + (k * 6 + col) * scale
                    y = y0 + row * scale
                    _fill(rgb, (x, y, x + scale, y + scale), colour)


def draw_finish_popup(rgb: NDArray[np.uint8], layout: PopupLayout) -> NDArray[np.uint8]:
    """``rgb`` (H, W, 3) with the finish pop-up drawn over it, in place; returns it."""
    panel, button, scale = layout.panel, layout.button, layout.scale
    _fill(rgb, panel, _PANEL)
    _text(rgb, "FINISH", (panel[0] + panel[2]) // 2, button[1] - 5 * scale, scale, _TITLE_TEXT)
    _fill(rgb, button, _BUTTON)
    cx, cy = (button[0] + button[2]) // 2, (button[1] + button[3]) // 2
    _text(rgb, "IMPROVE", cx, cy, scale, _BUTTON_TEXT)
    return rgb


@dataclass(frozen=True)
class EmulatorConfig:
    """Settings of the emulator.

    ``visuals`` is the look of the window (colours, brightness, camera; see
    :class:`~tm_gym.core.visuals.Visuals`) and ``car_params`` the car's physics. A client that
    reads the window with the pixel LIDAR must assume the same camera:
    ``make_env(..., camera=config.visuals.camera())``.
    """

    track: str = "default"
    title: str = "Trackmania"
    host: str = "127.0.0.1"
    port: int = 9000
    protocol: int = 2
    width: int = 256
    height: int = 128
    fps: float = 60.0
    countdown: float = 1.5
    visuals: Visuals = field(default_factory=Visuals)
    car_params: CarParams = field(default_factory=CarParams)
    finish_popup: bool = True
    """Show the finish pop-up after a finish (see the module docstring)."""
    finish_button: tuple[float, float] = FINISH_BUTTON
    """Where the pop-up's button is centred: fractions (across, down) of the client area."""

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535):
            raise ValueError(f"port={self.port}: expected 0..65535 (0 picks a free port)")
        if self.protocol not in (1, 2):
            raise ValueError(f"protocol={self.protocol}: expected 1 (TMRL layout) or 2")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"window {self.width}x{self.height}: expected 16..4096 pixels")
        if not (1.0 <= self.fps <= 500.0):
            raise ValueError(f"fps={self.fps}: expected 1..500")
        if not (0.0 <= self.countdown <= 10.0):
            raise ValueError(f"countdown={self.countdown}: expected 0..10 seconds")
        fb: Any = self.finish_button
        if not (
            isinstance(fb, tuple)
            and len(fb) == 2
            and all(isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in fb)
        ):
            raise ValueError(
                f"finish_button={fb!r}: expected (across, down) fractions of the window, each "
                "in [0, 1], e.g. (0.55, 0.60)"
            )


class EmulatorCore:
    """Simulator + telemetry server + key state, advanced by :meth:`tick` on the wall clock."""

    def __init__(
        self, config: EmulatorConfig, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.config = config
        self.track: Track = load_track(config.track)
        self.sim = Simulator(self.track, 1, params=config.car_params, visuals=config.visuals)
        self.server = TelemetryServer(host=config.host, port=config.port, version=config.protocol)
        self._clock = clock
        self.held: set[str] = set()
        self._t_physics = 0.0
        self._hold_until = 0.0
        self.respawns = 0
        self.frames = 0
        self.popup_shown = False
        """Whether the finish pop-up is showing (set at the finish, cleared by its button)."""
        self.layout = finish_popup_layout(config.width, config.height, config.finish_button)

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        self.server.open()
        self.respawn()

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> EmulatorCore:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self.server.port

    # -- input -----------------------------------------------------------------------------
    def key_down(self, keysym: str) -> None:
        key = KEYSYMS.get(keysym)
        if key == "respawn":
            if self.popup_shown:  # like the game: the end-of-race menu swallows the respawn
                log.debug("respawn ignored: the finish pop-up is showing")
            else:
                self.respawn()
        elif key is not None:
            self.held.add(key)

    def key_up(self, keysym: str) -> None:
        key = KEYSYMS.get(keysym)
        if key is not None:
            self.held.discard(key)

    def click(self, x: int, y: int) -> bool:
        """A left click at client pixel ``(x, y)``. On the pop-up's button it closes the pop-up
        and restarts the run (returns True); anywhere else it does nothing (False)."""
        if not (self.popup_shown and self.layout.in_button(x, y)):
            return False
        log.info("finish pop-up closed (Improve): the run restarts")
        self.respawn()
        return True

    def respawn(self) -> None:
        """Back to the start, held for the countdown (closes the finish pop-up if it shows)."""
        now = self._clock()
        self.sim.reset()
        self._t_physics = now
        self._hold_until = now + self.config.countdown
        self.popup_shown = False
        self.respawns += 1

    # -- time ------------------------------------------------------------------------------
    def advance(self) -> None:
        """Advance the physics to the wall clock (whole substeps, current keys)."""
        now = self._clock()
        dt = self.sim.physics_dt
        if now < self._hold_until:  # start lights: the car waits, the race clock too
            self._t_physics = now
            return
        self._t_physics = max(self._t_physics, self._hold_until)
        n = math.floor((now - self._t_physics) / dt)
        if n > 0:
            n = min(n, 500)  # after a stall (window dragged...), do not fast-forward for ages
            held: set[str] | frozenset[str] = frozenset() if self.popup_shown else self.held
            self.sim.step(controls_from_keys(held)[None, :], n)
            self._t_physics = max(self._t_physics + n * dt, now - dt)
        if self.config.finish_popup and not self.popup_shown and bool(self.sim.finished[0]):
            self.popup_shown = True
            log.info("finish: the pop-up shows until its button is clicked")

    def record(self) -> TelemetryRecord:
        """The telemetry record of the car now (game axes: y up, z = simulator y)."""
        return self.sim.telemetry_record(0, version=self.config.protocol)

    def tick(self) -> NDArray[np.uint8]:
        """Advance, publish one telemetry record, and return the frame to draw (H, W, 3)."""
        self.advance()
        self.server.publish(self.record())
        self.frames += 1
        rgb = self.sim.render_rgb(self.config.width, self.config.height)[0]
        if self.popup_shown:
            rgb = draw_finish_popup(np.array(rgb, dtype=np.uint8), self.layout)
        return rgb


class TkEmulator:
    """The emulator in a Tk window (needs a display; under CI, Xvfb)."""

    def __init__(self, config: EmulatorConfig, *, port_file: str | None = None) -> None:
        self.config = config
        self.core = EmulatorCore(config)
        self.port_file = port_file
        self._pending_release: dict[str, int] = {}
        self._photo: Any = None

    def run(self, max_seconds: float | None = None) -> None:
        """Open the window and serve until it is closed (or ``max_seconds`` pass)."""
        import tkinter as tk

        cfg = self.config
        with self.core:
            root = tk.Tk()
            try:
                root.title(cfg.title)
                root.resizable(False, False)
                label = tk.Label(root, borderwidth=0, highlightthickness=0, bg="black")
                label.pack()
                root.bind("<KeyPress>", self._on_press)
                root.bind("<KeyRelease>", self._on_release)
                label.bind("<Button-1>", self._on_click)
                root.protocol("WM_DELETE_WINDOW", root.quit)
                # draw the first frame and wait until the window is on screen, so whoever waits
                # for the port file can find the window straight away
                self._show(label, self.core.tick())
                deadline = time.perf_counter() + 5.0
                root.update()
                while not root.winfo_viewable() and time.perf_counter() < deadline:
                    time.sleep(0.01)
                    root.update()
                if self.port_file:
                    with open(self.port_file, "w", encoding="utf-8") as f:
                        f.write(f"{self.core.port}\n")
                log.info(
                    "emulating %r: window %r, telemetry on %s:%d",
                    cfg.track,
                    cfg.title,
                    cfg.host,
                    self.core.port,
                )
                start = time.perf_counter()
                period_ms = max(1, int(1000 / cfg.fps))

                def frame() -> None:
                    self._apply_releases()
                    self._show(label, self.core.tick())
                    if max_seconds is not None and time.perf_counter() - start > max_seconds:
                        root.quit()
                        return
                    root.after(period_ms, frame)

                root.after(0, frame)
                root.after(50, root.focus_force)
                root.mainloop()
            finally:
                root.destroy()

    def _show(self, label: Any, rgb: NDArray[np.uint8]) -> None:
        import tkinter as tk

        header = f"P6 {rgb.shape[1]} {rgb.shape[0]} 255\n".encode()
        photo = tk.PhotoImage(data=header + rgb.tobytes(), format="PPM")
        label.configure(image=photo)
        self._photo = photo  # keep a reference, or Tk drops the image

    # X11 auto-repeat delivers KeyRelease+KeyPress pairs with the same timestamp while a key is
    # held: a release is applied only if no press of the same key with that timestamp follows.
    def _on_press(self, event: object) -> None:
        keysym = str(getattr(event, "keysym", ""))
        t = int(getattr(event, "time", 0))
        if self._pending_release.get(keysym) == t:
            del self._pending_release[keysym]
            return
        self._pending_release.pop(keysym, None)
        self.core.key_down(keysym)

    def _on_click(self, event: object) -> None:
        self.core.click(int(getattr(event, "x", -1)), int(getattr(event, "y", -1)))

    def _on_release(self, event: object) -> None:
        self._pending_release[str(getattr(event, "keysym", ""))] = int(getattr(event, "time", 0))

    def _apply_releases(self) -> None:
        for keysym in list(self._pending_release):
            self.core.key_up(keysym)
        self._pending_release.clear()
