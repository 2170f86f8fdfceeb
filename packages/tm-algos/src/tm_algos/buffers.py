"""Replay buffers that keep memory per transition small for frame-stacked observations.

Stable-Baselines3's :class:`~stable_baselines3.common.buffers.DictReplayBuffer` stores every
observation and every next observation in full: for TrackMania's ``images`` observation (four
64×64 grayscale frames) that is about 32 KB per transition, although consecutive stacks share
all but one frame. :class:`FrameStackReplayBuffer` stores each frame once and rebuilds the
stacks when sampling, exactly, across episode boundaries, at about 4.4 KB per transition.

A :class:`DemoMix` attached to it (:meth:`FrameStackReplayBuffer.attach_demos`) makes every
sampled batch hold a fixed share of demonstration transitions, kept in a second buffer (RLPD's
"symmetric sampling"); :mod:`tm_algos.imitation.mix` builds it from ``.tmrec`` recordings.

Example:

>>> import gymnasium as gym, tm_gym
>>> from stable_baselines3 import SAC
>>> from tm_algos.buffers import FrameStackReplayBuffer
>>> env = gym.make("TrackMania-Sim-v0", obs_type="images")
>>> model = SAC(
...     "MultiInputPolicy",
...     env,
...     buffer_size=10_000,
...     replay_buffer_class=FrameStackReplayBuffer,
... )
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from tm_algos.errors import InvalidValueError

__all__ = ["DemoMix", "FrameStackReplayBuffer", "concat_samples"]

_RESAMPLE_ROUNDS = 8


def concat_samples(
    first: DictReplayBufferSamples, second: DictReplayBufferSamples
) -> DictReplayBufferSamples:
    """One batch: the rows of ``first`` followed by those of ``second`` (same keys)."""
    if (first.discounts is None) != (second.discounts is None):
        raise InvalidValueError(
            "concat_samples: one batch has n-step discounts and the other has none; sample "
            "both from buffers of the same kind"
        )
    discounts = None
    if first.discounts is not None and second.discounts is not None:
        discounts = th.cat([first.discounts, second.discounts])
    return DictReplayBufferSamples(
        observations={
            k: th.cat([v, second.observations[k]]) for k, v in first.observations.items()
        },
        actions=th.cat([first.actions, second.actions]),
        next_observations={
            k: th.cat([v, second.next_observations[k]]) for k, v in first.next_observations.items()
        },
        dones=th.cat([first.dones, second.dones]),
        rewards=th.cat([first.rewards, second.rewards]),
        discounts=discounts,
    )


class DemoMix:
    """Demonstration transitions that a :class:`FrameStackReplayBuffer` mixes into its samples.

    Every ``sample(batch_size)`` of the buffer it is attached to draws ``count(batch_size)``
    transitions (``fraction × batch_size``, rounded) uniformly from ``demos`` and the rest from
    the buffer's own (online) transitions; the demonstration rows come last in the batch.
    ``fraction=0.5`` is RLPD's symmetric sampling; 0 draws only online transitions.

    Nothing of it is saved in a checkpoint (the demonstrations are read again from their
    recordings on resume): it is not JSON data, so :mod:`tm_algos.checkpoint` leaves it out.

    :param demos: a buffer holding the demonstration transitions (at least one).
    :param fraction: the share of every batch taken from ``demos``, in [0, 1].
    """

    def __init__(self, demos: FrameStackReplayBuffer, fraction: float) -> None:
        value: object = fraction
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0.0 <= float(value) <= 1.0
        ):
            raise InvalidValueError(
                f"fraction={fraction!r}: expected a number from 0 to 1 (the share of every "
                "batch drawn from the demonstrations; 0.5 as in RLPD, 0 for none)"
            )
        if demos.size() == 0:
            raise InvalidValueError(
                "the demonstration buffer is empty; add the demonstrations' transitions first"
            )
        self.demos = demos
        self.fraction = float(fraction)
        self.rows_sampled = 0
        """Demonstration rows drawn so far (over all batches)."""
        self.batches = 0
        """Batches sampled so far."""
        self.last_count = 0
        """Demonstration rows of the last batch (its last rows)."""

    def count(self, batch_size: int) -> int:
        """How many of a batch of ``batch_size`` come from the demonstrations."""
        return min(int(np.floor(self.fraction * batch_size + 0.5)), batch_size)


class FrameStackReplayBuffer(DictReplayBuffer):
    """A Dict replay buffer that stores each frame of a frame-stacked key once.

    The observation key ``frame_key`` holds a stack of the last ``H`` frames of the episode,
    oldest first, along axis 0: shape ``(H * frame_channels, ...)`` (``(4, 64, 64)`` for
    tm-gym's grayscale ``images``, ``(12, 64, 64)`` in RGB with ``frame_channels=3``,
    ``(4, 19)`` for ``lidar``). At an episode start the stack holds ``H`` copies of the first
    frame, as tm-gym (and TMRL) fill it at reset. The buffer stores only the newest frame of
    each observation, plus the newest frame of each episode's last next observation (the
    terminal observation that SB3 takes from ``infos[i]["terminal_observation"]``), in a ring
    of frames per environment; it rebuilds both stacks of a transition when sampling. The other
    keys (speed, gear, rpm, the action history, ...) are small and stored per transition, as in
    :class:`~stable_baselines3.common.buffers.DictReplayBuffer`.

    An episode of ``T`` transitions takes ``T + 1`` frames. The frame ring holds
    ``frame_capacity`` frames per environment (by default ``buffer_size / n_envs`` plus 1/16
    more, plus a few): with episodes of 16 steps or more on average, every transition in the
    buffer can be sampled. With shorter episodes the oldest transitions lose their frames
    before they are overwritten; they are never sampled (the buffer behaves as a slightly
    smaller one). :meth:`sampleable` says which transitions can be sampled.

    Every :meth:`add` checks that the observations follow this convention (each stack is
    either ``H`` copies of its newest frame or the previous next observation of its
    environment, and each next observation is its observation shifted by one frame) and
    raises ``ValueError`` when they do not, so a sample always equals what was added.

    :param buffer_size: maximum number of transitions (over all environments).
    :param observation_space: a ``Dict`` space holding ``frame_key``.
    :param action_space: the action space.
    :param device: PyTorch device of the sampled tensors.
    :param n_envs: number of parallel environments.
    :param optimize_memory_usage: must be False (this buffer already stores each frame once).
    :param handle_timeout_termination: as in SB3: a done due to a time limit
        (``info["TimeLimit.truncated"]``) is not a termination for bootstrapping.
    :param frame_key: the frame-stacked observation key (``"images"`` or ``"lidar"``).
    :param frame_channels: channels of one frame along axis 0 (1 grayscale, 3 RGB).
    :param frame_capacity: frames kept per environment; None for the default above.

    Demonstrations: :meth:`attach_demos` gives the buffer a :class:`DemoMix`, after which every
    :meth:`sample` holds its share of demonstration transitions (the last rows of the batch).
    """

    demo_mix: DemoMix | None = None
    """The demonstrations mixed into every sample (see :meth:`attach_demos`), or None."""

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space[Any],
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        frame_key: str = "images",
        frame_channels: int = 1,
        frame_capacity: int | None = None,
    ) -> None:
        if optimize_memory_usage:
            raise InvalidValueError(
                "optimize_memory_usage=True: FrameStackReplayBuffer already stores each frame "
                "once; leave optimize_memory_usage=False (the default of SAC/TD3/DQN)"
            )
        if not isinstance(observation_space, spaces.Dict):
            raise InvalidValueError(
                f"observation_space is {type(observation_space).__name__}; expected a "
                "gymnasium.spaces.Dict (use SB3's ReplayBuffer for other spaces)"
            )
        if frame_key not in observation_space.spaces:
            raise InvalidValueError(
                f"frame_key={frame_key!r} is not in the observation space "
                f"(keys {sorted(observation_space.spaces)}); pass the frame-stacked key, "
                "e.g. replay_buffer_kwargs=dict(frame_key='lidar') for tm-gym's LIDAR envs"
            )
        stack_space = observation_space.spaces[frame_key]
        fc: object = frame_channels
        if isinstance(fc, bool) or not isinstance(fc, int) or fc < 1:
            raise InvalidValueError(f"frame_channels={frame_channels!r}: expected an integer >= 1")
        if (
            not isinstance(stack_space, spaces.Box)
            or len(stack_space.shape) < 2
            or stack_space.shape[0] % frame_channels != 0
        ):
            shape = getattr(stack_space, "shape", None)
            raise InvalidValueError(
                f"observation_space[{frame_key!r}] is {stack_space} (shape {shape}); expected "
                f"a Box stacking frames along axis 0, shape (H * frame_channels, ...) with "
                f"frame_channels={frame_channels} and at least 2 dimensions, e.g. (4, 64, 64) "
                "or (4, 19); choose the stacked key with frame_key=... and the channels of "
                "one frame with frame_channels=..."
            )
        # BaseBuffer's constructor only (DictReplayBuffer's would allocate every stack twice).
        super(ReplayBuffer, self).__init__(
            buffer_size, observation_space, action_space, device, n_envs=n_envs
        )
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.frame_key = frame_key
        self.frame_channels = frame_channels
        self.hist_len = stack_space.shape[0] // frame_channels
        self.frame_shape: tuple[int, ...] = (frame_channels, *stack_space.shape[1:])
        min_capacity = self.hist_len + 2
        cap: object = frame_capacity
        if cap is None:
            cap = self.buffer_size + -(-self.buffer_size // 16) + min_capacity
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < min_capacity:
            raise InvalidValueError(
                f"frame_capacity={cap!r}: expected an integer >= "
                f"{min_capacity} (history length + 2), or None for the default"
            )
        self.frame_capacity: int = cap

        n = self.n_envs
        dtype = stack_space.dtype
        self.frames: NDArray[Any] = np.zeros((cap, n, *self.frame_shape), dtype=dtype)
        # Absolute (never wrapped) frame numbers, per environment: the newest frame of each
        # transition's observation, and the first frame of its episode.
        self.frame_ids = np.zeros((self.buffer_size, n), dtype=np.int64)
        self.episode_starts = np.zeros((self.buffer_size, n), dtype=np.int64)
        small = {k: s for k, s in observation_space.spaces.items() if k != frame_key}
        self.observations = {
            k: np.zeros((self.buffer_size, n, *self.obs_shape[k]), dtype=s.dtype)
            for k, s in small.items()
        }
        self.next_observations = {
            k: np.zeros((self.buffer_size, n, *self.obs_shape[k]), dtype=s.dtype)
            for k, s in small.items()
        }
        self.actions = np.zeros(
            (self.buffer_size, n, self.action_dim),
            dtype=self._maybe_cast_dtype(action_space.dtype),
        )
        self.rewards = np.zeros((self.buffer_size, n), dtype=np.float32)
        self.dones = np.zeros((self.buffer_size, n), dtype=np.float32)
        self.timeouts = np.zeros((self.buffer_size, n), dtype=np.float32)
        self._reset_episodes()

    def _reset_episodes(self) -> None:
        n = self.n_envs
        self._head = np.full(n, -1, dtype=np.int64)  # newest frame written, per env
        self._start = np.zeros(n, dtype=np.int64)  # first frame of the current episode
        self._ended = np.ones(n, dtype=bool)  # the last transition ended its episode

    def reset(self) -> None:
        super().reset()
        self._reset_episodes()

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays (frames, per-transition keys and bookkeeping)."""
        arrays = [
            self.frames,
            self.frame_ids,
            self.episode_starts,
            self.actions,
            self.rewards,
            self.dones,
            self.timeouts,
            *self.observations.values(),
            *self.next_observations.values(),
        ]
        return sum(a.nbytes for a in arrays)

    # -- adding -------------------------------------------------------------------------
    def _stack_ids(self, newest: NDArray[np.int64], start: NDArray[np.int64]) -> NDArray[np.int64]:
        """Absolute frame numbers (..., H) of the stacks whose newest frame is ``newest``."""
        back = np.arange(self.hist_len - 1, -1, -1, dtype=np.int64)
        return np.maximum(newest[..., None] - back, start[..., None])

    def _gather(self, ids: NDArray[np.int64], envs: NDArray[np.int64]) -> NDArray[Any]:
        """Stacks (B, H * C, ...) from absolute frame numbers ``ids`` (B, H) of ``envs`` (B,)."""
        f = self.frames[ids % self.frame_capacity, envs[:, None]]
        return f.reshape(len(envs), self.hist_len * self.frame_channels, *self.frame_shape[1:])

    def _check_stacks(self, stack: NDArray[Any], next_stack: NDArray[Any]) -> NDArray[np.bool_]:
        """Which envs start an episode with this observation; raises if a stack is neither a
        fresh stack nor the continuation of the env's previous next observation."""
        n, c = self.n_envs, self.frame_channels
        envs = np.arange(n, dtype=np.int64)
        fresh = np.all(
            stack == np.tile(stack[:, -c:], (1, self.hist_len) + (1,) * (stack.ndim - 2)),
            axis=tuple(range(1, stack.ndim)),
        )
        running = ~self._ended
        cont = np.zeros(n, dtype=bool)
        if running.any():
            expected = self._gather(self._stack_ids(self._head, self._start), envs)
            cont = running & np.all(stack == expected, axis=tuple(range(1, stack.ndim)))
        new = ~cont  # ended envs, and running ones whose env was reset without a done
        bad = new & ~fresh
        if bad.any():
            e = int(np.flatnonzero(bad)[0])
            raise InvalidValueError(
                f"obs[{self.frame_key!r}] of env {e} is not a frame stack this buffer can "
                f"rebuild: expected either {self.hist_len} copies of its newest frame (an "
                "episode start) or the previous next_obs of that env shifted by one frame; "
                "FrameStackReplayBuffer needs observations stacked as tm-gym stacks them "
                "(oldest first, filled with the first frame at reset). Check frame_key and "
                "frame_channels, or use SB3's DictReplayBuffer for other stackings"
            )
        shifted = (
            np.all(next_stack[:, :-c] == stack[:, c:], axis=tuple(range(1, stack.ndim)))
            if self.hist_len > 1
            else np.ones(n, dtype=bool)
        )
        if not shifted.all():
            e = int(np.flatnonzero(~shifted)[0])
            raise InvalidValueError(
                f"next_obs[{self.frame_key!r}] of env {e} is not obs[{self.frame_key!r}] "
                "shifted by one frame (oldest dropped, one new frame appended); "
                "FrameStackReplayBuffer needs consecutive observations of one episode "
                "(with a VecEnv, next_obs at a done is info['terminal_observation'], as "
                "SB3's off-policy algorithms pass it)"
            )
        return new

    def add(  # type: ignore[override]
        self,
        obs: dict[str, NDArray[Any]],
        next_obs: dict[str, NDArray[Any]],
        action: NDArray[Any],
        reward: NDArray[Any],
        done: NDArray[Any],
        infos: list[dict[str, Any]],
    ) -> None:
        n = self.n_envs
        shape = (n, *self.obs_shape[self.frame_key])
        stack = np.asarray(obs[self.frame_key])
        next_stack = np.asarray(next_obs[self.frame_key])
        for name, arr in (("obs", stack), ("next_obs", next_stack)):
            if arr.shape != shape:
                raise InvalidValueError(
                    f"{name}[{self.frame_key!r}] has shape {arr.shape}; expected {shape} "
                    f"(n_envs={n} stacks of {self.obs_shape[self.frame_key]})"
                )
        new = self._check_stacks(stack, next_stack)

        c = self.frame_channels
        envs = np.arange(n, dtype=np.int64)
        newest = np.where(new, self._head + 1, self._head)
        self._start = np.where(new, newest, self._start)
        if new.any():
            self.frames[newest[new] % self.frame_capacity, envs[new]] = stack[new][:, -c:]
        self.frames[(newest + 1) % self.frame_capacity, envs] = next_stack[:, -c:]
        self._head = newest + 1
        self.frame_ids[self.pos] = newest
        self.episode_starts[self.pos] = self._start

        for key in self.observations:
            self.observations[key][self.pos] = np.asarray(obs[key]).reshape(
                (n, *self.obs_shape[key])
            )
            self.next_observations[key][self.pos] = np.asarray(next_obs[key]).reshape(
                (n, *self.obs_shape[key])
            )
        self.actions[self.pos] = np.asarray(action).reshape((n, self.action_dim))
        self.rewards[self.pos] = np.asarray(reward)
        self.dones[self.pos] = np.asarray(done)
        self._ended = np.asarray(done, dtype=bool).reshape(n).copy()
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = np.array(
                [info.get("TimeLimit.truncated", False) for info in infos]
            )
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    # -- sampling -----------------------------------------------------------------------
    def sampleable(
        self, batch_inds: NDArray[np.int64], env_indices: NDArray[np.int64]
    ) -> NDArray[np.bool_]:
        """Whether the transitions at ``(batch_inds, env_indices)`` still have all their frames
        (False only for the oldest transitions when episodes are short, see the class doc)."""
        oldest = np.maximum(
            self.frame_ids[batch_inds, env_indices] - (self.hist_len - 1),
            self.episode_starts[batch_inds, env_indices],
        )
        return oldest > self._head[env_indices] - self.frame_capacity

    def attach_demos(self, mix: DemoMix | None) -> None:
        """Mix ``mix``'s demonstrations into every sample from now on (None: stop mixing).

        Raises:
            InvalidValueError: the demonstrations' buffer stores other observations, actions
                or frames than this one (the message says which).
        """
        if mix is not None:
            demos = mix.demos
            for what, theirs, ours in (
                ("observation space", demos.observation_space, self.observation_space),
                ("action space", demos.action_space, self.action_space),
                ("frame key", demos.frame_key, self.frame_key),
                ("frame channels", demos.frame_channels, self.frame_channels),
            ):
                if theirs != ours:
                    raise InvalidValueError(
                        f"the demonstrations' {what} is {theirs}, this buffer's is {ours}; "
                        "build the demonstration buffer with this buffer's settings (record "
                        "with the policy's observation settings)"
                    )
        self.demo_mix = mix

    def sample(  # type: ignore[override]
        self, batch_size: int, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        """Sample ``batch_size`` transitions uniformly among those that can be sampled.

        Draws indices as SB3's DictReplayBuffer does (so the same NumPy seed samples the same
        transitions when all can be sampled), then redraws those that lost their frames. With
        a :class:`DemoMix` attached, its share of the batch (the last rows) is drawn from the
        demonstrations instead.
        """
        mix = self.demo_mix
        k = mix.count(batch_size) if mix is not None else 0
        if mix is None or k == 0:
            return self._sample_online(batch_size, env)
        demo = mix.demos._sample_online(k, env)
        mix.rows_sampled += k
        mix.batches += 1
        mix.last_count = k
        if k == batch_size:
            return demo
        return concat_samples(self._sample_online(batch_size - k, env), demo)

    def _sample_online(
        self, batch_size: int, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        """``batch_size`` of this buffer's own transitions (see :meth:`sample`)."""
        upper = self.buffer_size if self.full else self.pos
        if upper == 0:
            raise InvalidValueError(
                "sample() called on an empty replay buffer; add transitions first"
            )
        # NumPy's global generator, as SB3's buffers use (SB3's set_random_seed seeds it)
        batch_inds = np.random.randint(0, upper, size=batch_size)  # noqa: NPY002
        env_indices = np.random.randint(0, high=self.n_envs, size=batch_size)  # noqa: NPY002
        bad = ~self.sampleable(batch_inds, env_indices)
        for _ in range(_RESAMPLE_ROUNDS):
            if not bad.any():
                break
            k = int(bad.sum())
            batch_inds[bad] = np.random.randint(0, upper, size=k)  # noqa: NPY002
            env_indices[bad] = np.random.randint(0, high=self.n_envs, size=k)  # noqa: NPY002
            bad = ~self.sampleable(batch_inds, env_indices)
        if bad.any():  # very short episodes: draw from the list of sampleable transitions
            b, e = np.meshgrid(np.arange(upper), np.arange(self.n_envs), indexing="ij")
            ok = self.sampleable(b.ravel(), e.ravel())
            pick = np.random.choice(np.flatnonzero(ok), size=int(bad.sum()))  # noqa: NPY002
            batch_inds[bad], env_indices[bad] = b.ravel()[pick], e.ravel()[pick]
        return self._get_samples(batch_inds, env=env, env_indices=env_indices)

    def _get_samples(  # type: ignore[override]
        self,
        batch_inds: NDArray[np.int64],
        env: VecNormalize | None = None,
        env_indices: NDArray[np.int64] | None = None,
    ) -> DictReplayBufferSamples:
        """The transitions at ``(batch_inds, env_indices)`` with their stacks rebuilt
        (``env_indices`` drawn at random, as SB3 does, when None)."""
        batch_inds = np.asarray(batch_inds, dtype=np.int64)
        if env_indices is None:
            env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))  # noqa: NPY002
        env_indices = np.asarray(env_indices, dtype=np.int64)
        newest = self.frame_ids[batch_inds, env_indices]
        start = self.episode_starts[batch_inds, env_indices]
        obs = {k: v[batch_inds, env_indices] for k, v in self.observations.items()}
        next_obs = {k: v[batch_inds, env_indices] for k, v in self.next_observations.items()}
        obs[self.frame_key] = self._gather(self._stack_ids(newest, start), env_indices)
        next_obs[self.frame_key] = self._gather(self._stack_ids(newest + 1, start), env_indices)
        # keep the observation space's key order
        order = list(self.observation_space.spaces)
        obs_ = self._normalize_obs({k: obs[k] for k in order}, env)
        next_obs_ = self._normalize_obs({k: next_obs[k] for k in order}, env)
        assert isinstance(obs_, dict) and isinstance(next_obs_, dict)
        dones = self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])
        rewards = self.rewards[batch_inds, env_indices].reshape(-1, 1)
        return DictReplayBufferSamples(
            observations={k: self.to_torch(v) for k, v in obs_.items()},
            actions=self.to_torch(self.actions[batch_inds, env_indices]),
            next_observations={k: self.to_torch(v) for k, v in next_obs_.items()},
            dones=self.to_torch(dones).reshape(-1, 1),
            rewards=self.to_torch(self._normalize_reward(rewards, env)),
        )
