"""Exceptions raised by tm_gym.

One flat hierarchy: every error the library raises on purpose derives from :class:`TMGymError`,
so a caller can catch them all at once. Messages state the value received, what was expected and
how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "DependencyNotInstalled",
    "EnvStateError",
    "InvalidActionError",
    "TMGymError",
    "TrackFormatError",
    "TrajectoryFormatError",
]


class TMGymError(Exception):
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
