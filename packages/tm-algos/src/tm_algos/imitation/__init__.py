"""Imitation learning with the simulator's privileged teachers, and from demonstrations.

* :mod:`tm_algos.imitation.config` — :class:`ImitationConfig`, a preset's ``[imitation]`` table
  (no PyTorch: presets validate it);
* :mod:`tm_algos.imitation.dataset` — :class:`ImitationDataset`, labelled observations with each
  frame stored once, bounded;
* :mod:`tm_algos.imitation.bc` — :class:`BehaviourCloning`, supervised regression of a policy's
  deterministic action (through SAC's tanh) on a teacher's;
* :mod:`tm_algos.imitation.dagger` — :func:`run_dagger`: the student drives, the scripted expert
  or a LIDAR policy labels the states it visits;
* :mod:`tm_algos.imitation.demos` — :func:`load_demonstrations`: ``.tmrec`` recordings as a
  dataset, for behaviour cloning before RL (``tm-train --demos``).

Names are imported on first use, so importing this package loads no PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "ImitationConfig": "tm_algos.imitation.config",
    "ImitationDataset": "tm_algos.imitation.dataset",
    "BehaviourCloning": "tm_algos.imitation.bc",
    "DaggerResult": "tm_algos.imitation.dagger",
    "run_dagger": "tm_algos.imitation.dagger",
    "DemoError": "tm_algos.imitation.demos",
    "load_demonstrations": "tm_algos.imitation.demos",
}

__all__ = [
    "BehaviourCloning",
    "DaggerResult",
    "DemoError",
    "ImitationConfig",
    "ImitationDataset",
    "load_demonstrations",
    "run_dagger",
]

if TYPE_CHECKING:
    from tm_algos.imitation.bc import BehaviourCloning
    from tm_algos.imitation.config import ImitationConfig
    from tm_algos.imitation.dagger import DaggerResult, run_dagger
    from tm_algos.imitation.dataset import ImitationDataset
    from tm_algos.imitation.demos import DemoError, load_demonstrations


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tm_algos.imitation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
