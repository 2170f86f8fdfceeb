"""Demonstrations: ``.tmrec`` recordings as behaviour-cloning data and as replay transitions.

A recording (``tm-gym record --driver expert|keyboard``) stores captures and actions, not the
observation dicts an agent sees. Each file is replayed through tm-gym's replay backend
(:class:`tm_gym.recording.replay.ReplayEnv`, synchronous mode) with the student's observation
settings, which rebuilds exactly the observations the recorded environment returned (frames,
LIDAR, action history) for any observation type the recording can give. Each observation is
labelled with the action the recorded driver took next.

The transitions (observation, action, reward, next observation, end) go into a buffer of their
own (:meth:`Demonstrations.replay_buffer`) that an off-policy model's replay buffer mixes into
every gradient batch (:class:`tm_algos.buffers.DemoMix`, see :mod:`tm_algos.imitation.mix`), or
can fill the model's replay buffer once before RL starts (:meth:`Demonstrations.fill_replay_buffer`).

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

from tm_algos.buffers import FrameStackReplayBuffer
from tm_algos.errors import InvalidValueError, TMAlgosError
from tm_algos.imitation.dataset import ImitationDataset

__all__ = ["DemoEpisode", "DemoError", "Demonstrations", "load_demonstrations"]

Obs = dict[str, NDArray[Any]]
Transition = tuple[Obs, NDArray[Any], float, Obs, bool]

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

    def transitions(self, episode: DemoEpisode) -> list[Transition]:
        """``episode``'s transitions (obs, action, reward, next obs, terminated), in order; only
        the last one of a terminated episode ends it (a cut one bootstraps)."""
        steps = len(episode.actions)
        return [
            (
                episode.observations[t],
                episode.actions[t],
                float(episode.rewards[t]),
                episode.observations[t + 1],
                t == steps - 1 and episode.terminated,
            )
            for t in range(steps)
        ]

    def replay_buffer(self, like: FrameStackReplayBuffer) -> FrameStackReplayBuffer:
        """A buffer of ``like``'s kind and settings (one environment) holding every transition
        once, e.g. for :class:`tm_algos.buffers.DemoMix`.

        Raises:
            InvalidValueError: ``like`` is not a :class:`FrameStackReplayBuffer` (the mix
                needs one; every off-policy preset uses it).
        """
        if not isinstance(like, FrameStackReplayBuffer):
            raise InvalidValueError(
                f"the model's replay buffer is a {type(like).__name__}: the demonstration mix "
                "needs a tm_algos.buffers.FrameStackReplayBuffer (every off-policy preset's); "
                "use it, or set demos.mix = 0 to put the demonstrations in the buffer instead"
            )
        n = max(self.num_steps, 1)
        space = like.observation_space
        assert isinstance(space, spaces.Dict)
        buffer = FrameStackReplayBuffer(
            n,
            space,
            like.action_space,
            device=like.device,
            n_envs=1,
            handle_timeout_termination=like.handle_timeout_termination,
            frame_key=like.frame_key,
            frame_channels=like.frame_channels,
            frame_capacity=n + len(self.episodes) + like.hist_len + 2,
        )
        for ep in self.episodes:
            for obs, action, reward, nxt, done in self.transitions(ep):
                buffer.add(
                    {k: v[None] for k, v in obs.items()},
                    {k: v[None] for k, v in nxt.items()},
                    action[None],
                    np.array([reward]),
                    np.array([done]),
                    [{}],
                )
        return buffer

    def fill_replay_buffer(self, model: BaseAlgorithm) -> int:
        """Add the transitions to ``model``'s replay buffer; returns how many were added.

        A buffer takes one transition per environment per call: the episodes are dealt to
        the ``n_envs`` slots in turn and added in lock step, as long as every slot has one.
        """
        buffer = getattr(model, "replay_buffer", None)
        if buffer is None:
            return 0
        n = model.n_envs
        slots: list[list[Transition]] = [[] for _ in range(n)]
        for i, ep in enumerate(self.episodes):
            slots[i % n].extend(self.transitions(ep))
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
