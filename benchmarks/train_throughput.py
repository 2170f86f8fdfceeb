"""Training throughput: tm-algos' FastImageSAC against Stable-Baselines3's default image SAC.

Both train on ``gymnasium.make("TrackMania-Sim-v0", obs_type="images")`` (4 stacked 64×64
grayscale frames, speed, gear, rpm, the last 2 actions) with the same seed, the same number of
PyTorch threads, ``learning_starts``, ``batch_size`` (SB3's default, 256), ``train_freq=1`` and
``gradient_steps=1`` (one gradient step per environment step):

* **SB3 SAC**: ``SAC("MultiInputPolicy", env)``, SB3's defaults: a NatureCNN inside a
  CombinedExtractor for the actor, another for the critics and a third for the target critics,
  SB3's DictReplayBuffer;
* **FastImageSAC**: ``tm_algos.fast_sac.FastImageSAC("MultiInputPolicy", env)`` with its
  defaults: one small CNN (TMCNNExtractor ``arch="small"``) trained by the critics, the actor
  on detached features, the target critics' EMA encoder also giving the next actions,
  channels-last convolutions, fused Adam, FrameStackReplayBuffer.

Throughput: each model learns for ``learning_starts + warmup + window`` steps; the rate is
taken over the last ``window`` steps only (the random warm-up without updates and the first
updates are excluded), in environment steps per second of wall-clock time and per second of
this process's CPU time. On a shared machine the CPU-time figure is the steadier one: other
processes slow the wall clock of both runs, not their CPU time.

Learning check (``--learn-steps N``, 0 to skip): each model trains for N environment steps
from scratch, then drives ``--eval-episodes`` deterministic episodes (seeds 1000, 1001, ...);
the table gives the mean return and the mean final progress (fraction of the track covered)
of those episodes, and the wall-clock time the N steps took.

``--ablations`` also times single gradient steps of FastImageSAC with one trick turned off at
a time (and SB3's SAC), after filling the buffer: what each trick is worth.

Run from the repository root with tm-gym and tm-algos installed::

    python benchmarks/train_throughput.py                     # throughput + a 300-step check
    python benchmarks/train_throughput.py --learn-steps 0     # throughput only (~2 min)
    python benchmarks/train_throughput.py --ablations --learn-steps 0

Figures measured on the development machine (2 Xeon cores with AVX-512 shared with other jobs,
PyTorch 2.13 CPU, 1 thread; the wall-clock figures suffer from the other jobs, the CPU ones
much less)::

    $ python benchmarks/train_throughput.py --ablations --learn-steps 0
    SB3 SAC (MultiInputPolicy)   1.54 steps/s wall   2.29 steps/CPU-s   1.0x
    FastImageSAC                 9.09 steps/s wall  15.63 steps/CPU-s   6.8x  (5.9x wall)

    one gradient step, CPU ms (× FastImageSAC's defaults):
    FastImageSAC (defaults)                                 63.2
      without channels-last (and its compiled frame pass)  100.3  1.59
      without fused Adam                                     66.6  1.05
      next actions from the online encoder (+1 CNN pass)     73.8  1.17
      features_dim=256 instead of 64                         71.7  1.13
      arch='tmrl' instead of 'small'                        622.7  9.85
      with augment_shift=4 (DrQ)                             66.6  1.05
    SB3 SAC (MultiInputPolicy)                              401.7  6.35

    $ python benchmarks/train_throughput.py --learn-steps 1500 --window 20 --fast-window 100
    SB3 SAC (MultiInputPolicy)   1.51 steps/s wall   2.41 steps/CPU-s   1.0x
    FastImageSAC                 7.49 steps/s wall  15.16 steps/CPU-s   6.3x  (5.0x wall)
    learning check, 1500 env steps (seed 0), then 3 deterministic episodes:
                                 eval return  eval progress  seconds to train
    SB3 SAC (MultiInputPolicy)          0.01          0.000               656
    FastImageSAC                        6.61          0.038                90

1500 steps is far too few to drive (one seed, TMRL needs days from pixels): the check only
shows that the fast configuration is not behind after the same number of steps.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

ENV_ID = "TrackMania-Sim-v0"
EVAL_SEED = 1000
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class Rate:
    """Environment steps per second over the timed window."""

    name: str
    wall: float
    cpu: float
    steps: int


@dataclass(frozen=True)
class LearnResult:
    name: str
    mean_return: float
    mean_progress: float
    seconds: float
    episodes_trained: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Env steps/s of FastImageSAC vs SB3's SAC('MultiInputPolicy') on images.",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of both models and envs")
    p.add_argument("--batch-size", type=int, default=256, help="SB3's default: 256")
    p.add_argument("--learning-starts", type=int, default=100, help="random steps first")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps after learning starts")
    p.add_argument("--window", type=int, default=30, help="timed steps of SB3's SAC")
    p.add_argument(
        "--fast-window", type=int, default=150, help="timed steps of FastImageSAC (default 150)"
    )
    p.add_argument("--buffer-size", type=int, default=20_000, help="replay buffer (both)")
    p.add_argument(
        "--learn-steps", type=int, default=300, help="env steps of the learning check; 0 skips"
    )
    p.add_argument("--eval-episodes", type=int, default=3, help="deterministic eval episodes")
    p.add_argument("--ablations", action="store_true", help="time one trick off at a time")
    args = p.parse_args(argv)
    for name in ("threads", "batch_size", "window", "fast_window", "buffer_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("learning_starts", "warmup", "learn_steps", "eval_episodes"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for var in THREAD_VARS:  # before NumPy, Numba and PyTorch are imported
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    console = Console(width=max(Console().width, 110))
    console.print(f"[bold]$ python {shlex.join(sys.argv)}[/bold]")
    console.print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}, "
        f"learning_starts {args.learning_starts}, seed {args.seed}, train_freq 1, "
        "gradient_steps 1"
    )
    try:
        bench = _Bench(args)
    except ImportError as e:
        console.print(f"[red]cannot run: {e}; pip install -e packages/tm-gym packages/tm-algos")
        return 1

    rates = [
        bench.throughput("SB3 SAC (MultiInputPolicy)", bench.sb3, args.window),
        bench.throughput("FastImageSAC", bench.fast, args.fast_window),
    ]
    table = Table(title=f"{ENV_ID} images: env steps/s at 1 gradient step per env step")
    for col in ("algorithm", "timed steps", "steps/s (wall)", "steps/s (CPU)", "× SB3 (CPU)"):
        table.add_column(col, justify="right" if col != "algorithm" else "left")
    base = rates[0]
    for r in rates:
        table.add_row(
            r.name, str(r.steps), f"{r.wall:.2f}", f"{r.cpu:.2f}", f"{r.cpu / base.cpu:.1f}×"
        )
    console.print(table)
    ratio_cpu, ratio_wall = rates[1].cpu / base.cpu, rates[1].wall / base.wall
    verdict = "[green]met" if ratio_cpu >= 5.0 else "[red]missed"
    console.print(
        f"target FastImageSAC ≥ 5× SB3: {verdict}[/] ({ratio_cpu:.1f}× per CPU second, "
        f"{ratio_wall:.1f}× per wall-clock second)"
    )

    if args.ablations:
        _print_ablations(console, bench)

    if args.learn_steps > 0:
        results = [
            bench.learn("SB3 SAC (MultiInputPolicy)", bench.sb3),
            bench.learn("FastImageSAC", bench.fast),
        ]
        t = Table(
            title=f"learning check: {args.learn_steps} env steps, then "
            f"{args.eval_episodes} deterministic episodes"
        )
        for col in ("algorithm", "eval return", "eval progress", "train episodes", "seconds"):
            t.add_column(col, justify="right" if col != "algorithm" else "left")
        for res in results:
            t.add_row(
                res.name,
                f"{res.mean_return:.2f}",
                f"{res.mean_progress:.3f}",
                str(res.episodes_trained),
                f"{res.seconds:.0f}",
            )
        console.print(t)
    return 0


def _print_ablations(console: Console, bench: _Bench) -> None:
    t = Table(title="one gradient step (batch as above), CPU ms: median of 15")
    t.add_column("configuration")
    t.add_column("ms / step", justify="right")
    t.add_column("× default", justify="right")
    rows = bench.ablations()
    default = rows[0][1]
    for name, ms in rows:
        t.add_row(name, f"{ms:.1f}", f"{ms / default:.2f}")
    console.print(t)


class _Bench:
    """Builds the two models the same way and runs the measurements."""

    def __init__(self, args: argparse.Namespace) -> None:
        import gymnasium as gym
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback

        import tm_gym  # noqa: F401  (registers the environments)
        from tm_algos.fast_sac import FastImageSAC

        self.args = args
        self._gym = gym
        self._sac = SAC
        self._fast = FastImageSAC
        self._callback_base = BaseCallback

    def env(self) -> Any:
        return self._gym.make(ENV_ID, obs_type="images")

    def _common(self) -> dict[str, Any]:
        a = self.args
        return {
            "buffer_size": a.buffer_size,
            "learning_starts": a.learning_starts,
            "batch_size": a.batch_size,
            "train_freq": 1,
            "gradient_steps": 1,
            "seed": a.seed,
            "device": "cpu",
        }

    def sb3(self, **kwargs: Any) -> Any:
        return self._sac("MultiInputPolicy", self.env(), **self._common(), **kwargs)

    def fast(self, **kwargs: Any) -> Any:
        return self._fast("MultiInputPolicy", self.env(), **self._common(), **kwargs)

    def _clock(self) -> Any:
        base = self._callback_base

        class Clock(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                super().__init__()
                self.marks: list[tuple[float, float]] = []

            def _on_step(self) -> bool:
                self.marks.append((time.perf_counter(), time.process_time()))
                return True

        return Clock()

    def throughput(self, name: str, build: Callable[..., Any], window: int) -> Rate:
        a = self.args
        model = build()
        clock = self._clock()
        model.learn(a.learning_starts + a.warmup + window, callback=clock)
        marks = clock.marks[-(window + 1) :]
        (w0, c0), (w1, c1) = marks[0], marks[-1]
        n = len(marks) - 1
        return Rate(name, n / (w1 - w0), n / max(c1 - c0, 1e-9), n)

    def learn(self, name: str, build: Callable[..., Any]) -> LearnResult:
        a = self.args
        model = build()
        start = time.perf_counter()
        model.learn(a.learn_steps)
        seconds = time.perf_counter() - start
        returns, progress = [], []
        env = self.env()
        for i in range(a.eval_episodes):
            obs, info = env.reset(seed=EVAL_SEED + i)
            total, done = 0.0, False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, info = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
            progress.append(float(info["progress"]))
        env.close()
        episodes = len(model.ep_info_buffer) if model.ep_info_buffer is not None else 0
        return LearnResult(
            name, statistics.fmean(returns), statistics.fmean(progress), seconds, episodes
        )

    def ablations(self) -> list[tuple[str, float]]:
        import torch

        variants: list[tuple[str, Callable[[], Any]]] = [
            ("FastImageSAC (defaults)", self.fast),
            (
                "  without channels-last (and its compiled frame pass)",
                lambda: self.fast(policy_kwargs={"channels_last": False}),
            ),
            ("  without fused Adam", lambda: self.fast(policy_kwargs={"optimizer_kwargs": {}})),
            (
                "  next actions from the online encoder (+1 CNN pass)",
                lambda: self.fast(next_actions_from_target=False),
            ),
            (
                "  features_dim=256 instead of 64",
                lambda: self.fast(
                    policy_kwargs={
                        "features_extractor_kwargs": {"arch": "small", "features_dim": 256}
                    }
                ),
            ),
            (
                "  arch='tmrl' instead of 'small'",
                lambda: self.fast(policy_kwargs={"features_extractor_kwargs": {"arch": "tmrl"}}),
            ),
            (
                "  with augment_shift=4 (DrQ)",
                lambda: self.fast(policy_kwargs={"augment_shift": 4}),
            ),
            ("SB3 SAC (MultiInputPolicy)", self.sb3),
        ]
        out = []
        for name, build in variants:
            model = build()
            model.learn(self.args.learning_starts + 1)
            model.train(2, self.args.batch_size)
            times = []
            reps = 15 if "SB3" not in name and "tmrl" not in name else 5
            for _ in range(reps):
                c = time.process_time()
                model.train(1, self.args.batch_size)
                times.append(time.process_time() - c)
            out.append((name, 1000 * statistics.median(times)))
            del model
            torch.set_num_threads(self.args.threads)
        return out


if __name__ == "__main__":
    sys.exit(main())
