"""Training code for TrackMaster, built on Stable-Baselines3, sb3-contrib and PyTorch.

Modules (import what you need; importing ``tm_algos`` itself loads nothing heavy):

* :mod:`tm_algos.extractors` — SB3 feature extractors for tm-gym's Dict observations: CNNs
  (TMRL-sized and small), a ViT with a telemetry token, a LIDAR MLP; ``policy_kwargs_for``.
* :mod:`tm_algos.buffers` — ``FrameStackReplayBuffer``, storing each frame once (~4.5 KB per
  image transition instead of ~33 KB), exact across episode boundaries.
* :mod:`tm_algos.export` — policies as safetensors + JSON, loaded without pickle.
* :mod:`tm_algos.redq` — ``REDQ`` (REDQ-SAC: N critics, random-subset minimum target, several
  critic updates per actor update) as an SB3 algorithm.
* :mod:`tm_algos.crossq` — ``DictCrossQ``: sb3-contrib's CrossQ on Dict observations.
* :mod:`tm_algos.fast_sac` — ``FastImageSAC``: one CNN trained by the critics, ≈6× SB3's image SAC.
* :mod:`tm_algos.presets` / :mod:`tm_algos.factory` — TOML presets and the models they build.
* :mod:`tm_algos.training`, :mod:`tm_algos.callbacks` — what ``tm-train`` runs.
* :mod:`tm_algos.evaluation` — what ``tm-eval`` runs.
* :mod:`tm_algos.checkpoint` — full training state in safetensors + JSON + npz, atomically.
* :mod:`tm_algos.policy_bytes` — a policy as bytes, for sending it over a network.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
