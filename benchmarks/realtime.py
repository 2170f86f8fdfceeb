"""Real-time pacing at 20 Hz, with a CNN policy's CPU inference in the loop.

Runs ``TrackMania-v0`` against the emulator (a real window under Xvfb, TCP telemetry, keys
through xdotool) and ``TrackMania-Sim-v0`` with ``realtime=True``, for ``--steps`` steps each,
the agent computing its action with a small CNN (PyTorch, CPU, one thread) on the 4×64×64 frames.

Prints, per backend: the time-step period (mean, std, max) measured between step() returns,
rtgym's own time-step statistics, time-step timeouts, the capture latency (window grab, and grab
plus preprocessing to the 64×64 frame) and the telemetry age at capture. Targets: period std
<= 1 ms, zero timeouts, capture + preprocessing <= 2 ms.

    python benchmarks/realtime.py [--steps 2000] [--json OUT]

Needs tm-gym[game], torch, and Xvfb + xdotool + x11-utils (Debian packages) for the emulator.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="steps per backend (2000)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--backends", default="emulator,sim", help="comma-separated: emulator, sim (both)"
    )
    return p.parse_args()


Policy = Callable[[dict[str, np.ndarray]], np.ndarray]


def make_policy() -> Policy:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    net = nn.Sequential(  # the size of TMRL's / SB3's Nature CNN on 4x64x64 frames
        nn.Conv2d(4, 32, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 256),
        nn.ReLU(),
        nn.Linear(256, 3),
        nn.Tanh(),
    ).eval()

    def act(obs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(obs["images"][None].astype(np.float32) / 255.0)
            a = net(x)[0].numpy()
        # keep driving forward so episodes are long; the network still runs every step
        return np.array([1.0, 0.0, float(a[2]) * 0.3], dtype=np.float32)

    return act


def instrument(env: Any) -> dict[str, list[float]]:
    """Wrap the backend's frame source and telemetry to time grabs and telemetry age."""
    from tm_gym.preprocess import agent_frame

    backend = env.unwrapped.backend
    stats: dict[str, list[float]] = {"grab": [], "grab_pre": [], "age": []}
    frames, telemetry = backend.frames, backend.telemetry
    grab0, latest0 = frames.grab, telemetry.latest

    def grab() -> np.ndarray:
        t0 = time.perf_counter()
        rgb = grab0()
        t1 = time.perf_counter()
        agent_frame(rgb, 64, True)  # what the observation builder does with it
        t2 = time.perf_counter()
        stats["grab"].append(t1 - t0)
        stats["grab_pre"].append(t2 - t0)
        return rgb

    def latest() -> Any:
        rec = latest0()
        age = getattr(telemetry, "age", None)
        if isinstance(age, float) and np.isfinite(age):
            stats["age"].append(age)
        return rec

    frames.grab = grab
    telemetry.latest = latest
    return stats


def run(env: Any, steps: int, act: Policy) -> dict[str, Any]:
    from rich.progress import Progress

    stats = instrument(env)
    obs, info = env.reset()
    returns: list[float] = []
    with Progress(transient=True) as bar:
        task = bar.add_task("stepping at 20 Hz", total=steps)
        for _ in range(steps):
            obs, _, terminated, truncated, info = env.step(act(obs))
            returns.append(time.perf_counter())
            bar.advance(task)
            if terminated or truncated:
                obs, info = env.reset()
                returns.append(float("nan"))  # a reset breaks the rhythm: not a period
    t = np.asarray(returns)
    periods = np.diff(t)
    periods = periods[np.isfinite(periods)][1:]  # skip the first step after the reset
    rt = env.unwrapped.timing_stats()
    ms = 1000.0
    return {
        "steps": steps,
        "period_mean_ms": float(periods.mean() * ms),
        "period_std_ms": float(periods.std() * ms),
        "period_max_ms": float(periods.max() * ms),
        "rtgym_time_step_ms": [v * ms for v in rt.get("time_step_duration", (np.nan, np.nan))],
        "timeouts": int(info.get("timeouts_total", 0)),
        "grab_ms_mean": float(np.mean(stats["grab"]) * ms),
        "grab_pre_ms_mean": float(np.mean(stats["grab_pre"]) * ms),
        "grab_pre_ms_p99": float(np.percentile(stats["grab_pre"], 99) * ms),
        "telemetry_age_ms_mean": float(np.mean(stats["age"]) * ms) if stats["age"] else None,
        "telemetry_age_ms_max": float(np.max(stats["age"]) * ms) if stats["age"] else None,
    }


def measure_sim(steps: int, act: Policy, common: dict[str, Any]) -> dict[str, Any]:
    """The real-time simulator: ``TrackMania-Sim-v0`` paced at 20 Hz."""
    import gymnasium as gym

    env = gym.make("TrackMania-Sim-v0", realtime=True, **common)
    try:
        return run(env, steps, act)
    finally:
        env.close()


def measure_emulator(
    steps: int, act: Policy, common: dict[str, Any], ref_path: str
) -> dict[str, Any]:
    """The game path against the emulator: a window under Xvfb, TCP telemetry, xdotool keys."""
    import gymnasium as gym

    from tm_gym.testing import EmulatorProcess, VirtualDisplay

    with VirtualDisplay() as display:
        os.environ["DISPLAY"] = display.name
        with EmulatorProcess(display=display.name, countdown=1.5) as emu:
            env = gym.make(
                "TrackMania-v0",
                controller="keyboard",
                telemetry_port=emu.port,
                window_title=emu.title,
                reward_trajectory=ref_path,
                **common,
            )
            try:
                return run(env, steps, act)
            finally:
                env.close()


ROWS = [  # label, key in the results, format
    ("period mean (ms)", "period_mean_ms", "{:.3f}"),
    ("period std (ms)  \\[target <= 1]", "period_std_ms", "{:.3f}"),
    ("period max (ms)", "period_max_ms", "{:.2f}"),
    ("timeouts  \\[target 0]", "timeouts", "{}"),
    ("grab (ms)", "grab_ms_mean", "{:.3f}"),
    ("grab + preprocess mean (ms)  \\[target <= 2]", "grab_pre_ms_mean", "{:.3f}"),
    ("grab + preprocess p99 (ms)", "grab_pre_ms_p99", "{:.3f}"),
    ("telemetry age at capture mean (ms)", "telemetry_age_ms_mean", "{:.2f}"),
    ("telemetry age at capture max (ms)", "telemetry_age_ms_max", "{:.2f}"),
]


def report(console: Any, results: dict[str, dict[str, Any]], steps: int) -> None:
    """The results as one table (a column per backend), then the verdict on the targets."""
    from rich.table import Table

    table = Table(title=f"20 Hz real-time pacing, {steps} steps, CNN inference on CPU")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for label, key, fmt in ROWS:
        cells = []
        for r in results.values():
            v = r.get(key)
            cells.append("-" if v is None else fmt.format(v))
        table.add_row(label, *cells)
    console.print(table)
    verdicts = []
    for name, r in results.items():
        ok = r["period_std_ms"] <= 1.0 and r["timeouts"] == 0 and r["grab_pre_ms_mean"] <= 2.0
        verdicts.append(f"{name}: {'PASS' if ok else 'MISS'}")
    console.print("targets: " + "; ".join(verdicts))


def main() -> int:
    args = parse()
    try:
        from rich.console import Console

        import tm_gym  # noqa: F401
        from tm_gym.envs.sim_core import default_reference
        from tm_gym.sim.tracks import load_track
    except ImportError as e:
        print(
            f"missing dependency: {e}; pip install './packages/tm-gym[game]' torch", file=sys.stderr
        )
        return 2
    console = Console()
    act = make_policy()
    results: dict[str, Any] = {}
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    ref_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".realtime_ref.npz")
    default_reference(load_track("default")).save(ref_path)
    common = {"obs_type": "images", "ep_max_length": 1000}
    try:
        if "sim" in backends:
            console.print("[bold]real-time simulator[/] …")
            results["realtime sim"] = measure_sim(args.steps, act, common)
        if "emulator" in backends:
            if not (shutil.which("Xvfb") and shutil.which("xdotool")):
                console.print("[yellow]skipping the emulator: needs Xvfb and xdotool[/]")
            else:
                console.print("[bold]emulator[/] (window + TCP + xdotool) …")
                results["emulator"] = measure_emulator(args.steps, act, common, ref_path)
    finally:
        os.remove(ref_path)
    report(console, results, args.steps)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
