"""Learning benchmark: how soon tm-algos presets drive a lap of the default simulated track.

For each preset, trains with ``tm_algos.training.Trainer`` (what ``tm-train`` runs) under a
wall-clock budget and drives one deterministic evaluation lap every ``--eval-every`` steps
(evaluation time counts in the wall clock). Reports, per preset:

* environment steps and wall time to the first finished evaluation lap;
* the best lap time within the budget and its ratio to the scripted expert's lap
  (``tm_gym.sim.expert.run_expert`` on the same track, measured in the same run);
* the time at which a lap within ``--target`` × the expert's was first driven.

Targets (issue 5, 2 CPU cores): lidar-sac first finish <= 10 min, lap <= 1.10× the expert's
within 30 min. Writes ``learning.json`` and ``learning_curves.png`` (evaluation progress and lap
time against wall time) to ``--out``. Run from the repository root::

    python benchmarks/learning.py                                  # lidar-sac, 30 min budget
    python benchmarks/learning.py --presets lidar-sac images-sac images-sac-rl --minutes 15

``images-sac`` is taught by DAgger from the simulator's expert (its evaluations during the
DAgger phase count, on the same wall clock); ``images-sac-rl`` is the same policy by RL alone,
the peer that shows what the teacher buys. Presets run one after another; on a machine with
more cores, run one preset per process (each pinned to its own cores with ``taskset``, each
with ``--out`` of its own) and draw them together with ``--combine out/a out/b ...``.

With ``--stop-at-target`` (default) a preset stops as soon as it drives a lap within the
target: its curve then ends there. Nothing else should run on the machine meanwhile (the
figures are wall-clock figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def expert_lap(track: str) -> float:
    from tm_gym.sim.expert import run_expert

    lap = run_expert(track, record_frames=False)
    return float(lap.lap_time)


def run_preset(
    preset: str,
    minutes: float,
    *,
    eval_every: int,
    target_lap: float,
    stop: bool,
    seed: int,
    threads: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    from tm_algos.training import TrainConfig, Trainer

    with tempfile.TemporaryDirectory(prefix=f"learning-{preset}-") as tmp:
        trainer = Trainer(
            TrainConfig(
                preset=preset,
                run_dir=Path(tmp) / "run",
                seed=seed,
                minutes=minutes,
                eval_every=eval_every,
                checkpoint_every=10**9,
                stop_at_lap=target_lap if stop else None,
                tensorboard=False,
                torch_threads=threads,
                device=device,
            )
        )
        t0 = time.perf_counter()
        result = trainer.run()
        wall = time.perf_counter() - t0
        trainer.close()
    records = [r.to_dict() for r in result.evaluations]
    finishes = [r for r in result.evaluations if r.finished and r.lap_time is not None]
    first = finishes[0] if finishes else None
    hit = next((r for r in finishes if r.lap_time is not None and r.lap_time <= target_lap), None)
    best = min((r.lap_time for r in finishes if r.lap_time is not None), default=None)
    return {
        "preset": preset,
        "budget_min": minutes,
        "wall_min": wall / 60,
        "timesteps": result.timesteps,
        "first_finish_steps": first.timesteps if first else None,
        "first_finish_min": first.wall_s / 60 if first else None,
        "first_finish_lap": first.lap_time if first else None,
        "best_lap": best,
        "target_hit_min": hit.wall_s / 60 if hit else None,
        "target_hit_steps": hit.timesteps if hit else None,
        "evaluations": records,
    }


def plot(results: Sequence[dict[str, Any]], expert: float, target: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for r in results:
        ev = r["evaluations"]
        minutes = [e["wall_s"] / 60 for e in ev]
        ax1.plot(
            minutes, [e["progress"] for e in ev], marker=".", label=r.get("label", r["preset"])
        )
        laps = [(e["wall_s"] / 60, e["lap_time"]) for e in ev if e["finished"]]
        if laps:
            ax2.plot(
                *zip(*laps, strict=True),
                marker="o",
                linestyle="-",
                label=r.get("label", r["preset"]),
            )
    ax1.set_xlabel("wall time (min)")
    ax1.set_ylabel("evaluation progress (fraction of the lap)")
    ax1.set_ylim(0, 1.05)
    ax1.set_title("Deterministic evaluation lap: progress")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.axhline(expert, color="black", linestyle="--", label=f"expert {expert:.2f} s")
    ax2.axhline(target, color="grey", linestyle=":", label=f"target {target:.2f} s")
    ax2.set_xlabel("wall time (min)")
    ax2.set_ylabel("lap time (s)")
    ax2.set_title("Finished evaluation laps")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle("tm-algos learning on the default simulated track")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["lidar-sac"])
    p.add_argument(
        "--minutes",
        nargs="+",
        type=float,
        default=[30.0],
        help="budget per preset (one value for all, or one each)",
    )
    p.add_argument(
        "--eval-every",
        nargs="+",
        type=int,
        default=[10_000],
        help="env steps between evaluation laps (one value for all, or one each)",
    )
    p.add_argument("--target", type=float, default=1.10, help="lap-time ratio to the expert")
    p.add_argument("--no-stop-at-target", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/learning"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the trainer's choice)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda")
    p.add_argument("--label", help="name of this run in tables and plots (default: the preset)")
    p.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="draw and tabulate the learning.json of earlier runs together (no training)",
    )
    args = p.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out, args.target)
    n = len(args.presets)

    def per(values: list[Any], name: str) -> list[Any]:
        if len(values) == 1:
            return values * n
        if len(values) != n:
            p.error(f"--{name}: give one value or one per preset ({n})")
        return values

    minutes, evals = per(args.minutes, "minutes"), per(args.eval_every, "eval-every")
    console = Console()
    console.print(f"command: python {' '.join(sys.argv)}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    console.print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"this run on {cores}, device {args.device}, torch threads {args.threads or 'default'}"
    )
    expert = expert_lap("default")
    target = args.target * expert
    console.print(f"expert lap on 'default': {expert:.3f} s → target {target:.3f} s")
    results = []
    for preset, budget, every in zip(args.presets, minutes, evals, strict=True):
        console.print(f"[bold]{preset}[/bold]: up to {budget:g} min, evaluation every {every:,}")
        results.append(
            run_preset(
                preset,
                budget,
                eval_every=every,
                target_lap=target,
                stop=not args.no_stop_at_target,
                seed=args.seed,
                threads=args.threads,
                device=args.device,
            )
        )
        results[-1]["label"] = args.label if args.label and n == 1 else preset
        results[-1]["device"] = args.device
    return report(console, results, expert, args.target, args.out)


def combine(dirs: Sequence[Path], out: Path, target_ratio: float) -> int:
    """Tabulate and draw the results of several runs of this script together."""
    console = Console()
    results: list[dict[str, Any]] = []
    expert = None
    for d in dirs:
        data = json.loads((d / "learning.json").read_text())
        expert = data["expert_lap"] if expert is None else expert
        results.extend(data["results"])
    if expert is None:
        console.print("nothing to combine")
        return 1
    return report(console, results, expert, target_ratio, out)


def report(
    console: Console,
    results: list[dict[str, Any]],
    expert: float,
    target_ratio: float,
    out: Path,
) -> int:
    """Write learning.json and learning_curves.png to ``out`` and print the table."""
    target = target_ratio * expert
    out.mkdir(parents=True, exist_ok=True)
    data = {"expert_lap": expert, "target_ratio": target_ratio, "results": results}
    (out / "learning.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(results, expert, target, out / "learning_curves.png")

    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    table = Table(title=f"learning on 'default' (expert {expert:.3f} s)")
    for col in (
        "preset",
        "budget",
        "first finish",
        "steps",
        "first lap",
        "best lap",
        "best / expert",
        f"≤ {target_ratio:.2f}× expert at",
    ):
        table.add_column(col)
    for r in results:
        best = r["best_lap"]
        table.add_row(
            r.get("label", r["preset"]),
            f"{r['wall_min']:.1f}/{r['budget_min']:g} min",
            f"{fmt(r['first_finish_min'], '.1f')} min",
            fmt(r["first_finish_steps"], ","),
            f"{fmt(r['first_finish_lap'], '.3f')} s",
            f"{fmt(best, '.3f')} s",
            fmt(None if best is None else best / expert, ".3f"),
            f"{fmt(r['target_hit_min'], '.1f')} min",
        )
    console.print(table)
    console.print(f"wrote {out / 'learning.json'} and {out / 'learning_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
