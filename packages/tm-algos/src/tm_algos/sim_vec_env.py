"""The simulator's native vector environment as a Stable-Baselines3 ``VecEnv``.

``gymnasium.make_vec("TrackMania-Sim-v0", num_envs=N, vectorization_mode="vector_entry_point")``
steps N cars together in compiled kernels, but SB3 cannot take a Gymnasium vector env: its
algorithms want a ``VecEnv`` (one info dict per car, the episode's last observation in
``info["terminal_observation"]``, a car reset in the same step that ended its episode).
:class:`SimVecEnv` gives SB3 exactly that:

* ``step`` resets the cars whose episode ended within the same call (the native env would do it
  on the next call, Gymnasium's next-step autoreset), and puts their last observation in
  ``info["terminal_observation"]``; ``info["TimeLimit.truncated"]`` on every step, as SB3's
  own vector envs set it;
* one info dict per car, with the same keys and values as the scalar environment's;
* ``seed(s)`` seeds the whole fleet at the next ``reset`` (the cars draw start jitter and random
  looks from one generator, so car ``i`` does not replay a scalar env seeded ``s + i``).

:func:`tm_algos.make_vec_env` builds one, wrapped in ``VecMonitor`` (``info["episode"]``), when
the preset's environment is the synchronous simulator with several cars.

Example::

    from stable_baselines3 import PPO
    from tm_algos import make_vec_env

    venv = make_vec_env("TrackMania-Sim-v0", 16, obs_type="lidar")
    PPO("MultiInputPolicy", venv).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from tm_algos.errors import InvalidValueError

__all__ = ["SimVecEnv"]


class SimVecEnv(VecEnv):
    """``n_envs`` simulated cars in one native vector env, with SB3's ``VecEnv`` semantics.

    Args:
        env_id: a registered id whose vector entry point is tm-gym's native vector env
            (``"TrackMania-Sim-v0"``).
        n_envs: cars stepped together.
        env_kwargs: the environment's keyword arguments (``obs_type``, ``track``, ...).
    """

    def __init__(
        self, env_id: str = "TrackMania-Sim-v0", n_envs: int = 1, **env_kwargs: Any
    ) -> None:
        import tm_gym  # noqa: F401  (registers the environment ids)

        size: object = n_envs  # checked at run time: callers may pass anything
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidValueError(f"n_envs={n_envs!r}: expected a positive integer")
        self.venv: gym.vector.VectorEnv[Any, Any, Any] = gym.make_vec(
            env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **env_kwargs
        )
        super().__init__(n_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self.render_mode = self.venv.render_mode
        self._actions: NDArray[np.float32] | None = None

    # -- SB3's VecEnv ------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, info = self.venv.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = self._per_car(info, range(self.num_envs))
        return self._copy(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise InvalidValueError("step_wait() without step_async(actions) first")
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        obs = self._copy(obs)
        infos = self._per_car(info, range(self.num_envs))
        for car_info, cut in zip(infos, truncated & ~terminated, strict=True):
            car_info["TimeLimit.truncated"] = bool(cut)
        done = terminated | truncated
        if done.any():
            ended = np.flatnonzero(done)
            for i in ended:
                infos[i]["terminal_observation"] = {k: v[i].copy() for k, v in obs.items()}
            fresh, reset_info = self.venv.reset(options={"reset_mask": done})
            for k, v in fresh.items():
                obs[k][ended] = v[ended]
            for i, car_info in zip(ended, self._per_car(reset_info, ended), strict=True):
                self.reset_infos[i] = car_info
        return obs, reward.astype(np.float32), done, infos

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames: Any = self.venv.render()  # the native env returns one RGB frame per car
        return list(frames) if frames is not None else [None] * self.num_envs

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if list(self._get_indices(indices)) != list(range(self.num_envs)):
            raise InvalidValueError(
                f"set_attr({attr_name!r}) on some cars only: the cars share one environment"
            )
        setattr(self.venv, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper[Any, Any, Any, Any]], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _copy(obs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """The vector env reuses its buffers: SB3 keeps observations, so it gets copies."""
        return {k: np.array(v, copy=True) for k, v in obs.items()}

    @staticmethod
    def _per_car(
        info: dict[str, Any], cars: Sequence[int] | range | NDArray[Any]
    ) -> list[dict[str, Any]]:
        """Gymnasium's batched info (arrays and ``_key`` masks) as one dict per car."""
        out: list[dict[str, Any]] = []
        for i in cars:
            car: dict[str, Any] = {}
            for k, v in info.items():
                mask = info.get(f"_{k}")
                if k.startswith("_") or (mask is not None and not mask[i]):
                    continue
                item = v[i]
                car[k] = item.item() if np.ndim(item) == 0 else np.array(item, copy=True)
            out.append(car)
        return out
