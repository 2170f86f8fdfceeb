"""A policy loaded from a safe policy file, giving actions for numpy observations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import BasePolicy

from tm_algos.policy.format import PolicyFileError

__all__ = ["LoadedPolicy"]


class LoadedPolicy:
    """A policy loaded by :func:`~tm_algos.policy.load_policy`, giving actions for numpy observations.

    ``config`` is the content of ``policy.json``; ``policy`` is the SB3 policy object.
    """

    def __init__(self, policy: BasePolicy, config: dict[str, Any]) -> None:
        self.policy = policy
        self.config = config
        self.observation_space = policy.observation_space
        self.action_space = policy.action_space
        self.recurrent = isinstance(policy, RecurrentActorCriticPolicy)
        self._state: tuple[NDArray[Any], ...] | None = None
        self._batch: int | None = None

    def reset(self) -> None:
        """Forget the recurrent state (call at the start of each episode; no-op otherwise)."""
        self._state = None
        self._batch = None

    def _check(self, obs: Any) -> tuple[dict[str, NDArray[Any]] | NDArray[Any], int | None]:
        """Validated observation, and the batch size (None for a single observation)."""
        space = self.observation_space
        items: dict[str, spaces.Box]
        if isinstance(space, spaces.Dict):
            if not isinstance(obs, Mapping):
                raise PolicyFileError(
                    f"observation is {type(obs).__name__}: expected a dict with the keys "
                    f"{sorted(space.spaces)}"
                )
            missing = sorted(set(space.spaces) - set(obs))
            extra = sorted(set(obs) - set(space.spaces))
            if missing or extra:
                raise PolicyFileError(
                    f"observation has keys {sorted(obs)}: expected {sorted(space.spaces)} "
                    f"(missing {missing}, unexpected {extra}); was it made with the same "
                    f"env settings ({self.config.get('env_settings')})?"
                )
            items = dict(space.spaces)  # type: ignore[arg-type]
            given = dict(obs)
        else:
            assert isinstance(space, spaces.Box)
            items = {"observation": space}
            given = {"observation": obs}
        batch: set[int | None] = set()
        out: dict[str, NDArray[Any]] = {}
        for key, sub in items.items():
            a = np.asarray(given[key])
            if a.dtype.kind not in "biuf":
                raise PolicyFileError(f"observation {key!r} has dtype {a.dtype}: expected numbers")
            if a.shape == sub.shape:
                batch.add(None)
            elif a.ndim == len(sub.shape) + 1 and a.shape[1:] == sub.shape:
                batch.add(a.shape[0])
            else:
                raise PolicyFileError(
                    f"observation {key!r} has shape {a.shape}: expected {sub.shape} for one "
                    f"observation or (n, {', '.join(map(str, sub.shape))}) for a batch"
                )
            out[key] = a.astype(sub.dtype, copy=False)
        if len(batch) != 1:
            raise PolicyFileError(
                "observation mixes single and batched entries, or batches of different sizes: "
                f"{ {k: v.shape for k, v in out.items()} }; give every key the same leading size"
            )
        n = batch.pop()
        return (out if isinstance(space, spaces.Dict) else out["observation"]), n

    def act(
        self,
        obs: Mapping[str, NDArray[Any]] | NDArray[Any],
        deterministic: bool = True,
        episode_start: bool | NDArray[np.bool_] | None = None,
    ) -> NDArray[Any]:
        """Actions for one observation (shape of the action space) or a batch ((n, ...)).

        For a recurrent policy the LSTM state is kept between calls; ``episode_start`` (one
        bool, or one per batch entry) marks the first observation of an episode, and
        :meth:`reset` forgets the state.
        """
        checked, n = self._check(obs)
        if not self.recurrent:
            action, _ = self.policy.predict(checked, deterministic=deterministic)
            return action
        size = 1 if n is None else n
        if self._batch is not None and self._batch != size:
            raise PolicyFileError(
                f"batch of {size} observations, but the recurrent state is for {self._batch}; "
                "call reset() before changing the batch size"
            )
        starts = np.zeros(size, dtype=bool) if episode_start is None else episode_start
        starts = np.broadcast_to(np.asarray(starts, dtype=bool), (size,)).copy()
        action, state = self.policy.predict(
            checked, state=self._state, episode_start=starts, deterministic=deterministic
        )
        self._state = state
        self._batch = size
        return action
