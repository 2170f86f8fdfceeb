"""The real-time layer: one rtgym interface for every real-time backend.

:class:`~tm_gym.realtime.env.TrackManiaRealtimeEnv` runs any :class:`RealtimeBackend` (three
ports: telemetry, frames, controller) at rtgym's pace; :mod:`~tm_gym.realtime.sim_ports` gives
the simulator following the wall clock as such a backend.
"""

from tm_gym.realtime.env import TrackManiaRealtimeEnv
from tm_gym.realtime.interface import RealtimeBackend, TMRealtimeInterface
from tm_gym.realtime.sim_ports import WallClockSim, sim_backend

__all__ = [
    "RealtimeBackend",
    "TMRealtimeInterface",
    "TrackManiaRealtimeEnv",
    "WallClockSim",
    "sim_backend",
]
