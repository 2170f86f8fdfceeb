"""Training code for TrackMaster, built on Stable-Baselines3, sb3-contrib and PyTorch.

The public API is importable from ``tm_algos`` itself; each name is loaded on first use (PEP 562),
so ``import tm_algos`` loads neither PyTorch nor Stable-Baselines3::

    import tm_algos

    preset = tm_algos.load_preset("lidar-sac")
    env = tm_algos.make_vec_env(preset, seed=0)
    model = tm_algos.make_model(preset, env, seed=0)
    model.learn(10_000)
    tm_algos.export_policy(model, "runs/demo/policy")
    policy = tm_algos.load_policy("runs/demo/policy")  # no code runs from the file

Modules:

* :mod:`tm_algos.registry` — the one table of algorithms (name, class, on/off-policy, action
  squashing, policy classes, hyperparameter rules), activations and extractor names.
* :mod:`tm_algos.presets` / :mod:`tm_algos.factory` — TOML presets and the models they build.
* :mod:`tm_algos.extractors` — SB3 feature extractors for tm-gym's Dict observations: CNNs
  (TMRL-sized and small), a ViT with a telemetry token, a LIDAR MLP; ``policy_kwargs_for``.
* :mod:`tm_algos.buffers` — ``FrameStackReplayBuffer``, storing each frame once (~4.5 KB per
  image transition instead of ~33 KB), exact across episode boundaries.
* :mod:`tm_algos.redq` — ``REDQ`` (REDQ-SAC: N critics, random-subset minimum target, several
  critic updates per actor update) as an SB3 algorithm.
* :mod:`tm_algos.crossq` — ``DictCrossQ``: sb3-contrib's CrossQ on Dict observations.
* :mod:`tm_algos.fast_sac` — ``FastImageSAC``: one CNN trained by the critics, ≈6× SB3's image SAC.
* :mod:`tm_algos.policy` — policies as safetensors + JSON (files or bytes), loaded without pickle.
* :mod:`tm_algos.checkpoint` — full training state in safetensors + JSON + npz, atomically.
* :mod:`tm_algos.imitation` — DAgger from the simulator's privileged teachers (the scripted
  expert, a LIDAR policy) into a pixel policy, behaviour cloning, ``.tmrec`` demonstrations.
* :mod:`tm_algos.perception` — a CNN trained on the simulator's labels to read the 19 LIDAR
  distances off a frame: ``PixelLidarWrapper`` (a LIDAR policy drives from pixels) and the
  ``PerceptionExtractor`` (preset extractor ``"perception"``, frozen or fine-tuned).
* :mod:`tm_algos.training`, :mod:`tm_algos.callbacks` — what ``tm-train`` runs.
* :mod:`tm_algos.evaluation` — what ``tm-eval`` runs.
* :mod:`tm_algos.errors` — :class:`TMAlgosError`, the base of every error tm_algos raises.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tm_algos.version import __version__

_EXPORTS: dict[str, str] = {
    # name → the module that defines it
    "ALGORITHMS": "tm_algos.registry",
    "AlgorithmSpec": "tm_algos.registry",
    "algorithm": "tm_algos.registry",
    "TMAlgosError": "tm_algos.errors",
    "InvalidTypeError": "tm_algos.errors",
    "InvalidValueError": "tm_algos.errors",
    "DEFAULT_PRESET": "tm_algos.presets",
    "Preset": "tm_algos.presets",
    "PresetError": "tm_algos.presets",
    "apply_overrides": "tm_algos.presets",
    "list_presets": "tm_algos.presets",
    "load_preset": "tm_algos.presets",
    "make_model": "tm_algos.factory",
    "make_vec_env": "tm_algos.factory",
    "SimVecEnv": "tm_algos.sim_vec_env",
    "TMCNNExtractor": "tm_algos.extractors",
    "TMLidarExtractor": "tm_algos.extractors",
    "TMViTExtractor": "tm_algos.extractors",
    "policy_kwargs_for": "tm_algos.extractors",
    "FrameStackReplayBuffer": "tm_algos.buffers",
    "REDQ": "tm_algos.redq",
    "DictCrossQ": "tm_algos.crossq",
    "FastImageSAC": "tm_algos.fast_sac",
    "LoadedPolicy": "tm_algos.policy.loaded",
    "PolicyFileError": "tm_algos.policy.format",
    "export_policy": "tm_algos.policy.export",
    "load_policy": "tm_algos.policy.load",
    "policy_from_bytes": "tm_algos.policy.as_bytes",
    "policy_to_bytes": "tm_algos.policy.as_bytes",
    "CheckpointError": "tm_algos.checkpoint.format",
    "latest_checkpoint": "tm_algos.checkpoint.catalog",
    "load_checkpoint": "tm_algos.checkpoint.load",
    "save_checkpoint": "tm_algos.checkpoint.save",
    "RunDirError": "tm_algos.training",
    "TrainConfig": "tm_algos.training",
    "TrainResult": "tm_algos.training",
    "Trainer": "tm_algos.training",
    "BehaviourCloning": "tm_algos.imitation.bc",
    "DemoError": "tm_algos.imitation.demos",
    "ImitationConfig": "tm_algos.imitation.config",
    "ImitationDataset": "tm_algos.imitation.dataset",
    "load_demonstrations": "tm_algos.imitation.demos",
    "run_dagger": "tm_algos.imitation.dagger",
    "EvalReport": "tm_algos.evaluation",
    "evaluate": "tm_algos.evaluation",
    "EncoderConfig": "tm_algos.perception",
    "PerceptionEncoder": "tm_algos.perception",
    "PixelLidarWrapper": "tm_algos.perception",
    "load_encoder": "tm_algos.perception",
    "save_encoder": "tm_algos.perception",
    "train_encoder": "tm_algos.perception",
    "PerceptionExtractor": "tm_algos.extractors",
}

__all__ = [
    "ALGORITHMS",
    "DEFAULT_PRESET",
    "REDQ",
    "AlgorithmSpec",
    "BehaviourCloning",
    "CheckpointError",
    "DemoError",
    "DictCrossQ",
    "EncoderConfig",
    "EvalReport",
    "FastImageSAC",
    "FrameStackReplayBuffer",
    "ImitationConfig",
    "ImitationDataset",
    "InvalidTypeError",
    "InvalidValueError",
    "LoadedPolicy",
    "PerceptionEncoder",
    "PerceptionExtractor",
    "PixelLidarWrapper",
    "PolicyFileError",
    "Preset",
    "PresetError",
    "RunDirError",
    "SimVecEnv",
    "TMAlgosError",
    "TMCNNExtractor",
    "TMLidarExtractor",
    "TMViTExtractor",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "__version__",
    "algorithm",
    "apply_overrides",
    "evaluate",
    "export_policy",
    "latest_checkpoint",
    "list_presets",
    "load_checkpoint",
    "load_demonstrations",
    "load_encoder",
    "load_policy",
    "load_preset",
    "make_model",
    "make_vec_env",
    "policy_from_bytes",
    "policy_kwargs_for",
    "policy_to_bytes",
    "run_dagger",
    "save_checkpoint",
    "save_encoder",
    "train_encoder",
]

if TYPE_CHECKING:
    from tm_algos.buffers import FrameStackReplayBuffer
    from tm_algos.checkpoint.catalog import latest_checkpoint
    from tm_algos.checkpoint.format import CheckpointError
    from tm_algos.checkpoint.load import load_checkpoint
    from tm_algos.checkpoint.save import save_checkpoint
    from tm_algos.crossq import DictCrossQ
    from tm_algos.errors import InvalidTypeError, InvalidValueError, TMAlgosError
    from tm_algos.evaluation import EvalReport, evaluate
    from tm_algos.extractors import (
        PerceptionExtractor,
        TMCNNExtractor,
        TMLidarExtractor,
        TMViTExtractor,
        policy_kwargs_for,
    )
    from tm_algos.factory import make_model, make_vec_env
    from tm_algos.fast_sac import FastImageSAC
    from tm_algos.imitation.bc import BehaviourCloning
    from tm_algos.imitation.config import ImitationConfig
    from tm_algos.imitation.dagger import run_dagger
    from tm_algos.imitation.dataset import ImitationDataset
    from tm_algos.imitation.demos import DemoError, load_demonstrations
    from tm_algos.perception import (
        EncoderConfig,
        PerceptionEncoder,
        PixelLidarWrapper,
        load_encoder,
        save_encoder,
        train_encoder,
    )
    from tm_algos.policy.as_bytes import policy_from_bytes, policy_to_bytes
    from tm_algos.policy.export import export_policy
    from tm_algos.policy.format import PolicyFileError
    from tm_algos.policy.load import load_policy
    from tm_algos.policy.loaded import LoadedPolicy
    from tm_algos.presets import (
        DEFAULT_PRESET,
        Preset,
        PresetError,
        apply_overrides,
        list_presets,
        load_preset,
    )
    from tm_algos.redq import REDQ
    from tm_algos.registry import ALGORITHMS, AlgorithmSpec, algorithm
    from tm_algos.sim_vec_env import SimVecEnv
    from tm_algos.training import RunDirError, TrainConfig, Trainer, TrainResult


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tm_algos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
