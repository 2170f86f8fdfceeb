"""What the trainer accepts from a worker: transitions inside the env's spaces, plausible results.

A worker is not trusted: a bug (a NaN from a broken sensor, a policy gone wild) or a hostile
peer that knows the password must never stop or corrupt training, nor fake results. The trainer
(:class:`~tm_dist.learner.Learner`) runs every decoded chunk through :func:`check_transitions`
and every finished episode through :func:`check_episode` before anything reaches its replay
buffer, its counters or ``RUN/best``; whatever fails raises :class:`InvalidChunkError`.

**Transitions** (:func:`check_transitions`):

* rewards finite and ``|r| <= ChunkRules.max_abs_reward`` (1e4: tm-gym's largest reward is the
  finish bonus, 100);
* actions finite and inside the action space (within ``1e-5``);
* every observation value finite and inside its ``Box`` bounds (keys whose dtype range is the
  Box range, such as uint8 pixels in [0, 255], cannot be out of bounds and are skipped);
* the step count the chunk announces equals the transitions it holds.

**Episodes** (:func:`check_episode`, on the final chunk):

* every numeric statistic finite; ``wall_contacts`` a non-negative int;
* ``return`` equal to the sum of the episode's rewards (within 0.01: the worker rounds it);
* a ``finished`` episode has a lap time, and the lap is plausible: at least ``min_lap_s``
  (the *physical minimum*) and within ``LapRules.time_tolerance`` of the race time its steps
  took (``steps × time_step_duration``; the lap of a finished episode ends during its last
  step).

**The physical minimum** (:func:`expert_lap_floor`): half the lap time of tm-gym's scripted
expert on the simulator's track (``tm-gym tracks`` prints it: 39.934 s on ``default``, so no
lap under 19.967 s is believed). The expert drives near the car's limits, and the learning
benchmarks' best laps are within 1.1× of it, so 0.5× leaves room for a policy twice as fast
as the expert while refusing the impossible. The live game's track is unknown to the trainer:
there the floor is ``LapRules.min_lap_s`` if set, else only the step-count rule applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from tm_dist.codec import Transitions
from tm_dist.errors import TMDistError

__all__ = [
    "EXPERT_LAP_FRACTION",
    "ChunkRules",
    "InvalidChunkError",
    "LapRules",
    "check_episode",
    "check_transitions",
    "expert_lap_floor",
]

EXPERT_LAP_FRACTION = 0.5
"""The physical minimum lap on a simulator track, as a fraction of the expert's lap."""

_ACTION_TOL = 1e-5


class InvalidChunkError(TMDistError, ValueError):
    """An episode chunk whose content the trainer refuses (the message says which value and
    which rule); the chunk and its episode are dropped and counted against the worker."""


@dataclass(frozen=True)
class ChunkRules:
    """Bounds on the transitions of a chunk beyond the spaces themselves."""

    max_abs_reward: float = 1e4
    """Largest believable reward magnitude of one step."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_abs_reward) and self.max_abs_reward > 0):
            raise InvalidChunkError(
                f"max_abs_reward={self.max_abs_reward!r}: expected a finite positive number"
            )


@dataclass(frozen=True)
class LapRules:
    """When a reported lap time is believed.

    Args:
        min_lap_s: The physical minimum lap time (None: no floor besides ``> 0``).
        time_step_s: The env's step duration (``time_step_duration``), for the step-count rule.
        time_tolerance: Relative slack of the step-count rule: the lap must lie in
            ``[(n - 1) × dt × (1 - tol) - dt, n × dt × (1 + tol) + dt]`` for ``n`` steps.
    """

    min_lap_s: float | None = None
    time_step_s: float = 0.05
    time_tolerance: float = 0.25

    def __post_init__(self) -> None:
        if self.min_lap_s is not None and not (
            math.isfinite(self.min_lap_s) and self.min_lap_s >= 0
        ):
            raise InvalidChunkError(
                f"min_lap_s={self.min_lap_s!r}: expected None or a finite number >= 0"
            )
        if not (math.isfinite(self.time_step_s) and self.time_step_s > 0):
            raise InvalidChunkError(f"time_step_s={self.time_step_s!r}: expected a positive number")


def _bounded_keys(observation_space: spaces.Dict) -> dict[str, tuple[Any, Any, bool]]:
    """Per key: (low, high, needs a check); integer keys spanning their dtype need none."""
    out: dict[str, tuple[Any, Any, bool]] = {}
    for key, space in observation_space.spaces.items():
        if not isinstance(space, spaces.Box):
            continue
        low, high = np.asarray(space.low), np.asarray(space.high)
        dtype = np.dtype(space.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            needed = bool(np.any(low > info.min) or np.any(high < info.max))
        else:
            needed = True
        out[key] = (low, high, needed)
    return out


def check_transitions(
    tr: Transitions,
    observation_space: spaces.Dict,
    action_space: spaces.Box,
    *,
    n_steps: int | None = None,
    rules: ChunkRules | None = None,
) -> None:
    """Raise :class:`InvalidChunkError` unless every value of ``tr`` is finite and in its space.

    ``n_steps``: the count the chunk announced (checked against the transitions it holds).
    """
    rules = rules or ChunkRules()
    n = tr.n_steps
    if n_steps is not None and n_steps != n:
        raise InvalidChunkError(f"the chunk announces {n_steps} steps but holds {n} transitions")
    reward = np.asarray(tr.reward, dtype=np.float64)
    bad = ~np.isfinite(reward) | (np.abs(reward) > rules.max_abs_reward)
    if bad.any():
        t = int(np.argmax(bad))
        raise InvalidChunkError(
            f"reward {reward[t]!r} at step {t}: expected a finite reward with "
            f"|r| <= {rules.max_abs_reward:g}"
        )
    action = np.asarray(tr.action, dtype=np.float64)
    low = np.asarray(action_space.low, dtype=np.float64) - _ACTION_TOL
    high = np.asarray(action_space.high, dtype=np.float64) + _ACTION_TOL
    bad_rows = ~(np.isfinite(action) & (action >= low) & (action <= high)).reshape(n, -1).all(1)
    if bad_rows.any():
        t = int(np.argmax(bad_rows))
        raise InvalidChunkError(
            f"action {action[t].tolist()} at step {t}: expected finite values inside the action "
            f"space [{action_space.low.tolist()}, {action_space.high.tolist()}]"
        )
    _check_observations(tr, observation_space)


def _check_observations(tr: Transitions, observation_space: spaces.Dict) -> None:
    for key, (low, high, needed) in _bounded_keys(observation_space).items():
        if not needed:
            continue
        # obs and next_obs are views of one array: check obs, then next_obs' last row
        for name, values in (("obs", tr.obs[key]), ("next_obs", tr.next_obs[key][-1:])):
            v = np.asarray(values)
            ok = (v >= low) & (v <= high)
            if np.issubdtype(v.dtype, np.floating):
                ok &= np.isfinite(v)
            if not ok.all():
                t = int(np.argmax(~ok.reshape(len(v), -1).all(1)))
                where = t if name == "obs" else tr.n_steps - 1
                bad = v[t][~ok[t]].ravel()[:3].tolist()
                raise InvalidChunkError(
                    f"{name}[{key!r}] at step {where} holds {bad}: expected finite values inside "
                    f"the observation space's bounds [{float(np.min(low)):g}, "
                    f"{float(np.max(high)):g}]"
                )


def _finite_stats(stats: Mapping[str, Any]) -> None:
    for key, value in stats.items():
        if key == "lap_time" and value == math.inf and not stats.get("finished"):
            continue  # tm-gym's "no lap yet", sent by workers of earlier versions
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidChunkError(f"statistic {key!r} = {value!r}: expected a finite number")
    contacts = stats.get("wall_contacts")
    if contacts is not None and (
        isinstance(contacts, bool) or not isinstance(contacts, int) or contacts < 0
    ):
        raise InvalidChunkError(f"wall_contacts = {contacts!r}: expected an int >= 0")


def check_episode(
    stats: Mapping[str, Any],
    *,
    n_steps: int,
    reward_sum: float,
    laps: LapRules,
) -> float | None:
    """Check a finished episode's statistics; returns its believed lap time (None: no finish).

    Raises:
        InvalidChunkError: a non-finite statistic, a return that is not the sum of the
            rewards, or an implausible lap (the message says which rule).
    """
    _finite_stats(stats)
    ret = stats.get("return")
    numeric = isinstance(ret, (int, float)) and not isinstance(ret, bool)
    if numeric and abs(float(ret) - reward_sum) > 0.01 + 1e-6 * abs(reward_sum):  # type: ignore[arg-type]
        raise InvalidChunkError(
            f"return {ret!r} is not the sum of the episode's rewards ({reward_sum:.4f})"
        )
    if not stats.get("finished"):
        return None
    lap = stats.get("lap_time")
    if isinstance(lap, bool) or not isinstance(lap, (int, float)):
        raise InvalidChunkError(f"a finished episode reports lap_time = {lap!r}: expected seconds")
    lap = float(lap)
    floor = laps.min_lap_s or 0.0
    if not lap > floor:
        raise InvalidChunkError(
            f"lap time {lap:.3f} s is below the physical minimum of {floor:.3f} s on this track "
            f"({EXPERT_LAP_FRACTION}x the expert's lap on the simulator)"
        )
    dt, tol = laps.time_step_s, laps.time_tolerance
    lo = (n_steps - 1) * dt * (1 - tol) - dt
    hi = n_steps * dt * (1 + tol) + dt
    if not lo <= lap <= hi:
        raise InvalidChunkError(
            f"lap time {lap:.3f} s does not match the episode's {n_steps} steps of {dt:g} s "
            f"(expected {max(lo, 0.0):.3f} to {hi:.3f} s)"
        )
    return lap


def expert_lap_floor(env_id: str, env_kwargs: Mapping[str, Any]) -> float | None:
    """The physical minimum lap of a simulator env: ``EXPERT_LAP_FRACTION`` × the expert's lap.

    None for an env that is not tm-gym's simulator (the live game: the track is unknown), or
    when the expert does not finish the track. Drives the expert once (a few seconds).
    """
    if "Sim" not in env_id:
        return None
    from tm_gym.sim.expert import run_expert

    track = env_kwargs.get("track", "default")
    lap = run_expert(track, record_frames=False)
    if not lap.finished or lap.lap_time is None:
        return None
    return EXPERT_LAP_FRACTION * float(lap.lap_time)
