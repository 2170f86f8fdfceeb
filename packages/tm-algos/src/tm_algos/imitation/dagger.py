"""DAgger: the student drives, a privileged teacher labels every state it visits.

Only the simulator can do this: it knows the exact state behind every frame. First the teacher
drives ``warmup_steps`` steps of every car (labelled, no training); then each iteration

1. drives ``n_envs`` cars (spread over ``tracks``) for ``steps_per_iteration`` steps with tm-gym's
   native vector environment; each car, at each step, follows the teacher with probability
   ``beta`` (decaying by ``beta_decay`` per iteration) and the student's deterministic action
   otherwise;
2. labels every observation with the teacher's action for that very state and adds it to the
   aggregated :class:`~tm_algos.imitation.dataset.ImitationDataset` (bounded, frames stored once);
3. trains the student by behaviour cloning (:class:`~tm_algos.imitation.bc.BehaviourCloning`) on
   batches of the whole dataset;
4. every ``eval_every`` iterations, calls ``evaluate`` (a deterministic lap, say).

Teachers: the scripted expert (``"expert"``: ``expert_actions()`` of the vector environment's
core), or a trained LIDAR policy directory, fed the exact LIDAR scans of the same cars (the
simulator's ``lidar()`` for the current state, the same speed and the same action history).

The student is any SB3 policy :class:`BehaviourCloning` takes, typically the ``images-sac``
preset's :class:`~tm_algos.fast_sac.FastSACPolicy`: once trained it is exported and loaded as
any other policy of that preset.

>>> from tm_algos.imitation import ImitationConfig, run_dagger
>>> result = run_dagger(  # doctest: +SKIP
...     model.policy,
...     ImitationConfig(iterations=3),
...     env_kwargs={"obs_type": "images"},
... )
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.policies import BasePolicy

from tm_algos.errors import InvalidValueError
from tm_algos.imitation.augment import FrameAugment
from tm_algos.imitation.bc import BehaviourCloning
from tm_algos.imitation.config import ImitationConfig
from tm_algos.imitation.dataset import ImitationDataset
from tm_algos.imitation.fleet import Fleet, Obs

__all__ = [
    "DaggerIteration",
    "DaggerResult",
    "ExpertTeacher",
    "LidarPolicyTeacher",
    "Teacher",
    "make_teacher",
    "run_dagger",
]

_log = logging.getLogger(__name__)


class Teacher(Protocol):
    """Labels the current state of every car of a tm-gym simulator vector environment."""

    def labels(self, env: Any, obs: Obs, first: NDArray[np.bool_]) -> NDArray[np.float32]:
        """Actions (n, 3) for the cars' current states; ``first`` marks the cars whose
        observation is the first of an episode."""
        ...


class ExpertTeacher:
    """The simulator's scripted expert (pure pursuit on the centre line, a speed plan)."""

    def labels(self, env: Any, obs: Obs, first: NDArray[np.bool_]) -> NDArray[np.float32]:
        del obs, first
        return np.asarray(env.unwrapped.expert_actions(), dtype=np.float32)


class LidarPolicyTeacher:
    """A trained LIDAR policy, given the exact LIDAR observation of the car being labelled.

    The scans come from the simulator for the very state behind each frame, with the policy's
    own history length; speed and the action history are those of the observation.
    """

    def __init__(self, path: str | Path) -> None:
        from tm_algos.policy.load import load_policy

        self.policy = load_policy(path)
        space = self.policy.observation_space
        lidar = getattr(space, "spaces", {}).get("lidar")
        if lidar is None or set(space.spaces) - {"lidar", "speed", "actions"}:  # type: ignore[attr-defined]
            raise InvalidValueError(
                f"teacher {str(path)!r} is not a LIDAR policy (its observation keys are "
                f"{sorted(getattr(space, 'spaces', {}))}); train one with tm-train lidar-sac"
            )
        self.history = int(lidar.shape[0])
        self.act_shape = tuple(space.spaces["actions"].shape)  # type: ignore[attr-defined]
        self._scans: dict[int, NDArray[np.float32]] = {}
        self._latest: dict[int, NDArray[np.float32]] = {}  # the scans at the previous call

    def labels(self, env: Any, obs: Obs, first: NDArray[np.bool_]) -> NDArray[np.float32]:
        sim = env.unwrapped.core.sim
        now = np.asarray(sim.lidar(), dtype=np.float32)  # (n, 19) for the current states
        key = id(env)
        # The frame a car observes was captured at the start of the step that just ran (rtgym's
        # timing: an action acts one step late), i.e. in the state of the previous call here;
        # a car that has just reset observes its fresh capture, the current state. The teacher
        # was trained on observations with that timing: give it the scan of the frame's state,
        # not one step newer.
        previous = self._latest.get(key)
        if previous is None or len(previous) != len(now):
            scan = now
        else:
            scan = np.where(first[:, None], now, previous)
        self._latest[key] = now
        hist = self._scans.get(key)
        if hist is None or len(hist) != len(scan):
            hist = np.repeat(scan[:, None], self.history, axis=1)
        else:
            hist = np.concatenate([hist[:, 1:], scan[:, None]], axis=1)
            hist[first] = scan[first, None]
        self._scans[key] = hist
        actions = np.asarray(obs["actions"], dtype=np.float32)
        if actions.shape[1:] != self.act_shape:
            raise InvalidValueError(
                f"the teacher expects an action history of shape {self.act_shape}, the "
                f"student's environment gives {actions.shape[1:]}: set env.kwargs.act_buf_len "
                "to the teacher's"
            )
        lidar_obs = {"lidar": hist.copy(), "speed": obs["speed"], "actions": actions}
        return np.asarray(self.policy.act(lidar_obs, deterministic=True), dtype=np.float32)


def make_teacher(name: str) -> Teacher:
    """``"expert"``, or a LIDAR policy directory."""
    if name == "expert":
        return ExpertTeacher()
    if not (Path(name) / "policy.json").is_file():
        raise InvalidValueError(
            f"teacher {name!r} is neither 'expert' nor a policy directory (no policy.json "
            "there); give the path of a trained LIDAR policy, e.g. runs/lidar-sac/best"
        )
    return LidarPolicyTeacher(name)


@dataclass(frozen=True)
class DaggerIteration:
    """What one iteration did."""

    iteration: int
    beta: float
    env_steps: int
    """Environment steps (all cars) since the start."""
    dataset_size: int
    loss: float
    wall_s: float
    teacher_share: float
    """Fraction of this iteration's steps the teacher drove."""
    evaluation: Any = None
    """What ``evaluate`` returned, if it ran this iteration."""


@dataclass
class DaggerResult:
    """The aggregated dataset and the iterations, in order."""

    dataset: ImitationDataset
    iterations: list[DaggerIteration] = field(default_factory=list)
    env_steps: int = 0
    stopped_early: bool = False


def _collect(
    fleet: Fleet,
    teacher: Teacher,
    bc: BehaviourCloning,
    dataset: ImitationDataset,
    steps: int,
    beta: float,
    rng: np.random.Generator,
) -> float:
    """Drive ``steps`` steps of every car, labelling each state; the teacher's share."""
    streams = np.arange(fleet.n)
    teacher_steps = 0
    for _ in range(steps):
        labels = np.concatenate(
            [
                teacher.labels(env, obs, first)
                for env, obs, first in zip(fleet.envs, fleet.obs, fleet.first, strict=True)
            ]
        )
        obs = fleet.observations()
        dataset.add(obs, labels, streams=streams)
        by_teacher = rng.random(fleet.n) < beta
        teacher_steps += int(by_teacher.sum())
        actions = labels.copy()
        if not by_teacher.all():
            student = np.asarray(bc.policy.unscale_action(bc.predict(obs)), dtype=np.float32)
            actions[~by_teacher] = student[~by_teacher]
        fleet.step(actions)
    return teacher_steps / max(steps * fleet.n, 1)


def run_dagger(
    policy: BasePolicy,
    config: ImitationConfig,
    env_kwargs: Mapping[str, Any],
    *,
    dataset: ImitationDataset | None = None,
    evaluate: Callable[[int], Any] | None = None,
    should_stop: Callable[[Any], bool] | None = None,
    on_iteration: Callable[[DaggerIteration], None] | None = None,
    seconds: float | None = None,
    seed: int = 0,
    teacher: Teacher | None = None,
) -> DaggerResult:
    """Train ``policy`` by DAgger (see the module docstring); returns the dataset and history.

    :param env_kwargs: the student's environment arguments (``obs_type``, ``img_size``, ...);
        the cars always run the simulator (``TrackMania-Sim-v0``), on ``config.tracks`` or on
        ``env_kwargs["track"]``.
    :param dataset: a dataset to keep aggregating into (default: a new one of
        ``config.buffer_size`` samples).
    :param evaluate: called with the environment steps so far every ``config.eval_every``
        iterations (and after the last); its result goes into the iteration's record.
    :param should_stop: called with each evaluation's result; True ends the training early.
    :param on_iteration: called after every iteration (progress display, exports).
    :param seconds: wall-clock budget (the smaller of this and ``config.minutes``).
    :param teacher: a teacher object instead of ``config.teacher``'s.
    """
    budget = [s for s in (seconds, None if config.minutes is None else config.minutes * 60) if s]
    deadline = time.perf_counter() + min(budget) if budget else None
    teacher = teacher if teacher is not None else make_teacher(config.teacher)
    fleet = Fleet(env_kwargs, config.tracks, config.n_envs, seed, config.car_scales)
    space = fleet.envs[0].single_observation_space
    if dataset is None:
        dataset = ImitationDataset(
            space, config.buffer_size, frame_channels=1 if env_kwargs.get("grayscale", True) else 3
        )
    bc = BehaviourCloning(
        policy,
        learning_rate=config.learning_rate,
        log_std_target=config.log_std,
        augment=FrameAugment.from_table(config.augment),
        history_dropout=config.history_dropout,
    )
    rng = np.random.default_rng(seed)
    result = DaggerResult(dataset)
    t0 = time.perf_counter()
    try:
        if config.warmup_steps:
            _collect(fleet, teacher, bc, dataset, config.warmup_steps, 1.0, rng)
            result.env_steps += config.warmup_steps * fleet.n
        for it in range(config.iterations):
            beta = config.beta_at(it)
            share = _collect(fleet, teacher, bc, dataset, config.steps_per_iteration, beta, rng)
            result.env_steps += config.steps_per_iteration * fleet.n
            loss = bc.train(dataset, config.gradient_steps, config.batch_size, rng)
            last = it == config.iterations - 1
            out_of_time = deadline is not None and time.perf_counter() >= deadline
            evaluation = None
            if evaluate is not None and ((it + 1) % config.eval_every == 0 or last or out_of_time):
                evaluation = evaluate(result.env_steps)
            record = DaggerIteration(
                it,
                beta,
                result.env_steps,
                len(dataset),
                loss,
                time.perf_counter() - t0,
                share,
                evaluation,
            )
            result.iterations.append(record)
            _log.info("DAgger %d: beta %.3f, %d samples, loss %.4f", it, beta, len(dataset), loss)
            if on_iteration is not None:
                on_iteration(record)
            if evaluation is not None and should_stop is not None and should_stop(evaluation):
                result.stopped_early = True
                break
            if out_of_time:
                result.stopped_early = True
                break
    finally:
        fleet.close()
    return result
