"""On-policy batches for PPO in the distributed trainer.

Workers send whole episodes collected with a given weights version; :class:`PPOBatcher`
receives only current-version episodes (the learner drops stale ones), recomputes values and
log-probabilities with the current policy (equal to the worker's, since the weights are the
same), bootstraps truncated episodes with the value of their last observation, fills SB3's
rollout buffer and runs one PPO update.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import obs_as_tensor

from tm_dist.codec import Transitions
from tm_dist.errors import InvalidTypeError

__all__ = ["PPOBatcher"]


class PPOBatcher:
    """Collects transitions until PPO's ``n_steps`` are there, then trains once."""

    def __init__(self, model: BaseAlgorithm) -> None:
        if not isinstance(model, PPO):
            raise InvalidTypeError(f"PPOBatcher needs a PPO model, got {type(model).__name__}")
        self.model = model
        self.n_steps = model.n_steps
        self.parts: list[Transitions] = []
        self.size = 0
        self.discarded = 0

    def add(self, tr: Transitions) -> int:
        self.parts.append(tr)
        n = len(tr.reward)
        self.size += n
        return n

    def ready(self) -> bool:
        return self.size >= self.n_steps

    def _values(self, obs: dict[str, np.ndarray[Any, Any]]) -> torch.Tensor:
        tensor = obs_as_tensor(obs, self.model.device)
        return self.model.policy.predict_values(tensor).flatten()

    def train(self) -> None:
        """Fill the rollout buffer with the first ``n_steps`` transitions and update."""
        m = self.model
        assert isinstance(m, PPO)
        buf = m.rollout_buffer
        buf.reset()
        left = self.n_steps
        last_next: dict[str, np.ndarray[Any, Any]] | None = None
        last_done = True
        m.policy.set_training_mode(False)
        with torch.no_grad():
            for tr in self.parts:
                if left == 0:
                    break
                n = min(left, len(tr.reward))
                obs = {k: v[:n] for k, v in tr.obs.items()}
                nxt = {k: v[:n] for k, v in tr.next_obs.items()}
                actions = torch.as_tensor(tr.action[:n], device=m.device)
                values, log_prob, _ = m.policy.evaluate_actions(
                    obs_as_tensor(obs, m.device), actions
                )
                rewards = tr.reward[:n].astype(np.float32).copy()
                timeouts = tr.truncated[:n] & ~tr.terminated[:n]
                if timeouts.any():
                    boot = self._values({k: v[timeouts] for k, v in nxt.items()}).cpu().numpy()
                    rewards[timeouts] += m.gamma * boot
                done = tr.terminated[:n] | tr.truncated[:n]
                starts = np.zeros(n, dtype=bool)
                starts[0] = last_done
                starts[1:] = done[:-1]
                for t in range(n):
                    buf.add(
                        {k: v[t : t + 1] for k, v in obs.items()},  # type: ignore[arg-type]
                        tr.action[t : t + 1],
                        rewards[t : t + 1],
                        starts[t : t + 1],
                        values[t : t + 1].flatten(),
                        log_prob[t : t + 1],
                    )
                last_next = {k: v[n - 1 : n] for k, v in nxt.items()}
                last_done = bool(done[n - 1])
                left -= n
            assert last_next is not None
            last_values = self._values(last_next)
        buf.compute_returns_and_advantage(last_values=last_values, dones=np.array([last_done]))
        m.train()
        self.discarded += self.size - self.n_steps
        self.parts.clear()
        self.size = 0
