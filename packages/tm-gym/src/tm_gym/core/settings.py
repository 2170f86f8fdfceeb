"""Settings shared by every backend, the names they go by, and the observation space they imply.

* :class:`EnvSettings` — observation and timing settings, validated on construction;
* the choices a caller spells as strings, each a ``Literal`` type for type checkers and a tuple
  for run-time checks: :data:`ObsType` / :data:`OBS_TYPES`, :data:`Backend` / :data:`BACKENDS`,
  :data:`ControllerKind` / :data:`CONTROLLERS`;
* the environments' keyword arguments that are settings (:data:`SETTING_NAMES`) and those a
  replay may change (:data:`OBSERVATION_SETTINGS`), read from :class:`EnvSettings` itself;
* :func:`observation_space` — the Dict space of a :class:`EnvSettings` (the action space is in
  :mod:`tm_gym.core.actions`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from tm_gym.core.geometry import LIDAR_BEAMS, LIDAR_RANGE

__all__ = [
    "BACKENDS",
    "CONTROLLERS",
    "MAX_GEAR",
    "MAX_RPM",
    "MAX_SPEED_KMH",
    "OBSERVATION_SETTINGS",
    "OBS_TYPES",
    "SETTING_NAMES",
    "Backend",
    "ControllerKind",
    "EnvSettings",
    "ObsType",
    "observation_space",
    "settings_from",
]

ObsType = Literal["images", "lidar", "lidar_progress"]
OBS_TYPES: tuple[ObsType, ...] = ("images", "lidar", "lidar_progress")
"""``images``: speed, gear, rpm and frames; ``lidar``: speed and LIDAR scans; ``lidar_progress``:
the same plus the fraction of the reference covered."""
Backend = Literal["game", "sim", "replay"]
BACKENDS: tuple[Backend, ...] = ("game", "sim", "replay")
"""What ``make_env(backend=...)`` drives: the live game (or the emulator), the simulator, a
recording."""
ControllerKind = Literal["gamepad", "keyboard", "none"]
CONTROLLERS: tuple[ControllerKind, ...] = ("gamepad", "keyboard", "none")
"""How a real-time game backend sends inputs: a virtual gamepad, the keyboard, or nothing (a
person drives)."""
MAX_SPEED_KMH = 1000.0
MAX_RPM = 12000.0
MAX_GEAR = 5.0


@dataclass(frozen=True)
class EnvSettings:
    """Observation and timing settings; validated on construction."""

    obs_type: str = "images"
    img_size: int = 64
    img_hist_len: int = 4
    grayscale: bool = True
    act_buf_len: int = 2
    time_step_duration: float = 0.05
    start_obs_capture: float = 0.04
    ep_max_length: int = 1000

    def __post_init__(self) -> None:
        if self.obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type={self.obs_type!r}: expected one of {list(OBS_TYPES)}")
        for name, lo, hi in (
            ("img_size", 8, 512),
            ("img_hist_len", 1, 64),
            ("act_buf_len", 1, 64),
            ("ep_max_length", 1, 10**9),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name}={v!r}: expected an integer in [{lo}, {hi}]")
        if not isinstance(self.grayscale, bool):
            raise ValueError(f"grayscale={self.grayscale!r}: expected True or False")
        d: object = self.time_step_duration
        c: object = self.start_obs_capture
        if not (isinstance(d, (int, float)) and math.isfinite(d) and 0 < d <= 1.0):
            raise ValueError(f"time_step_duration={d!r}: expected seconds in (0, 1]")
        if not (
            isinstance(c, (int, float)) and math.isfinite(c) and 0 < c <= self.time_step_duration
        ):
            raise ValueError(
                f"start_obs_capture={c!r}: expected seconds in (0, time_step_duration={d}]"
            )

    @property
    def image_channels(self) -> int:
        return self.img_hist_len * (1 if self.grayscale else 3)


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EnvSettings))
"""The environments' keyword arguments that make up an :class:`EnvSettings`."""
OBSERVATION_SETTINGS: tuple[str, ...] = tuple(
    n for n in SETTING_NAMES if n not in ("time_step_duration", "start_obs_capture")
)
"""The settings a replay may change: what the observation is built of, not the recorded timing."""


def settings_from(kwargs: Mapping[str, Any]) -> EnvSettings:
    """The :class:`EnvSettings` of the setting names in ``kwargs`` (other keys are ignored)."""
    return EnvSettings(**{k: v for k, v in kwargs.items() if k in SETTING_NAMES})


def _scalar(lo: float, hi: float) -> spaces.Box:
    return spaces.Box(lo, hi, shape=(1,), dtype=np.float32)


def observation_space(s: EnvSettings) -> spaces.Dict:
    """The Dict observation space of ``s`` (channel-first uint8 frames)."""
    acts = spaces.Box(-1.0, 1.0, shape=(s.act_buf_len, 3), dtype=np.float32)
    if s.obs_type == "images":
        return spaces.Dict(
            {
                "speed": _scalar(-MAX_SPEED_KMH, MAX_SPEED_KMH),
                "gear": _scalar(0.0, MAX_GEAR),
                "rpm": _scalar(0.0, MAX_RPM),
                "images": spaces.Box(
                    0, 255, shape=(s.image_channels, s.img_size, s.img_size), dtype=np.uint8
                ),
                "actions": acts,
            }
        )
    d: dict[str, spaces.Space[Any]] = {
        "speed": _scalar(-MAX_SPEED_KMH, MAX_SPEED_KMH),
        "lidar": spaces.Box(
            0.0, LIDAR_RANGE, shape=(s.img_hist_len, LIDAR_BEAMS), dtype=np.float32
        ),
        "actions": acts,
    }
    if s.obs_type == "lidar_progress":
        d["progress"] = _scalar(0.0, 1.0)
    return spaces.Dict(d)
