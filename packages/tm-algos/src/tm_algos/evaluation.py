"""Evaluate a policy on a tm-gym environment: finish rate, lap times, crashes, best lap.

:func:`evaluate` drives ``n_episodes`` episodes with a policy and returns an
:class:`EvalReport`: one :class:`EpisodeResult` per episode and the summary numbers. With
``keep_best`` it also keeps an :class:`EpisodeTrace` of the best episode (the fastest finish, or
the furthest progress when no episode finished): the driver's-view frames, positions and speeds,
which :func:`tm_algos.cli.eval.save_best_episode` turns into a video and a trajectory map.

A policy is any of:

* a :class:`~tm_algos.policy.LoadedPolicy` (from :func:`tm_algos.policy.load_policy`); the
  env settings it was trained with (``policy.json``'s ``env_settings``) are used by default, so
  its observations match;
* a Stable-Baselines3 / sb3-contrib model (``BaseAlgorithm``), recurrent ones included; the
  settings of the environment it holds, if any, are used the same way;
* any callable ``obs -> action``.

Definitions used in the report:

* **finished**: the car crossed the finish line (``info["finished"]``); its **lap time** is the
  simulator's ``info["lap_time"]`` in seconds.
* **progress**: the fraction of the reference trajectory covered (``info["progress"]``), 1.0 for
  a finished lap.
* **crashed**: the car touched a wall at least once (``info["wall_contacts"] > 0``, counted in
  physics substeps). A crash need not end the episode.
* **failed**: the environment ended the episode early because the car stopped making progress.

>>> from tm_algos.evaluation import evaluate
>>> report = evaluate(lambda obs: [1.0, 0.0, 0.0], n_episodes=2)  # doctest: +SKIP
>>> report.finish_rate, report.lap_time_best  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm

from tm_algos.errors import InvalidTypeError, InvalidValueError
from tm_algos.policy.loaded import LoadedPolicy

__all__ = [
    "EpisodeResult",
    "EpisodeTrace",
    "EvalReport",
    "evaluate",
    "policy_env_settings",
]

logger = logging.getLogger(__name__)

PolicyLike = LoadedPolicy | BaseAlgorithm | Callable[[Any], Any]


@dataclass(frozen=True)
class EpisodeResult:
    """What happened in episode ``index`` (from 0), reset with ``seed``: the sum of its rewards
    ``episode_return``, its ``steps``, whether it ``finished`` and its ``lap_time`` (s, else
    None), its ``progress`` (1.0 when finished), whether it ``crashed`` (``wall_contacts`` > 0,
    substeps spent touching a wall), ``failed`` (ended for lack of progress) or was
    ``truncated`` (length limit), and the ``race_time`` (s) at its last observation."""

    index: int
    seed: int
    episode_return: float
    steps: int
    finished: bool
    lap_time: float | None
    progress: float
    crashed: bool
    wall_contacts: int
    failed: bool
    truncated: bool
    race_time: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class EpisodeTrace:
    """Samples of episode ``index``, one per observation (the reset's and every step's):
    ``positions`` (T, 2) x/y metres and ``speeds_kmh``, ``race_times`` (T,) (all empty when the
    env's info has no ``position``), ``frames`` (T, H, W, 3) driver's views (None unless the env
    renders ``rgb_array``) and the env's ``track`` for maps (None when it has none)."""

    index: int
    positions: NDArray[np.float64]
    speeds_kmh: NDArray[np.float64]
    race_times: NDArray[np.float64]
    frames: NDArray[np.uint8] | None
    track: Any


@dataclass(frozen=True, eq=False)
class EvalReport:
    """Results of :func:`evaluate`."""

    episodes: tuple[EpisodeResult, ...]
    env_id: str
    env_kwargs: Mapping[str, Any]
    deterministic: bool
    best: EpisodeTrace | None = None
    """Trace of the best episode (fastest finish, else furthest progress), with ``keep_best``."""

    @property
    def n_episodes(self) -> int:
        return len(self.episodes)

    @property
    def finish_rate(self) -> float:
        """Fraction of the episodes that finished."""
        return sum(e.finished for e in self.episodes) / max(len(self.episodes), 1)

    @property
    def lap_times(self) -> tuple[float, ...]:
        return tuple(e.lap_time for e in self.episodes if e.lap_time is not None)

    @property
    def lap_time_mean(self) -> float | None:
        """Mean lap time (s) over the finished episodes; None when none finished."""
        laps = self.lap_times
        return float(np.mean(laps)) if laps else None

    @property
    def lap_time_std(self) -> float | None:
        """Population standard deviation (s) of the lap times; None when none finished."""
        laps = self.lap_times
        return float(np.std(laps)) if laps else None

    @property
    def lap_time_best(self) -> float | None:
        """Fastest lap time (s); None when none finished."""
        laps = self.lap_times
        return min(laps) if laps else None

    @property
    def crashes(self) -> int:
        """Number of episodes in which the car touched a wall."""
        return sum(e.crashed for e in self.episodes)

    @property
    def mean_return(self) -> float:
        return float(np.mean([e.episode_return for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_progress(self) -> float:
        return float(np.mean([e.progress for e in self.episodes])) if self.episodes else 0.0

    @property
    def best_index(self) -> int | None:
        """Index of the best episode: the fastest finish, else the furthest progress."""
        return _best_index(self.episodes)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON data (the trace's arrays are left out)."""
        return {
            "env_id": self.env_id,
            "env_kwargs": _jsonable(dict(self.env_kwargs)),
            "deterministic": self.deterministic,
            "n_episodes": self.n_episodes,
            "finish_rate": self.finish_rate,
            "lap_time_mean": self.lap_time_mean,
            "lap_time_std": self.lap_time_std,
            "lap_time_best": self.lap_time_best,
            "crashes": self.crashes,
            "mean_return": self.mean_return,
            "mean_progress": self.mean_progress,
            "best_episode": self.best_index,
            "episodes": [e.to_dict() for e in self.episodes],
        }


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data; objects JSON cannot hold become their ``repr``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else repr(float(value))
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _best_index(episodes: tuple[EpisodeResult, ...] | list[EpisodeResult]) -> int | None:
    if not episodes:
        return None
    finished = [e for e in episodes if e.lap_time is not None]
    if finished:
        return min(finished, key=lambda e: (e.lap_time, e.index)).index
    return max(episodes, key=lambda e: (e.progress, -e.index)).index


# -- policies ----------------------------------------------------------------------------------


def policy_env_settings(policy: Any) -> dict[str, Any]:
    """The env settings ``policy`` was trained with, as keyword arguments ({} if unknown).

    A :class:`LoadedPolicy` stores them in ``policy.json`` (``env_settings``); an SB3 model
    exposes those of the environment it holds (tm-gym's ``EnvSettings``).
    """
    if isinstance(policy, LoadedPolicy):
        found = policy.config.get("env_settings")
        return dict(found) if isinstance(found, Mapping) else {}
    if isinstance(policy, BaseAlgorithm):
        venv = policy.get_env()
        if venv is None:
            return {}
        try:
            settings = venv.get_attr("settings", indices=[0])[0]
        except AttributeError:
            return {}
        if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
            return dataclasses.asdict(settings)
    return {}


class _Actor:
    """One interface over the three kinds of policy."""

    def __init__(self, policy: Any, deterministic: bool) -> None:
        if isinstance(policy, (LoadedPolicy, BaseAlgorithm)):
            self.kind = "loaded" if isinstance(policy, LoadedPolicy) else "sb3"
        elif callable(policy):
            self.kind = "callable"
        else:
            raise InvalidTypeError(
                f"policy={policy!r} ({type(policy).__name__}): expected a LoadedPolicy "
                "(tm_algos.policy.load_policy), a Stable-Baselines3 model, or a callable "
                "obs -> action"
            )
        self.policy = policy
        self.deterministic = deterministic
        self._state: Any = None
        self._start = True

    @property
    def observation_space(self) -> spaces.Space[Any] | None:
        if self.kind == "callable":
            return None
        space: spaces.Space[Any] = self.policy.observation_space
        return space

    def reset(self) -> None:
        self._state = None
        self._start = True
        if self.kind == "loaded":
            self.policy.reset()

    def __call__(self, obs: Any) -> NDArray[np.float32]:
        start, self._start = self._start, False
        if self.kind == "loaded":
            action = self.policy.act(obs, deterministic=self.deterministic, episode_start=start)
        elif self.kind == "sb3":
            action, self._state = self.policy.predict(
                obs,
                state=self._state,
                episode_start=np.array([start]),
                deterministic=self.deterministic,
            )
        else:
            action = self.policy(obs)
        return np.asarray(action, dtype=np.float32)


def _space_shapes(space: spaces.Space[Any]) -> dict[str, tuple[int, ...]] | tuple[int, ...]:
    if isinstance(space, spaces.Dict):
        return {k: tuple(v.shape or ()) for k, v in space.spaces.items()}
    return tuple(space.shape or ())


def _check_spaces(actor: _Actor, env: gym.Env[Any, Any], env_id: str, kwargs: Any) -> None:
    expected = actor.observation_space
    if expected is None:
        return
    want, got = _space_shapes(expected), _space_shapes(env.observation_space)
    if want != got:
        raise InvalidValueError(
            f"the policy expects observations {want}, but {env_id} with env_kwargs={kwargs} "
            f"gives {got}; evaluate with the env settings the policy was trained with "
            "(e.g. the same obs_type, img_size, img_hist_len, act_buf_len)"
        )


# -- evaluation --------------------------------------------------------------------------------


def _make_env(env_id: str, kwargs: dict[str, Any]) -> gym.Env[Any, Any]:
    import tm_gym  # noqa: F401  (registers the TrackMania environments)

    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise InvalidValueError(f"cannot make env_id={env_id!r}: {e}") from e
    except TypeError as e:
        raise InvalidValueError(
            f"cannot make {env_id} with env_kwargs={kwargs}: {e}; check the argument names "
            "(see the environment's docstring)"
        ) from e


class _Recorder:
    """Samples of the episode being driven (positions, speeds, times, frames)."""

    def __init__(self, env: gym.Env[Any, Any], frames: bool) -> None:
        self.env = env
        self.with_frames = frames
        self.positions: list[NDArray[np.float64]] = []
        self.speeds: list[float] = []
        self.times: list[float] = []
        self.frames: list[NDArray[np.uint8]] = []

    def add(self, info: Mapping[str, Any]) -> None:
        pos = info.get("position")
        if pos is not None:
            p = np.asarray(pos, dtype=np.float64).reshape(-1)
            # tm-gym gives (x, y, z) with y up; the map is drawn in the ground plane (x, z)
            self.positions.append(p[[0, 2]] if p.size == 3 else p[:2])
            self.speeds.append(float(info.get("speed_kmh", 0.0)))
            self.times.append(float(info.get("race_time", 0.0)))
        if self.with_frames:
            frame = self.env.render()
            if isinstance(frame, np.ndarray) and frame.ndim == 3:
                self.frames.append(np.array(frame, dtype=np.uint8))

    def trace(self, index: int) -> EpisodeTrace:
        n = len(self.positions)
        return EpisodeTrace(
            index=index,
            positions=np.asarray(self.positions, dtype=np.float64).reshape(n, 2),
            speeds_kmh=np.asarray(self.speeds, dtype=np.float64),
            race_times=np.asarray(self.times, dtype=np.float64),
            frames=np.stack(self.frames) if self.frames else None,
            track=getattr(self.env.unwrapped, "track", None),
        )


def _run_episode(
    env: gym.Env[Any, Any], actor: _Actor, index: int, seed: int, recorder: _Recorder | None
) -> EpisodeResult:
    actor.reset()
    obs, info = env.reset(seed=seed)
    if recorder is not None:
        recorder.add(info)
    total, steps = 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(actor(obs))
        total += float(reward)
        steps += 1
        if recorder is not None:
            recorder.add(info)
    finished = bool(info.get("finished", False))
    lap = info.get("lap_time") if finished else None
    contacts = int(info.get("wall_contacts", 0))
    return EpisodeResult(
        index=index,
        seed=seed,
        episode_return=total,
        steps=steps,
        finished=finished,
        lap_time=None if lap is None else float(lap),
        progress=1.0 if finished else float(info.get("progress", 0.0)),
        crashed=contacts > 0,
        wall_contacts=contacts,
        failed=bool(info.get("failed", False)),
        truncated=bool(truncated) and not terminated,
        race_time=float(info.get("race_time", 0.0)),
    )


def evaluate(
    policy: PolicyLike,
    *,
    env_id: str = "TrackMania-Sim-v0",
    env_kwargs: Mapping[str, Any] | None = None,
    n_episodes: int = 5,
    seed: int = 0,
    deterministic: bool = True,
    keep_best: bool = True,
    progress: Callable[[EpisodeResult], None] | None = None,
    env: gym.Env[Any, Any] | None = None,
) -> EvalReport:
    """Drive ``n_episodes`` episodes with ``policy`` and report how it did.

    Args:
        policy: a :class:`LoadedPolicy`, an SB3 model or a callable ``obs -> action``.
        env_id: the Gymnasium id to make.
        env_kwargs: arguments of ``gymnasium.make``; they override the env settings the policy
            carries (see :func:`policy_env_settings`).
        n_episodes: number of episodes (>= 1). Episode ``i`` is reset with ``seed + i``.
        deterministic: act with the policy's deterministic action (ignored by callables).
        keep_best: keep an :class:`EpisodeTrace` of the best episode in ``report.best``, with
            the driver's-view frames (``render_mode="rgb_array"`` is asked for unless
            ``env_kwargs`` sets it).
        progress: called with each :class:`EpisodeResult` as soon as its episode ends.
        env: drive this environment instead of making one (it is not closed; ``env_id`` and
            ``env_kwargs`` are then only recorded in the report).

    Raises:
        ValueError: ``n_episodes`` < 1, an environment that cannot be made with these
            arguments, or observations that do not match the policy's.
        TypeError: ``policy`` is none of the accepted kinds.
    """
    for name, value, low in (("n_episodes", n_episodes, 1), ("seed", seed, 0)):
        given: object = value  # checked at run time: callers may pass anything
        if isinstance(given, bool) or not isinstance(given, int) or given < low:
            raise InvalidValueError(f"{name}={value!r}: expected a whole number >= {low}")
    actor = _Actor(policy, deterministic)
    kwargs = {**policy_env_settings(policy), **dict(env_kwargs or {})}
    owned = env is None
    if env is None:
        if keep_best:
            kwargs.setdefault("render_mode", "rgb_array")
        env = _make_env(env_id, kwargs)
    try:
        _check_spaces(actor, env, env_id, kwargs)
        frames = keep_best and env.render_mode == "rgb_array"
        results: list[EpisodeResult] = []
        best: EpisodeTrace | None = None
        for i in range(n_episodes):
            recorder = _Recorder(env, frames) if keep_best else None
            result = _run_episode(env, actor, i, seed + i, recorder)
            results.append(result)
            if recorder is not None and _best_index(results) == i:
                best = recorder.trace(i)
            logger.debug("episode %d: %s", i, result)
            if progress is not None:
                progress(result)
    finally:
        if owned:
            env.close()
    return EvalReport(
        episodes=tuple(results),
        env_id=env_id,
        env_kwargs=kwargs,
        deterministic=deterministic,
        best=best,
    )
