"""The version of tm-algos, written into the policy files and checkpoints it makes."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
