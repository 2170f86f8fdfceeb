"""From one capture (a telemetry record and a screenshot) to the parts of an observation.

:class:`ObservationBuilder` keeps the history of frames or LIDAR scans of one episode and returns
the observation *parts* — every entry of :func:`tm_gym.core.settings.observation_space` except
``"actions"``, in the order of :attr:`ObservationBuilder.keys` (rtgym appends the action buffer
itself):

* ``speed`` (km/h), ``gear`` and ``rpm`` come from the telemetry record;
* ``images`` stacks the last ``img_hist_len`` agent frames
  (:func:`tm_gym.preprocess.agent_frame` of the screenshot), oldest first;
* ``lidar`` stacks the last ``img_hist_len`` scans: the backend's exact LIDAR when it has one
  (the simulator), else :func:`tm_gym.preprocess.pixel_lidar` of the screenshot;
* ``progress`` is the fraction of the reference covered, given by the reward.

At reset the history is filled with copies of the first capture, as TMRL does. Every part is
clipped to its space's bounds, so observations always lie in the observation space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from tm_gym.core.geometry import LIDAR_BEAMS, LIDAR_RANGE, CameraSpec
from tm_gym.core.settings import MAX_GEAR, MAX_RPM, MAX_SPEED_KMH, EnvSettings, observation_space
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import CaptureError
from tm_gym.preprocess import agent_frame, pixel_lidar

__all__ = ["LidarSource", "ObservationBuilder"]

LidarSource = Callable[[], NDArray[np.float32]]
"""A callable returning the current (19,) LIDAR scan in metres (the simulator's exact LIDAR)."""


def _scalar(value: float, lo: float, hi: float) -> NDArray[np.float32]:
    return np.array([min(max(value, lo), hi)], dtype=np.float32)


class ObservationBuilder:
    """Observation parts of one car, with their history (see the module docstring).

    Args:
        settings: the environment's settings (obs_type, sizes, history length).
        lidar_source: the backend's exact LIDAR, if it has one; otherwise LIDAR observations
            are read from the screenshot.
        camera: the game's chase camera, for the pixel LIDAR (default :class:`CameraSpec`).
    """

    def __init__(
        self,
        settings: EnvSettings,
        *,
        lidar_source: LidarSource | None = None,
        camera: CameraSpec | None = None,
    ) -> None:
        self.settings = settings
        self.lidar_source = lidar_source
        self.camera = camera or CameraSpec()
        self.keys: tuple[str, ...] = tuple(
            k for k in observation_space(settings).spaces if k != "actions"
        )
        s = settings
        self._images = s.obs_type == "images"
        self._frames = np.zeros((s.image_channels, s.img_size, s.img_size), np.uint8)
        self._scans = np.zeros((s.img_hist_len, LIDAR_BEAMS), np.float32)

    @property
    def needs_frame(self) -> bool:
        """Whether a capture needs a screenshot (images, or LIDAR without an exact source)."""
        return self._images or self.lidar_source is None

    def space(self) -> spaces.Tuple:
        """The parts' spaces, in the order of :attr:`keys` (what rtgym's interface returns)."""
        d = observation_space(self.settings).spaces
        return spaces.Tuple(tuple(d[k] for k in self.keys))

    # -- captures ------------------------------------------------------------------------
    def _frame(self, rgb: NDArray[np.uint8] | None) -> NDArray[np.uint8]:
        if rgb is None:
            raise CaptureError("an image observation needs a screenshot, but none was captured")
        s = self.settings
        return agent_frame(rgb, s.img_size, s.grayscale)

    def _scan(self, rgb: NDArray[np.uint8] | None) -> NDArray[np.float32]:
        if self.lidar_source is not None:
            scan = np.asarray(self.lidar_source(), dtype=np.float32)
        elif rgb is None:
            raise CaptureError("a pixel LIDAR needs a screenshot, but none was captured")
        else:
            scan = pixel_lidar(rgb, self.camera, max_range=LIDAR_RANGE).distances
        if scan.shape != (LIDAR_BEAMS,):
            raise CaptureError(
                f"LIDAR scan of shape {scan.shape}; expected ({LIDAR_BEAMS},) distances in metres"
            )
        return np.clip(scan, 0.0, LIDAR_RANGE)

    def reset(
        self, rec: TelemetryRecord, rgb: NDArray[np.uint8] | None, progress: float = 0.0
    ) -> list[NDArray[Any]]:
        """Start a new history from the first capture (copies of it fill the history)."""
        if self._images:
            self._frames[:] = np.tile(self._frame(rgb), (self.settings.img_hist_len, 1, 1))
        else:
            self._scans[:] = self._scan(rgb)[None, :]
        return self._parts(rec, progress)

    def update(
        self, rec: TelemetryRecord, rgb: NDArray[np.uint8] | None, progress: float = 0.0
    ) -> list[NDArray[Any]]:
        """Push a new capture into the history; returns the parts."""
        if self._images:
            new = self._frame(rgb)
            k = new.shape[0]
            self._frames[:-k] = self._frames[k:]
            self._frames[-k:] = new
        else:
            self._scans[:-1] = self._scans[1:]
            self._scans[-1] = self._scan(rgb)
        return self._parts(rec, progress)

    def zeros(self) -> list[NDArray[Any]]:
        """Placeholder parts (every value the lowest the space allows, or 0)."""
        out: list[NDArray[Any]] = []
        for sp in self.space().spaces:
            assert isinstance(sp, spaces.Box)
            out.append(np.clip(np.zeros(sp.shape, sp.dtype), sp.low, sp.high).astype(sp.dtype))
        return out

    def _parts(self, rec: TelemetryRecord, progress: float) -> list[NDArray[Any]]:
        vals: dict[str, NDArray[Any]] = {
            "speed": _scalar(rec.speed_kmh, -MAX_SPEED_KMH, MAX_SPEED_KMH),
        }
        if self._images:
            vals["gear"] = _scalar(float(rec.gear), 0.0, MAX_GEAR)
            vals["rpm"] = _scalar(rec.rpm, 0.0, MAX_RPM)
            vals["images"] = self._frames.copy()
        else:
            vals["lidar"] = self._scans.copy()
            vals["progress"] = _scalar(progress, 0.0, 1.0)
        return [vals[k] for k in self.keys]
