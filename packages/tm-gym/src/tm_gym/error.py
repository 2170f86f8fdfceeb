"""Exceptions raised by tm_gym.

One flat hierarchy: every error the library raises on purpose derives from :class:`TMGymError`,
so a caller can catch them all at once. :class:`TrackMasterError` is one floor lower: the root of
every error raised on purpose by any TrackMaster package (tm-gym, tm-algos, tm-dist), which is
what the command-line tools catch. Messages state the value received, what was expected and
how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CaptureError",
    "ControllerError",
    "DependencyNotInstalled",
    "EnvStateError",
    "InvalidActionError",
    "RecordingFormatError",
    "TMGymError",
    "TelemetryError",
    "TrackFormatError",
    "TrackMasterError",
    "TrajectoryFormatError",
]


class TrackMasterError(Exception):
    """Root of every error raised on purpose by tm_gym, tm_algos and tm_dist.

    Each package has its own base below it (:class:`TMGymError`, ``tm_algos.errors.TMAlgosError``,
    ``tm_dist.errors.TMDistError``); catch this one to handle them all.
    """


class TMGymError(TrackMasterError):
    """Base class of every error raised on purpose by tm_gym."""


class DependencyNotInstalled(TMGymError, ImportError):
    """An optional dependency is missing; the message names the pip command that installs it."""


class TrackFormatError(TMGymError, ValueError):
    """A track file or track description is malformed; the message says what is wrong where."""


class TrajectoryFormatError(TMGymError, ValueError):
    """A reference trajectory file is malformed or unsafe to load."""


class BackendUnavailableError(TMGymError, RuntimeError):
    """The requested backend cannot run here (not implemented yet, or missing hardware)."""


class InvalidActionError(TMGymError, ValueError):
    """An action has the wrong shape or contains NaN/inf values."""


class EnvStateError(TMGymError, RuntimeError):
    """The environment was used out of order (for example step() before reset())."""


class TelemetryError(TMGymError, RuntimeError):
    """The telemetry stream is unreachable, stalled, closed or malformed; the message says what
    to check (game running, plugin enabled, port)."""


class CaptureError(TMGymError, RuntimeError):
    """The game window cannot be found or captured."""


class ControllerError(TMGymError, RuntimeError):
    """The virtual gamepad or keyboard cannot be used (missing driver, device or tool)."""


class RecordingFormatError(TMGymError, ValueError):
    """A recording file is truncated, corrupt or not a tm-gym recording; the message names the
    file and what is wrong."""
