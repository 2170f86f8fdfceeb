"""Demonstrations: ``.tmrec`` recordings as behaviour-cloning data and as replay transitions.

A recording (``tm-gym record --driver expert|keyboard``) stores captures and actions, not the
observation dicts an agent sees. Each file is replayed through tm-gym's replay backend
(:class:`tm_gym.recording.replay.ReplayEnv`, synchronous mode) with the student's observation
settings, which rebuilds exactly the observations the recorded environment returned (frames,
LIDAR, action history) for any observation type the recording can give. Each observation is
labelled with the action the recorded driver took next.

The transitions (observation, action, reward, next observation, end) can also fill an
off-policy model's replay buffer before RL starts, so that the first updates learn from
demonstrations as well as from the agent's own driving.

>>> from tm_algos.imitation.demos import load_demonstrations
>>> demos = load_demonstrations(  # doctest: +SKIP
...     ["expert.tmrec"],
...     model.observation_space,
...     {"obs_type": "images"},
... )
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm

from tm_algos.errors import TMAlgosError
from tm_algos.imitation.dataset import ImitationDataset

__all__ = ["DemoEpisode", "DemoError", "Demonstrations", "load_demonstrations"]

Obs = dict[str, NDArray[Any]]

_SETTINGS = ("obs_type", "img_size", "img_hist_len", "grayscale", "act_buf_len")


class DemoError(TMAlgosError, ValueError):
    """A demonstration file cannot be read or does not match the policy's observations; the
    message names the file and what to do."""


@dataclass
class DemoEpisode:
    """One recorded episode as the agent would have seen it: ``T + 1`` observations."""

    source: str
    observations: list[Obs]
    actions: NDArray[np.float32]
    rewards: NDArray[np.float64]
    terminated: bool


@dataclass
class Demonstrations:
    """The episodes of some recordings, and the same as a labelled dataset."""

    dataset: ImitationDataset
    episodes: list[DemoEpisode] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return sum(len(ep.actions) for ep in self.episodes)

    def fill_replay_buffer(self, model: BaseAlgorithm) -> int:
        """Add the transitions to ``model``'s replay buffer; returns how many were added.

        A buffer takes one transition per environment per call: the episodes are dealt to
        the ``n_envs`` slots in turn and added in lock step, as long as every slot has one.
        """
        buffer = getattr(model, "replay_buffer", None)
        if buffer is None:
            return 0
        n = model.n_envs
        slots: list[list[tuple[Obs, NDArray[Any], float, Obs, bool]]] = [[] for _ in range(n)]
        for i, ep in enumerate(self.episodes):
            steps = len(ep.actions)
            for t in range(steps):
                end = t == steps - 1
                slots[i % n].append(
                    (
                        ep.observations[t],
                        ep.actions[t],
                        float(ep.rewards[t]),
                        ep.observations[t + 1],
                        end and ep.terminated,
                    )
                )
        count = min(len(s) for s in slots)
        for t in range(count):
            rows = [s[t] for s in slots]
            obs = {k: np.stack([r[0][k] for r in rows]) for k in rows[0][0]}
            nxt = {k: np.stack([r[3][k] for r in rows]) for k in rows[0][3]}
            buffer.add(
                obs,
                nxt,
                np.stack([r[1] for r in rows]),
                np.array([r[2] for r in rows]),
                np.array([r[4] for r in rows]),
                [{} for _ in rows],
            )
        return count * n


def _replay_env(path: Path, env_kwargs: Mapping[str, Any]) -> Any:
    from tm_gym.error import TrackMasterError
    from tm_gym.recording.replay import ReplayEnv

    if not path.is_file():
        raise DemoError(f"demonstration {str(path)!r} does not exist; give a .tmrec recording")
    overrides = {k: env_kwargs[k] for k in _SETTINGS if k in env_kwargs}
    try:
        return ReplayEnv(path, **overrides)
    except (TrackMasterError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DemoError(
            f"demonstration {str(path)!r} cannot be replayed with the policy's observation "
            f"settings {overrides}: {exc}; record it again (tm-gym record) or check the file"
        ) from exc


def _episodes(env: Any, source: str) -> list[DemoEpisode]:
    out = []
    for i in range(env.num_episodes):
        obs, _ = env.reset(options={"episode": i})
        observations, actions, rewards = [obs], [], []
        done = terminated = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(np.zeros(3, np.float32))
            observations.append(obs)
            actions.append(np.asarray(info["recorded_action"], dtype=np.float32))
            rewards.append(float(reward))
            done = terminated or truncated
        if actions:
            out.append(
                DemoEpisode(
                    source,
                    observations,
                    np.asarray(actions, dtype=np.float32),
                    np.asarray(rewards),
                    bool(terminated),
                )
            )
    return out


def load_demonstrations(
    paths: Sequence[str | Path],
    observation_space: spaces.Space[Any],
    env_kwargs: Mapping[str, Any],
    *,
    capacity: int | None = None,
) -> Demonstrations:
    """The recordings ``paths`` replayed with ``env_kwargs``' observation settings.

    Raises:
        DemoError: a file is missing, damaged or not a recording, holds no step, or gives
            observations other than ``observation_space`` (the message names the file).
    """
    if not paths:
        raise DemoError("no demonstration files given; pass one or more .tmrec recordings")
    episodes: list[DemoEpisode] = []
    for p in paths:
        path = Path(p)
        env = _replay_env(path, env_kwargs)
        try:
            if env.observation_space != observation_space:
                raise DemoError(
                    f"demonstration {str(path)!r} gives observations {env.observation_space}, "
                    f"the policy takes {observation_space}; record with the same observation "
                    "settings (obs_type, img_size, img_hist_len, act_buf_len)"
                )
            found = _episodes(env, str(path))
        finally:
            env.close()
        if not found:
            raise DemoError(f"demonstration {str(path)!r} holds no step; record a longer one")
        episodes.extend(found)
    total = sum(len(ep.actions) for ep in episodes)
    dataset = ImitationDataset(
        observation_space,
        capacity or total,
        frame_channels=1 if env_kwargs.get("grayscale", True) else 3,
    )
    for stream, ep in enumerate(episodes):
        for t in range(len(ep.actions)):
            obs = {k: v[None] for k, v in ep.observations[t].items()}
            dataset.add(obs, ep.actions[t][None], streams=np.array([stream]))
    return Demonstrations(dataset, episodes)
