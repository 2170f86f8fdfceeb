"""The real-time layer: one rtgym interface for every real-time backend.

:class:`~tm_gym.realtime.env.TrackManiaRealtimeEnv` runs any :class:`RealtimeBackend` (three
ports: telemetry, frames, controller) at rtgym's pace. The backends that fill it are wired in
:mod:`tm_gym.backends` (the game's ports, the simulator on the wall clock, a recording).
"""

from tm_gym.realtime.env import TrackManiaRealtimeEnv
from tm_gym.realtime.interface import RealtimeBackend, TMRealtimeInterface

__all__ = ["RealtimeBackend", "TMRealtimeInterface", "TrackManiaRealtimeEnv"]
