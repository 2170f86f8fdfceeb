"""Simulator throughput: tm-gym's TrackMania-Sim-v0 against Gymnasium's CarRacing-v3.

Counts environment steps per second of wall-clock time, with random actions drawn in advance
from each environment's own action space, for:

* ``gymnasium.make("TrackMania-Sim-v0", obs_type=...)`` as a user gets it (with Gymnasium's
  default wrappers, PassiveEnvChecker and OrderEnforcing), and the same environment unwrapped;
  the loop resets whenever an episode ends, and the resets are part of the timing;
* the native vector environment, ``gymnasium.make_vec(..., vectorization_mode=
  "vector_entry_point")``, for several ``num_envs`` (each call counts ``num_envs`` steps;
  finished episodes reset automatically on the next call);
* ``gymnasium.make("CarRacing-v3")``, the peer, timed in the same run — before the simulator and
  again after it, so that a machine whose speed drifts during the run shows up as two different
  peer figures. Ratios use their mean.

Before timing, each configuration is warmed up: its first step (which loads or compiles the Numba
kernels) and at least ``--warmup`` seconds of steps, including the end of an episode where one
comes soon enough, are left out.

The process is pinned to the CPUs given by ``--cores`` (CPU 0 by default, for one-core figures)
and the thread pools of Numba, OpenMP and BLAS are sized to match before NumPy or Numba is
imported. Run from the repository root, once tm-gym and ``gymnasium[box2d]`` are installed::

    python benchmarks/sim_throughput.py            # 3 s per configuration, about a minute
    python benchmarks/sim_throughput.py --quick    # 1 s each, num_envs up to 64
    python benchmarks/sim_throughput.py --json out/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SIM_ID = "TrackMania-Sim-v0"
PEER_ID = "CarRacing-v3"
OBS_TYPES = ("images", "lidar")
DEFAULT_NUM_ENVS = (1, 16, 64, 256)
QUICK_MAX_NUM_ENVS = 64
ACTION_POOL = 1024
"""Calls' worth of actions drawn in advance and cycled: longer than the longest episode (1000
steps), so every car sees a sequence that never repeats within an episode."""
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

StepFn = Callable[[int], int]
"""Runs call number ``i`` of a benchmark loop; returns how many episodes ended during it."""


@dataclass(frozen=True)
class Result:
    """One timed configuration."""

    config: str
    env_id: str
    obs_type: str | None
    num_envs: int
    api: str
    """``make``, ``unwrapped`` or ``make_vec``."""
    steps_per_s: float
    calls: int
    seconds: float
    episodes_ended: int


@dataclass(frozen=True)
class Target:
    """A throughput goal checked against the results."""

    name: str
    required: float
    measured: float
    unit: str
    """``x`` (ratio to the peer) or ``steps/s``."""
    source: str
    """The configuration the measured value comes from."""

    @property
    def passed(self) -> bool:
        return self.measured >= self.required

    @property
    def margin(self) -> str:
        if self.passed:
            return f"{self.measured / self.required - 1:+.0%}"
        return (
            f"{self.measured / self.required - 1:+.0%}, needs {self.required / self.measured:.2f}x"
        )


# -- process setup (before NumPy and Numba are imported) ------------------------------------------
def parse_cores(spec: str) -> set[int] | None:
    """``"0"``, ``"0,2"``, ``"0-3"`` or ``"all"`` (None: leave the affinity alone)."""
    if spec == "all":
        return None
    cores: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            cores.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--cores {spec!r}: expected CPU numbers like 0, 0,2 or 0-3, or 'all'"
        ) from None
    if not cores:
        raise argparse.ArgumentTypeError(f"--cores {spec!r}: names no CPU")
    return cores


def pin_process(cores: set[int] | None) -> list[int]:
    """Restrict this process to ``cores`` and size the thread pools to match; returns the CPUs
    the process runs on ([] where that is unknown). Must run before NumPy or Numba is imported."""
    can_pin = hasattr(os, "sched_setaffinity")
    if cores is not None and can_pin:
        available = os.sched_getaffinity(0)
        if not cores <= available:
            sys.exit(
                f"--cores: CPUs {sorted(cores - available)} are not available to this process; "
                f"choose among {sorted(available)}"
            )
        os.sched_setaffinity(0, cores)
    elif cores is not None:
        print(
            f"warning: CPU pinning is not supported on {platform.system()}; running unpinned, "
            "so the figures depend on what else the machine is doing",
            file=sys.stderr,
        )
    allowed = sorted(os.sched_getaffinity(0)) if can_pin else []
    threads = len(cores) if cores is not None else len(allowed) or os.cpu_count() or 1
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # CarRacing imports pygame
    return allowed


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- the timed loop --------------------------------------------------------------------------
def time_loop(
    step: StepFn, steps_per_call: int, seconds: float, warmup: float, wait_for_episode_end: bool
) -> tuple[float, int, float, int]:
    """Warm up, then call ``step`` for ``seconds``; returns (steps/s, calls, elapsed, episodes)."""
    step(0)  # the first call loads or compiles the Numba kernels
    i = 1
    ended = 0
    start = time.perf_counter()
    while True:
        ended += step(i)
        i += 1
        elapsed = time.perf_counter() - start
        if elapsed >= warmup and (ended or not wait_for_episode_end or elapsed >= 5 * warmup):
            break
    ended = 0
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        ended += step(i + calls)
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            break
    elapsed = now - start
    return calls * steps_per_call / elapsed, calls, elapsed, ended


def single_env_step(env: Any, actions: Sequence[Any]) -> StepFn:
    """A step function for one (possibly wrapped) environment that resets when an episode ends."""
    k = len(actions)

    def step(i: int) -> int:
        _, _, terminated, truncated, _ = env.step(actions[i % k])
        if terminated or truncated:
            env.reset()
            return 1
        return 0

    return step


def vector_env_step(env: Any, actions: Sequence[Any]) -> StepFn:
    """A step function for a vector environment (autoreset is the environment's job)."""
    k = len(actions)

    def step(i: int) -> int:
        _, _, terminated, truncated, _ = env.step(actions[i % k])
        return int((terminated | truncated).sum())

    return step


def draw_actions(space: Any, count: int, seed: int) -> list[Any]:
    space.seed(seed)
    return [space.sample() for _ in range(count)]


# -- configurations ----------------------------------------------------------------------------
def measure_single(
    env_id: str,
    label: str,
    *,
    unwrapped: bool,
    seconds: float,
    warmup: float,
    seed: int,
    wait_for_episode_end: bool = True,
    **kwargs: Any,
) -> Result:
    import gymnasium as gym

    made = gym.make(env_id, **kwargs)
    env = made.unwrapped if unwrapped else made
    try:
        env.reset(seed=seed)
        actions = draw_actions(env.action_space, ACTION_POOL, seed)
        rate, calls, elapsed, ended = time_loop(
            single_env_step(env, actions), 1, seconds, warmup, wait_for_episode_end
        )
    finally:
        made.close()
    return Result(
        label,
        env_id,
        kwargs.get("obs_type"),
        1,
        "unwrapped" if unwrapped else "make",
        rate,
        calls,
        elapsed,
        ended,
    )


def measure_vector(
    obs_type: str, num_envs: int, *, seconds: float, warmup: float, seed: int
) -> Result:
    import gymnasium as gym

    env = gym.make_vec(
        SIM_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", obs_type=obs_type
    )
    try:
        env.reset(seed=seed)
        actions = draw_actions(env.action_space, ACTION_POOL, seed)
        rate, calls, elapsed, ended = time_loop(
            vector_env_step(env, actions), num_envs, seconds, warmup, True
        )
    finally:
        env.close()
    return Result(
        f"{obs_type}, make_vec",
        SIM_ID,
        obs_type,
        num_envs,
        "make_vec",
        rate,
        calls,
        elapsed,
        ended,
    )


def measure_peer(label: str, *, seconds: float, warmup: float, seed: int) -> Result:
    import gymnasium as gym

    try:
        with warnings.catch_warnings():
            # Box2D's SWIG bindings warn about their builtin types on import.
            warnings.filterwarnings("ignore", "builtin type", DeprecationWarning)
            return measure_single(
                PEER_ID,
                label,
                unwrapped=False,
                seconds=seconds,
                warmup=warmup,
                seed=seed,
                wait_for_episode_end=False,  # CarRacing episodes last up to 1000 steps
            )
    except gym.error.DependencyNotInstalled as e:
        sys.exit(
            f"{PEER_ID}, the peer this benchmark compares against, cannot run: {e}\n"
            "Install it with: pip install 'gymnasium[box2d]'"
        )


def check_targets(results: list[Result], peer_rate: float) -> list[Target]:
    single = next(r for r in results if r.obs_type == "images" and r.api == "make")

    def best(obs_type: str) -> Result:
        return max(
            (r for r in results if r.api == "make_vec" and r.obs_type == obs_type),
            key=lambda r: r.steps_per_s,
        )

    img, lid = best("images"), best("lidar")
    return [
        Target(
            f"images single env >= 50x {PEER_ID}",
            50.0,
            single.steps_per_s / peer_rate,
            "x",
            "gymnasium.make",
        ),
        Target(
            "images batched >= 10,000 steps/s",
            10_000.0,
            img.steps_per_s,
            "steps/s",
            f"best num_envs={img.num_envs}",
        ),
        Target(
            "lidar batched >= 100,000 steps/s",
            100_000.0,
            lid.steps_per_s,
            "steps/s",
            f"best num_envs={lid.num_envs}",
        ),
    ]


# -- report ----------------------------------------------------------------------------------
def source_revision() -> str:
    """The checkout's commit, marked when packages/ has uncommitted changes ("" outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "packages"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f"{head} + local changes" if dirty else head


def machine_info(cores: list[int]) -> dict[str, Any]:
    import gymnasium
    import numba
    import numpy

    import tm_gym

    try:
        import Box2D

        box2d = str(getattr(Box2D, "__version__", "installed"))
    except ImportError:
        box2d = "not installed"
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "pinned_to": cores or "unknown",
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "gymnasium": gymnasium.__version__,
        "box2d": box2d,
        "tm_gym": tm_gym.__version__,
        "source": source_revision() or "unknown",
    }


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def steps_per_episode(r: Result) -> str:
    if not r.episodes_ended:
        return "-"
    return f"{r.calls * r.num_envs / r.episodes_ended:,.0f}"


def print_report(
    console: Console,
    machine: dict[str, Any],
    results: list[Result],
    peers: list[Result],
    peer_rate: float,
    targets: list[Target],
) -> None:
    info = Table(title="Machine", show_header=False, title_justify="left")
    info.add_column(style="bold")
    info.add_column()
    for key, value in machine.items():
        info.add_row(key, str(value))
    console.print(info)

    table = Table(
        title=f"{SIM_ID} steps per second (wall clock, random actions)", title_justify="left"
    )
    table.add_column("config", no_wrap=True)
    table.add_column("num_envs", justify="right")
    table.add_column("steps/s", justify="right")
    table.add_column(f"vs {PEER_ID}", justify="right")
    table.add_column("steps/episode", justify="right")
    table.add_row(
        f"{PEER_ID} (peer)", "1", fmt_rate(peer_rate), "1.0x", steps_per_episode(peers[0])
    )
    for r, following in zip(results, [*results[1:], None], strict=True):
        table.add_row(
            r.config,
            str(r.num_envs),
            fmt_rate(r.steps_per_s),
            f"{r.steps_per_s / peer_rate:,.1f}x",
            steps_per_episode(r),
            end_section=following is None or following.obs_type != r.obs_type,
        )
    console.print(table)
    console.print(
        f"{PEER_ID}: mean of "
        + ", ".join(f"{fmt_rate(p.steps_per_s)} ({p.config})" for p in peers)
        + " steps/s",
        style="dim",
    )

    tt = Table(title="Targets", title_justify="left")
    tt.add_column("target", no_wrap=True)
    tt.add_column("measured", justify="right")
    tt.add_column("from")
    tt.add_column("result")
    tt.add_column("margin", no_wrap=True)
    for t in targets:
        measured = f"{t.measured:,.1f}x" if t.unit == "x" else fmt_rate(t.measured)
        verdict = "[green]PASS[/]" if t.passed else "[red]MISS[/]"
        tt.add_row(t.name, measured, t.source, verdict, t.margin)
    console.print(tt)


# -- command line ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=f"Steps per second of {SIM_ID} (single and vector env) against {PEER_ID}.",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="timed seconds per configuration (default 3, or 1 with --quick)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="untimed seconds before each measurement (default 1, or 0.3 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"1 s per configuration and num_envs up to {QUICK_MAX_NUM_ENVS}",
    )
    p.add_argument(
        "--num-envs",
        type=int,
        nargs="+",
        default=list(DEFAULT_NUM_ENVS),
        metavar="N",
        help="vector env sizes (default: %(default)s)",
    )
    p.add_argument(
        "--cores",
        type=parse_cores,
        default=parse_cores("0"),
        help="CPUs to pin to: 0, 0,2, 0-3 or 'all' (default: 0, one core)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for resets and actions")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write results")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 1.0
    if args.quick:
        args.num_envs = [n for n in args.num_envs if n <= QUICK_MAX_NUM_ENVS] or [1]
    if args.seconds <= 0 or args.warmup < 0:
        p.error(f"--seconds {args.seconds} / --warmup {args.warmup}: need seconds > 0, warmup >= 0")
    if any(n < 1 for n in args.num_envs):
        p.error(f"--num-envs {args.num_envs}: every size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cores = pin_process(args.cores)
    try:
        import tm_gym  # noqa: F401  (registers the environments)
    except ImportError:
        sys.exit(
            "tm-gym is not installed; from the repository root run: "
            "pip install -e ./packages/tm-gym 'gymnasium[box2d]'  (or: python3 dev.py bench)"
        )

    console = Console(width=None if sys.stdout.isatty() else 100)  # logs: no wrapping at 80
    progress = Console(stderr=True, style="dim")
    timing = {"seconds": args.seconds, "warmup": args.warmup, "seed": args.seed}

    def done(r: Result) -> Result:
        size = f" num_envs={r.num_envs}" if r.api == "make_vec" else ""
        progress.print(f"  {r.env_id} {r.config}{size}: {fmt_rate(r.steps_per_s)} steps/s")
        return r

    peers = [done(measure_peer("before", **timing))]
    results: list[Result] = []
    for obs_type in OBS_TYPES:
        for unwrapped in (False, True):
            label = f"{obs_type}, {'env.unwrapped' if unwrapped else 'gymnasium.make'}"
            results.append(
                done(
                    measure_single(SIM_ID, label, unwrapped=unwrapped, obs_type=obs_type, **timing)
                )
            )
        for n in args.num_envs:
            results.append(done(measure_vector(obs_type, n, **timing)))
    peers.append(done(measure_peer("after", **timing)))
    peer_rate = sum(p.steps_per_s for p in peers) / len(peers)

    machine = machine_info(cores)
    targets = check_targets(results, peer_rate)
    print_report(console, machine, results, peers, peer_rate, targets)

    if args.json is not None:
        report = {
            "benchmark": "sim_throughput",
            "machine": machine,
            "settings": {**timing, "num_envs": args.num_envs, "quick": args.quick},
            "peer": {"env_id": PEER_ID, "steps_per_s": peer_rate},
            "peer_runs": [asdict(p) for p in peers],
            "results": [asdict(r) for r in results],
            "targets": [{**asdict(t), "passed": t.passed} for t in targets],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
