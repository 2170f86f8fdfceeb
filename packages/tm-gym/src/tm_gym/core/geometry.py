"""Camera and LIDAR geometry shared by the simulator and the game's screenshot pipeline.

* :class:`CameraSpec` — where the chase camera sits relative to the car; the simulator renders
  through it (:mod:`tm_gym.sim.camera`) and the pixel LIDAR inverts it
  (:mod:`tm_gym.preprocess`). The game window is :data:`WINDOW_WIDTH` × :data:`WINDOW_HEIGHT`.
* The LIDAR: :data:`LIDAR_BEAMS` beams over the forward half-plane, beam ``k`` pointing
  :data:`LIDAR_ANGLES_DEG` ``[k]`` = ``90° − 10°·k`` from the car's heading (counter-clockwise
  positive: beam 0 straight left, 9 straight ahead, 18 straight right), each a distance in
  metres capped at :data:`LIDAR_RANGE`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LIDAR_ANGLES_DEG",
    "LIDAR_BEAMS",
    "LIDAR_RANGE",
    "WINDOW_HEIGHT",
    "WINDOW_WIDTH",
    "CameraSpec",
]

WINDOW_WIDTH = 256
"""Width of the game window's client area TMRL's image environment uses, pixels."""
WINDOW_HEIGHT = 128
"""Its height, pixels."""

LIDAR_BEAMS = 19
LIDAR_RANGE = 150.0
"""Longest LIDAR distance, metres."""
LIDAR_ANGLES_DEG: NDArray[np.float64] = 90.0 - 10.0 * np.arange(LIDAR_BEAMS, dtype=np.float64)
"""Direction of each beam from the car's heading, degrees, counter-clockwise positive."""


@dataclass(frozen=True)
class CameraSpec:
    """Chase camera placement (metres, degrees), relative to the car.

    The field of view is that of the game window (``window_aspect`` = width / height); frames of
    another shape are the window squashed, as when TMRL resizes 256×128 to 64×64.
    """

    height: float = 2.6
    behind: float = 5.5
    pitch_deg: float = 9.0
    hfov_deg: float = 90.0
    window_aspect: float = WINDOW_WIDTH / WINDOW_HEIGHT
    far: float = 350.0
    draw_car: bool = True
