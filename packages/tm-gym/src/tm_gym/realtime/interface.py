"""The rtgym interface every real-time backend is driven through.

A :class:`RealtimeBackend` bundles the three ports of :mod:`tm_gym.core.ports` (telemetry, frames,
controller) with what the interface must know about them: how long to wait after a respawn (the
game's start lights: 1.5 s; the simulator: 0), and optionally an exact LIDAR, the number of
checkpoints and a wall-contact counter.

:class:`TMRealtimeInterface` is an :class:`rtgym.RealTimeGymInterface` over a backend, so it can
be used with rtgym directly (``DEFAULT_CONFIG_DICT`` with ``"interface"`` set to a callable
returning it). What it does at each rtgym call:

* ``send_control(a)`` → ``controller.apply(a)``;
* ``reset()`` → release the inputs, respawn, [after a finish: close the finish pop-up, see
  below], wait ``respawn_wait``, wait for fresh telemetry, capture, localise the car on the
  reference; returns the observation parts and the info;
* ``get_obs_rew_terminated_info()`` → capture (telemetry, then the screenshot and/or LIDAR),
  progress reward (:class:`~tm_gym.reward.ProgressReward` on the car's position), terminated at
  the finish or after too long without progress;
* ``wait()`` → release the inputs (rtgym calls it when an episode ends, with ``wait_on_done``).

The finish pop-up. After a finish the game shows its end-of-race menu, and until it is closed
the respawn input does nothing (the telemetry's ``finished`` flag stays 1 meanwhile). TMRL closes
it at the end of every episode: respawn, sleep 0.5 s, press the gamepad's A (or click the
"Improve" button with the mouse), and its next reset respawns again. Here the reset that follows
an episode whose last telemetry record said ``finished`` does the same — release, respawn, wait
``RealtimeBackend.finish_settle`` (0.5 s), ``controller.dismiss_finish()``, respawn again — when
``RealtimeBackend.finish_popup`` is ``"dismiss"`` (the default) and the controller is a
:class:`~tm_gym.core.ports.FinishDismisser` (the gamepad and the keyboard are; a person driving,
the simulator's ports and a replay are not, and nothing is done for them). After a crash, a
timeout or a truncated episode nothing is pressed. ``finish_popup="ignore"`` leaves the pop-up to
someone else; a reset that still sees ``finished`` logs a warning that says so.

With ``record_captures`` set (what a recording needs), every capture also grabs the screenshot
and the info returned to rtgym carries it under :data:`CAPTURE_KEY` (a
:class:`~tm_gym.core.capture.Capture`: record, screenshot, exact LIDAR scan, position);
:class:`~tm_gym.realtime.env.TrackManiaRealtimeEnv` takes it out of the info again.

rtgym calls these from its own thread, where an exception would kill the thread and leave the
caller waiting forever. With ``defer_errors=True`` (how :class:`~tm_gym.realtime.env.\
TrackManiaRealtimeEnv` uses it) the interface keeps the first error, ends the episode with a
placeholder observation, and the environment re-raises the error in the caller's thread
(:meth:`TMRealtimeInterface.pop_error`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from rtgym import RealTimeGymInterface

from tm_gym.core.actions import action_space
from tm_gym.core.capture import Capture
from tm_gym.core.config import ConfigError
from tm_gym.core.geometry import CameraSpec
from tm_gym.core.info import NO_LAP, RecordInfo
from tm_gym.core.ports import Controller, FinishDismisser, FrameSource, TelemetrySource
from tm_gym.core.settings import EnvSettings
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import CaptureError
from tm_gym.realtime.observation import LidarSource, ObservationBuilder
from tm_gym.reward import ProgressReward, ReferenceTrajectory, RewardConfig

__all__ = [
    "CAPTURE_KEY",
    "FINISH_POPUP_MODES",
    "FINISH_SETTLE",
    "FinishPopup",
    "RealtimeBackend",
    "TMRealtimeInterface",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Obs = list[NDArray[Any]]
Info = dict[str, Any]


def _none() -> None:
    return None


CAPTURE_KEY = "_capture"
"""The info key under which a capture travels through rtgym when ``record_captures`` is set."""

GAME_RESPAWN_WAIT = 1.5
"""Seconds the game needs after a respawn before the car can drive (the start lights)."""

FinishPopup = Literal["dismiss", "ignore"]
FINISH_POPUP_MODES: tuple[FinishPopup, ...] = ("dismiss", "ignore")
"""What a reset after a finish does about the game's finish pop-up (see the module docstring)."""
FINISH_SETTLE = 0.5
"""Seconds between the respawn and the dismissal of the finish pop-up (TMRL's figure)."""


@dataclass(frozen=True)
class RealtimeBackend:
    """The ports of one real-time car, and what the interface must know about them.

    The backend owns its ports: :meth:`open` opens all three (closing those already open if one
    fails), :meth:`close` closes all three (idempotent; the first error is re-raised once every
    port had its chance to close).
    """

    telemetry: TelemetrySource
    frames: FrameSource
    controller: Controller
    respawn_wait: float = GAME_RESPAWN_WAIT
    """Seconds to wait after a respawn (1.5 for the game's start lights, 0 for the simulator)."""
    lidar_source: LidarSource | None = None
    """An exact LIDAR (the simulator's); ``None``: LIDAR is read from the screenshots."""
    camera: CameraSpec | None = None
    """The chase camera the pixel LIDAR assumes (default :class:`CameraSpec`)."""
    checkpoints_total: int = -1
    """Checkpoints on the track (-1 when unknown), reported in ``info``."""
    wall_contacts: Callable[[], int] | None = None
    """A wall-contact counter since the respawn (``info["wall_contacts"]`` is -1 without one)."""
    finish_popup: FinishPopup = "dismiss"
    """``"dismiss"``: the reset after a finish closes the game's finish pop-up (when the
    controller is a :class:`~tm_gym.core.ports.FinishDismisser`); ``"ignore"``: it does not."""
    finish_settle: float = FINISH_SETTLE
    """Seconds between the respawn and the dismissal of the finish pop-up (0: no wait)."""

    def __post_init__(self) -> None:
        w: object = self.respawn_wait
        if not (isinstance(w, (int, float)) and math.isfinite(w) and 0 <= w <= 60):
            raise ValueError(f"respawn_wait={w!r}: expected seconds in [0, 60]")
        if self.finish_popup not in FINISH_POPUP_MODES:
            raise ConfigError(
                f"finish_popup={self.finish_popup!r}: expected one of {list(FINISH_POPUP_MODES)} "
                "('dismiss' closes the game's end-of-race menu at the next reset, 'ignore' "
                "leaves it)"
            )
        s: object = self.finish_settle
        if isinstance(s, bool) or not (
            isinstance(s, (int, float)) and math.isfinite(s) and 0 <= s <= 10
        ):
            raise ConfigError(
                f"finish_settle={s!r}: expected seconds in [0, 10] (TMRL waits 0.5; 0 skips "
                "the wait)"
            )

    @property
    def dismisses_finish(self) -> bool:
        """Whether a reset after a finish closes the finish pop-up (the setting allows it and
        the controller can)."""
        return self.finish_popup == "dismiss" and isinstance(self.controller, FinishDismisser)

    @property
    def ports(self) -> tuple[TelemetrySource, FrameSource, Controller]:
        return (self.telemetry, self.frames, self.controller)

    def open(self) -> None:
        opened: list[Any] = []
        try:
            for p in self.ports:
                p.open()
                opened.append(p)
        except BaseException:
            for p in reversed(opened):
                with contextlib.suppress(Exception):
                    p.close()
            raise

    def close(self) -> None:
        first: BaseException | None = None
        for p in reversed(self.ports):  # the controller first: release the inputs early
            try:
                p.close()
            except Exception as e:  # keep closing the others
                logger.warning("closing %s failed: %s", type(p).__name__, e)
                first = first or e
        if first is not None:
            raise first

    def __enter__(self) -> RealtimeBackend:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TMRealtimeInterface(RealTimeGymInterface):
    """rtgym interface of a :class:`RealtimeBackend` (see the module docstring).

    Args:
        backend: the ports; they must be open before rtgym calls ``reset``.
        settings: observation and timing settings (the spaces of
            :func:`tm_gym.core.settings.observation_space`, without the action buffer).
        reference: the reward's reference trajectory: (K, 2) ground points ``(x, z)`` or
            (K, 3) game points ``(x, y, z)``; the car's position is matched column for column.
        reward_config: reward settings (TMRL's defaults).
        defer_errors: keep errors raised in rtgym's thread for :meth:`pop_error` instead of
            raising them there.
        keep_frames: keep the last screenshot for :meth:`render` even when the observation
            does not need one.
    """

    def __init__(
        self,
        backend: RealtimeBackend,
        settings: EnvSettings,
        reference: ReferenceTrajectory,
        reward_config: RewardConfig | None = None,
        *,
        defer_errors: bool = False,
        keep_frames: bool = False,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.reference = reference
        self.reward = ProgressReward(reference, 1, reward_config)
        self.builder = ObservationBuilder(
            settings, lidar_source=backend.lidar_source, camera=backend.camera
        )
        self.defer_errors = defer_errors
        self.keep_frames = keep_frames
        self.record_captures = False
        """Grab every screenshot and pass each capture in the info (see the module docstring)."""
        self._dims = reference.points.shape[1]
        self._pos = np.zeros((1, self._dims))
        self._finished = np.zeros(1, dtype=bool)
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._last_obs: Obs | None = None
        self._last_info: Info | None = None
        self._last_frame: NDArray[np.uint8] | None = None
        self._t_reset = time.perf_counter()
        self._infos = RecordInfo(backend.checkpoints_total)

    # -- rtgym API -----------------------------------------------------------------------
    def get_observation_space(self) -> spaces.Tuple:
        return self.builder.space()

    def get_action_space(self) -> spaces.Box:
        return action_space()

    def get_default_action(self) -> NDArray[np.float32]:
        return np.zeros(3, dtype=np.float32)

    def send_control(self, control: NDArray[np.float32] | None) -> None:
        if control is None:
            return
        a = np.asarray(control, dtype=np.float32)
        self._guard(lambda: self.backend.controller.apply(a), _none)

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, Info]:
        return self._guard(self._reset, lambda: (self._placeholder_obs(), self._placeholder_info()))

    def get_obs_rew_terminated_info(self) -> tuple[Obs, float, bool, Info]:
        return self._guard(
            self._observe, lambda: (self._placeholder_obs(), 0.0, True, self._placeholder_info())
        )

    def wait(self) -> None:
        # released even after an error: a car must not keep its inputs pressed
        self._guard(self.backend.controller.release, _none, always=True)

    def render(self) -> NDArray[np.uint8] | None:
        f = self._last_frame
        return None if f is None else f.copy()

    # -- errors --------------------------------------------------------------------------
    def _guard(self, fn: Callable[[], T], fallback: Callable[[], T], *, always: bool = False) -> T:
        """``fn()``; with ``defer_errors``, an error is kept and ``fallback()`` returned, and
        after an error nothing runs (unless ``always``) until :meth:`pop_error` was called."""
        if not self.defer_errors:
            return fn()
        with self._error_lock:
            failed = self._error is not None
        if failed and not always:
            return fallback()
        try:
            return fn()
        except Exception as e:
            with self._error_lock:
                if self._error is None:
                    self._error = e
            logger.debug("deferred %s raised in rtgym's thread: %s", type(e).__name__, e)
            return fallback()

    def pop_error(self) -> BaseException | None:
        """The first error raised in rtgym's thread since the last call (and forget it)."""
        with self._error_lock:
            e, self._error = self._error, None
        return e

    def _placeholder_obs(self) -> Obs:
        return [p.copy() for p in self._last_obs] if self._last_obs else self.builder.zeros()

    def _placeholder_info(self) -> Info:
        return dict(self._last_info) if self._last_info else {}

    # -- captures ------------------------------------------------------------------------
    def _reset(self) -> tuple[Obs, Info]:
        b = self.backend
        finished = bool(self._finished[0])  # how the previous episode ended
        b.controller.release()
        b.controller.respawn()
        if finished:
            self._dismiss_finish_popup()
        self._finished[0] = False
        if b.respawn_wait > 0:
            time.sleep(b.respawn_wait)
        self._t_reset = time.perf_counter()
        rec = b.telemetry.wait_fresh()
        if rec.finished:
            self._warn_still_finished()
        self._infos.reset()
        rgb = self._grab()
        self._set_pos(rec)
        self.reward.reset(self._pos)
        obs = self.builder.reset(rec, rgb, float(self.reward.progress[0]))
        info = self._info(rec, failed=False)
        info["lap_time"] = NO_LAP
        self._last_obs, self._last_info = obs, info
        return [p.copy() for p in obs], self._with_capture(info, rec, rgb, obs)

    def _dismiss_finish_popup(self) -> None:
        """After a finish: settle, close the pop-up, respawn again (see the module docstring)."""
        b = self.backend
        ctl = b.controller
        if not (b.dismisses_finish and isinstance(ctl, FinishDismisser)):
            return
        if b.finish_settle > 0:
            time.sleep(b.finish_settle)
        ctl.dismiss_finish()
        logger.debug("dismissed the finish pop-up with %s", type(ctl).__name__)
        b.controller.respawn()

    def _warn_still_finished(self) -> None:
        b = self.backend
        if b.finish_popup != "dismiss":
            fix = "finish_popup='ignore' leaves it: close it by hand or use finish_popup='dismiss'"
        elif not isinstance(b.controller, FinishDismisser):
            fix = f"{type(b.controller).__name__} cannot close it: close it by hand"
        else:
            fix = (
                "dismissing it did not work: check that the game window shows the menu's "
                "'Improve' button at finish_button (fractions of the client area), or raise "
                "finish_settle"
            )
        logger.warning(
            "after the reset the telemetry still says 'finished': the game's finish pop-up is "
            "probably still open, and the respawn did nothing (%s)",
            fix,
        )

    def _observe(self) -> tuple[Obs, float, bool, Info]:
        rec = self.backend.telemetry.latest()
        rgb = self._grab()
        self._set_pos(rec)
        self._finished[0] = rec.finished
        r, term = self.reward.update(self._pos, self._finished)
        terminated = bool(term[0])
        obs = self.builder.update(rec, rgb, float(self.reward.progress[0]))
        info = self._info(rec, failed=terminated and not rec.finished)
        self._last_obs, self._last_info = obs, info
        return (
            [p.copy() for p in obs],
            float(r[0]),
            terminated,
            self._with_capture(info, rec, rgb, obs),
        )

    def _with_capture(
        self, info: Info, rec: TelemetryRecord, rgb: NDArray[np.uint8] | None, obs: Obs
    ) -> Info:
        out = dict(info)
        if self.record_captures:
            scan = None
            if self.backend.lidar_source is not None and "lidar" in self.builder.keys:
                scan = obs[self.builder.keys.index("lidar")][-1].copy()
            out[CAPTURE_KEY] = Capture(
                rec, rgb, scan, None, np.array(rec.position, dtype=np.float64)
            )
        return out

    def _grab(self) -> NDArray[np.uint8] | None:
        if not (self.builder.needs_frame or self.keep_frames or self.record_captures):
            return None
        try:
            rgb = self.backend.frames.grab()
        except CaptureError:
            # A window that vanished usually means the game itself stopped (crashed, closed):
            # then the telemetry stops too, and its error says what to check. Wait for a fresh
            # record (this raises TelemetryError once the telemetry times out); if the telemetry
            # is alive, the window problem is the real one.
            self.backend.telemetry.wait_fresh()
            raise
        if self.keep_frames:
            self._last_frame = rgb
        return rgb

    def _set_pos(self, rec: TelemetryRecord) -> None:
        if self._dims == 2:
            self._pos[0] = (rec.x, rec.z)
        else:
            self._pos[0] = (rec.x, rec.y, rec.z)

    def _info(self, rec: TelemetryRecord, *, failed: bool) -> Info:
        contacts = self.backend.wall_contacts
        return self._infos.info(
            rec,
            progress=float(self.reward.progress[0]),
            failed=failed,
            # TMRL's layout has no race time: estimate it
            elapsed=lambda: time.perf_counter() - self._t_reset,
            wall_contacts=-1 if contacts is None else int(contacts()),
        )
