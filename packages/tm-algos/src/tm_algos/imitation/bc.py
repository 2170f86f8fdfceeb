"""Behaviour cloning: supervised regression of a policy's deterministic action on a teacher's.

The student is a normal SB3 policy of a preset (so that :func:`tm_algos.policy.export_policy`,
``tm-eval`` and ``tm-dist`` take it unchanged). What is regressed is the action the policy
takes when it acts deterministically:

* SAC family (``sac``, ``tqc``, ``redq``, ``fast_sac``, ``crossq``): ``tanh(mu)``, the squashed
  mean of the actor's Gaussian. The loss is taken *after* the tanh, so targets at the bounds
  (full gas, ±1 steer) pull the mean outwards with a gradient that fades smoothly instead of
  asking for an infinite pre-tanh value (what an ``atanh`` target would do). The actor's
  ``log_std`` head is pulled towards ``log_std_target`` (a small weight), so that SAC, if it
  fine-tunes the student, starts from a policy that explores a little rather than from the
  untrained head's σ ≈ 1.
* PPO: the Gaussian mean, clipped to the action space as PPO's deterministic action is.

With ``history_dropout`` > 0, that share of every training batch gets the past-action history
(the ``actions`` observation) of another sample of the batch. A teacher's actions change
slowly, so the last action alone predicts the next label well on teacher-driven states, and
a student can learn to repeat it and ignore the frames (the "copycat" failure of behaviour
cloning with history): it then never starts a turn on its own. Swapped histories carry no
information about the label, so only the frames explain it.

Gas and brake (the ``pedal_dims``) act only above 0: a target of 0 means "any value ≤ 0", so a
prediction there is only penalised above ``-pedal_margin`` (a hinge), which keeps the student
off the pedal with a margin rather than balancing on the threshold.

>>> from tm_algos.imitation.bc import BehaviourCloning
>>> bc = BehaviourCloning(model.policy)  # doctest: +SKIP
>>> loss = bc.train(dataset, gradient_steps=100, batch_size=256)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from numpy.typing import NDArray
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN
from torch import nn

from tm_algos.errors import InvalidTypeError, InvalidValueError
from tm_algos.fast_sac import FastSACPolicy
from tm_algos.imitation.augment import FrameAugment
from tm_algos.imitation.dataset import ImitationDataset

__all__ = ["BehaviourCloning", "action_error_loss", "deterministic_action", "effective_actions"]

Obs = Mapping[str, NDArray[Any]]

_LOG_STD_WEIGHT = 0.01


def effective_actions(actions: NDArray[Any], pedal_dims: Sequence[int] = (0, 1)) -> NDArray[Any]:
    """What the car does with ``actions`` (…, A): pedals below 0 are released (0), the rest as is.

    The distance between two actions' effective forms is the error that matters for driving.
    """
    out = np.array(actions, dtype=np.float32, copy=True)
    dims = list(pedal_dims)
    out[..., dims] = np.maximum(out[..., dims], 0.0)
    return out


def deterministic_action(
    policy: BasePolicy, obs: Any, *, train_encoder: bool = True
) -> tuple[th.Tensor, th.Tensor]:
    """``policy``'s deterministic action (B, A) and log standard deviation, with gradients.

    ``obs`` is a batch of observation tensors as SB3 samples them (not preprocessed). SAC
    family: ``tanh(mu)`` in [-1, 1]; PPO: the Gaussian mean (unclipped). With
    ``train_encoder=False`` a :class:`~tm_algos.fast_sac.FastSACPolicy`'s shared encoder runs
    without gradients (it is trained by the critics only).
    """
    if hasattr(policy, "actor"):
        actor: Any = policy.actor
        if isinstance(policy, FastSACPolicy):
            with th.set_grad_enabled(train_encoder and th.is_grad_enabled()):
                features = actor.features_extractor(policy.prepare(obs))
        else:
            features = actor.extract_features(obs, actor.features_extractor)
        latent = actor.latent_pi(features)
        mean = th.tanh(actor.mu(latent))
        if actor.use_sde:
            log_std = actor.log_std.expand_as(mean)
        else:
            log_std = th.clamp(actor.log_std(latent), LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std
    assert isinstance(policy, ActorCriticPolicy)
    ppo_features = policy.extract_features(obs)
    latent_pi = policy.mlp_extractor.forward_actor(
        ppo_features if not isinstance(ppo_features, tuple) else ppo_features[0]
    )
    ppo_mean = policy.action_net(latent_pi)
    ppo_log_std: th.Tensor = policy.log_std
    return ppo_mean, ppo_log_std.expand_as(ppo_mean)


def action_error_loss(
    pred: th.Tensor,
    target: th.Tensor,
    pedal_dims: Sequence[int] = (0, 1),
    pedal_margin: float = 0.1,
) -> th.Tensor:
    """Mean over the batch of the squared error summed over the action dimensions, both in
    [-1, 1]; on a ``pedal_dims`` dimension whose target is released (<= 0) only a prediction
    above ``-pedal_margin`` counts (a hinge), see the module docstring."""
    err = pred - target
    if pedal_dims:
        dims = list(pedal_dims)
        released = target[:, dims] <= 0.0
        hinge = th.relu(pred[:, dims] + pedal_margin)
        err = err.clone()
        err[:, dims] = th.where(released, hinge, err[:, dims])
    return err.pow(2).sum(dim=1).mean()


class BehaviourCloning:
    """Trains ``policy``'s deterministic action towards labelled actions (see the module doc).

    :param policy: an SB3 policy: a SAC-family policy (with an ``actor``) or a non-recurrent
        ``ActorCriticPolicy``. Its parameters are trained in place.
    :param learning_rate: Adam's step size.
    :param log_std_target: the log standard deviation the Gaussian is pulled towards.
    :param pedal_dims: action dimensions that act only above 0 (tm-gym: gas 0, brake 1).
    :param pedal_margin: how far below 0 a released pedal is pushed.
    :param augment: random warps and lighting changes applied to the image observations of
        every training batch (:class:`~tm_algos.imitation.augment.FrameAugment`); never to
        :meth:`predict`.
    :param history_dropout: share of each training batch whose ``actions`` history is taken
        from another sample (see the module docstring); never in :meth:`predict`.
    """

    def __init__(
        self,
        policy: BasePolicy,
        *,
        learning_rate: float = 1e-3,
        log_std_target: float = -2.0,
        pedal_dims: Sequence[int] = (0, 1),
        pedal_margin: float = 0.1,
        augment: FrameAugment | None = None,
        history_dropout: float = 0.0,
    ) -> None:
        if isinstance(policy, RecurrentActorCriticPolicy):
            raise InvalidTypeError(
                f"{type(policy).__name__} is recurrent: behaviour cloning here trains "
                "feed-forward policies only; use a SAC-family or PPO preset"
            )
        self.squashed = hasattr(policy, "actor")
        if not self.squashed and not isinstance(policy, ActorCriticPolicy):
            raise InvalidTypeError(
                f"policy is {type(policy).__name__}: expected a SAC-family policy (with an "
                "actor) or a PPO ActorCriticPolicy"
            )
        if not (learning_rate > 0):
            raise InvalidValueError(f"learning_rate={learning_rate!r}: expected a positive float")
        if not 0.0 <= history_dropout <= 1.0:
            raise InvalidValueError(
                f"history_dropout={history_dropout!r}: expected a share in [0, 1], e.g. 0.5"
            )
        self.history_dropout = float(history_dropout)
        self.policy = policy
        self.log_std_target = float(log_std_target)
        self.pedal_dims = list(pedal_dims)
        self.pedal_margin = float(pedal_margin)
        self.augment = augment if augment is not None and augment.active else None
        module: nn.Module = policy.actor if self.squashed else policy  # type: ignore[assignment]
        self._params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = th.optim.Adam(self._params, lr=learning_rate)
        self.steps = 0

    # -- the policy's deterministic action -------------------------------------------------

    def _tensors(self, obs: Obs) -> Any:
        tensors, _ = self.policy.obs_to_tensor(dict(obs))
        return tensors

    def _swap_history(self, tensors: Any, rng: np.random.Generator | None) -> Any:
        """``tensors`` with the ``actions`` of a :attr:`history_dropout` share of the samples
        replaced by those of other samples of the batch."""
        if not isinstance(tensors, dict) or "actions" not in tensors:
            return tensors
        history = tensors["actions"]
        n = int(history.shape[0])
        rng = rng if rng is not None else np.random.default_rng()
        picked = np.flatnonzero(rng.random(n) < self.history_dropout)
        if n < 2 or len(picked) == 0:
            return tensors
        # another sample for each picked one: an offset of 1..n-1 never lands on itself
        donors = (picked + rng.integers(1, n, size=len(picked))) % n
        swapped = history.clone()
        swapped[th.as_tensor(picked)] = history[th.as_tensor(donors)]
        return {**tensors, "actions": swapped}

    def _augmented(self, tensors: Any, rng: np.random.Generator | None) -> Any:
        """``tensors`` with :attr:`augment` applied to every uint8 image entry and, with
        :attr:`history_dropout`, some action histories swapped."""
        if self.history_dropout > 0:
            tensors = self._swap_history(tensors, rng)
        augment = self.augment
        if augment is None:
            return tensors
        space = self.policy.observation_space

        def frames(value: Any, sub: spaces.Space[Any]) -> bool:
            return (
                isinstance(value, th.Tensor)
                and value.dim() == 4
                and value.dtype == th.uint8
                and is_image_space(sub)
            )

        if isinstance(space, spaces.Dict) and isinstance(tensors, dict):
            return {
                key: augment(value, rng) if frames(value, space.spaces[key]) else value
                for key, value in tensors.items()
            }
        return augment(tensors, rng) if frames(tensors, space) else tensors

    def _mean_and_log_std(
        self, obs: Obs, *, augment: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[th.Tensor, th.Tensor]:
        """The deterministic action in [-1, 1] (B, A) and the log standard deviation."""
        tensors = self._tensors(obs)
        if augment:
            tensors = self._augmented(tensors, rng)
        return deterministic_action(self.policy, tensors)

    def predict(self, obs: Obs) -> NDArray[np.float32]:
        """The policy's deterministic actions (B, A) in [-1, 1], without gradients."""
        training = self.policy.training
        self.policy.set_training_mode(False)
        with th.no_grad():
            mean, _ = self._mean_and_log_std(obs)
        self.policy.set_training_mode(training)
        out: NDArray[np.float32] = mean.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)
        return out

    # -- the loss --------------------------------------------------------------------------

    def loss(
        self,
        obs: Obs,
        labels: NDArray[Any],
        *,
        augment: bool = False,
        rng: np.random.Generator | None = None,
    ) -> th.Tensor:
        """The behaviour-cloning loss of a batch (see the module docstring), with gradients;
        with ``augment``, the frames go through :attr:`augment` first (drawing from ``rng``)."""
        target = th.as_tensor(
            self.policy.scale_action(np.asarray(labels, dtype=np.float32)),
            device=self.policy.device,
        ).clamp(-1.0, 1.0)
        mean, log_std = self._mean_and_log_std(obs, augment=augment, rng=rng)
        pred = mean if self.squashed else mean.clamp(-1.5, 1.5)
        loss = action_error_loss(pred, target, self.pedal_dims, self.pedal_margin)
        return loss + _LOG_STD_WEIGHT * (log_std - self.log_std_target).pow(2).mean()

    def step(self, obs: Obs, labels: NDArray[Any], rng: np.random.Generator | None = None) -> float:
        """One gradient step on a batch (augmented, if :attr:`augment`, drawing from ``rng``);
        the loss before the step."""
        self.policy.set_training_mode(True)
        loss = self.loss(obs, labels, augment=True, rng=rng)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.item())

    def train(
        self,
        dataset: ImitationDataset,
        gradient_steps: int,
        batch_size: int,
        rng: np.random.Generator | None = None,
    ) -> float:
        """``gradient_steps`` steps on batches drawn from ``dataset``; the mean loss (nan for 0)."""
        rng = rng if rng is not None else np.random.default_rng()
        losses = [self.step(*dataset.sample(batch_size, rng), rng) for _ in range(gradient_steps)]
        self.policy.set_training_mode(False)
        return float(np.mean(losses)) if losses else float("nan")

    def action_error(self, obs: Obs, labels: NDArray[Any]) -> float:
        """Mean absolute difference between the effective actions (pedals below 0 released) of
        the policy and of ``labels``: 0 is a perfect copy."""
        pred = effective_actions(self.predict(obs), self.pedal_dims)
        want = effective_actions(np.asarray(labels, dtype=np.float32), self.pedal_dims)
        return float(np.abs(pred - want).mean())
