"""CrossQ on Dict observations (tm-gym's), with tm-algos' feature extractors.

sb3-contrib's CrossQ evaluates its critics once on observations and next observations joined
along the batch with ``torch.cat`` — which takes tensors, not the dicts of tensors a Dict space
gives. :class:`DictCrossQ` hands the algorithm observations as a :class:`TensorDict`, a dict
that ``torch.cat`` joins key by key, and changes nothing else: the update is sb3-contrib's own.

>>> import gymnasium as gym, tm_gym
>>> from sb3_contrib.crossq.policies import CrossQPolicy
>>> from tm_algos.crossq import DictCrossQ
>>> from tm_algos.extractors import policy_kwargs_for
>>> env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
>>> model = DictCrossQ(CrossQPolicy, env, policy_kwargs=policy_kwargs_for("lidar"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib import CrossQ
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from tm_algos.buffers import FrameStackReplayBuffer
from tm_algos.errors import InvalidTypeError

__all__ = ["CrossQFrameStackReplayBuffer", "DictCrossQ", "TensorDict"]


class TensorDict(dict[str, torch.Tensor]):
    """A dict of equally batched tensors that ``torch.cat`` concatenates key by key."""

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.cat:
            parts = list(args[0])
            dim = kwargs.pop("dim", args[1] if len(args) > 1 else 0)
            if not all(isinstance(p, dict) and p.keys() == parts[0].keys() for p in parts):
                raise InvalidTypeError("torch.cat of TensorDicts needs dicts with the same keys")
            return cls({k: torch.cat([p[k] for p in parts], dim=dim) for k in parts[0]})
        return NotImplemented


class CrossQFrameStackReplayBuffer(FrameStackReplayBuffer):
    """:class:`~tm_algos.buffers.FrameStackReplayBuffer` whose samples hold TensorDicts."""

    def sample(  # type: ignore[override]
        self, batch_size: int, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        s = super().sample(batch_size, env)
        return s._replace(
            observations=TensorDict(s.observations),
            next_observations=TensorDict(s.next_observations),
        )


class DictCrossQ(CrossQ):
    """sb3-contrib's CrossQ, accepting Dict observation spaces.

    Pass the policy class (``sb3_contrib.crossq.policies.CrossQPolicy``: CrossQ has no
    ``"MultiInputPolicy"`` name) and tm-algos' ``policy_kwargs_for(...)``. Without a
    ``replay_buffer_class``, a Dict space gets :class:`CrossQFrameStackReplayBuffer` (frames
    stored once); give ``replay_buffer_kwargs={"frame_key": ...}`` to choose the stacked key
    (``"images"`` when present, else ``"lidar"``).
    """

    def __init__(self, policy: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        space = getattr(env, "observation_space", None)
        if isinstance(space, spaces.Dict) and kwargs.get("replay_buffer_class") is None:
            kwargs["replay_buffer_class"] = CrossQFrameStackReplayBuffer
            buffer_kwargs = dict(kwargs.get("replay_buffer_kwargs") or {})
            buffer_kwargs.setdefault("frame_key", "images" if "images" in space.spaces else "lidar")
            kwargs["replay_buffer_kwargs"] = buffer_kwargs
        super().__init__(policy, env, *args, **kwargs)
