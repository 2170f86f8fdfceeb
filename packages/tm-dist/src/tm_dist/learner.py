"""The trainer's learning core, independent of the network: episodes in, gradient steps, weights out.

:class:`Learner` holds a tm-algos model built from a preset, its replay buffer and one episode
decoder. :meth:`Learner.ingest` takes the :class:`~tm_dist.wire.EpisodeChunk` s that workers
send; an episode's transitions enter the buffer, in order, once its final chunk has arrived
(a worker that dies mid-episode loses that episode and nothing else). :meth:`Learner.train`
runs the gradient steps the sample budget allows (at most ``max_train_steps_per_env_step``
per environment step collected), and :meth:`Learner.weights` gives the policy as a
:class:`~tm_dist.wire.Weights` message (safetensors bytes + JSON).

On-policy PPO (``algo.name = "ppo"``) keeps only episodes collected with the current weights
(the others are dropped and counted in ``stats.stale_episodes``), and updates once it holds
``n_steps`` transitions.

Workers are not trusted (:mod:`tm_dist.validation`): every chunk is checked against the env's
spaces and for finite values, and every finished episode's results for plausibility, before
anything enters the buffer, the counters or ``RUN/best``. A chunk that fails is dropped with its
episode, counted per worker (``stats.invalid_by_worker``) and logged with the worker's name; a
worker with ``ban_after`` invalid chunks among its last ``BAN_WINDOW`` is disconnected: its
later chunks are dropped unread and :meth:`Learner.take_new_bans` names it once, so that the
trainer tells the worker to stop. A gradient step that raises or leaves a non-finite weight is
undone: the last good weights and optimizer states come back, ``stats.skipped_updates`` counts
it, and training goes on.

Nothing non-finite is persisted: an episode's NaN or infinite statistics become None when it
comes in (``stats.non_finite_stats``), weights and optimizer states that went non-finite are
replaced by the last good ones before a checkpoint, a state still not finite is not written
(``stats.refused_checkpoints``; the last good checkpoint stays, and pruning never removes it),
and a resumed learner starts from the newest good checkpoint, its metadata checked.

Half-received episodes are held in bounded memory: at most
``LearnerConfig.max_pending_per_worker`` per worker, ``max_pending_episodes`` and
``max_pending_bytes`` in total; beyond, the oldest are dropped, counted in
``stats.pending_dropped`` and logged (at most every ``LOG_EVERY_S``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from tm_algos.checkpoint import (
    STATE_NAME,
    CheckpointError,
    NonFiniteStateError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from tm_algos.factory import env_kwargs_of, make_model
from tm_algos.policy import describe_policy, export_policy, policy_to_bytes, write_policy
from tm_algos.presets import Preset
from tm_algos.registry import ALGORITHMS, algorithm
from tm_dist.codec import CodecError, EpisodeDecoder, Transitions
from tm_dist.errors import InvalidValueError, StateError
from tm_dist.ppo_batch import PPOBatcher
from tm_dist.validation import (
    ChunkRules,
    InvalidChunkError,
    LapRules,
    check_episode,
    check_transitions,
    expert_lap_floor,
)
from tm_dist.wire import EpisodeChunk, Weights
from tm_gym.core.actions import action_space
from tm_gym.core.settings import EnvSettings, observation_space

__all__ = ["Learner", "LearnerConfig", "LearnerStats", "SpacesEnv", "spaces_of"]

_log = logging.getLogger(__name__)


def spaces_of(preset: Preset) -> tuple[spaces.Dict, spaces.Box, EnvSettings]:
    """Observation and action spaces of the preset's environment, without creating it."""
    kwargs = env_kwargs_of(preset)
    names = {f.name for f in dataclasses.fields(EnvSettings)}
    settings = EnvSettings(**{k: v for k, v in kwargs.items() if k in names})
    return observation_space(settings), action_space(), settings


class SpacesEnv(gym.Env[Any, Any]):
    """An environment that only has spaces: the trainer's model never steps one itself."""

    def __init__(self, obs_space: spaces.Dict, act_space: spaces.Box, settings: Any) -> None:
        self.observation_space = obs_space
        self.action_space = act_space
        self.settings = settings  # read by tm_algos.policy for the policy file

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        raise StateError("the trainer's placeholder environment cannot step: workers drive")


@dataclass(frozen=True)
class LearnerConfig:
    """How the trainer paces learning, broadcasting and checkpointing."""

    max_train_steps_per_env_step: float | None = None
    """Cap on gradient steps per environment step; None: the preset's own ratio."""
    broadcast_every: int = 1000
    checkpoint_every: int = 20_000
    total_timesteps: int | None = None
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_abs_reward: float = 1e4
    """Largest believable reward of one step (:class:`~tm_dist.validation.ChunkRules`)."""
    min_lap_s: float | None = None
    """The physical minimum lap; None: half the expert's lap on a simulator track, no floor on
    the live game (:func:`~tm_dist.validation.expert_lap_floor`)."""
    ban_after: int = 10
    """Disconnect a worker with this many invalid chunks among its last ``BAN_WINDOW``."""
    max_pending_per_worker: int = 8
    """Half-received episodes kept per worker; beyond, its oldest is dropped (an honest worker
    has one in flight, a few after a reconnection)."""
    max_pending_episodes: int = 1024
    """Half-received episodes kept in total, all workers together; beyond, the oldest goes."""
    max_pending_bytes: int = 256 * 2**20
    """Memory held by half-received episodes in total (array bytes plus a per-chunk overhead
    estimate); beyond, the oldest episodes are dropped."""

    def __post_init__(self) -> None:
        for name in ("ban_after", "max_pending_per_worker", "max_pending_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValueError(f"{name}={value!r}: expected an int >= 1")
        if self.max_pending_bytes < 2**20:
            raise InvalidValueError(
                f"max_pending_bytes={self.max_pending_bytes!r}: expected at least 1 MiB "
                f"({2**20} bytes); the default is 256 MiB"
            )


@dataclass
class LearnerStats:
    """Counters shown by the trainer and logged to TensorBoard."""

    env_steps: int = 0
    train_steps: int = 0
    episodes: int = 0
    test_episodes: int = 0
    dropped_episodes: int = 0
    stale_episodes: int = 0
    finishes: int = 0
    best_lap: float | None = None
    best_test_lap: float | None = None
    first_finish_s: float | None = None
    last_return: float | None = None
    last_progress: float | None = None
    last_test: dict[str, Any] | None = None
    episodes_by_worker: dict[str, int] = field(default_factory=dict)
    duplicate_chunks: int = 0
    invalid_chunks: int = 0
    invalid_by_worker: dict[str, int] = field(default_factory=dict)
    banned_workers: list[str] = field(default_factory=list)
    banned_chunks: int = 0
    """Chunks of disconnected workers, dropped unread."""
    skipped_updates: int = 0
    """Gradient updates undone because they raised or left non-finite weights."""
    pending_dropped: int = 0
    """Half-received episodes dropped to keep the trainer's memory bounded
    (``LearnerConfig.max_pending_*``); also counted in ``dropped_episodes``."""
    non_finite_stats: int = 0
    """Episode statistics that were NaN or infinite, replaced by None when the episode came in
    (e.g. ``lap_time = inf`` from a worker of an earlier version)."""
    refused_checkpoints: int = 0
    """Checkpoints not written because the state was not finite (the last good one stays)."""


@dataclass
class _Pending:
    chunks: list[Transitions]
    version: int
    last_seen: float = field(default_factory=time.monotonic)
    nbytes: int = 0


CHUNK_OVERHEAD_BYTES = 2048
"""What a held chunk costs beyond its arrays (Python objects), for ``max_pending_bytes``."""
LOG_EVERY_S = 30.0
"""Repeated warnings (memory-bound drops, non-finite statistics) are logged at most this often."""


PENDING_TIMEOUT_S = 300.0
"""A half-received episode with no new chunk for this long is dropped (its worker died)."""
BAN_WINDOW = 100
"""How many of a worker's latest chunks ``LearnerConfig.ban_after`` counts over."""


class Learner:
    """Builds the model of ``preset`` and learns from the episodes workers send."""

    def __init__(
        self,
        preset: Preset,
        run_dir: str | Path,
        *,
        config: LearnerConfig | None = None,
        seed: int = 0,
        device: str = "auto",
        tensorboard: bool = True,
        resume: bool = False,
    ) -> None:
        self.preset = preset
        self.run_dir = Path(run_dir)
        self.config = config or LearnerConfig()
        obs_space, act_space, settings = spaces_of(preset)
        self.observation_space = obs_space
        self.settings = settings
        venv = DummyVecEnv([lambda: SpacesEnv(obs_space, act_space, settings)])
        spec = algorithm(preset.algo.name)
        if spec.recurrent:
            trainable = [s.name for s in ALGORITHMS.values() if not s.recurrent]
            raise InvalidValueError(
                f"algo.name = {spec.name!r}: tm-dist trains {', '.join(trainable)} (a recurrent "
                f"policy's state does not travel with the episodes); train {spec.class_name} "
                "with tm-train"
            )
        self.model: BaseAlgorithm = make_model(preset, venv, seed=seed, device=device)
        self.off_policy = spec.off_policy
        formats = ["tensorboard"] if tensorboard else []
        self.model.set_logger(configure(str(self.run_dir / "tb"), formats))
        self.decoder = EpisodeDecoder(obs_space, act_space)
        self.action_space = act_space
        self.chunk_rules = ChunkRules(max_abs_reward=self.config.max_abs_reward)
        self._lap_rules: LapRules | None = None
        self._recent: dict[str, deque[bool]] = {}  # per worker: were its latest chunks invalid
        self._rejected: dict[tuple[str, int], None] = {}  # episodes dropped for a bad chunk
        self._new_bans: list[str] = []
        self.stats = LearnerStats()
        self.version = 0
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._pending_by_worker: dict[str, int] = {}
        self._pending_bytes = 0
        self._quiet = {"bounded": _RateLimited(), "stats": _RateLimited()}
        self._history: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._done: dict[tuple[str, int], None] = {}  # recently completed episodes, in order
        self._last_broadcast = -(10**18)
        self._last_checkpoint = 0
        self._t0 = time.perf_counter()
        hp = dict(preset.algo.hyperparameters)
        self.learning_starts = int(hp.get("learning_starts", 100)) if self.off_policy else 0
        self.batch_size = int(hp.get("batch_size", 256))
        self.total = self.config.total_timesteps or preset.algo.total_timesteps
        ratio = self.config.max_train_steps_per_env_step
        if ratio is None:
            g = int(hp.get("gradient_steps", 1))
            freq = int(hp.get("train_freq", 1))
            ratio = (g if g > 0 else freq * preset.env.n_envs) / (freq * preset.env.n_envs)
        self.utd = float(ratio)
        self.ppo = None if self.off_policy else PPOBatcher(self.model)
        if resume:
            self._resume()
        self._guard = WeightsGuard(self.model)

    # -- episodes in -------------------------------------------------------------------------

    def ingest(self, chunk: EpisodeChunk) -> int:
        """Take one chunk; returns the number of transitions that entered the buffer.

        Raises:
            InvalidChunkError: the chunk does not decode, holds a value outside the spaces or
                not finite, or ends its episode with implausible results; it and its episode
                are dropped, counted and logged (see the module doc).
        """
        if chunk.worker in self.stats.banned_workers:
            self.stats.banned_chunks += 1
            return 0
        key = (chunk.worker, chunk.episode)
        if key in self._rejected:
            return 0  # the rest of an episode already dropped for an invalid chunk
        try:
            added = self._ingest(chunk, key)
        except (CodecError, InvalidChunkError) as e:
            self._reject(chunk, key, e)
            raise InvalidChunkError(f"chunk from worker {chunk.worker!r}: {e}") from e
        self._note(chunk.worker, invalid=False)
        return added

    def _ingest(self, chunk: EpisodeChunk, key: tuple[str, int]) -> int:
        if key in self._done:
            self.stats.duplicate_chunks += 1  # resent after a reconnection: already have it
            return 0
        pending = self._pending.get(key)
        if pending is not None and chunk.chunk < len(pending.chunks):
            # a chunk we already have, resent after a reconnection (episode ids are unique per
            # worker process, so this is never a new episode)
            self.stats.duplicate_chunks += 1
            return 0
        if pending is None:
            if chunk.chunk != 0:
                # its start was lost (a restart of the server or of this trainer): drop it
                self.stats.dropped_episodes += int(chunk.final)
                return 0
        elif chunk.chunk != len(pending.chunks):
            _log.warning(
                "episode %d of %s: chunk %d after %d chunks; dropping the episode",
                chunk.episode,
                chunk.worker,
                chunk.chunk,
                len(pending.chunks),
            )
            self._drop_pending(key)
            self.stats.dropped_episodes += 1
            return 0
        part = self.decoder.decode(chunk.payload)
        check_transitions(
            part,
            self.observation_space,
            self.action_space,
            n_steps=chunk.n_steps,
            rules=self.chunk_rules,
        )
        if pending is None:
            pending = self._pending[key] = _Pending([], chunk.weights_version)
            self._pending_by_worker[chunk.worker] = self._pending_by_worker.get(chunk.worker, 0) + 1
        pending.chunks.append(part)
        pending.last_seen = time.monotonic()
        size = _nbytes(part)
        pending.nbytes += size
        self._pending_bytes += size
        if not chunk.final:
            self._evict_idle(pending.last_seen)
            self._bound_pending(chunk.worker)
            return 0
        lap = self._check_results(chunk, pending.chunks)
        self._drop_pending(key)
        self._done[key] = None
        while len(self._done) > 100_000:
            self._done.pop(next(iter(self._done)))
        return self._commit(chunk, pending, lap)

    def _check_results(self, chunk: EpisodeChunk, parts: list[Transitions]) -> float | None:
        """The episode's believed lap time (None: not finished); raises InvalidChunkError."""
        n = sum(p.n_steps for p in parts)
        reward_sum = float(sum(float(np.sum(p.reward)) for p in parts))
        stats = dict(chunk.stats)
        rules = self.lap_rules if stats.get("finished") else LapRules()
        return check_episode(stats, n_steps=n, reward_sum=reward_sum, laps=rules)

    @property
    def lap_rules(self) -> LapRules:
        """When a lap is believed: the physical minimum (computed on first use) and steps."""
        if self._lap_rules is None:
            floor = self.config.min_lap_s
            if floor is None:
                floor = expert_lap_floor(self.preset.env.id, self.env_kwargs())
            self._lap_rules = LapRules(
                min_lap_s=floor, time_step_s=float(self.settings.time_step_duration)
            )
        return self._lap_rules

    def _reject(self, chunk: EpisodeChunk, key: tuple[str, int], error: Exception) -> None:
        """Drop ``chunk`` and its episode, count it against its worker, maybe disconnect it."""
        s = self.stats
        if self._drop_pending(key) is not None or chunk.chunk == 0:
            s.dropped_episodes += 1
        self._rejected[key] = None
        while len(self._rejected) > 10_000:
            self._rejected.pop(next(iter(self._rejected)))
        s.invalid_chunks += 1
        s.invalid_by_worker[chunk.worker] = s.invalid_by_worker.get(chunk.worker, 0) + 1
        _log.warning(
            "dropped chunk %d of episode %d from worker %s (%d invalid so far): %s",
            chunk.chunk,
            chunk.episode,
            chunk.worker,
            s.invalid_by_worker[chunk.worker],
            error,
        )
        self._note(chunk.worker, invalid=True)

    def _note(self, worker: str, *, invalid: bool) -> None:
        recent = self._recent.get(worker)
        if recent is None:
            if not invalid:
                return  # nothing to remember about a worker that never sent a bad chunk
            recent = self._recent[worker] = deque(maxlen=BAN_WINDOW)
        recent.append(invalid)
        if sum(recent) >= self.config.ban_after and worker not in self.stats.banned_workers:
            self.stats.banned_workers.append(worker)
            self._new_bans.append(worker)
            for key in [k for k in self._pending if k[0] == worker]:
                self._drop_pending(key)
                self.stats.dropped_episodes += 1
            _log.error(
                "disconnecting worker %s: %d of its last %d chunks were invalid",
                worker,
                sum(recent),
                len(recent),
            )

    def take_new_bans(self) -> list[str]:
        """Workers disconnected since the last call (the trainer tells each to stop)."""
        bans, self._new_bans = self._new_bans, []
        return bans

    def _evict_idle(self, now: float) -> None:
        idle = [k for k, p in self._pending.items() if now - p.last_seen > PENDING_TIMEOUT_S]
        for key in idle:
            _log.warning(
                "episode %d of %s: no chunk for %.0f s; dropping it",
                key[1],
                key[0],
                PENDING_TIMEOUT_S,
            )
            self._drop_pending(key)
            self.stats.dropped_episodes += 1

    # -- bounded memory for half-received episodes ---------------------------------------------

    @property
    def pending_episodes(self) -> int:
        """Half-received episodes held now (at most ``config.max_pending_episodes``)."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Memory they hold by the ``max_pending_bytes`` estimate (array bytes + overhead)."""
        return self._pending_bytes

    def _drop_pending(self, key: tuple[str, int]) -> _Pending | None:
        """Forget the half-received episode ``key`` (None if there was none)."""
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._pending_bytes -= pending.nbytes
            left = self._pending_by_worker.get(key[0], 0) - 1
            if left > 0:
                self._pending_by_worker[key[0]] = left
            else:
                self._pending_by_worker.pop(key[0], None)
        return pending

    def _bound_pending(self, worker: str) -> None:
        """Drop the oldest half-received episodes (``worker``'s first, then anyone's) while a
        ``LearnerConfig.max_pending_*`` cap is exceeded; count and log (rate-limited)."""
        cfg, dropped = self.config, 0
        while self._pending_by_worker.get(worker, 0) > cfg.max_pending_per_worker:
            self._drop_pending(next(k for k in self._pending if k[0] == worker))
            dropped += 1
        while self._pending and (
            len(self._pending) > cfg.max_pending_episodes
            or self._pending_bytes > cfg.max_pending_bytes
        ):
            self._drop_pending(next(iter(self._pending)))
            dropped += 1
        if not dropped:
            return
        self.stats.pending_dropped += dropped
        self.stats.dropped_episodes += dropped
        self._quiet["bounded"].warn(
            dropped,
            "dropped %d half-received episodes (the oldest; %d in all so far, the latest by "
            "worker %s) to bound the trainer's memory: at most %d per worker, %d in total, "
            "%d MiB; %d held now",
            lambda n: (
                n,
                self.stats.pending_dropped,
                worker,
                cfg.max_pending_per_worker,
                cfg.max_pending_episodes,
                cfg.max_pending_bytes // 2**20,
                len(self._pending),
            ),
        )

    def _commit(self, chunk: EpisodeChunk, pending: _Pending, lap: float | None) -> int:
        s = self.stats
        s.episodes_by_worker[chunk.worker] = s.episodes_by_worker.get(chunk.worker, 0) + 1
        st = self._finite_stats(chunk)
        if chunk.test:
            s.test_episodes += 1
            s.last_test = st
            if lap is not None and (s.best_test_lap is None or lap < s.best_test_lap):
                self._save_best(pending.version, st)
            if lap is not None:
                s.best_test_lap = lap if s.best_test_lap is None else min(s.best_test_lap, lap)
                if s.first_finish_s is None:
                    s.first_finish_s = time.perf_counter() - self._t0
            self._log_episode("test", st)
            return 0
        if self.ppo is not None and pending.version != self.version:
            s.stale_episodes += 1
            return 0
        n, interrupted = self._add_episode(pending.chunks)
        s.episodes += 1
        s.env_steps += n
        s.last_return = _float(st.get("return"))
        s.last_progress = _float(st.get("progress"))
        if lap is not None:
            s.finishes += 1
            s.best_lap = lap if s.best_lap is None else min(s.best_lap, lap)
        self._log_episode("rollout", st)
        if interrupted is not None:
            raise interrupted
        return n

    def _finite_stats(self, chunk: EpisodeChunk) -> dict[str, Any]:
        """``chunk.stats`` with every NaN or infinity replaced by None (counted, logged at
        most every ``LOG_EVERY_S``): nothing non-finite is kept, so none reaches a checkpoint."""
        out: dict[str, Any] = {}
        bad = []
        for key, value in chunk.stats.items():
            if isinstance(value, float) and not math.isfinite(value):
                bad.append(f"{key}={value}")
                value = None
            out[key] = value
        if bad:
            self.stats.non_finite_stats += len(bad)
            self._quiet["stats"].warn(
                len(bad),
                "episode %d of worker %s: statistics %s are not finite, kept as None "
                "(%d such values since the last line, %d in all)",
                lambda n: (
                    chunk.episode,
                    chunk.worker,
                    ", ".join(bad),
                    n,
                    self.stats.non_finite_stats,
                ),
            )
        return out

    def _add_episode(self, parts: Sequence[Transitions]) -> tuple[int, KeyboardInterrupt | None]:
        """Add every transition of an episode: the number added, and the interruption held.

        A Ctrl-C or SIGTERM (both raise KeyboardInterrupt in the trainer's loop, whose
        ``finally`` writes the final checkpoint) that lands half-way is held until the whole
        episode is in, and re-raised by :meth:`_commit` once the counters are updated: the
        checkpoint's buffer and step count then always agree.
        """
        if self.ppo is not None:
            return sum(self.ppo.add(part) for part in parts), None
        todo = [(part, t) for part in parts for t in range(len(part.reward))]
        done = 0
        interrupted: KeyboardInterrupt | None = None
        while done < len(todo):
            try:
                while done < len(todo):
                    self._add_one(*todo[done])
                    done += 1
            except KeyboardInterrupt as e:
                interrupted = e
        return done, interrupted

    def _add_one(self, tr: Transitions, t: int) -> None:
        obs = {k: v[t : t + 1] for k, v in tr.obs.items()}
        nxt = {k: v[t : t + 1] for k, v in tr.next_obs.items()}
        done = bool(tr.terminated[t] or tr.truncated[t])
        timeout = bool(tr.truncated[t] and not tr.terminated[t])
        self.model.replay_buffer.add(  # type: ignore[attr-defined]
            obs,
            nxt,
            tr.action[t : t + 1],
            tr.reward[t : t + 1],
            np.array([done]),
            [{"TimeLimit.truncated": timeout}],
        )

    def _log_episode(self, prefix: str, st: Mapping[str, Any]) -> None:
        for key in ("return", "progress", "lap_time", "wall_contacts"):
            v = _float(st.get(key))
            if v is not None:
                self.model.logger.record(f"{prefix}/{key}", v)

    # -- learning ----------------------------------------------------------------------------

    def train(self, max_steps: int = 64) -> int:
        """Run the gradient steps the budget allows now (at most ``max_steps``)."""
        m = self.model
        m.num_timesteps = self.stats.env_steps
        m._current_progress_remaining = max(0.0, 1.0 - self.stats.env_steps / self.total)
        if self.ppo is not None:
            if self.ppo.ready():
                if not self._guard.run(self.ppo.train):
                    self.stats.skipped_updates += 1
                    return 0
                self.version += 1
                self.stats.train_steps += 1
                self._dump()
                return 1
            return 0
        if self.stats.env_steps < max(self.learning_starts, 1):
            return 0
        allowed = int((self.stats.env_steps - self.learning_starts + 1) * self.utd)
        steps = min(max_steps, allowed - self.stats.train_steps)
        if steps <= 0:
            return 0
        update = m.train  # type: ignore[attr-defined]
        if not self._guard.run(lambda: update(gradient_steps=steps, batch_size=self.batch_size)):
            self.stats.skipped_updates += 1
            # the same budget is spent (not retried at once): the batch that broke it is random
            self.stats.train_steps += steps
            return 0
        self.stats.train_steps += steps
        if self.stats.train_steps // 1000 != (self.stats.train_steps - steps) // 1000:
            self._dump()
        return steps

    def _dump(self) -> None:
        s = self.stats
        self.model.logger.record("trainer/env_steps", s.env_steps)
        self.model.logger.record("trainer/train_steps", s.train_steps)
        self.model.logger.record("trainer/dropped_episodes", s.dropped_episodes)
        self.model.logger.record("trainer/stale_episodes", s.stale_episodes)
        self.model.logger.record("trainer/pending_dropped", s.pending_dropped)
        self.model.logger.record("trainer/pending_episodes", len(self._pending))
        self.model.logger.dump(step=s.env_steps)

    @property
    def done(self) -> bool:
        return self.stats.env_steps >= self.total

    # -- weights out -------------------------------------------------------------------------

    def random_actions(self) -> bool:
        """True while an off-policy learner still wants uniformly random exploration."""
        return self.off_policy and self.stats.env_steps < self.learning_starts

    def should_broadcast(self) -> bool:
        if self.ppo is not None:
            return self.version != self._broadcast_version
        return self.stats.env_steps - self._last_broadcast >= self.config.broadcast_every

    _broadcast_version = -1

    def weights(self) -> Weights:
        """The current policy as a message; counts as broadcast."""
        if self.off_policy and self.stats.train_steps > 0:
            self.version += 1
        self._last_broadcast = self.stats.env_steps
        self._broadcast_version = self.version
        config, tensors = describe_policy(self.model, dataclasses.asdict(self.settings))
        self._history[self.version] = (config, tensors)  # to save the best test lap's weights
        for old in sorted(self._history)[:-16]:
            del self._history[old]
        data, policy_json = policy_to_bytes(
            self.model,
            dataclasses.asdict(self.settings),
            only="actor." if self.off_policy else None,  # workers act: no critic needed
        )
        config = {
            "policy": json.loads(policy_json),
            "env": {"id": self.preset.env.id, "kwargs": self.env_kwargs()},
            "random_actions": self.random_actions(),
            "env_steps": self.stats.env_steps,
        }
        return Weights(version=self.version, safetensors=data, config_json=json.dumps(config))

    def _save_best(self, version: int, stats: Mapping[str, Any]) -> None:
        """Write the weights that drove a new best test lap to RUN/best (if still known)."""
        kept = self._history.get(version)
        if kept is None:
            _log.warning(
                "best test lap with weights v%d, no longer kept: best/ not updated", version
            )
            return
        config, tensors = kept
        out = write_policy(config, tensors, self.run_dir / "best")
        (out / "evaluation.json").write_text(
            json.dumps({"weights_version": version, **dict(stats)}, indent=2) + "\n"
        )

    def env_kwargs(self) -> dict[str, Any]:
        return env_kwargs_of(self.preset, self.config.env_kwargs)

    # -- checkpoints -------------------------------------------------------------------------

    def maybe_checkpoint(self) -> Path | None:
        """Checkpoint when ``checkpoint_every`` env steps passed since the last (0: never)."""
        every = self.config.checkpoint_every
        if every <= 0 or self.stats.env_steps - self._last_checkpoint < every:
            return None
        return self.checkpoint()

    def checkpoint(self) -> Path:
        """Atomically write the full state (weights, optimizers, replay buffer, counters);
        returns the checkpoint directory.

        Never persists a non-finite state: non-finite weights or optimizer states are first
        replaced by the last good ones (:class:`WeightsGuard`), statistics hold only finite
        numbers (NaN/infinity become None), and a state that is still not finite is refused
        (logged, counted in ``stats.refused_checkpoints``): then nothing is written and the
        last good checkpoint is returned. Pruning keeps two checkpoints and never takes the
        newest good one away.

        Raises:
            NonFiniteStateError: the state is not finite and there is no good checkpoint to
                fall back on (nothing is written).
        """
        self._guard.ensure_finite()
        self._last_checkpoint = self.stats.env_steps
        root = self.run_dir / "checkpoints"
        meta = {"learner": _finite_json(dataclasses.asdict(self.stats)), "version": self.version}
        try:
            path = save_checkpoint(
                self.model, root / f"step-{self.stats.env_steps:010d}", meta=meta
            )
        except NonFiniteStateError as e:
            self.stats.refused_checkpoints += 1
            last = latest_checkpoint(root)
            _log.error("no checkpoint written: %s; the last good checkpoint stays: %s", e, last)
            if last is None:
                raise
            return last
        export_policy(
            self.model, self.run_dir / "policy", env_settings=dataclasses.asdict(self.settings)
        )
        prune_checkpoints(root, keep=2)
        return path

    def _resume(self) -> None:
        """Continue from the newest good checkpoint (complete, finite; newer bad ones are
        skipped with a warning by :func:`~tm_algos.checkpoint.latest_checkpoint`).

        Raises:
            CheckpointError: the checkpoint's files or its learner metadata are not valid
                (the message names the file, the key, the value and the fix).
        """
        ckpt = latest_checkpoint(self.run_dir / "checkpoints")
        if ckpt is None:
            _log.info("no checkpoint in %s: starting fresh", self.run_dir / "checkpoints")
            return
        meta = load_checkpoint(self.model, ckpt)
        self.stats, self.version = _stats_from_meta(meta, ckpt / STATE_NAME)
        self._last_checkpoint = self.stats.env_steps
        _log.info("resumed from %s at %d env steps", ckpt, self.stats.env_steps)


REQUIRED_META = ("env_steps", "train_steps", "episodes")
"""Learner statistics a checkpoint must hold; the others default (older checkpoints)."""


def _finite_json(value: Any) -> Any:
    """``value`` (JSON data) with every NaN or infinity replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_META_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_count, "an int >= 0"),
    "float | None": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "dict[str, Any] | None": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "dict[str, int]": (
        lambda v: isinstance(v, dict) and all(_is_count(n) for n in v.values()),
        "an object of worker names to ints >= 0",
    ),
    "list[str]": (
        lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "a list of worker names",
    ),
}


def _stats_from_meta(meta: Mapping[str, Any], where: Path) -> tuple[LearnerStats, int]:
    """The learner statistics and weights version a checkpoint's ``meta`` holds, each value
    checked against :class:`LearnerStats`' field types.

    Raises:
        CheckpointError: a key of ``REQUIRED_META`` or ``version`` is missing, or a value has
            the wrong type or range; names ``where``, the key, the value and the fix.
    """
    fix = (
        "the file was edited or is corrupt (or not written by tm-dist's trainer): delete its "
        "checkpoint directory to resume from the one before it, or start a new run directory"
    )
    saved = meta.get("learner")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{where}: meta['learner'] = {saved!r:.60}: expected an object; {fix}"
        )
    version: int = meta.get("version", -1)
    if not _is_count(version):
        raise CheckpointError(
            f"{where}: meta['version'] = {version!r:.60}: expected an int >= 0; {fix}"
        )
    missing = [k for k in REQUIRED_META if k not in saved]
    if missing:
        raise CheckpointError(f"{where}: meta['learner'] has no {missing}; {fix}")
    values = {}
    for f in dataclasses.fields(LearnerStats):
        if f.name not in saved:
            continue
        ok, expected = _META_RULES[str(f.type)]
        value = saved[f.name]
        if not ok(value):
            raise CheckpointError(
                f"{where}: meta['learner'][{f.name!r}] = {value!r:.60}: expected {expected}; {fix}"
            )
        values[f.name] = value
    return LearnerStats(**values), version


def _nbytes(part: Transitions) -> int:
    """Memory held by ``part``: its arrays (``obs`` and ``next_obs`` share theirs) plus the
    estimated overhead of its Python objects."""
    arrays = [*part.obs.values(), part.action, part.reward, part.terminated, part.truncated]
    return sum(int(a.nbytes) for a in arrays) + CHUNK_OVERHEAD_BYTES


class _RateLimited:
    """A repeated warning, logged at most every ``every_s`` with the count since its last line."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last = -math.inf
        self._count = 0

    def warn(self, n: int, msg: str, args: Callable[[int], tuple[Any, ...]]) -> None:
        """Count ``n`` more; log ``msg % args(count since the last line)`` if it is time."""
        self._count += n
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        _log.warning(msg, *args(self._count))
        self._last, self._count = now, 0


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if np.isfinite(f) else None


class WeightsGuard:
    """Undoes an update that raises or leaves a non-finite weight: the model's last good state.

    Keeps a copy of every torch state the algorithm saves (networks, optimizers, the entropy
    coefficient), taken after an update that left every weight finite, at most every
    ``snapshot_every`` updates (a copy per update would cost as much as a small update).
    """

    def __init__(self, model: BaseAlgorithm, snapshot_every: int = 20) -> None:
        self.model = model
        self.snapshot_every = snapshot_every
        self._since = 0
        self._good: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
        self.snapshot()

    def _objects(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state_names, tensor_names = self.model._get_torch_save_params()
        states = {n: _attr(self.model, n) for n in state_names}
        tensors = {n: _attr(self.model, n) for n in tensor_names or []}
        return states, tensors

    def snapshot(self) -> None:
        """Remember the current state as the last good one."""
        states, tensors = self._objects()
        self._good = (
            {n: copy.deepcopy(o.state_dict()) for n, o in states.items()},
            {n: t.detach().clone() for n, t in tensors.items()},
        )
        self._since = 0

    def restore(self) -> None:
        """Put the last good state back."""
        assert self._good is not None
        states, tensors = self._objects()
        good_states, good_tensors = self._good
        for n, obj in states.items():
            obj.load_state_dict(copy.deepcopy(good_states[n]))
        with torch.no_grad():
            for n, t in tensors.items():
                t.copy_(good_tensors[n])

    def finite(self) -> bool:
        """Whether every weight of the policy, every optimizer state (Adam's moments: an
        infinite one freezes its weight for good) and the saved tensors are finite."""
        states, tensors = self._objects()
        params: list[torch.Tensor] = list(self.model.policy.parameters())
        params += list(tensors.values())
        for obj in states.values():
            if isinstance(obj, torch.optim.Optimizer):
                params += [
                    t
                    for per_param in obj.state.values()
                    for t in per_param.values()
                    if isinstance(t, torch.Tensor) and t.is_floating_point()
                ]
        if not params:
            return True
        with torch.no_grad():
            flags = torch.stack([torch.isfinite(p).all().cpu() for p in params])
            return bool(flags.all().item())

    def run(self, update: Any) -> bool:
        """Run ``update()``; False (and the last good state restored) if it failed."""
        try:
            update()
        except (ValueError, RuntimeError, FloatingPointError) as e:
            _log.error(
                "gradient update failed (%s: %s): restoring the last good weights",
                type(e).__name__,
                e,
            )
            self.restore()
            return False
        if not self.finite():
            _log.error("gradient update left non-finite weights: restoring the last good weights")
            self.restore()
            return False
        self._since += 1
        if self._since >= self.snapshot_every:
            self.snapshot()
        return True

    def ensure_finite(self) -> None:
        """Restore the last good state if any weight or optimizer state is not finite
        (before a checkpoint)."""
        if not self.finite():
            _log.error(
                "non-finite weights or optimizer state before a checkpoint: restoring the last "
                "good weights"
            )
            self.restore()


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
