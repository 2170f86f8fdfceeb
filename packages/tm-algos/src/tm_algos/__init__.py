"""Training code for TrackMaster, built on Stable-Baselines3, sb3-contrib and PyTorch.

Modules (import what you need; importing ``tm_algos`` itself loads nothing heavy):

* :mod:`tm_algos.extractors` — SB3 feature extractors for tm-gym's Dict observations: CNNs
  (TMRL-sized and small), a ViT with a telemetry token, a LIDAR MLP; ``policy_kwargs_for``.
* :mod:`tm_algos.buffers` — ``FrameStackReplayBuffer``, storing each frame once (~4.5 KB per
  image transition instead of ~33 KB), exact across episode boundaries.
* :mod:`tm_algos.export` — policies as safetensors + JSON, loaded without pickle.
* :mod:`tm_algos.presets` — training presets in TOML (hyperparameters not yet tuned).

The training and evaluation commands come next (issue 5).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
