"""The simulator as a real-time backend: one car whose physics follow the wall clock.

:class:`WallClockSim` wraps a one-car :class:`~tm_gym.sim.simulator.Simulator`. It has no
thread: every access first *catches up* — it advances the physics, in whole 10 ms substeps, to
the time its clock reads now, under the controls applied at that moment — then answers. A
substep runs once it has fully elapsed, so a control change takes effect from the substep in
progress. All of it happens under one lock, so rtgym's thread and the caller's thread may use it
together. Given the same clock readings it computes the same thing, which is how it is tested
(with a fake clock).

Three ports adapt it to :mod:`tm_gym.core.ports` (each a context manager; none holds a real
resource, but they follow the ports' open/close discipline):

* :class:`SimTelemetry` — :class:`~tm_gym.core.telemetry.TelemetryRecord` in game axes
  (x, y = 0 up, z = the simulator's y), with the v2 fields (race time, checkpoint, velocity,
  yaw) filled; a record is *fresh* when the physics advanced since the previous read;
* :class:`SimFrames` — the 256×128 RGB driver's view (what the game window shows);
* :class:`SimController` — applies actions, respawns, releases.

:func:`tm_gym.backends.sim.sim_backend` wires the three, plus the exact LIDAR, into the
real-time layer's :class:`~tm_gym.realtime.interface.RealtimeBackend`. A port alone::

    sim = WallClockSim("default")
    with SimController(sim) as controller:
        controller.apply(np.array([1.0, 0.0, 0.0], np.float32))
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import (
    CaptureError,
    ControllerError,
    EnvStateError,
    InvalidActionError,
    TelemetryError,
    TMGymError,
)
from tm_gym.sim.physics import CarParams
from tm_gym.sim.simulator import PHYSICS_DT, Simulator
from tm_gym.sim.track import Track

__all__ = ["SimController", "SimFrames", "SimTelemetry", "WallClockSim"]

Clock = Callable[[], float]
_P = TypeVar("_P", bound="_SimPort")
_EPS = 1e-9


class WallClockSim:
    """One simulated car whose physics advance with ``clock()`` (seconds).

    Args:
        track: a :class:`~tm_gym.sim.track.Track`, a built-in name, ``gen:SEED`` or a path.
        params: car physics constants.
        clock: monotonic clock in seconds (default :func:`time.perf_counter`); tests pass a fake.

    The car waits at the start, frozen, until :meth:`start`; from then on its physics follow the
    clock. :meth:`respawn` puts it back at the start and restarts its clock.
    """

    def __init__(
        self,
        track: Track | str,
        *,
        params: CarParams | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.sim = Simulator(track, 1, params=params, physics_dt=PHYSICS_DT)
        self.track = self.sim.track
        self.dt = PHYSICS_DT
        self._clock = clock
        self._lock = threading.RLock()
        self._controls = np.zeros((1, 3))
        self._t0 = 0.0
        self._done = 0  # substeps simulated since the last (re)start
        self._epoch = 0  # number of (re)starts
        self._started = False

    # -- clock ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._started

    @property
    def clock(self) -> Clock:
        return self._clock

    def stamp(self) -> tuple[int, int]:
        """``(restarts, substeps simulated since the last restart)`` after catching up to now:
        it changes exactly when the physics advanced or the car respawned."""
        with self._lock:
            self._catch_up()
            return (self._epoch, self._done)

    def _catch_up(self) -> None:
        """Simulate every substep that has fully elapsed (lock held)."""
        if not self._started:
            return
        target = math.floor((self._clock() - self._t0) / self.dt + _EPS)
        n = target - self._done
        if n > 0:
            self.sim.step(self._controls, n)
            self._done = target

    def seconds_to_next_substep(self) -> float:
        """Time until the physics next advances (``inf`` before :meth:`start`)."""
        with self._lock:
            if not self._started:
                return math.inf
            self._catch_up()
            return max(self._t0 + (self._done + 1) * self.dt - self._clock(), 0.0)

    # -- control -------------------------------------------------------------------------
    def start(self) -> None:
        """Put the car at the start, at rest, with neutral controls, and start its clock."""
        with self._lock:
            self.sim.reset()
            self._controls[:] = 0.0
            self._t0 = self._clock()
            self._done = 0
            self._epoch += 1
            self._started = True

    def respawn(self) -> None:
        """Same as :meth:`start`: back to the start line, the race clock restarts at 0."""
        self.start()

    def set_controls(self, action: NDArray[np.floating[Any]]) -> None:
        """Apply ``[gas, brake, steer]`` from now on (values clipped to [-1, 1])."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (3,) or not np.all(np.isfinite(a)):
            raise InvalidActionError(
                f"controls {a.tolist()!r} of shape {a.shape}; expected 3 finite numbers "
                "[gas, brake, steer]"
            )
        with self._lock:
            self._catch_up()  # what has elapsed ran under the previous controls
            self._controls[0] = np.clip(a, -1.0, 1.0)

    @property
    def controls(self) -> NDArray[np.float64]:
        """The controls applied now (a copy)."""
        with self._lock:
            return self._controls[0].copy()

    # -- readings ------------------------------------------------------------------------
    def telemetry_record(self) -> TelemetryRecord:
        """The car's telemetry now, as the v2 plugin reports it (game axes, y up)."""
        return self.stamped_telemetry()[1]

    def stamped_telemetry(self) -> tuple[tuple[int, int], TelemetryRecord]:
        """:meth:`stamp` and :meth:`telemetry_record`, read together."""
        with self._lock:
            self._catch_up()
            return (self._epoch, self._done), self._record()

    def _record(self) -> TelemetryRecord:
        """The record of the current state (lock held)."""
        return self.sim.telemetry_record(0, controls=self._controls[0])

    def frame(self) -> NDArray[np.uint8]:
        """The 256×128 driver's view now, (128, 256, 3) uint8 RGB."""
        with self._lock:
            self._catch_up()
            return self.sim.render_rgb()[0]

    def exact_lidar(self) -> NDArray[np.float32]:
        """The exact LIDAR scan now: (19,) float32 metres, beam 0 left … 18 right."""
        with self._lock:
            self._catch_up()
            return self.sim.lidar()[0].copy()

    def wall_contacts(self) -> int:
        """Substeps spent touching a wall since the last (re)start."""
        with self._lock:
            self._catch_up()
            return int(self.sim.contacts[0])


class _SimPort:
    """Open/close bookkeeping shared by the three ports."""

    _what = "port"
    _error: type[TMGymError] = EnvStateError

    def __init__(self, sim: WallClockSim) -> None:
        self.sim = sim
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        """Start the simulated car if nobody did (idempotent)."""
        if not self.sim.started:
            self.sim.start()
        self._open = True

    def close(self) -> None:
        self._open = False

    def _check(self) -> None:
        if not self._open:
            raise self._error(
                f"the simulator's {self._what} is not open; call open() or use it in a `with` block"
            )

    def __enter__(self: _P) -> _P:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SimTelemetry(_SimPort):
    """:class:`~tm_gym.core.ports.TelemetrySource` over a :class:`WallClockSim`.

    Args:
        sim: the simulated car.
        timeout: default seconds :meth:`wait_fresh` waits before raising
            :class:`~tm_gym.error.TelemetryError` (the game client's default is 10 s).
        sleep: how to wait (tests with a fake clock pass one that advances it).
    """

    _what = "telemetry"
    _error = TelemetryError

    def __init__(
        self,
        sim: WallClockSim,
        *,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(sim)
        self.timeout = timeout
        self._sleep = sleep
        self._seen: tuple[int, int] | None = None  # stamp of the last record returned

    def _read(self) -> TelemetryRecord:
        self._seen, rec = self.sim.stamped_telemetry()
        return rec

    def latest(self) -> TelemetryRecord:
        """The car's telemetry now."""
        self._check()
        return self._read()

    def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
        """Wait until the physics advanced (or the car respawned) since the last read."""
        self._check()
        limit = self.timeout if timeout is None else timeout
        clock = self.sim.clock
        deadline = clock() + limit
        while self.sim.stamp() == self._seen:
            now = clock()
            if now >= deadline:
                raise TelemetryError(
                    f"no fresh simulator telemetry within {limit} s (substep {self._seen}); "
                    "is the simulated car started and its clock running?"
                )
            wait = self.sim.seconds_to_next_substep()
            self._sleep(min(max(wait, 1e-4), deadline - now))
        return self._read()


class SimFrames(_SimPort):
    """:class:`~tm_gym.core.ports.FrameSource` over a :class:`WallClockSim` (the 256×128 window)."""

    _what = "frame source"
    _error = CaptureError

    def grab(self) -> NDArray[np.uint8]:
        self._check()
        return self.sim.frame()


class SimController(_SimPort):
    """:class:`~tm_gym.core.ports.Controller` over a :class:`WallClockSim`."""

    _what = "controller"
    _error = ControllerError

    def apply(self, action: NDArray[np.float32]) -> None:
        self._check()
        self.sim.set_controls(action)

    def respawn(self) -> None:
        self._check()
        self.sim.respawn()

    def release(self) -> None:
        if self._open:
            self.sim.set_controls(np.zeros(3))

    def close(self) -> None:
        """Release the controls, then close (idempotent)."""
        if self._open:
            self.sim.set_controls(np.zeros(3))
        super().close()
