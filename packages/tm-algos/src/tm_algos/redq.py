"""REDQ-SAC: Randomized Ensembled Double Q-learning on top of Stable-Baselines3's SAC.

REDQ (Chen, Wang, Zhou & Ross, ICLR 2021, https://arxiv.org/abs/2101.05982) keeps SAC's actor and
entropy temperature and changes the critics:

- an ensemble of ``N`` critics (``n_critics``, default 10) instead of two;
- the bootstrap target takes the minimum over a random subset of ``M`` target critics
  (``subset_size``, default 2), drawn anew for every critic update, minus the entropy term, and
  every critic regresses to that one target;
- many critic updates per environment step (the update-to-data ratio ``G``, SB3's
  ``gradient_steps``) with fewer actor updates (``actor_update_interval``);
- the actor maximises the mean of all ``N`` online critics.

:class:`REDQ` is an SB3 algorithm: the same policies (``"MlpPolicy"``, ``"MultiInputPolicy"``,
``"CnnPolicy"``), replay buffers, callbacks, logger keys and ``save``/``load`` as ``SAC``.

Example (LIDAR observations, UTD ratio 20 as in the paper):

>>> import gymnasium as gym, tm_gym
>>> from tm_algos.extractors import policy_kwargs_for
>>> from tm_algos.redq import REDQ
>>> env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
>>> model = REDQ(
...     "MultiInputPolicy",
...     env,
...     gradient_steps=20,
...     policy_kwargs=policy_kwargs_for("lidar"),
...     seed=0,
... )
>>> model.policy.critic.n_critics
10
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import SACPolicy
from torch.nn import functional as F

from tm_algos.errors import InvalidValueError

__all__ = ["REDQ", "redq_target_q", "sample_critic_subset"]

SelfREDQ = TypeVar("SelfREDQ", bound="REDQ")

DEFAULT_N_CRITICS = 10
"""Ensemble size of the REDQ paper."""


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_subset_size(subset_size: object, n_critics: int) -> int:
    if not _is_int(subset_size) or not 1 <= int(subset_size) <= n_critics:  # type: ignore[call-overload]
        raise InvalidValueError(
            f"subset_size={subset_size!r}: expected an integer M with 1 <= M <= n_critics "
            f"(n_critics={n_critics}); the REDQ paper uses M=2 with n_critics=10"
        )
    return int(subset_size)  # type: ignore[call-overload]


def sample_critic_subset(
    n_critics: int, subset_size: int, generator: th.Generator | None = None
) -> th.Tensor:
    """``subset_size`` distinct critic indices out of ``range(n_critics)``, sorted (CPU int64).

    Drawn uniformly without replacement with ``generator`` (PyTorch's global generator when
    None). With ``subset_size == n_critics`` every index is returned and nothing is drawn.
    """
    if not _is_int(n_critics) or n_critics < 1:
        raise InvalidValueError(f"n_critics={n_critics!r}: expected an integer >= 1")
    m = _check_subset_size(subset_size, n_critics)
    if m == n_critics:
        return th.arange(n_critics)
    return th.randperm(n_critics, generator=generator)[:m].sort().values


def redq_target_q(
    next_q: th.Tensor, subset_size: int, generator: th.Generator | None = None
) -> th.Tensor:
    """The minimum over a random subset of target critics: REDQ's in-target minimisation.

    :param next_q: target critics' values at the next observation, shape ``(N, B, 1)`` (one row
        per critic; any trailing shape works).
    :param subset_size: ``M``, how many distinct critics the minimum is taken over
        (``1 <= M <= N``). The same subset is used for the whole batch, as in the paper.
    :param generator: the CPU generator the subset is drawn with (see
        :func:`sample_critic_subset`).
    :return: ``next_q[subset].min(dim=0)``, shape ``(B, 1)``.
    """
    given: object = next_q
    if not isinstance(given, th.Tensor) or given.ndim < 2 or given.shape[0] < 1:
        shape = tuple(given.shape) if isinstance(given, th.Tensor) else type(given).__name__
        raise InvalidValueError(
            f"next_q has shape {shape}; expected a tensor (n_critics, batch, 1) with one row "
            "per critic, e.g. th.stack(critic_target(obs, actions))"
        )
    idx = sample_critic_subset(next_q.shape[0], subset_size, generator)
    return next_q.index_select(0, idx.to(next_q.device)).min(dim=0).values


class REDQ(SAC):
    """REDQ-SAC: SAC with an ensemble of ``n_critics`` critics and a random-subset minimum target.

    Every :meth:`train` call does ``gradient_steps`` critic updates. Each update samples one
    batch, draws ``subset_size`` distinct target critics, and regresses all ``n_critics`` online
    critics to ``r + γ (1 - done) (min over the subset of Q_target(s', a') - α log π(a'|s'))``.
    The actor and, with ``ent_coef="auto"``, the temperature ``α`` are updated on the same batch
    after the critic update, every ``actor_update_interval`` critic updates; by default once per
    :meth:`train` call (after its last critic update), so ``gradient_steps=G`` gives the paper's
    UTD ratio ``G`` with one actor update per environment step. The actor loss is
    ``α log π(a|s) - mean over all n_critics of Q(s, a)``. Target critics follow by Polyak
    averaging every ``target_update_interval`` critic updates.

    The subsets come from a ``torch.Generator`` seeded from ``seed`` (and from the number of
    critic updates done, so a loaded model continues deterministically); with ``seed=None`` from
    fresh OS entropy.

    Counters: :attr:`critic_updates` and :attr:`actor_updates` (totals, saved with the model).
    Logger keys: those of SAC (``train/critic_loss``, ``train/actor_loss``, ``train/ent_coef``,
    ``train/ent_coef_loss``, ``train/n_updates`` = critic updates) plus ``train/actor_updates``.
    ``train/actor_loss`` is recorded only by calls that updated the actor.

    Arguments are those of :class:`stable_baselines3.SAC` (the paper's settings: ``gradient_steps
    = 20``, ``tau=0.005``, ``batch_size=256``, ``learning_starts=5000``), plus:

    :param n_critics: ``N``, the ensemble size, given to the policy as
        ``policy_kwargs["n_critics"]``. None: ``policy_kwargs["n_critics"]`` if given, else 10.
        Giving both with different values is an error.
    :param subset_size: ``M``, the number of target critics the minimum is taken over
        (``1 <= M <= N``; 2 in the paper; ``M = N`` is SAC's minimum over all critics).
    :param actor_update_interval: None (default) for one actor and temperature update per
        :meth:`train` call, i.e. every ``gradient_steps`` critic updates; an integer ``k >= 1``
        to update them after every ``k``-th critic update (counted over the whole run).
    """

    checkpoint_counters = ("critic_updates", "actor_updates")  # kept by tm_algos.checkpoint

    policy: SACPolicy

    def __init__(
        self,
        policy: str | type[SACPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        ent_coef: str | float = "auto",
        target_update_interval: int = 1,
        target_entropy: str | float = "auto",
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        use_sde_at_warmup: bool = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        n_critics: int | None = None,
        subset_size: int = 2,
        actor_update_interval: int | None = None,
        _init_setup_model: bool = True,
    ) -> None:
        kwargs = dict(policy_kwargs or {})
        n = _resolve_n_critics(n_critics, kwargs.get("n_critics"))
        kwargs["n_critics"] = n
        self.subset_size = _check_subset_size(subset_size, n)
        self.actor_update_interval = _check_interval(actor_update_interval)
        if not _is_int(target_update_interval) or target_update_interval < 1:
            raise InvalidValueError(
                f"target_update_interval={target_update_interval!r}: expected an integer >= 1 "
                "(critic updates between two Polyak updates of the target critics)"
            )
        self.critic_updates = 0
        self.actor_updates = 0
        self._subset_rng = th.Generator()
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            ent_coef=ent_coef,
            target_update_interval=target_update_interval,
            target_entropy=target_entropy,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            use_sde_at_warmup=use_sde_at_warmup,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        if _init_setup_model:
            self._setup_model()

    @property
    def n_critics(self) -> int:
        """``N``, the number of critics (from ``policy_kwargs``)."""
        return int(self.policy_kwargs.get("n_critics", DEFAULT_N_CRITICS))

    def _setup_model(self) -> None:
        # Checked again here: SB3's load() sets attributes directly before calling this.
        self.subset_size = _check_subset_size(self.subset_size, self.n_critics)
        self.actor_update_interval = _check_interval(self.actor_update_interval)
        super()._setup_model()

    def set_random_seed(self, seed: int | None = None) -> None:
        """Seed as SAC does, and seed the critic-subset generator (see the class doc)."""
        super().set_random_seed(seed)
        updates = int(getattr(self, "critic_updates", 0))
        if seed is None:
            sequence = np.random.SeedSequence()
        else:
            sequence = np.random.SeedSequence([int(seed) & (2**64 - 1), updates])
        state = int(sequence.generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1)
        self._subset_rng = th.Generator()
        self._subset_rng.manual_seed(state)

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)

        ent_coefs: list[float] = []
        ent_coef_losses: list[float] = []
        actor_losses: list[float] = []
        critic_losses: list[float] = []
        assert self.replay_buffer is not None, "train() needs a replay buffer (learn() makes it)"

        for step in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = data.discounts if data.discounts is not None else self.gamma
            if self.use_sde:
                self.actor.reset_noise()
            ent_coef = self._ent_coef_value()
            ent_coefs.append(ent_coef.item())

            with th.no_grad():
                next_actions, next_log_prob = self.actor.action_log_prob(data.next_observations)
                next_q = th.stack(self.critic_target(data.next_observations, next_actions))
                next_v = redq_target_q(next_q, self.subset_size, self._subset_rng)
                next_v = next_v - ent_coef * next_log_prob.reshape(-1, 1)
                target_q = data.rewards + (1 - data.dones) * discounts * next_v

            current_q = self.critic(data.observations, data.actions)
            critic_loss = 0.5 * th.stack([F.mse_loss(q, target_q) for q in current_q]).sum()
            critic_losses.append(critic_loss.item())
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()
            self.critic_updates += 1

            if self.critic_updates % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

            if self._actor_due(step, gradient_steps):
                actor_loss, ent_loss = self._update_actor(data.observations, ent_coef)
                actor_losses.append(actor_loss)
                if ent_loss is not None:
                    ent_coef_losses.append(ent_loss)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/actor_updates", self.actor_updates, exclude="tensorboard")
        if ent_coefs:
            self.logger.record("train/ent_coef", np.mean(ent_coefs))
        if critic_losses:
            self.logger.record("train/critic_loss", np.mean(critic_losses))
        if actor_losses:
            self.logger.record("train/actor_loss", np.mean(actor_losses))
        if ent_coef_losses:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))

    def _ent_coef_value(self) -> th.Tensor:
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            return th.exp(self.log_ent_coef.detach())
        return self.ent_coef_tensor

    def _actor_due(self, step: int, gradient_steps: int) -> bool:
        if self.actor_update_interval is None:
            return step == gradient_steps - 1
        return self.critic_updates % self.actor_update_interval == 0

    def _update_actor(self, obs: Any, ent_coef: th.Tensor) -> tuple[float, float | None]:
        """One actor step on the mean of all critics, then one temperature step (if learned)."""
        actions_pi, log_prob = self.actor.action_log_prob(obs)
        log_prob = log_prob.reshape(-1, 1)
        q_pi = th.cat(self.critic(obs, actions_pi), dim=1).mean(dim=1, keepdim=True)
        actor_loss = (ent_coef * log_prob - q_pi).mean()
        self.actor.optimizer.zero_grad()
        actor_loss.backward()
        self.actor.optimizer.step()
        self.actor_updates += 1

        ent_loss: float | None = None
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            assert isinstance(self.target_entropy, float)
            loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
            self.ent_coef_optimizer.zero_grad()
            loss.backward()
            self.ent_coef_optimizer.step()
            ent_loss = loss.item()
        return actor_loss.item(), ent_loss

    def learn(
        self: SelfREDQ,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "REDQ",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfREDQ:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        # The generator is rebuilt from the seed and critic_updates by set_random_seed.
        return [*super()._excluded_save_params(), "_subset_rng"]


def _resolve_n_critics(n_critics: object, from_kwargs: object) -> int:
    for name, value in (("n_critics", n_critics), ('policy_kwargs["n_critics"]', from_kwargs)):
        if value is not None and (not _is_int(value) or int(value) < 1):  # type: ignore[call-overload]
            raise InvalidValueError(f"{name}={value!r}: expected an integer >= 1 (REDQ uses 10)")
    if n_critics is not None and from_kwargs is not None and n_critics != from_kwargs:
        raise InvalidValueError(
            f"n_critics={n_critics!r} disagrees with policy_kwargs['n_critics']={from_kwargs!r}; "
            "give the ensemble size once (either argument) or the same value in both"
        )
    chosen = n_critics if n_critics is not None else from_kwargs
    return DEFAULT_N_CRITICS if chosen is None else int(chosen)  # type: ignore[call-overload]


def _check_interval(value: object) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or int(value) < 1:  # type: ignore[call-overload]
        raise InvalidValueError(
            f"actor_update_interval={value!r}: expected None (one actor update per train() "
            "call, i.e. every gradient_steps critic updates) or an integer k >= 1 (one actor "
            "update every k critic updates)"
        )
    return int(value)  # type: ignore[call-overload]
