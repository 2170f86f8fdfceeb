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

from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.core.visuals import Visuals
from tm_gym.emulator.telemetry_server import TelemetryServer
from tm_gym.sim.physics import CarParams
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.track import Track
from tm_gym.sim.tracks import load_track

__all__ = ["KEYSYMS", "EmulatorConfig", "EmulatorCore", "TkEmulator", "controls_from_keys"]

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
            self.respawn()
        elif key is not None:
            self.held.add(key)

    def key_up(self, keysym: str) -> None:
        key = KEYSYMS.get(keysym)
        if key is not None:
            self.held.discard(key)

    def respawn(self) -> None:
        """Back to the start, held for the countdown."""
        now = self._clock()
        self.sim.reset()
        self._t_physics = now
        self._hold_until = now + self.config.countdown
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
            self.sim.step(controls_from_keys(self.held)[None, :], n)
            self._t_physics = max(self._t_physics + n * dt, now - dt)

    def record(self) -> TelemetryRecord:
        """The telemetry record of the car now (game axes: y up, z = simulator y)."""
        return self.sim.telemetry_record(0, version=self.config.protocol)

    def tick(self) -> NDArray[np.uint8]:
        """Advance, publish one telemetry record, and return the frame to draw (H, W, 3)."""
        self.advance()
        self.server.publish(self.record())
        self.frames += 1
        return self.sim.render_rgb(self.config.width, self.config.height)[0]


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

    def _on_release(self, event: object) -> None:
        self._pending_release[str(getattr(event, "keysym", ""))] = int(getattr(event, "time", 0))

    def _apply_releases(self) -> None:
        for keysym in list(self._pending_release):
            self.core.key_up(keysym)
        self._pending_release.clear()
