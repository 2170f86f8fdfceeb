"""A fast SAC for image observations: one encoder, trained by the critics only.

Stable-Baselines3's ``SAC("MultiInputPolicy", env)`` on tm-gym's ``images`` observation gives
the actor, the critics and the target critics a NatureCNN each, and every gradient step runs
about five CNN forward passes and three backward passes over the batch (the actor's loss also
back-propagates through the critics' CNN, into gradients that are then thrown away).
:class:`FastImageSAC` trains the same soft actor-critic with the recipe of SAC-AE and DrQ:

* one encoder (:class:`~tm_algos.extractors.TMCNNExtractor`, ``arch="small"``, 64 features by
  default), shared by the actor and the critics and updated by the critic loss only: the actor
  and the temperature see its features detached;
* the target critics keep their own copy of the encoder, an exponential moving average of it
  (``tau``), as the rest of the target critics;
* per gradient step the encoder runs once with gradients (the observations) and the target
  encoder once without (the next observations); the next actions come from the target
  encoder's features (``next_actions_from_target=False``: from the online encoder, one more CNN
  pass) and the actor loss reuses the observation features;
* the actor loss back-propagates into the actions only (the critic heads' weights are frozen
  during that backward pass);
* channels-last convolutions (about twice as fast a backward pass of the first convolution on
  CPU), the sampled uint8 frames going to float32 channels-last in one compiled pass;
* Adam with ``fused=True`` where the installed PyTorch supports it;
* optional DrQ random-shift augmentation (``augment_shift`` pixels), applied once per sampled
  batch, inside the same compiled pass, so that both encoders see the same shifted frames.

Each of these is measured by ``benchmarks/train_throughput.py --ablations``.

The policy is a :class:`FastSACPolicy`, an SB3 ``SACPolicy`` whose actor and critic hold the
same encoder object: ``predict``, ``save``/``load`` and :func:`tm_algos.policy.export_policy`
work as for SB3's SAC. Without a ``replay_buffer_class`` the model uses
:class:`~tm_algos.buffers.FrameStackReplayBuffer` for a tm-gym ``images`` observation.
``torch.set_num_threads`` is left to the caller.

>>> import gymnasium as gym, tm_gym
>>> from tm_algos.fast_sac import FastImageSAC
>>> env = gym.make("TrackMania-Sim-v0", obs_type="images")
>>> model = FastImageSAC("MultiInputPolicy", env, buffer_size=10_000)
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from numba import njit
from numpy.typing import NDArray
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.distributions import StateDependentNoiseDistribution
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, Actor, SACPolicy
from torch import nn
from torch.nn import functional as F

from tm_algos.buffers import FrameStackReplayBuffer
from tm_algos.errors import InvalidTypeError, InvalidValueError
from tm_algos.extractors import TMCNNExtractor, random_shift

__all__ = ["FastImageSAC", "FastSACPolicy", "fused_adam_supported"]

logger = logging.getLogger(__name__)

_DEFAULT_EXTRACTOR_KWARGS: dict[str, Any] = {"arch": "small", "features_dim": 64}


def fused_adam_supported() -> bool:
    """Whether this PyTorch accepts ``torch.optim.Adam(..., fused=True)`` for CPU tensors."""
    if "fused" not in inspect.signature(th.optim.Adam).parameters:
        return False
    try:
        p = nn.Parameter(th.zeros(1))
        th.optim.Adam([p], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _check_shift(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValueError(
            f"augment_shift={value!r}: expected an integer >= 0 (pixels of padding for DrQ's "
            "random-shift augmentation of the sampled frames; 0 turns it off, 4 as in DrQ)"
        )
    return value


@njit(cache=True, nogil=True)
def _shift_to_channels_last(
    src: NDArray[np.uint8], dy: NDArray[np.int64], dx: NDArray[np.int64], out: NDArray[np.float32]
) -> None:  # pragma: no cover (compiled)
    """``out[b, i, j, c] = src[b, c, i + dy[b], j + dx[b]] / 255``, indices clamped to the frame
    (a replicate-padded shift), in one pass: (B, C, H, W) uint8 to (B, H, W, C) float32."""
    n, channels, height, width = src.shape
    scale = np.float32(1.0 / 255.0)
    for b in range(n):
        for c in range(channels):
            for i in range(height):
                si = min(max(i + dy[b], 0), height - 1)
                for j in range(width):
                    sj = min(max(j + dx[b], 0), width - 1)
                    out[b, i, j, c] = src[b, c, si, sj] * scale


def _use_channels_last(module: nn.Module) -> None:
    """Store the module's 4-D weights (convolutions) in channels-last order, in place."""
    with th.no_grad():
        for param in module.parameters():
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=th.channels_last)


def _prepare_images(images: th.Tensor, shift: int, channels_last: bool) -> th.Tensor:
    """Frames (B, C, H, W) as float32 in [0, 1], randomly shifted by up to ``shift`` pixels
    (DrQ), in channels-last memory order if asked. uint8 CPU frames take one compiled pass."""
    if images.dtype == th.uint8 and images.device.type == "cpu" and channels_last:
        n = images.shape[0]
        if shift > 0:
            offsets = th.randint(-shift, shift + 1, (2, n)).numpy()
        else:
            offsets = np.zeros((2, n), dtype=np.int64)
        src = images.contiguous().numpy()
        out = np.empty((n, *src.shape[2:], src.shape[1]), dtype=np.float32)
        _shift_to_channels_last(src, offsets[0], offsets[1], out)
        return th.from_numpy(out).permute(0, 3, 1, 2)
    x = images.float()
    x = x.mul_(1.0 / 255.0) if images.dtype == th.uint8 else x.div(255.0)
    if shift > 0:
        x = random_shift(x, shift)
    return x.contiguous(memory_format=th.channels_last) if channels_last else x


class FastSACPolicy(SACPolicy):
    """SAC policy whose actor and critics share one encoder, trained by the critic loss.

    The arguments are those of SB3's ``MultiInputPolicy`` for SAC, with other defaults:
    ``features_extractor_class`` :class:`~tm_algos.extractors.TMCNNExtractor` with
    ``features_extractor_kwargs={"arch": "small"}``, and Adam with ``fused=True`` where PyTorch
    supports it. ``share_features_extractor`` must stay True (the point of this policy).

    The encoder is in the critic's optimizer and not in the actor's; the target critic owns a
    separate encoder. :class:`FastImageSAC`'s training step relies on this layout: use the
    policy with it (SB3's ``SAC`` would compute the critic's features without gradients).

    :param augment_shift: pixels of DrQ random-shift augmentation applied by
        :class:`FastImageSAC` to the sampled ``images`` (0 for none). It never changes actions:
        acting and evaluation see the frames as they are.
    :param channels_last: keep the encoders' convolution weights (and the training batches) in
        channels-last memory order, faster on CPU. It does not change the outputs.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        use_sde: bool = False,
        log_std_init: float = -3,
        use_expln: bool = False,
        clip_mean: float = 2.0,
        features_extractor_class: type[BaseFeaturesExtractor] = TMCNNExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = True,
        augment_shift: int = 0,
        channels_last: bool = True,
    ) -> None:
        if share_features_extractor is not True:
            raise InvalidValueError(
                f"FastSACPolicy: share_features_extractor={share_features_extractor!r}; this "
                "policy always shares its encoder between actor and critics (trained by the "
                "critic loss); for separate encoders use SB3's SAC with 'MultiInputPolicy'"
            )
        self.augment_shift = _check_shift(augment_shift)
        if not isinstance(channels_last, bool):
            raise InvalidValueError(f"channels_last={channels_last!r}: expected True or False")
        self.channels_last = channels_last
        if features_extractor_kwargs is None and features_extractor_class is TMCNNExtractor:
            features_extractor_kwargs = dict(_DEFAULT_EXTRACTOR_KWARGS)
        if optimizer_kwargs is None and optimizer_class is th.optim.Adam:
            optimizer_kwargs = {"fused": True} if fused_adam_supported() else {}
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            use_sde=use_sde,
            log_std_init=log_std_init,
            use_expln=use_expln,
            clip_mean=clip_mean,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            n_critics=n_critics,
            share_features_extractor=True,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        self.actor = self.make_actor()
        encoder = self.actor.features_extractor
        self.critic = self.make_critic(features_extractor=encoder)
        self.critic_target = self.make_critic(features_extractor=None)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.set_training_mode(False)
        if self.channels_last:
            _use_channels_last(encoder)
            _use_channels_last(self.critic_target.features_extractor)
        encoder_ids = {id(p) for p in encoder.parameters()}
        actor_params = [p for p in self.actor.parameters() if id(p) not in encoder_ids]
        lr = lr_schedule(1)
        self.actor.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            actor_params, lr=lr, **self.optimizer_kwargs
        )
        self.critic.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.critic.parameters(), lr=lr, **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            share_features_extractor=True,
            augment_shift=self.augment_shift,
            channels_last=self.channels_last,
        )
        return data

    def prepare(self, obs: PyTorchObs) -> PyTorchObs:
        """A batch of observation tensors as the encoders take it, preprocessed once: pixels to
        [0, 1] (in channels-last memory order when the policy uses it, randomly shifted when it
        augments), the other entries as SB3 preprocesses them."""
        space = self.observation_space
        if not isinstance(obs, dict) or not isinstance(space, spaces.Dict):
            return preprocess_obs(obs, space, self.normalize_images)
        out: dict[str, th.Tensor] = {}
        for key, value in obs.items():
            sub = space.spaces[key]
            if value.dim() == 4 and is_image_space(sub) and self.normalize_images:
                out[key] = _prepare_images(value, self.augment_shift, self.channels_last)
            else:
                prepared = preprocess_obs(value, sub, self.normalize_images)
                assert isinstance(prepared, th.Tensor)
                out[key] = prepared
        return out

    @property
    def encoder(self) -> BaseFeaturesExtractor:
        """The shared encoder (the actor's and the critic's features extractor)."""
        return self.critic.features_extractor

    @property
    def target_encoder(self) -> BaseFeaturesExtractor:
        """The target critic's encoder, an exponential moving average of :attr:`encoder`."""
        return self.critic_target.features_extractor


def _actor_from_features(actor: Actor, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """Sampled squashed action and its log-probability (B, 1), from encoder features."""
    latent = actor.latent_pi(features)
    mean = actor.mu(latent)
    if isinstance(actor.action_dist, StateDependentNoiseDistribution):
        actions, log_prob = actor.action_dist.log_prob_from_params(
            mean, actor.log_std, latent_sde=latent
        )
    else:
        log_std = th.clamp(actor.log_std(latent), LOG_STD_MIN, LOG_STD_MAX)
        actions, log_prob = actor.action_dist.log_prob_from_params(mean, log_std)
    return actions, log_prob.reshape(-1, 1)


def _q_values(critic: ContinuousCritic, features: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """Q-values (B, n_critics) of the critic heads, from encoder features."""
    x = th.cat([features, actions], dim=1)
    return th.cat([q(x) for q in critic.q_networks], dim=1)


class FastImageSAC(SAC):
    """SAC with one shared image encoder trained by the critics (see the module docstring).

    Takes SB3 ``SAC``'s arguments. The policy is :class:`FastSACPolicy`
    (``"MultiInputPolicy"`` names it). Without ``replay_buffer_class``, a ``spaces.Dict``
    observation holding a 3-D ``images`` Box (tm-gym's ``obs_type="images"``) gets
    :class:`~tm_algos.buffers.FrameStackReplayBuffer`; other spaces get SB3's default.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MultiInputPolicy": FastSACPolicy,
        "FastSACPolicy": FastSACPolicy,
    }
    policy: FastSACPolicy

    def __init__(
        self,
        *args: Any,
        next_actions_from_target: bool = True,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs["_init_setup_model"] = False
        super().__init__(*args, **kwargs)
        self.next_actions_from_target = next_actions_from_target
        self.warmup_with_policy = False
        """Act with the policy's stochastic actions before ``learning_starts`` instead of
        uniformly random ones: set it when the policy was pre-trained (by imitation)."""
        if _init_setup_model:
            self._setup_model()

    @staticmethod
    def _stacked_images(space: spaces.Space[Any]) -> bool:
        if not isinstance(space, spaces.Dict):
            return False
        images = space.spaces.get("images")
        return isinstance(images, spaces.Box) and len(images.shape) == 3

    def _setup_model(self) -> None:
        if self.replay_buffer_class is None and self._stacked_images(self.observation_space):
            self.replay_buffer_class = FrameStackReplayBuffer
        super()._setup_model()
        if not isinstance(self.policy, FastSACPolicy):
            raise InvalidTypeError(
                f"FastImageSAC needs a FastSACPolicy, got {type(self.policy).__name__}; pass "
                "'MultiInputPolicy' (or FastSACPolicy) as the policy, or use SB3's SAC for "
                "other policies"
            )

    def _sample_action(
        self,
        learning_starts: int,
        action_noise: ActionNoise | None = None,
        n_envs: int = 1,
    ) -> tuple[NDArray[Any], NDArray[Any]]:
        if self.warmup_with_policy:
            learning_starts = 0  # the warm-up steps follow the (pre-trained) policy
        return super()._sample_action(learning_starts, action_noise, n_envs)

    def _prepare(self, obs: PyTorchObs) -> PyTorchObs:
        """A sampled batch as the encoders take it (see :meth:`FastSACPolicy.prepare`)."""
        return self.policy.prepare(obs)

    def _entropy_coef(self) -> th.Tensor:
        """The temperature of this gradient step (detached)."""
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            return th.exp(self.log_ent_coef.detach())
        return self.ent_coef_tensor

    def _target_q(
        self, data: ReplayBufferSamples, next_obs: PyTorchObs, ent_coef: th.Tensor
    ) -> th.Tensor:
        """The soft Bellman target (B, 1), from the target encoder's features of the next
        observations (one CNN pass, or two when the next actions come from the online one)."""
        discounts = data.discounts if data.discounts is not None else self.gamma
        policy = self.policy
        with th.no_grad():
            next_target = policy.target_encoder(next_obs)
            if self.next_actions_from_target:
                next_features = next_target
            else:
                next_features = policy.encoder(next_obs)
            next_actions, next_log_prob = _actor_from_features(self.actor, next_features)
            next_q = _q_values(self.critic_target, next_target, next_actions)
            next_q = next_q.min(dim=1, keepdim=True)[0] - ent_coef * next_log_prob
            return data.rewards + (1 - data.dones) * discounts * next_q

    def _critic_step(
        self, features: th.Tensor, actions: th.Tensor, target_q: th.Tensor
    ) -> th.Tensor:
        """One step of the critics and the shared encoder; the loss."""
        critic = self.critic
        current_q = _q_values(critic, features, actions)
        loss = (
            0.5
            * F.mse_loss(current_q, target_q.expand_as(current_q), reduction="sum")
            / len(target_q)
        )
        critic.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        critic.optimizer.step()
        return loss

    def _temperature_step(self, log_prob: th.Tensor) -> th.Tensor | None:
        """One step of the learned temperature, if it is learned; the loss."""
        if self.ent_coef_optimizer is None or self.log_ent_coef is None:
            return None
        assert isinstance(self.target_entropy, float)
        loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach())
        loss = loss.mean()
        self.ent_coef_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.ent_coef_optimizer.step()
        return loss

    def _actor_step(
        self,
        features: th.Tensor,
        actions: th.Tensor,
        log_prob: th.Tensor,
        ent_coef: th.Tensor,
        head_params: list[nn.Parameter],
    ) -> th.Tensor:
        """One step of the actor on detached ``features``: the loss back-propagates into the
        actions only (the critic heads' weights are frozen meanwhile); the loss."""
        for p in head_params:
            p.requires_grad_(False)
        try:
            q_pi = _q_values(self.critic, features, actions).min(dim=1, keepdim=True)[0]
            loss = (ent_coef * log_prob - q_pi).mean()
            self.actor.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            for p in head_params:
                p.requires_grad_(True)
        self.actor.optimizer.step()
        return loss

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        policy = self.policy
        policy.set_training_mode(True)
        actor, critic, target = self.actor, self.critic, self.critic_target
        optimizers = [actor.optimizer, critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        head_params = [p for q in critic.q_networks for p in q.parameters()]
        assert self.replay_buffer is not None
        buffer: ReplayBuffer = self.replay_buffer

        ent_coef_losses, ent_coefs, actor_losses, critic_losses = [], [], [], []
        for step in range(gradient_steps):
            data = buffer.sample(batch_size, env=self._vec_normalize_env)
            if self.use_sde:
                actor.reset_noise()
            obs = self._prepare(data.observations)
            next_obs = self._prepare(data.next_observations)

            features = policy.encoder(obs)
            ent_coef = self._entropy_coef()
            target_q = self._target_q(data, next_obs, ent_coef)
            critic_loss = self._critic_step(features, data.actions, target_q)

            # Actor and temperature, on detached features.
            detached = features.detach()
            actions_pi, log_prob = _actor_from_features(actor, detached)
            ent_coef_loss = self._temperature_step(log_prob)
            if ent_coef_loss is not None:
                ent_coef_losses.append(ent_coef_loss.item())
            ent_coefs.append(float(ent_coef.item()))
            actor_loss = self._actor_step(detached, actions_pi, log_prob, ent_coef, head_params)

            critic_losses.append(critic_loss.item())
            actor_losses.append(actor_loss.item())
            if step % self.target_update_interval == 0:
                polyak_update(critic.parameters(), target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean(ent_coefs))
        self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))
        if ent_coef_losses:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))
