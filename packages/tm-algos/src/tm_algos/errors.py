"""The root of the errors tm_algos raises on purpose, and its two general-purpose errors.

Every error tm_algos raises on purpose derives from :class:`TMAlgosError`, itself a
:class:`~tm_gym.error.TrackMasterError` (the root shared by tm-gym, tm-algos and tm-dist, which
the command-line tools catch). Errors about one file format or one input live beside it and
keep the built-in class callers catch today as a second base:

* :class:`~tm_algos.presets.PresetError` — a preset file or a ``--set`` override;
* :class:`~tm_algos.policy.format.PolicyFileError` (a
  :class:`~tm_algos.policy.spaces.SpaceFormatError`) — a policy file or what is given to a
  loaded policy;
* :class:`~tm_algos.checkpoint.format.CheckpointError` — a training checkpoint;
* :class:`~tm_algos.training.RunDirError` — a run directory;
* :class:`InvalidValueError` and :class:`InvalidTypeError` below — an argument of any other
  function or class (an extractor's size, a replay buffer's setting, ...).

Messages state the value received, what was expected and how to fix it. This module imports
nothing but :mod:`tm_gym.error`, so catching these costs no import of PyTorch.
"""

from __future__ import annotations

from tm_gym.error import TrackMasterError

__all__ = ["InvalidTypeError", "InvalidValueError", "TMAlgosError", "TrackMasterError"]


class TMAlgosError(TrackMasterError):
    """Base class of every error raised on purpose by tm_algos."""


class InvalidValueError(TMAlgosError, ValueError):
    """An argument has a value the function or class cannot use (out of range, unknown name,
    a space without the key it needs); the message names the argument and what is expected."""


class InvalidTypeError(TMAlgosError, TypeError):
    """An argument is of a type the function or class cannot use (a class that is not a
    feature extractor, a value JSON cannot store); the message names it and what is expected."""
