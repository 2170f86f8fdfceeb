"""Training code for TrackMaster, built on Stable-Baselines3 and PyTorch.

Nothing is implemented yet. This package is where the following will live:

- feature extractors and policies for tm-gym observations, for Stable-Baselines3's SAC and PPO;
- replay buffers suited to image observations;
- presets of known-good hyperparameters, as dataclasses;
- command-line scripts to train and evaluate agents.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
