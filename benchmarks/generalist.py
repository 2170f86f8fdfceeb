"""Generalist benchmark: pixel policies on held-out tracks in looks they were never rendered in.

Trains each recipe (a preset plus ``--set`` overrides) with ``tm-train`` under the preset's own
budget, exports the run's last iterate beside its ``best/``, and drives both through
evaluation suites (``tm-eval POLICY --suite NAME``). Prints, per recipe, policy and suite: the
finish rate over every episode, the cases finished at least once, the mean lap ratio to the
scripted expert on the same case, and the same figures as ratios to the first recipe (the
peer). Writes ``generalist.json`` to ``--out``.

The default compares the shipped ``images-sac-general`` (frame augmentation, half of every
batch's action histories swapped, best/ chosen on six validation tracks) with the same preset
without all three (``plain``, the peer) and with the recipe it replaced (``previous``: no
history dropout, zoom x0.8-1.2), on the suites ``unseen`` ... ``unseen-f`` (gen:1001-1082,
each case in a look outside the preset's training range; each suite's header says what it
informed). Targets (issue 11): finish >= 90 % of the episodes at a lap ratio <= 1.10. Recipes
train two at a time (``--parallel``), one PyTorch thread each: on a 2-core machine, run nothing
else meanwhile (DAgger is bounded by wall time). Run from the repository root::

    python benchmarks/generalist.py                    # about 50 min on 2 cores
    python benchmarks/generalist.py --seeds 0 1        # two seeds per recipe
    python benchmarks/generalist.py --reuse            # evaluate the run folders in --out again
    python benchmarks/generalist.py --policies best    # only what the runs publish

A recipe is ``NAME=PRESET`` or ``NAME=PRESET:KEY=VALUE;KEY=VALUE`` (``--set`` values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DEFAULT_RECIPES = (
    "plain=images-sac-general:imitation.augment={};imitation.history_dropout=0;"
    "imitation.eval_tracks=[];imitation.eval_every=2",
    "previous=images-sac-general:imitation.history_dropout=0;imitation.augment.zoom=[0.8,1.2]",
    "shipped=images-sac-general",
)
TARGET_FINISH = 0.90
TARGET_RATIO = 1.10


@dataclass
class Recipe:
    """A preset and its overrides, trained into ``out/NAME-sSEED``."""

    name: str
    preset: str
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Recipe:
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"recipe {text!r}: expected NAME=PRESET[:KEY=VALUE;KEY=VALUE]")
        preset, _, sets = rest.partition(":")
        return cls(name, preset, [s for s in sets.split(";") if s])


def _train_cmd(recipe: Recipe, run_dir: Path, seed: int) -> list[str]:
    cmd = [sys.executable, "-m", "tm_algos.cli.train", recipe.preset, "--run-dir", str(run_dir)]
    cmd += ["--threads", "1", "--no-tensorboard", "--seed", str(seed)]
    for item in recipe.overrides:
        cmd += ["--set", item]
    return cmd


def train_all(jobs: list[tuple[Recipe, int, Path]], parallel: int, console: Console) -> None:
    """Run the ``tm-train`` of every job, ``parallel`` at a time; logs go to RUN.log."""
    pending = list(jobs)
    running: list[tuple[subprocess.Popen[bytes], Path, float]] = []
    while pending or running:
        while pending and len(running) < parallel:
            recipe, seed, run_dir = pending.pop(0)
            log = run_dir.with_suffix(".log").open("wb")
            proc = subprocess.Popen(_train_cmd(recipe, run_dir, seed), stdout=log, stderr=log)
            running.append((proc, run_dir, time.perf_counter()))
            console.print(f"training {run_dir.name} (log {log.name})")
        time.sleep(2.0)
        for item in list(running):
            proc, run_dir, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            took = (time.perf_counter() - t0) / 60
            if proc.returncode != 0:
                raise SystemExit(f"{run_dir.name}: tm-train exited {proc.returncode}, see its log")
            console.print(f"trained {run_dir.name} in {took:.1f} min")


def export_last(run_dir: Path) -> Path:
    """The run's last checkpoint (the last iterate) exported as a policy, ``RUN/last``."""
    import torch

    from tm_algos.policy.export import export_policy
    from tm_algos.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    out = run_dir / "last"
    if (out / "policy.json").is_file():
        return out
    trainer = Trainer(TrainConfig(run_dir=run_dir, resume=True, tensorboard=False))
    model = trainer.build()  # resuming loads the newest good checkpoint (or says there is none)
    export_policy(model, out, env_settings=trainer.env_settings())
    return out


def run_suite(policy: Path, suite: str, out: Path) -> dict[str, Any]:
    """``tm-eval POLICY --suite SUITE --json``: the report's summary and its cases."""
    cmd = [sys.executable, "-m", "tm_algos.cli.eval", str(policy), "--suite", suite]
    cmd += ["--out", str(out), "--overwrite", "--no-video", "--json"]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"tm-eval {policy} --suite {suite} failed: {done.stderr.decode()[-800:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    s = report["summary"]
    failed = [c["name"] for c in report["cases"] if not c.get("finish_rate")]
    return {
        "finish_rate": s["finish_rate"],
        "lap_ratio": s["lap_ratio_mean"],
        "cases_finished": s["cases_finished"],
        "cases_run": s["cases_run"],
        "no_finish": failed,
    }


def _table(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="pixel generalists on unseen tracks and looks")
    for col in ("recipe", "seed", "policy", "suite", "finish", "cases", "lap/expert"):
        table.add_column(
            col, justify="right" if col not in ("recipe", "policy", "suite") else "left"
        )
    table.add_column("vs peer (finish, lap)", justify="right")
    table.add_column("no finish", justify="left")
    peers = {(r["policy"], r["suite"], r["seed"]): r for r in rows if r["peer"]}
    for r in rows:
        peer = peers.get((r["policy"], r["suite"], r["seed"]))
        versus = "—"
        if peer is not None and peer is not r and peer["finish_rate"] and peer["lap_ratio"]:
            versus = (
                f"{r['finish_rate'] / peer['finish_rate']:.2f}×, "
                f"{(r['lap_ratio'] or float('nan')) / peer['lap_ratio']:.2f}×"
            )
        ok = r["finish_rate"] >= TARGET_FINISH and (r["lap_ratio"] or 9.0) <= TARGET_RATIO
        table.add_row(
            r["recipe"],
            str(r["seed"]),
            r["policy"],
            r["suite"],
            f"{r['finish_rate']:.1%}" + (" ✓" if ok else ""),
            f"{r['cases_finished']}/{r['cases_run']}",
            "—" if r["lap_ratio"] is None else f"{r['lap_ratio']:.3f}",
            versus,
            ", ".join(n.split("-", 1)[-1] for n in r["no_finish"]) or "—",
        )
    console.print(table)
    console.print(
        f"targets: finish >= {TARGET_FINISH:.0%} of the episodes, lap <= {TARGET_RATIO:.2f}× the "
        "expert (✓ both met); the peer is the first recipe, same seed, policy and suite"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument(
        "--suites",
        nargs="+",
        default=["unseen", "unseen-b", "unseen-c", "unseen-d", "unseen-e", "unseen-f"],
    )
    p.add_argument(
        "--parallel", type=int, default=2, help="trainings (and suites) at once (default: 2)"
    )
    p.add_argument("--reuse", action="store_true", help="keep runs already in --out")
    p.add_argument(
        "--policies",
        nargs="+",
        choices=["best", "last"],
        default=["best", "last"],
        help="what to drive: the published best/, the last iterate (default: both)",
    )
    p.add_argument("--out", type=Path, default=Path("out/generalist"))
    args = p.parse_args(argv)
    console = Console()
    recipes = [Recipe.parse(t) for t in args.recipes]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(r, s, args.out / f"{r.name}-s{s}") for r in recipes for s in args.seeds]
    todo = [j for j in jobs if not (args.reuse and (j[2] / "run.json").is_file())]
    t0 = time.perf_counter()
    train_all(todo, max(args.parallel, 1), console)
    tasks = []
    for index, (recipe, seed, run_dir) in enumerate(jobs):
        for label in args.policies:
            policy = run_dir / "best" if label == "best" else export_last(run_dir)
            for suite in args.suites:
                row = {"recipe": recipe.name, "seed": seed, "policy": label, "suite": suite}
                row["peer"] = index < len(args.seeds) and recipe is recipes[0]
                tasks.append((row, policy, run_dir / f"suite-{label}-{suite}"))

    def evaluate(task: tuple[dict[str, Any], Path, Path]) -> dict[str, Any]:
        row, policy, out = task
        row = row | _figures(run_suite(policy, row["suite"], out))
        console.print(
            f"{out.parent.name} {row['policy']} {row['suite']}: {row['finish_rate']:.1%}, "
            f"{row['lap_ratio'] or float('nan'):.3f}×"
        )
        return row

    with ThreadPoolExecutor(max(args.parallel, 1)) as pool:  # each suite is a subprocess
        rows = list(pool.map(evaluate, tasks))
    _table(rows, console)
    result = {
        "recipes": [vars(r) for r in recipes],
        "seeds": args.seeds,
        "suites": args.suites,
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    (args.out / "generalist.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    console.print(f"wrote {args.out / 'generalist.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
