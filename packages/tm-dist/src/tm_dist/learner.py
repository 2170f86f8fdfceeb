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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from tm_algos.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from tm_algos.factory import env_kwargs_of, make_model
from tm_algos.policy import describe_policy, export_policy, policy_to_bytes, write_policy
from tm_algos.presets import Preset
from tm_algos.registry import ALGORITHMS, algorithm
from tm_dist.codec import EpisodeDecoder, Transitions
from tm_dist.errors import InvalidValueError, StateError
from tm_dist.ppo_batch import PPOBatcher
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


@dataclass
class _Pending:
    chunks: list[Transitions]
    version: int
    last_seen: float = field(default_factory=time.monotonic)


PENDING_TIMEOUT_S = 300.0
"""A half-received episode with no new chunk for this long is dropped (its worker died)."""


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
        self.stats = LearnerStats()
        self.version = 0
        self._pending: dict[tuple[str, int], _Pending] = {}
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

    # -- episodes in -------------------------------------------------------------------------

    def ingest(self, chunk: EpisodeChunk) -> int:
        """Take one chunk; returns the number of transitions that entered the buffer."""
        key = (chunk.worker, chunk.episode)
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
            del self._pending[key]
            self.stats.dropped_episodes += 1
            return 0
        try:
            part = self.decoder.decode(chunk.payload)
        except Exception:
            if pending is not None:  # the episode cannot be completed any more
                del self._pending[key]
                self.stats.dropped_episodes += 1
            raise
        if pending is None:
            pending = self._pending[key] = _Pending([], chunk.weights_version)
        pending.chunks.append(part)
        pending.last_seen = time.monotonic()
        if not chunk.final:
            self._evict_idle(pending.last_seen)
            return 0
        del self._pending[key]
        self._done[key] = None
        while len(self._done) > 100_000:
            self._done.pop(next(iter(self._done)))
        return self._commit(chunk, pending)

    def _evict_idle(self, now: float) -> None:
        idle = [k for k, p in self._pending.items() if now - p.last_seen > PENDING_TIMEOUT_S]
        for key in idle:
            _log.warning(
                "episode %d of %s: no chunk for %.0f s; dropping it",
                key[1],
                key[0],
                PENDING_TIMEOUT_S,
            )
            del self._pending[key]
            self.stats.dropped_episodes += 1

    def _commit(self, chunk: EpisodeChunk, pending: _Pending) -> int:
        s = self.stats
        s.episodes_by_worker[chunk.worker] = s.episodes_by_worker.get(chunk.worker, 0) + 1
        st = dict(chunk.stats)
        lap = _float(st.get("lap_time"))
        finished = bool(st.get("finished")) and lap is not None
        if chunk.test:
            s.test_episodes += 1
            s.last_test = st
            if finished and lap is not None and (s.best_test_lap is None or lap < s.best_test_lap):
                self._save_best(pending.version, st)
            if finished and lap is not None:
                s.best_test_lap = lap if s.best_test_lap is None else min(s.best_test_lap, lap)
                if s.first_finish_s is None:
                    s.first_finish_s = time.perf_counter() - self._t0
            self._log_episode("test", st)
            return 0
        if self.ppo is not None and pending.version != self.version:
            s.stale_episodes += 1
            return 0
        n = 0
        for part in pending.chunks:
            n += self._add(part)
        s.episodes += 1
        s.env_steps += n
        s.last_return = _float(st.get("return"))
        s.last_progress = _float(st.get("progress"))
        if finished and lap is not None:
            s.finishes += 1
            s.best_lap = lap if s.best_lap is None else min(s.best_lap, lap)
        self._log_episode("rollout", st)
        return n

    def _add(self, tr: Transitions) -> int:
        if self.ppo is not None:
            return self.ppo.add(tr)
        buffer = self.model.replay_buffer  # type: ignore[attr-defined]
        t_len = len(tr.reward)
        for t in range(t_len):
            obs = {k: v[t : t + 1] for k, v in tr.obs.items()}
            nxt = {k: v[t : t + 1] for k, v in tr.next_obs.items()}
            done = bool(tr.terminated[t] or tr.truncated[t])
            timeout = bool(tr.truncated[t] and not tr.terminated[t])
            buffer.add(
                obs,
                nxt,
                tr.action[t : t + 1],
                tr.reward[t : t + 1],
                np.array([done]),
                [{"TimeLimit.truncated": timeout}],
            )
        return t_len

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
                self.ppo.train()
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
        m.train(gradient_steps=steps, batch_size=self.batch_size)  # type: ignore[attr-defined]
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
        """Atomically write the full state (weights, optimizers, replay buffer, counters)."""
        self._last_checkpoint = self.stats.env_steps
        meta = {"learner": dataclasses.asdict(self.stats), "version": self.version}
        path = save_checkpoint(
            self.model,
            self.run_dir / "checkpoints" / f"step-{self.stats.env_steps:010d}",
            meta=meta,
        )
        export_policy(
            self.model, self.run_dir / "policy", env_settings=dataclasses.asdict(self.settings)
        )
        prune_checkpoints(self.run_dir / "checkpoints", keep=2)
        return path

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir / "checkpoints")
        if ckpt is None:
            _log.info("no checkpoint in %s: starting fresh", self.run_dir / "checkpoints")
            return
        meta = load_checkpoint(self.model, ckpt)
        saved = dict(meta.get("learner", {}))
        names = {f.name for f in dataclasses.fields(LearnerStats)}
        self.stats = LearnerStats(**{k: v for k, v in saved.items() if k in names})
        self.version = int(meta.get("version", 0))
        self._last_checkpoint = self.stats.env_steps
        _log.info("resumed from %s at %d env steps", ckpt, self.stats.env_steps)


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if np.isfinite(f) else None
