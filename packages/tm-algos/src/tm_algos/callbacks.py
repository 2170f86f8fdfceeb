"""SB3 callbacks used by ``tm-train``: episode statistics, periodic evaluation, checkpoints.

All of them work with any SB3 / sb3-contrib algorithm on tm-gym environments wrapped in SB3's
``Monitor`` (as :func:`tm_algos.factory.make_vec_env` does). None of them prints: they log to
the SB3 logger (TensorBoard) and keep their figures in attributes that the CLI displays.
"""

from __future__ import annotations

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
from stable_baselines3.common.callbacks import BaseCallback

from tm_algos.errors import InvalidValueError
from tm_gym.core.info import lap_time_of

__all__ = [
    "CheckpointCallback",
    "EpisodeStats",
    "EpisodeStatsCallback",
    "EvalCallback",
    "EvalRecord",
]

_log = logging.getLogger(__name__)


@dataclass
class EpisodeStats:
    """Running figures of the training episodes (stochastic policy)."""

    episodes: int = 0
    finishes: int = 0
    last_return: float = math.nan
    last_progress: float = math.nan
    best_lap: float | None = None
    recent_returns: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    recent_progress: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    recent_finished: deque[bool] = field(default_factory=lambda: deque(maxlen=20))

    def add(self, info: Mapping[str, Any]) -> None:
        ep = info["episode"]
        self.episodes += 1
        self.last_return = float(ep["r"])
        self.recent_returns.append(self.last_return)
        progress = info.get("progress")
        if progress is not None:
            self.last_progress = float(progress)
            self.recent_progress.append(self.last_progress)
        finished = bool(info.get("finished", False))
        self.recent_finished.append(finished)
        lap = lap_time_of(info)
        if lap is not None:
            self.finishes += 1
            self.best_lap = float(lap) if self.best_lap is None else min(self.best_lap, float(lap))


class EpisodeStatsCallback(BaseCallback):
    """Collects finished training episodes into :attr:`stats` and logs them.

    Logged under ``rollout/``: ``progress_mean``, ``finish_rate`` (last 20 episodes) and
    ``best_lap_time``; SB3 itself logs ``ep_rew_mean`` and ``ep_len_mean``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stats = EpisodeStats()
        self.t_start = time.perf_counter()
        self.steps_at_start = 0

    def _on_training_start(self) -> None:
        self.t_start = time.perf_counter()
        self.steps_at_start = self.num_timesteps

    def steps_per_second(self) -> float:
        dt = time.perf_counter() - self.t_start
        return (self.num_timesteps - self.steps_at_start) / dt if dt > 0 else 0.0

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", ())
        for info in infos:
            if "episode" in info:
                self.stats.add(info)
                s = self.stats
                if s.recent_progress:
                    self.logger.record("rollout/progress_mean", float(np.mean(s.recent_progress)))
                self.logger.record("rollout/finish_rate", float(np.mean(s.recent_finished)))
                if s.best_lap is not None:
                    self.logger.record("rollout/best_lap_time", s.best_lap)
        return True


@dataclass(frozen=True)
class EvalRecord:
    """One deterministic evaluation episode during training."""

    timesteps: int
    wall_s: float
    episode_return: float
    progress: float
    finished: bool
    lap_time: float | None
    wall_contacts: int
    track: str | None = None
    """Where it was driven, when not the evaluation environment's own track (an imitation
    preset's ``eval_tracks``: one record per track, and one for the whole set)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "timesteps": self.timesteps,
            "wall_s": round(self.wall_s, 2),
            "return": round(self.episode_return, 3),
            "progress": round(self.progress, 4),
            "finished": self.finished,
            "lap_time": self.lap_time,
            "wall_contacts": self.wall_contacts,
        }
        if self.track is not None:
            out["track"] = self.track
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalRecord:
        """The record that :meth:`to_dict` wrote (e.g. read back from ``evaluations.json``)."""
        lap = data["lap_time"]
        return cls(
            timesteps=int(data["timesteps"]),
            wall_s=float(data["wall_s"]),
            episode_return=float(data["return"]),
            progress=float(data["progress"]),
            finished=bool(data["finished"]),
            lap_time=None if lap is None else float(lap),
            wall_contacts=int(data["wall_contacts"]),
            track=None if data.get("track") is None else str(data["track"]),
        )


class EvalCallback(BaseCallback):
    """Every ``every`` steps, drives ``n_episodes`` deterministic episodes on ``env``.

    Records :class:`EvalRecord` s in :attr:`records` (``wall_s`` counts from the start of
    training, evaluation included), logs ``eval/`` figures, and calls ``on_new_best(record)``
    whenever the result is the best so far (fastest finish, else furthest progress), e.g. to
    export the policy. ``stop_when_faster_than`` (seconds) stops training once a deterministic
    lap is that fast.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        every: int,
        *,
        n_episodes: int = 1,
        seed: int = 12_345,
        on_new_best: Callable[[EvalRecord], None] | None = None,
        stop_when_faster_than: float | None = None,
        clock_start: float | None = None,
    ) -> None:
        super().__init__()
        if every < 1 or n_episodes < 1:
            raise InvalidValueError(f"every={every}, n_episodes={n_episodes}: expected >= 1")
        self.env = env
        self.every = every
        self.n_episodes = n_episodes
        self.seed = seed
        self.on_new_best = on_new_best
        self.stop_when_faster_than = stop_when_faster_than
        self.records: list[EvalRecord] = []
        self.best: EvalRecord | None = None
        self._clock = clock_start
        self._next = every

    def _on_training_start(self) -> None:
        if self._clock is None:
            self._clock = time.perf_counter()
        self._next = (self.num_timesteps // self.every + 1) * self.every

    @staticmethod
    def _key(r: EvalRecord) -> tuple[int, float]:
        return (1, -(r.lap_time or 0.0)) if r.finished else (0, r.progress)

    def restore(self, records: Sequence[EvalRecord]) -> None:
        """Take ``records`` (those of an earlier part of a resumed run) as the history: they
        count towards :attr:`best`, without calling ``on_new_best``."""
        for rec in records:
            self.records.append(rec)
            if self.best is None or self._key(rec) > self._key(self.best):
                self.best = rec

    def run_episode(self, index: int) -> EvalRecord:
        obs, info = self.env.reset(seed=self.seed + index)
        total, done, state = 0.0, False, None
        start = np.ones((1,), dtype=bool)
        while not done:
            action, state = self.model.predict(
                obs, state=state, episode_start=start, deterministic=True
            )
            start[:] = False
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            done = terminated or truncated
        assert self._clock is not None
        return EvalRecord(
            timesteps=self.num_timesteps,
            wall_s=time.perf_counter() - self._clock,
            episode_return=total,
            progress=float(info.get("progress", 0.0)),
            finished=bool(info.get("finished", False)),
            lap_time=lap_time_of(info),
            wall_contacts=int(info.get("wall_contacts", 0)),
        )

    def _on_step(self) -> bool:
        if self.num_timesteps < self._next:
            return True
        self._next += self.every
        for i in range(self.n_episodes):
            rec = self.run_episode(i)
            self.records.append(rec)
            self.logger.record("eval/return", rec.episode_return)
            self.logger.record("eval/progress", rec.progress)
            if rec.lap_time is not None:
                self.logger.record("eval/lap_time", rec.lap_time)
            if self.best is None or self._key(rec) > self._key(self.best):
                self.best = rec
                if self.on_new_best is not None:
                    self.on_new_best(rec)
        limit = self.stop_when_faster_than
        last = self.records[-self.n_episodes :]
        if limit is not None and any(r.lap_time is not None and r.lap_time <= limit for r in last):
            _log.info("deterministic lap within %.3f s: stopping training", limit)
            return False
        return True


class CheckpointCallback(BaseCallback):
    """Calls ``save(model)`` every ``every`` steps (e.g. a safe checkpoint + policy export)."""

    def __init__(self, every: int, save: Callable[[], Path | None]) -> None:
        super().__init__()
        if every < 1:
            raise InvalidValueError(f"every={every}: expected >= 1")
        self.every = every
        self.save = save
        self._next = every

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.every
            self.save()
        return True
