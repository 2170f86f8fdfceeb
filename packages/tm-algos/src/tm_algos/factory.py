"""Environments and models built from a :class:`~tm_algos.presets.Preset`.

A preset names its algorithm (``"sac"``, ``"tqc"``, ``"redq"``, ``"fast_sac"``, ``"crossq"``,
``"ppo"``, ``"recurrent_ppo"``) and its feature extractor by short names, all listed in
:mod:`tm_algos.registry`; this module turns them into an SB3 / sb3-contrib model with the
matching policy, extractor and replay buffer:

>>> from tm_algos.factory import make_model, make_vec_env
>>> from tm_algos.presets import load_preset
>>> preset = load_preset("lidar-sac")
>>> env = make_vec_env(preset, seed=0)
>>> model = make_model(preset, env, seed=0)

Off-policy algorithms store transitions in the replay buffer their registry entry names:
:class:`~tm_algos.buffers.FrameStackReplayBuffer` (each frame or LIDAR scan once), or its
CrossQ variant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

from tm_algos.errors import InvalidValueError
from tm_algos.extractors import policy_kwargs_for
from tm_algos.presets import Preset, PresetError
from tm_algos.registry import (
    ACTIVATIONS,
    ALGORITHMS,
    EXTRACTORS,
    AlgorithmSpec,
    activation_class,
)
from tm_algos.sim_vec_env import SimVecEnv

__all__ = [
    "EXTRACTORS",
    "algorithm_class",
    "env_kwargs_of",
    "make_model",
    "make_vec_env",
    "policy_kwargs_of",
]

_FRAME_KEYS = {"images": "images", "lidar": "lidar", "lidar_progress": "lidar"}


def _spec(name: str) -> AlgorithmSpec:
    spec = ALGORITHMS.get(name)
    if spec is None:
        raise PresetError(f"algorithm {name!r} is unknown; expected one of {list(ALGORITHMS)}")
    return spec


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The SB3 / sb3-contrib / tm-algos class of the algorithm ``name`` (imported lazily)."""
    return _spec(name).load()


def env_kwargs_of(preset: Preset, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``gymnasium.make(preset.env.id, ...)``: the preset's, then ``extra``."""
    kwargs: dict[str, Any] = {"obs_type": preset.env.obs_type, **dict(preset.env.kwargs)}
    kwargs.update(extra or {})
    return kwargs


MONITORED = ("finished", "lap_time", "progress", "wall_contacts")
"""Info keys copied into ``info["episode"]`` at each episode's end (SB3's Monitor)."""
NATIVE_VECTOR_IDS = frozenset({"TrackMania-Sim-v0", "tm_gym:TrackMania-Sim-v0"})
"""Environment ids whose cars :func:`make_vec_env` steps in one native vector env."""


def _env_factory(
    env_id: str, kwargs: Mapping[str, Any], seed: int, rank: int
) -> Callable[[], gym.Env[Any, Any]]:
    def make() -> gym.Env[Any, Any]:
        env = gym.make(env_id, **kwargs)
        env.reset(seed=seed + rank)
        env.action_space.seed(seed + rank)
        return Monitor(env, info_keywords=MONITORED)

    return make


def make_vec_env(
    preset: Preset | str,
    n_envs: int | None = None,
    *,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    subprocess: bool = False,
    native: bool | None = None,
    **more_env_kwargs: Any,
) -> VecEnv:
    """An SB3 ``VecEnv`` of ``n_envs`` monitored environments: a preset's, or any env id's.

    ``preset`` is a :class:`Preset` (its environment, ``n_envs`` and ``env.kwargs`` are the
    defaults) or an environment id (``make_vec_env("TrackMania-Sim-v0", 16, obs_type="lidar")``,
    1 car by default). ``env_kwargs`` and keyword arguments are the environment's.

    Several cars of the synchronous simulator are stepped together in its native vector env
    (:class:`~tm_algos.sim_vec_env.SimVecEnv`, compiled kernels, one process) unless
    ``native=False``; otherwise each environment is its own ``gym.make`` in a
    ``DummyVecEnv``, or with ``subprocess=True`` in its own process (for slow backends such as
    the live game). Either way ``info["episode"]`` holds the return, length, and
    :data:`MONITORED` keys of each finished episode.
    """
    import tm_gym  # noqa: F401  (registers the environment ids)

    if isinstance(preset, str):
        env_id, default_n = preset, 1
        kwargs = {**(env_kwargs or {}), **more_env_kwargs}
    else:
        env_id, default_n = preset.env.id, preset.env.n_envs
        kwargs = env_kwargs_of(preset, {**(env_kwargs or {}), **more_env_kwargs})
    n: object = default_n if n_envs is None else n_envs  # checked: callers may pass anything
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidValueError(f"n_envs={n!r}: expected a positive integer")
    if native is None:
        native = n > 1 and not subprocess and env_id in NATIVE_VECTOR_IDS
    if native:
        if kwargs.get("realtime"):
            raise InvalidValueError(
                "native=True steps the synchronous simulator; realtime=True cars run one per "
                "process: pass native=False"
            )
        sim = SimVecEnv(env_id, n, **kwargs)
        sim.seed(seed)
        sim.action_space.seed(seed)
        return VecMonitor(sim, info_keywords=MONITORED)
    fns = [_env_factory(env_id, kwargs, seed, i) for i in range(n)]
    if subprocess and n > 1:
        return SubprocVecEnv(fns, start_method="spawn")
    return DummyVecEnv(fns)


def policy_kwargs_of(preset: Preset) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` of ``preset``: extractor, network sizes, activation and extras."""
    pol = preset.policy
    if pol.extractor not in EXTRACTORS:
        raise PresetError(
            f"{preset.source}: policy.extractor = {pol.extractor!r}; expected one of "
            f"{sorted(EXTRACTORS)}"
        )
    family, arch = EXTRACTORS[pol.extractor]
    obs_type = preset.env.obs_type
    if (family == "images") != (obs_type == "images"):
        raise PresetError(
            f"{preset.source}: policy.extractor = {pol.extractor!r} reads {family} "
            f"observations but env.obs_type = {obs_type!r}; pick a matching extractor"
        )
    if pol.activation not in ACTIVATIONS:
        raise PresetError(
            f"{preset.source}: policy.activation = {pol.activation!r}; expected one of "
            f"{sorted(ACTIVATIONS)}"
        )
    kwargs = policy_kwargs_for(obs_type, arch, **dict(pol.extractor_kwargs))
    arch_spec = pol.net_arch
    kwargs["net_arch"] = (
        list(arch_spec)
        if isinstance(arch_spec, tuple)
        else {k: list(v) for k, v in arch_spec.items()}
    )
    kwargs["activation_fn"] = activation_class(pol.activation)
    kwargs.update(dict(pol.kwargs))
    return kwargs


def make_model(
    preset: Preset,
    env: VecEnv,
    *,
    seed: int | None = 0,
    device: str | torch.device = "auto",
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> BaseAlgorithm:
    """A fresh, untrained model of ``preset`` on ``env``."""
    spec = _spec(preset.algo.name)
    cls = spec.load()
    extra: dict[str, Any] = {}
    buffer_class = spec.load_replay_buffer()
    if buffer_class is not None:
        extra["replay_buffer_class"] = buffer_class
        extra["replay_buffer_kwargs"] = {"frame_key": _FRAME_KEYS[preset.env.obs_type]}
    return cls(
        spec.load_policy(),
        env,
        policy_kwargs=policy_kwargs_of(preset),
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        verbose=verbose,
        **extra,
        **dict(preset.algo.hyperparameters),
    )
