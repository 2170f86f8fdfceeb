"""Demonstrations during RL: a replay mix (RLPD) and a behaviour-cloning term for the actor (TD3+BC).

Two ways to keep an off-policy learner close to demonstrations while it trains, both set by a
preset's ``[demos]`` table (:class:`tm_algos.presets.DemosConfig`):

* **The replay mix** (``demos.mix``, RLPD's "symmetric sampling" at 0.5): the demonstration
  transitions live in a buffer of their own, and every gradient batch of every off-policy
  algorithm (SAC, TQC, REDQ, CrossQ, FastImageSAC; LIDAR and image observations alike) draws
  ``mix × batch_size`` of its rows from it and the rest from the online replay buffer
  (:class:`tm_algos.buffers.DemoMix`, attached to the model's
  :class:`~tm_algos.buffers.FrameStackReplayBuffer`). The critics learn the value of the
  demonstrated actions while the agent's own transitions accumulate; the online buffer holds
  only the agent's driving. It needs transitions (rewards and next observations): ``.tmrec``
  recordings have them; the DAgger dataset does not (it keeps observations and the teacher's
  labels only), so after DAgger the mix uses the ``--demos`` recordings alone, if any.
* **The behaviour-cloning term** (``demos.bc_weight``): at every actor update the actor's loss
  gains ``bc_weight × ||pi(s) - a||²`` on a batch of labelled states, ``pi(s)`` being the
  deterministic (squashed mean) action and ``a`` the demonstrated one, in [-1, 1], with
  :func:`~tm_algos.imitation.bc.action_error_loss` (released pedals: a hinge, as in behaviour
  cloning). The states come from the recordings or, after DAgger, from the aggregated
  teacher-labelled dataset (the states the student visited, labelled by the teacher). It is
  added to the actor's gradient just before the actor's optimizer steps (a PyTorch step
  pre-hook), so it works with every SAC-family algorithm without changing their updates. A
  :class:`~tm_algos.fast_sac.FastSACPolicy`'s shared encoder stays trained by the critics only.

Nothing here is saved in a checkpoint: on ``--resume`` the recordings are read again (their
paths are in ``run.json``); the DAgger dataset is not kept, so a resumed fine-tuning
regularises towards the recordings only (or not at all without them).

>>> from tm_algos.imitation.mix import install_demo_terms
>>> terms = install_demo_terms(model, preset.demos, demos=demos)  # doctest: +SKIP
>>> terms.describe()  # doctest: +SKIP
'replay mix: 50% of every batch from 300 demonstration transitions'
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from torch.utils.hooks import RemovableHandle

from tm_algos.buffers import DemoMix, FrameStackReplayBuffer
from tm_algos.errors import InvalidTypeError, InvalidValueError
from tm_algos.imitation.bc import action_error_loss, deterministic_action
from tm_algos.imitation.dataset import ImitationDataset

if TYPE_CHECKING:
    from tm_algos.imitation.demos import Demonstrations
    from tm_algos.presets import DemosConfig

__all__ = ["BCRegulariser", "DemoTerms", "install_demo_terms"]

_log = logging.getLogger(__name__)


class BCRegulariser:
    """Adds ``weight × ||pi(s) - a||²`` on ``dataset``'s labelled states to every actor update.

    :meth:`attach` registers a step pre-hook on the actor's optimizer (``model.actor.optimizer``):
    whenever the algorithm steps it (after back-propagating its own actor loss), the hook draws
    ``batch_size`` labelled states, back-propagates ``weight × loss`` into the same gradients,
    and the optimizer then steps on the sum, as if the actor loss had held the term. With
    ``weight = 0`` nothing is added (and nothing is computed).

    :param model: a SAC-family model (its policy has an ``actor`` with an ``optimizer``).
    :param dataset: observations labelled with the actions to stay close to (environment
        units, as recorded).
    :param weight: the term's weight, >= 0.
    :param batch_size: states per actor update (default: the model's ``batch_size``).
    :param seed: seed of the batch draws.
    :param pedal_dims: dimensions that act only above 0 (tm-gym: gas 0, brake 1).
    :param pedal_margin: how far below 0 a released pedal is pushed.
    """

    def __init__(
        self,
        model: BaseAlgorithm,
        dataset: ImitationDataset,
        weight: float,
        *,
        batch_size: int | None = None,
        seed: int = 0,
        pedal_dims: Sequence[int] = (0, 1),
        pedal_margin: float = 0.1,
    ) -> None:
        actor = getattr(model.policy, "actor", None)
        if actor is None or getattr(actor, "optimizer", None) is None:
            raise InvalidTypeError(
                f"{type(model).__name__}'s policy has no actor with an optimizer: the "
                "behaviour-cloning term (demos.bc_weight) works with the SAC family (sac, tqc, "
                "redq, crossq, fast_sac); set demos.bc_weight = 0"
            )
        if not (math.isfinite(weight) and weight >= 0):
            raise InvalidValueError(f"bc_weight={weight!r}: expected a finite number >= 0")
        if len(dataset) == 0:
            raise InvalidValueError(
                "the behaviour-cloning term has no labelled state to learn from; give "
                "demonstrations (tm-train --demos) or set demos.bc_weight = 0"
            )
        size = batch_size if batch_size is not None else int(getattr(model, "batch_size", 256))
        if size < 1:
            raise InvalidValueError(f"batch_size={batch_size!r}: expected a positive integer")
        self.model = model
        self.dataset = dataset
        self.weight = float(weight)
        self.batch_size = size
        self.pedal_dims = list(pedal_dims)
        self.pedal_margin = float(pedal_margin)
        self.optimizer: th.optim.Optimizer = actor.optimizer
        self._rng = np.random.default_rng(seed)
        self._handle: RemovableHandle | None = None
        self.updates = 0
        """Actor updates the term was added to."""
        self.last_loss = float("nan")
        """The unweighted term of the last update."""

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def attach(self) -> None:
        """Add the term to every actor update from now on (once, however often called)."""
        if self._handle is None and self.weight > 0:
            self._handle = self.optimizer.register_step_pre_hook(self._before_step)

    def detach(self) -> None:
        """Stop adding the term."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def loss(self) -> th.Tensor:
        """The unweighted term on a fresh batch of labelled states, with gradients."""
        policy = self.model.policy
        obs, labels = self.dataset.sample(self.batch_size, self._rng)
        tensors, _ = policy.obs_to_tensor(dict(obs))
        target = th.as_tensor(
            policy.scale_action(np.asarray(labels, dtype=np.float32)), device=policy.device
        ).clamp(-1.0, 1.0)
        mean, _ = deterministic_action(policy, tensors, train_encoder=False)
        return action_error_loss(mean, target, self.pedal_dims, self.pedal_margin)

    def _before_step(self, optimizer: th.optim.Optimizer, args: Any, kwargs: Any) -> None:
        del optimizer, args, kwargs
        with th.enable_grad():
            loss = self.loss()
            (self.weight * loss).backward()
        self.last_loss = float(loss.item())
        self.updates += 1
        logger = getattr(self.model, "_logger", None)
        if logger is not None:
            logger.record("train/bc_loss", self.last_loss)


@dataclass
class DemoTerms:
    """What :func:`install_demo_terms` attached to a model."""

    mix: DemoMix | None = None
    regulariser: BCRegulariser | None = None
    bc_source: str = ""
    """Where the behaviour-cloning states come from ("demonstrations", "teacher dataset")."""

    def describe(self) -> str:
        """One line for the log."""
        parts = []
        if self.mix is not None:
            parts.append(
                f"replay mix: {self.mix.fraction:.0%} of every batch from "
                f"{self.mix.demos.size()} demonstration transitions"
            )
        if self.regulariser is not None:
            parts.append(
                f"behaviour-cloning term: weight {self.regulariser.weight:g} on "
                f"{len(self.regulariser.dataset)} states of the {self.bc_source}"
            )
        return "; ".join(parts) or "no demonstration term"

    def remove(self, model: BaseAlgorithm) -> None:
        """Detach both terms from ``model``."""
        buffer = getattr(model, "replay_buffer", None)
        if self.mix is not None and isinstance(buffer, FrameStackReplayBuffer):
            buffer.attach_demos(None)
        if self.regulariser is not None:
            self.regulariser.detach()


def install_demo_terms(
    model: BaseAlgorithm,
    config: DemosConfig,
    *,
    demos: Demonstrations | None = None,
    teacher: ImitationDataset | None = None,
    seed: int = 0,
) -> DemoTerms:
    """Attach the replay mix and the behaviour-cloning term that ``config`` asks for.

    The mix (``config.mix > 0``) needs ``demos`` and an off-policy model: on-policy models, or
    a run without recordings, get none (logged). The behaviour-cloning term
    (``config.bc_weight > 0``) regularises towards ``teacher`` (the DAgger dataset) when given,
    else towards ``demos``; without either it is skipped (logged).

    Raises:
        InvalidValueError: the model's replay buffer cannot mix (not a
            :class:`~tm_algos.buffers.FrameStackReplayBuffer`), or the demonstrations do not
            match it.
        InvalidTypeError: ``bc_weight > 0`` for a model without a SAC-style actor.
    """
    terms = DemoTerms()
    buffer = getattr(model, "replay_buffer", None)
    if config.mix > 0 and demos is not None:
        if buffer is None:
            _log.info(
                "demos.mix = %g: %s has no replay buffer; the demonstrations only pre-train it",
                config.mix,
                type(model).__name__,
            )
        else:
            mix = DemoMix(demos.replay_buffer(buffer), config.mix)
            buffer.attach_demos(mix)
            terms.mix = mix
    if config.bc_weight > 0:
        if teacher is not None and len(teacher) > 0:
            dataset, terms.bc_source = teacher, "teacher dataset"
        elif demos is not None:
            dataset, terms.bc_source = demos.dataset, "demonstrations"
        else:
            _log.warning(
                "demos.bc_weight = %g but there is nothing to regularise towards (no "
                "--demos recordings, no DAgger dataset in this process): the term is off",
                config.bc_weight,
            )
            return terms
        reg = BCRegulariser(model, dataset, config.bc_weight, seed=seed)
        reg.attach()
        terms.regulariser = reg
    return terms
