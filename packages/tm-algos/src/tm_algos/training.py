"""Training runs: a preset, a run directory, safe checkpoints, resume.

A run directory holds everything about one training run::

    RUN/
      run.json             the resolved preset, seed, number of envs, env kwargs, versions
      policy/              the published policy (policy.safetensors + policy.json), for
                           tm-eval: during training the latest, at the end of the run the
                           best evaluated one (a copy of best/; ``publish_best=False``: latest)
      best/                the policy of the best deterministic evaluation so far
      checkpoints/step-N/  full training state (safetensors + JSON + npz), for --resume
      evaluations.json     the deterministic evaluation episodes, in order
      tb/                  TensorBoard logs

A preset with an ``[imitation]`` table first trains its policy by DAgger with the simulator's
privileged teacher (:func:`tm_algos.imitation.run_dagger`), evaluating the student as RL runs
are evaluated (``evaluations.json``, ``best/``), then continues with the preset's RL algorithm
from the student's weights when ``imitation.finetune`` is true. With ``imitation.eval_tracks``
each evaluation drives one lap on every validation track instead, and ``best/`` is the student
with the highest :func:`validation_score` summed over them (``best/evaluation.json`` lists the
laps); ``imitation.augment`` distorts the student's training frames
(:mod:`tm_algos.imitation.augment`). ``demos`` (``.tmrec``
recordings) pre-train the policy by behaviour cloning before either (``demos.pretrain``).

During RL an off-policy model draws ``demos.mix`` of every gradient batch from the recordings'
transitions (RLPD), and with ``demos.bc_weight > 0`` its actor loss gains a behaviour-cloning
term towards the teacher-labelled DAgger dataset (after DAgger) or the recordings
(:mod:`tm_algos.imitation.mix`). ``run.json`` keeps the recordings' paths: ``--resume`` reads
them again (nothing of them is in a checkpoint).

Nothing in it is loaded with Python object serialization: a run directory from someone else
can be evaluated and resumed safely.

>>> from tm_algos.training import TrainConfig, Trainer
>>> trainer = Trainer(TrainConfig(preset="lidar-sac", run_dir="runs/demo", minutes=1))
>>> result = trainer.run()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from tm_algos.callbacks import CheckpointCallback, EpisodeStatsCallback, EvalCallback, EvalRecord
from tm_algos.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from tm_algos.errors import InvalidValueError, TMAlgosError
from tm_algos.factory import env_kwargs_of, make_model, make_vec_env
from tm_algos.imitation.config import ImitationConfig
from tm_algos.policy.export import export_policy
from tm_algos.presets import Preset, apply_overrides, load_preset, preset_from_dict

if TYPE_CHECKING:
    from tm_algos.imitation.dagger import DaggerIteration, DaggerResult
    from tm_algos.imitation.demos import Demonstrations
    from tm_algos.imitation.mix import DemoTerms

__all__ = ["RunDirError", "TrainConfig", "TrainResult", "Trainer"]

_log = logging.getLogger(__name__)
RUN_FORMAT = "tm-algos-run/1"


class RunDirError(TMAlgosError, ValueError):
    """A run directory cannot be created or resumed; the message says why and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    """What ``tm-train`` was asked to do."""

    preset: str | Path = "lidar-sac"
    run_dir: str | Path = "runs/lidar-sac"
    overrides: Sequence[str] = ()
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    n_envs: int | None = None
    seed: int = 0
    device: str = "auto"
    total_timesteps: int | None = None
    minutes: float | None = None
    """Wall-clock budget; training stops (and saves) when it is spent."""
    checkpoint_every: int = 50_000
    eval_every: int = 10_000
    eval_episodes: int = 1
    stop_at_lap: float | None = None
    """Stop once a deterministic evaluation lap is at most this many seconds."""
    resume: bool = False
    tensorboard: bool = True
    wandb: bool = False
    torch_threads: int | None = None
    demos: Sequence[str | Path] = ()
    """``.tmrec`` recordings: behaviour-cloning pre-training before anything else
    (``demos.pretrain``), then, for off-policy algorithms, ``demos.mix`` of every gradient batch
    drawn from their transitions (0: their transitions go into the replay buffer once) and
    the optional ``demos.bc_weight`` term; see :mod:`tm_algos.imitation.mix`. With
    ``resume``: used instead of the recordings named in ``run.json``."""
    publish_best: bool = True
    """End the run with ``policy/`` a copy of ``best/`` (the best evaluated policy)."""
    init_from: str | Path | None = None
    """A policy directory (``policy.json`` + ``policy.safetensors``) whose weights a new run
    starts from, e.g. a simulator-trained policy to fine-tune on the game; same spaces and
    network needed."""


def init_from_policy(model: BaseAlgorithm, policy_dir: str | Path) -> None:
    """Load the weights of the policy in ``policy_dir`` into ``model``'s policy.

    The file is read like any policy (JSON + safetensors, allow-listed classes, no pickle).

    Raises:
        PolicyFileError: the directory is not a readable policy.
        InvalidValueError: its observation or action space, or its network, differs from the
            model's (the message says which, and that the preset must match).
    """
    from tm_algos.policy import load_policy

    loaded = load_policy(policy_dir)
    where = f"--init-from {policy_dir}"
    for name, theirs, ours in (
        ("observation space", loaded.observation_space, model.observation_space),
        ("action space", loaded.action_space, model.action_space),
    ):
        if theirs != ours:
            raise InvalidValueError(
                f"{where}: its {name} is {theirs}, this run's is {ours}; start from a policy of "
                "the same preset and env settings (obs_type, img_size, img_hist_len, ...)"
            )
    state = loaded.policy.state_dict()
    target = model.policy.state_dict()
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or extra or wrong:
        raise InvalidValueError(
            f"{where}: its network differs from this run's (missing {missing[:3]}, unexpected "
            f"{extra[:3]}, other shapes {wrong[:3]}); start from a policy of the same preset"
        )
    model.policy.load_state_dict(state)


@dataclass(frozen=True)
class TrainResult:
    """How a run ended."""

    run_dir: Path
    timesteps: int
    wall_s: float
    interrupted: bool
    evaluations: tuple[EvalRecord, ...]
    best: EvalRecord | None
    checkpoint: Path | None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _StopAfter(BaseCallback):
    """Stops training at a ``time.perf_counter()`` deadline."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def _on_step(self) -> bool:
        return time.perf_counter() < self.deadline


def _expert_lap(env: gym.Env[Any, Any], seed: int) -> float | None:
    """The simulator's scripted expert's lap on ``env`` from ``reset(seed=seed)`` (None if it
    does not finish, or the environment has no expert)."""
    core = env.unwrapped
    if not hasattr(core, "expert_action"):
        return None
    env.reset(seed=seed)
    info: dict[str, Any] = {}
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(core.expert_action())
        done = terminated or truncated
    lap = info.get("lap_time") if info.get("finished") else None
    return None if lap is None else float(lap)


def validation_score(record: EvalRecord, expert_lap: float | None) -> float:
    """One validation episode's score: ``1 + expert_lap / lap_time`` for a finished lap (in
    (1, 2] when the expert is faster; 2 for its pace), else the progress in [0, 1]. Without an
    expert lap a finish scores 1.5. Sums over tracks rank students: finishing first, then speed."""
    if record.finished and record.lap_time is not None and record.lap_time > 0:
        if expert_lap is None:
            return 1.5
        return 1.0 + expert_lap / record.lap_time
    return float(record.progress)


class Trainer:
    """Builds (or resumes) a run and trains it; see the module docstring for the layout."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.preset: Preset
        self.model: BaseAlgorithm
        self.stats = EpisodeStatsCallback()
        self.evaluator: EvalCallback | None = None
        self._validation: list[tuple[EvalCallback, float | None]] | None = None
        self._validation_best: float | None = None
        self._built = False
        self._wandb_run: Any = None
        self._t_start = time.perf_counter()
        self.imitation_result: DaggerResult | None = None
        """What the DAgger phase returned (None before it ran, or without ``[imitation]``)."""
        self.demonstrations: Demonstrations | None = None
        """The recordings of ``demos`` (or, on resume, of ``run.json``), once read."""
        self.demo_terms: DemoTerms | None = None
        """The replay mix and behaviour-cloning term of the RL phase, once installed."""
        self._demo_paths: list[str] = []

    # -- setup -------------------------------------------------------------------------------

    def _resolve_preset(self) -> tuple[Preset, dict[str, Any]]:
        cfg = self.config
        run_json = self.run_dir / "run.json"
        if cfg.resume:
            if not run_json.is_file():
                raise RunDirError(
                    f"--resume: {run_json} does not exist; give the directory of an earlier "
                    "tm-train run (it holds run.json)"
                )
            try:
                info = json.loads(run_json.read_text(encoding="utf-8"))
                if info.get("format") != RUN_FORMAT:
                    raise RunDirError(f"{run_json}: format {info.get('format')!r}")
                preset = preset_from_dict(info["preset_name"], info["preset"], str(run_json))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RunDirError(
                    f"{run_json} is not a readable tm-train run file ({exc}); start a new run "
                    "in another directory"
                ) from exc
            if cfg.overrides:
                preset = apply_overrides(preset, cfg.overrides)
            saved = info.get("demos", [])
            self._demo_paths = [str(p) for p in cfg.demos] or [
                str(p) for p in saved if isinstance(p, str)
            ]
            return preset, info
        if run_json.exists():
            raise RunDirError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                "another --run-dir"
            )
        preset = apply_overrides(load_preset(cfg.preset), cfg.overrides)
        self._demo_paths = [str(p) for p in cfg.demos]
        info = {
            "format": RUN_FORMAT,
            "preset_name": preset.name,
            "preset": preset.to_dict(),
            "seed": cfg.seed,
            "n_envs": cfg.n_envs or preset.env.n_envs,
            "env_kwargs": dict(cfg.env_kwargs),
            "demos": [str(Path(p).resolve()) for p in cfg.demos],
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return preset, info

    def build(self) -> BaseAlgorithm:
        """Create the environments and the model (loading the last checkpoint with resume)."""
        cfg = self.config
        if cfg.resume and cfg.init_from is not None:
            raise InvalidValueError(
                f"--init-from {cfg.init_from} starts a new run and --resume continues one: "
                "pass only one of them"
            )
        self.preset, info = self._resolve_preset()
        threads = cfg.torch_threads
        if (
            threads is None
            and self.preset.env.obs_type != "images"
            and cfg.device in ("auto", "cpu")
        ):
            threads = 1  # small MLPs: one thread is fastest on a CPU (and leaves a core free)
        if threads is not None:
            torch.set_num_threads(threads)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env_kwargs = dict(info.get("env_kwargs", {}))
        env_kwargs.update(cfg.env_kwargs)
        n_envs = cfg.n_envs or int(info.get("n_envs", self.preset.env.n_envs))
        venv = make_vec_env(self.preset, n_envs=n_envs, seed=cfg.seed, env_kwargs=env_kwargs)
        tb = str(self.run_dir / "tb") if cfg.tensorboard else None
        self.model = make_model(
            self.preset, venv, seed=cfg.seed, device=cfg.device, tensorboard_log=tb
        )
        if cfg.resume:
            ckpt = latest_checkpoint(self.run_dir / "checkpoints")
            if ckpt is None:
                raise RunDirError(
                    f"{self.run_dir / 'checkpoints'} holds no complete checkpoint to resume from; "
                    "start a new run"
                )
            load_checkpoint(self.model, ckpt)
            _log.info("resumed from %s at %d steps", ckpt, self.model.num_timesteps)
        else:
            if cfg.init_from is not None:
                init_from_policy(self.model, cfg.init_from)
                _log.info("starting from the weights of %s", cfg.init_from)
            _write_json(self.run_dir / "run.json", info)
        self._env_kwargs = env_kwargs_of(self.preset, env_kwargs)
        self._built = True
        return self.model

    # -- saving ------------------------------------------------------------------------------

    def save(self) -> Path:
        """Write a checkpoint and the current policy; returns the checkpoint directory."""
        step = self.model.num_timesteps
        ckpt = save_checkpoint(
            self.model,
            self.run_dir / "checkpoints" / f"step-{step:010d}",
            meta={"timesteps": step, "preset": self.preset.name},
        )
        export_policy(self.model, self.run_dir / "policy", env_settings=self.env_settings())
        if self.evaluator is not None:
            _write_json(
                self.run_dir / "evaluations.json",
                [r.to_dict() for r in self.evaluator.records],
            )
        prune_checkpoints(self.run_dir / "checkpoints", keep=3)
        return ckpt

    def env_settings(self) -> dict[str, Any]:
        """What a policy file records about its environment: tm-gym's settings and the
        JSON-able keyword arguments it was trained with (the track, for instance)."""
        out: dict[str, Any] = {}
        found = self.model.get_env().get_attr("settings", indices=[0])[0]  # type: ignore[union-attr]
        if dataclasses.is_dataclass(found) and not isinstance(found, type):
            out.update(dataclasses.asdict(found))
        for key, value in self._env_kwargs.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            out[key] = value
        return out

    def _on_new_best(self, record: EvalRecord) -> None:
        export_policy(self.model, self.run_dir / "best", env_settings=self.env_settings())
        _write_json(self.run_dir / "best" / "evaluation.json", record.to_dict())

    # -- training ----------------------------------------------------------------------------

    def callbacks(self, extra: Sequence[BaseCallback] = ()) -> CallbackList:
        """The RL phase's callbacks: statistics, evaluation, checkpoints, the time budget."""
        cfg = self.config
        evaluator = self._make_evaluator()
        cbs: list[BaseCallback] = [
            self.stats,
            evaluator,
            CheckpointCallback(cfg.checkpoint_every, self.save),
        ]
        if cfg.minutes is not None:
            cbs.append(_StopAfter(self._t_start + cfg.minutes * 60.0))
        cbs.extend(extra)
        return CallbackList(cbs)

    def _make_evaluator(self) -> EvalCallback:
        if self.evaluator is not None:
            return self.evaluator
        cfg = self.config
        eval_env = gym.make(self.preset.env.id, **self._env_kwargs)
        self.evaluator = EvalCallback(
            eval_env,
            cfg.eval_every,
            n_episodes=cfg.eval_episodes,
            on_new_best=self._on_new_best,
            stop_when_faster_than=cfg.stop_at_lap,
            clock_start=self._t_start,
        )
        if cfg.resume:
            self.evaluator.restore(self._earlier_evaluations())
        return self.evaluator

    def _earlier_evaluations(self) -> list[EvalRecord]:
        """The evaluations of the run being resumed, so that ``best/`` is only replaced by a
        better policy and ``evaluations.json`` keeps the whole history."""
        path = self.run_dir / "evaluations.json"
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return [EvalRecord.from_dict(item) for item in data]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("%s is unreadable (%s): the evaluation history restarts", path, exc)
            return []

    def run(
        self,
        extra_callbacks: Sequence[BaseCallback] = (),
        on_imitation: Callable[[DaggerIteration], None] | None = None,
    ) -> TrainResult:
        """Train until the step budget, the time budget or Ctrl-C; always saves at the end.

        With demonstrations, behaviour cloning runs first; with an ``[imitation]`` preset (on
        a fresh run), DAgger runs next, calling ``on_imitation`` after each iteration; RL then
        runs unless the preset's imitation does not fine-tune.
        """
        if not self._built:
            self.build()
        cfg = self.config
        self._t_start = time.perf_counter()
        if cfg.wandb:
            self._start_wandb()
        interrupted = False
        try:
            if cfg.demos and not cfg.resume:
                self._pretrain_on_demos()
            imitation = self.preset.imitation
            if imitation is not None and self.model.num_timesteps == 0:
                self._imitate(imitation, on_imitation)
            if self._rl_wanted():
                self._install_demo_terms()
                self._learn(extra_callbacks)
        except KeyboardInterrupt:
            interrupted = True
            _log.warning("interrupted at %d steps: saving", self.model.num_timesteps)
        ckpt = self.save()
        if cfg.publish_best:
            self._publish_best()
        if self._wandb_run is not None:
            self._wandb_run.finish()
        ev = self.evaluator
        return TrainResult(
            run_dir=self.run_dir,
            timesteps=self.model.num_timesteps,
            wall_s=time.perf_counter() - self._t_start,
            interrupted=interrupted,
            evaluations=tuple(ev.records) if ev else (),
            best=ev.best if ev else None,
            checkpoint=ckpt,
        )

    def _time_left(self) -> float | None:
        if self.config.minutes is None:
            return None
        return self.config.minutes * 60.0 - (time.perf_counter() - self._t_start)

    def _rl_wanted(self) -> bool:
        imitation = self.preset.imitation
        if imitation is not None and not imitation.finetune:
            return False
        left = self._time_left()
        total = self.config.total_timesteps or self.preset.algo.total_timesteps
        return (left is None or left > 0) and self.model.num_timesteps < total

    def _learn(self, extra_callbacks: Sequence[BaseCallback]) -> None:
        """The RL phase (after imitation, it continues from the student's weights)."""
        cfg = self.config
        total = cfg.total_timesteps or self.preset.algo.total_timesteps
        done = self.model.num_timesteps
        if done and not cfg.resume and hasattr(self.model, "learning_starts"):
            # after imitation: collect fresh transitions before the first update, driving
            # with the pre-trained policy where the algorithm allows it (FastImageSAC)
            self.model.learning_starts += done
            if hasattr(self.model, "warmup_with_policy"):
                self.model.warmup_with_policy = True
        callbacks = self.callbacks(extra_callbacks)
        try:
            self.model.learn(
                max(total - done, 0),
                callback=callbacks,
                reset_num_timesteps=done == 0,
                tb_log_name="run",
            )
        finally:
            self._log_demo_use()

    def _log_demo_use(self) -> None:
        terms = self.demo_terms
        if terms is None:
            return
        if terms.mix is not None:
            _log.info(
                "replay mix: %d demonstration rows in %d batches",
                terms.mix.rows_sampled,
                terms.mix.batches,
            )
        if terms.regulariser is not None:
            _log.info(
                "behaviour-cloning term: %d actor updates, last loss %.4f",
                terms.regulariser.updates,
                terms.regulariser.last_loss,
            )

    # -- imitation ---------------------------------------------------------------------------

    def _evaluate_student(self, steps: int) -> list[EvalRecord]:
        """Deterministic episodes of the current policy, recorded as RL evaluations are (and
        exported to ``best/`` when better); on the preset's ``imitation.eval_tracks`` if any
        (:meth:`_evaluate_on_tracks`)."""
        imitation = self.preset.imitation
        if imitation is not None and imitation.eval_tracks:
            return self._evaluate_on_tracks(steps, imitation.eval_tracks)
        ev = self._make_evaluator()
        if getattr(ev, "model", None) is None:
            ev.init_callback(self.model)
        self.model.num_timesteps = ev.num_timesteps = steps
        records = [ev.run_episode(i) for i in range(ev.n_episodes)]
        for rec in records:
            ev.restore([rec])
            if ev.best is rec:
                self._on_new_best(rec)
        return records

    def _teacher_lap(self) -> float | None:
        """The scripted expert's lap on the evaluation track (None if it cannot finish)."""
        ev = self._make_evaluator()
        return _expert_lap(ev.env, ev.seed)

    def _validators(self, tracks: Sequence[str]) -> list[tuple[EvalCallback, float | None]]:
        """One evaluator per validation track (made once) and the expert's lap there."""
        if self._validation is None:
            ev = self._make_evaluator()
            self._validation = []
            for track in tracks:
                env = gym.make(self.preset.env.id, **{**self._env_kwargs, "track": track})
                val = EvalCallback(env, 1, seed=ev.seed, clock_start=self._t_start)
                val.init_callback(self.model)
                self._validation.append((val, _expert_lap(env, ev.seed)))
        return self._validation

    def _evaluate_on_tracks(self, steps: int, tracks: Sequence[str]) -> list[EvalRecord]:
        """One deterministic lap on each validation track; ``best/`` is replaced when the set's
        :func:`validation_score` beats every earlier one. Returns the per-track records; the
        history (``evaluations.json``) also gets one record for the whole set (its progress the
        mean, ``finished`` when every lap finished, no lap time, ``track`` naming the score)."""
        ev = self._make_evaluator()
        self.model.num_timesteps = ev.num_timesteps = steps
        records: list[EvalRecord] = []
        score = 0.0
        for (val, expert), track in zip(self._validators(tracks), tracks, strict=True):
            val.num_timesteps = steps
            rec = dataclasses.replace(val.run_episode(0), track=track)
            records.append(rec)
            score += validation_score(rec, expert)
        whole = EvalRecord(
            timesteps=steps,
            wall_s=max(r.wall_s for r in records),
            episode_return=sum(r.episode_return for r in records),
            progress=float(np.mean([r.progress for r in records])),
            finished=all(r.finished for r in records),
            lap_time=None,  # laps of different tracks do not add up to a lap
            wall_contacts=sum(r.wall_contacts for r in records),
            track=f"{len(tracks)} validation tracks, score {score:.3f}",
        )
        ev.records.extend([*records, whole])
        _log.info(
            "validation at %d steps: %d/%d finished, score %.3f",
            steps,
            sum(r.finished for r in records),
            len(records),
            score,
        )
        if self._validation_best is None or score > self._validation_best:
            self._validation_best = score
            ev.best = whole
            self._on_new_best(whole)
            _write_json(
                self.run_dir / "best" / "evaluation.json",
                {
                    **whole.to_dict(),
                    "score": round(score, 4),
                    "episodes": [r.to_dict() for r in records],
                },
            )
        return records

    def _imitate(
        self,
        imitation: ImitationConfig,
        on_iteration: Callable[[DaggerIteration], None] | None,
    ) -> DaggerResult:
        """The DAgger phase; the model's step counter ends at the environment steps it drove."""
        from tm_algos.imitation.dagger import run_dagger

        cfg = self.config
        reference = self._teacher_lap() if imitation.stop_after_finishes else None
        streak = [0]

        def should_stop(records: list[EvalRecord]) -> bool:
            limit = cfg.stop_at_lap
            if limit is not None and any(
                r.lap_time is not None and r.lap_time <= limit for r in records
            ):
                return True
            if reference is None:
                return False
            fast = all(
                r.finished
                and r.lap_time is not None
                and r.lap_time <= imitation.lap_tolerance * reference
                for r in records
            )
            streak[0] = streak[0] + 1 if fast else 0
            return streak[0] >= imitation.stop_after_finishes

        left = self._time_left()
        result = run_dagger(
            self.model.policy,
            imitation,
            self._env_kwargs,
            evaluate=self._evaluate_student,
            should_stop=should_stop,
            on_iteration=on_iteration,
            seconds=max(left, 1.0) if left is not None else None,
            seed=cfg.seed,
        )
        self.model.num_timesteps = result.env_steps
        self.imitation_result = result
        return result

    def _pretrain_on_demos(self) -> None:
        """Read the ``demos`` recordings; behaviour cloning on them before imitation or RL.

        Behaviour cloning (``demos.pretrain``) uses the preset's ``[imitation]`` settings (or
        :class:`ImitationConfig`'s defaults): ``gradient_steps`` steps of ``batch_size`` per
        1,000 demonstration steps (at least ``gradient_steps``), at ``learning_rate``. With
        ``demos.mix = 0`` off-policy models then get the transitions in their replay buffer
        (otherwise the mix draws them during RL)."""
        from tm_algos.imitation.augment import FrameAugment
        from tm_algos.imitation.bc import BehaviourCloning

        data = self._load_demonstrations()
        if self.preset.demos.pretrain:
            imitation = self.preset.imitation or ImitationConfig()
            bc = BehaviourCloning(
                self.model.policy,
                learning_rate=imitation.learning_rate,
                log_std_target=imitation.log_std,
                augment=FrameAugment.from_table(imitation.augment),
                history_dropout=imitation.history_dropout,
            )
            steps = max(imitation.gradient_steps, 1) * max(len(data.dataset) // 1000, 1)
            rng = np.random.default_rng(self.config.seed)
            probe = data.dataset.sample(min(len(data.dataset), 512), rng)
            before = bc.action_error(*probe)
            loss = bc.train(data.dataset, steps, imitation.batch_size, rng)
            _log.info(
                "behaviour cloning on %d demonstration steps (%d files): %d gradient steps, "
                "loss %.4f, action error %.4f -> %.4f",
                len(data.dataset),
                len(self._demo_paths),
                steps,
                loss,
                before,
                bc.action_error(*probe),
            )
        else:
            _log.info("demos.pretrain = false: no behaviour cloning before RL")
        if getattr(self.model, "replay_buffer", None) is not None and self.preset.demos.mix == 0:
            added = data.fill_replay_buffer(self.model)
            _log.info("demos.mix = 0: %d demonstration transitions put in the replay buffer", added)

    def _load_demonstrations(self) -> Demonstrations:
        """The recordings of this run, read once (on resume, those of ``run.json``).

        Raises:
            DemoError: a recording is missing or unusable; on resume the message also says how
                to continue without it.
        """
        from tm_algos.imitation.demos import DemoError, load_demonstrations

        if self.demonstrations is None:
            try:
                self.demonstrations = load_demonstrations(
                    self._demo_paths, self.model.observation_space, self._env_kwargs
                )
            except DemoError as exc:
                if not self.config.resume:
                    raise
                raise DemoError(
                    f"{exc}. The run was started with these demonstrations (run.json) and "
                    "--resume reads them again: restore the file, pass --demos with another "
                    "recording, or resume with --set demos.mix=0 --set demos.bc_weight=0"
                ) from exc
        return self.demonstrations

    def _install_demo_terms(self) -> None:
        """Attach the replay mix and the behaviour-cloning term (``[demos]``) before RL."""
        from tm_algos.imitation.mix import install_demo_terms

        settings = self.preset.demos
        if settings.mix == 0 and settings.bc_weight == 0:
            return
        demos = self._load_demonstrations() if self._demo_paths else None
        teacher = self.imitation_result.dataset if self.imitation_result is not None else None
        if teacher is not None and settings.mix > 0:
            _log.info(
                "the DAgger dataset holds no rewards or next observations: the replay mix uses %s",
                "the --demos recordings only" if demos is not None else "nothing (no --demos)",
            )
        self.demo_terms = install_demo_terms(
            self.model, settings, demos=demos, teacher=teacher, seed=self.config.seed
        )
        _log.info("demonstrations during RL: %s", self.demo_terms.describe())

    def _publish_best(self) -> None:
        """Make ``policy/`` a copy of ``best/`` (when there is a best evaluated policy)."""
        best = self.run_dir / "best"
        if not (best / "policy.json").is_file():
            return
        target = self.run_dir / "policy"
        tmp = self.run_dir / "policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(best, tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)

    def _start_wandb(self) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise RunDirError(
                "--wandb needs the wandb package: pip install wandb (then `wandb login`)"
            ) from exc
        self._wandb_run = wandb.init(
            project="trackmaster",
            name=self.run_dir.name,
            config=self.preset.to_dict(),
            sync_tensorboard=True,
            dir=str(self.run_dir),
        )

    def close(self) -> None:
        if self._built:
            self.model.get_env().close()  # type: ignore[union-attr]
            if self.evaluator is not None:
                self.evaluator.env.close()
            for val, _ in self._validation or []:
                val.env.close()
            self._validation = None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tm-gym", "tm-algos", "stable-baselines3", "sb3-contrib", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
