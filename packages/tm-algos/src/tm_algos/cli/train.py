"""``tm-train``: train a preset on a tm-gym environment, with live progress and safe checkpoints.

Examples::

    tm-train                                   # lidar-sac on the default simulated track
    tm-train lidar-sac --minutes 15 --evaluate 3
    tm-train images-sac --set algo.hyperparameters.batch_size=64 --n-envs 2
    tm-train lidar-sac --env-id TrackMania-v0 --env-kwarg backend=game
    tm-train --run-dir runs/lidar-sac --resume # continue from the last checkpoint
    tm-train images-sac --minutes 15 --evaluate 3   # DAgger from the expert (see the preset)
    tm-train lidar-sac --demos expert.tmrec    # behaviour cloning on recordings first

Ctrl-C stops cleanly: a checkpoint and the policy are written before exiting (code 130).
Exit codes: 0 done, 2 usage or input error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from stable_baselines3.common.callbacks import BaseCallback

from tm_algos.presets import DEFAULT_PRESET, list_presets, load_preset
from tm_gym.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    parse_args,
    positive_float,
    positive_int,
    run_cli,
)
from tm_gym.error import TrackMasterError

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from tm_algos.imitation.dagger import DaggerIteration
    from tm_algos.training import TrainConfig, Trainer

__all__ = ["main", "run"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tm-train",
        description="Train an agent on a tm-gym environment from a preset (see --list-presets).",
    )
    p.add_argument(
        "preset", nargs="?", default=DEFAULT_PRESET, help="preset name or TOML file (%(default)s)"
    )
    p.add_argument(
        "--run-dir", type=Path, help="run directory (default: runs/<preset>, -2, -3... if taken)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset value, e.g. algo.hyperparameters.gamma=0.99 (repeatable)",
    )
    p.add_argument("--env-id", help="environment id (default: the preset's)")
    p.add_argument(
        "--env-kwarg",
        dest="env_kwargs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment keyword argument, e.g. track=technical",
    )
    p.add_argument("--n-envs", type=positive_int, help="parallel environments")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--steps", type=positive_int, help="total env steps (default: the preset's)")
    p.add_argument("--minutes", type=positive_float, help="stop after this wall-clock time")
    p.add_argument(
        "--stop-at-lap",
        type=positive_float,
        metavar="SECONDS",
        help="stop once a deterministic evaluation lap is this fast",
    )
    p.add_argument("--checkpoint-every", type=positive_int, default=50_000, metavar="STEPS")
    p.add_argument("--eval-every", type=positive_int, default=10_000, metavar="STEPS")
    p.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="EPISODES",
        help="after training, evaluate the best policy: lap table, video, map",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument(
        "--demos",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE.tmrec",
        help="recordings (tm-gym record, the game or the simulator): behaviour-cloning "
        "pre-training, then for off-policy algorithms a demonstration share of every batch "
        "(demos.mix, 0.5) and an optional BC term (demos.bc_weight); see the preset's [demos]",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="POLICY_DIR",
        help="start a new run from this policy's weights (same preset and spaces), e.g. a "
        "simulator-trained policy to fine-tune on the game",
    )
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    p.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    return p


BAR_UNITS = 1000
"""The bar counts thousandths of the run's budget (its steps, or its minutes when sooner)."""


class RichProgress(BaseCallback):
    """A live progress bar over the run's real budget, with an ETA, and a status line: steps,
    steps/s, the last training episode, and the evaluations' best lap (the policy ``best/``
    holds, which is what the run publishes).

    Args:
        total: the step budget.
        minutes: the wall-clock budget, if any: the bar follows whichever budget runs out first.
        evaluator: where the evaluations are (anything with ``.evaluator.best``, read at each
            refresh: the trainer creates its evaluator when the run starts).
    """

    def __init__(
        self, progress: Progress, total: int, stats: Any, trainer: Any, minutes: float | None
    ) -> None:
        super().__init__()
        self.progress = progress
        self.total = total
        self.minutes = minutes
        self.stats = stats
        self.trainer = trainer
        self.task = progress.add_task("training", total=BAR_UNITS, info="")
        self._last = 0.0
        self._last_line = 0.0
        self._t0 = time.perf_counter()
        self._run_t0 = self._t0
        self._steps0 = 0

    def _on_training_start(self) -> None:
        self._t0 = time.perf_counter()
        self._steps0 = self.num_timesteps

    def fraction(self) -> float:
        """How much of the run's budget is spent (0…1): steps, or time when that is sooner."""
        done = self.num_timesteps / max(self.total, 1)
        if self.minutes is not None:
            done = max(done, (time.perf_counter() - self._run_t0) / (60.0 * self.minutes))
        return min(done, 1.0)

    def _on_step(self) -> bool:
        now = time.perf_counter()
        if now - self._last >= 0.5:
            self._last = now
            self.refresh()
        return True

    def refresh(self) -> None:
        s = self.stats.stats
        rate = (self.num_timesteps - self._steps0) / max(time.perf_counter() - self._t0, 1e-9)
        evaluator = getattr(self.trainer, "evaluator", None)
        ev = evaluator.best if evaluator is not None else None
        parts = [f"{self.num_timesteps:,}/{self.total:,} steps", f"{rate:,.0f} steps/s"]
        parts.append(f"ep {s.episodes}")
        if s.episodes:
            parts += [f"return {s.last_return:.1f}", f"progress {s.last_progress:.0%}"]
        if ev is not None:  # the evaluations' best: what best/ and policy/ hold
            parts.append(f"best eval {_record_text(ev)}")
        completed = round(BAR_UNITS * self.fraction())
        self.progress.update(self.task, completed=completed, info=" · ".join(parts))
        console = self.progress.console
        now = time.perf_counter()
        if not console.is_terminal and now - self._last_line >= 30.0:
            # a log file or a pipe shows no live bar: a line every 30 s instead
            self._last_line = now
            console.print(f"{self.num_timesteps:,} steps · " + " · ".join(parts), highlight=False)


def _record_text(record: Any) -> str:
    """An evaluation record in a few words: its lap, or its progress; for a set of validation
    tracks (``record.track`` names it) the mean progress and the set's score."""
    if record.track is not None:
        return f"{record.progress:.0%} on {record.track}"
    if record.finished and record.lap_time is not None:
        return f"lap {record.lap_time:.3f} s"
    return f"{record.progress:.1%} (no finish yet)"


def _summary(console: Console, result: Any) -> None:
    table = Table(title=f"run {result.run_dir}", show_header=False)
    table.add_row("env steps", f"{result.timesteps:,}")
    table.add_row("wall time", f"{result.wall_s / 60:.1f} min")
    best = result.best
    if best is not None:
        table.add_row("best evaluation", f"{_record_text(best)} at {best.timesteps:,} steps")
    first = next((r for r in result.evaluations if r.finished), None)
    if first is not None:
        table.add_row("first finish", f"{first.timesteps:,} steps, {first.wall_s / 60:.1f} min")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("policy", str(result.run_dir / "policy"))
    console.print(table)


def _imitation_line(console: Console) -> Callable[[DaggerIteration], None]:
    """A line per DAgger iteration: samples, loss, the evaluation lap or progress."""

    def show(it: DaggerIteration) -> None:
        parts = [
            f"DAgger {it.iteration + 1}",
            f"{it.env_steps:,} steps",
            f"{it.wall_s / 60:.1f} min",
            f"teacher {it.teacher_share:.0%}",
            f"{it.dataset_size:,} samples",
            f"loss {it.loss:.4f}",
        ]
        for rec in it.evaluation or ():
            parts.append(
                f"eval lap {rec.lap_time:.3f} s" if rec.finished else f"eval {rec.progress:.0%}"
            )
        console.print(" · ".join(parts), highlight=False)

    return show


def _fresh_run_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : the first that holds no run yet."""
    candidate, n = base, 1
    while (candidate / "run.json").exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _config(args: argparse.Namespace) -> TrainConfig:
    """What the arguments ask for, as the trainer takes it."""
    from tm_algos.cli.eval import parse_env_kwargs
    from tm_algos.training import TrainConfig

    env_kwargs = parse_env_kwargs(args.env_kwargs)
    overrides = list(args.overrides)
    if args.env_id:
        overrides.append(f"env.id={json.dumps(args.env_id)}")
    default_dir = Path("runs") / Path(str(args.preset)).stem
    run_dir = args.run_dir or (default_dir if args.resume else _fresh_run_dir(default_dir))
    return TrainConfig(
        preset=args.preset,
        run_dir=run_dir,
        overrides=tuple(overrides),
        env_kwargs=env_kwargs,
        n_envs=args.n_envs,
        seed=args.seed,
        device=args.device,
        total_timesteps=args.steps,
        minutes=args.minutes,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        stop_at_lap=args.stop_at_lap,
        resume=args.resume,
        tensorboard=not args.no_tensorboard,
        wandb=args.wandb,
        torch_threads=args.threads,
        demos=tuple(args.demos),
        init_from=args.init_from,
    )


def _build(trainer: Trainer) -> BaseAlgorithm:
    """The trainer's model; a setting the libraries refuse is the user's to fix (exit code 2)."""
    try:
        return trainer.build()
    except TrackMasterError:
        raise
    except ValueError as exc:  # e.g. an environment keyword argument with a bad value
        raise CLIError(str(exc)) from exc


def _list_presets(out: Console) -> int:
    table = Table("preset", "description")
    for name in list_presets():
        table.add_row(name, load_preset(name).description)
    out.print(table)
    return EXIT_OK


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``tm-train`` once its arguments are parsed: train with a live progress bar, summarise,
    and evaluate the best policy if asked; the exit code."""
    if args.list_presets:
        return _list_presets(out)
    from tm_algos.training import Trainer

    config = _config(args)
    trainer = Trainer(config)
    model = _build(trainer)
    preset = trainer.preset
    total = args.steps or preset.algo.total_timesteps
    err.print(
        f"[bold]{escape(preset.name)}[/bold] · {preset.algo.name} · {escape(preset.env.id)} "
        f"({preset.env.obs_type}) · run dir {escape(str(config.run_dir))} · device {model.device}"
    )
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    try:
        with Progress(*columns, console=err, transient=False) as progress:
            bar = RichProgress(progress, total, trainer.stats, trainer, args.minutes)
            line = _imitation_line(progress.console)

            def on_imitation(it: DaggerIteration) -> None:
                line(it)
                bar.refresh()  # the time budget moves on during DAgger too

            result = trainer.run([bar], on_imitation=on_imitation)
            bar.refresh()
    finally:
        trainer.close()
    _summary(out, result)
    if args.evaluate > 0:
        from tm_algos.cli import eval as eval_cli

        # tm-eval picks what the run publishes (best/, else policy/) and writes eval/, or
        # eval-2/ ... when a resumed run was evaluated before: nothing is overwritten
        code = eval_cli.main([str(config.run_dir), "--episodes", str(args.evaluate)])
        if code != EXIT_OK:
            return code
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tm-train`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):  # --help, or a usage error argparse has already explained
        return args
    return run_cli(run, args, prog="tm-train", debug=args.debug, verbose=args.verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
