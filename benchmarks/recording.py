"""Recording benchmark: bytes per step on disk, and replay speed.

Records ``--steps`` steps of ``TrackMania-Sim-v0`` (images, 4×64×64 grayscale) with the expert
and with random actions through :class:`tm_gym.recording.RecordEpisodes`, writes the ``.tmrec``
file, and compares its size per step with the naive ways of keeping the same data:

* ``naive stacks``: what a replay buffer such as SB3's keeps per transition, the observation and
  the next observation as uncompressed arrays (~32 KB for 4×64×64 frames);
* ``naive stacks, npz``: the same arrays of the whole run in one ``np.savez_compressed`` file;
* ``minari (hdf5)``: the run exported with :func:`tm_gym.recording.minari_io.export_minari`
  (lossless frames), when the ``minari`` extra is installed;
* ``window`` recordings (``full_frames=True``: the 256×128 RGB driver's view beside the agent
  frames), when ``--window`` is given.

Replay speed: observations rebuilt per second from the recording — by the replay env
(``tm_gym.recording.replay``) when it is installed, else by the export pipeline
(:func:`tm_gym.recording.minari_io.episode_arrays`) — against the simulator's own steps per
second in the same run.

    python benchmarks/recording.py --steps 2000 --window --json out/recording.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.recording.format import load_recording
from tm_gym.recording.minari_io import episode_arrays

Policy = Callable[[dict[str, NDArray[Any]], TrackManiaEnv], NDArray[np.float32]]


@dataclass
class Args:
    steps: int = 2000
    """steps recorded per driver"""
    window: bool = False
    """also measure a recording with the 256×128 RGB window frames"""
    json: str | None = None
    """write the results as JSON to this file"""


def expert(obs: dict[str, NDArray[Any]], env: TrackManiaEnv) -> NDArray[np.float32]:
    return env.expert_action()


def random_driver(seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)

    def act(obs: dict[str, NDArray[Any]], env: TrackManiaEnv) -> NDArray[np.float32]:
        a = rng.uniform(-1, 1, 3).astype(np.float32)
        a[0] = abs(a[0])  # mostly forwards, so episodes last
        return a

    return act


def drive(
    env: Any, policy: Policy, steps: int, keep: list[dict[str, NDArray[Any]]] | None
) -> float:
    """Run ``steps`` steps (resetting as needed); returns the seconds it took."""
    base = env.unwrapped
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=0)
    for _ in range(steps):
        prev = obs
        obs, _, term, trunc, _ = env.step(policy(obs, base))
        if keep is not None:
            keep.append(prev)
            keep.append(obs)
        if term or trunc:
            obs, _ = env.reset()
    return time.perf_counter() - t0


def naive_sizes(pairs: list[dict[str, NDArray[Any]]], folder: Path) -> tuple[float, float]:
    """Bytes per transition of obs + next_obs stacks: raw, and in one savez_compressed file."""
    n = len(pairs) // 2
    raw = sum(sum(v.nbytes for v in o.values()) for o in pairs) / n
    arrays: dict[str, Any] = {
        f"{which}_{k}": np.stack([pairs[2 * i + j][k] for i in range(n)])
        for j, which in enumerate(("obs", "next_obs"))
        for k in pairs[0]
    }
    path = folder / "naive.npz"
    np.savez_compressed(path, **arrays)
    return raw, path.stat().st_size / n


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(name: str, policy: Policy, args: Args, folder: Path, full: bool) -> dict[str, Any]:
    from tm_gym.recording.recorder import RecordEpisodes

    # the simulator alone (same policy, same steps), for the replay ratio
    env = TrackManiaEnv()
    try:
        sim_s = drive(env, policy, args.steps, None)
    finally:
        env.close()
    path = folder / f"{name}{'-window' if full else ''}.tmrec"
    pairs: list[dict[str, NDArray[Any]]] = []
    with RecordEpisodes(TrackManiaEnv(), path, full_frames=full) as rec_env:
        rec_s = drive(rec_env, policy, args.steps, None if full else pairs)
    rec = load_recording(path)
    out: dict[str, Any] = {
        "driver": name,
        "frames": "window 256x128 RGB + agent" if full else "agent 4x64x64",
        "steps": rec.num_steps,
        "episodes": rec.num_episodes,
        "tmrec_bytes_per_step": path.stat().st_size / rec.num_steps,
        "sim_steps_per_s": args.steps / sim_s,
        "recording_steps_per_s": args.steps / rec_s,
    }
    if full:
        return out
    raw, npz = naive_sizes(pairs, folder)
    out["naive_bytes_per_step"] = raw
    out["naive_npz_bytes_per_step"] = npz
    replay_s, how = replay_time(path)
    out["replay_steps_per_s"] = rec.num_steps / replay_s
    out["replay_by"] = how
    try:
        from tm_gym.recording.minari_io import export_minari

        mdir = folder / "minari"
        export_minari(rec, f"bench-{name}-v0", data_path=mdir)
        out["minari_bytes_per_step"] = dir_size(mdir / f"bench-{name}-v0") / rec.num_steps
    except ImportError:
        out["minari_bytes_per_step"] = None
    return out


def replay_time(path: Path) -> tuple[float, str]:
    """Seconds to rebuild every observation of the recording at ``path``."""
    try:
        from tm_gym.recording.replay import ReplayEnv
    except ImportError:
        rec = load_recording(path)
        t0 = time.perf_counter()
        episode_arrays(rec)
        return time.perf_counter() - t0, "export pipeline (no replay env installed)"
    rec = load_recording(path)
    t0 = time.perf_counter()
    with ReplayEnv(path) as env:
        for _ in range(rec.num_episodes):
            env.reset()
            while True:
                _, _, term, trunc, _ = env.step(env.action_space.sample())
                if term or trunc:
                    break
    return time.perf_counter() - t0, "ReplayEnv"


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Recording: bytes per step on disk, replay speed")
    cols = [
        ("driver", "driver"),
        ("frames", "frames"),
        ("steps", "steps"),
        ("tmrec B/step", "tmrec_bytes_per_step"),
        ("naive B/step", "naive_bytes_per_step"),
        ("naive/tmrec", None),
        ("naive npz B/step", "naive_npz_bytes_per_step"),
        ("npz/tmrec", None),
        ("minari B/step", "minari_bytes_per_step"),
        ("sim steps/s", "sim_steps_per_s"),
        ("replay steps/s", "replay_steps_per_s"),
        ("replay/sim", None),
    ]
    for head, _ in cols:
        t.add_column(head, justify="right" if head not in ("driver", "frames") else "left")
    for r in rows:
        cells = []
        for head, key in cols:
            if key is None:
                num, den = {
                    "naive/tmrec": ("naive_bytes_per_step", "tmrec_bytes_per_step"),
                    "npz/tmrec": ("naive_npz_bytes_per_step", "tmrec_bytes_per_step"),
                    "replay/sim": ("replay_steps_per_s", "sim_steps_per_s"),
                }[head]
                v = r.get(num)
                cells.append(f"{v / r[den]:.1f}x" if v else "-")
                continue
            v = r.get(key)
            if v is None:
                cells.append("-")
            elif isinstance(v, float):
                cells.append(f"{v:,.0f}")
            else:
                cells.append(str(v))
        t.add_row(*cells)
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=Args.steps, help="steps recorded per driver")
    p.add_argument("--window", action="store_true", help="also measure 256x128 window frames")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    ns = p.parse_args()
    args = Args(steps=ns.steps, window=ns.window, json=ns.json)
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        drivers: list[tuple[str, Policy]] = [("expert", expert), ("random", random_driver(0))]
        warm = TrackManiaEnv()  # compile the simulator's numba kernels before timing anything
        try:
            drive(warm, expert, 50, None)
        finally:
            warm.close()
        for name, pol in drivers:
            rows.append(measure(name, pol, args, folder, full=False))
        if args.window:
            rows.append(measure("expert", expert, args, folder, full=True))
    console.print(table(rows))
    if rows and rows[0].get("replay_by"):
        console.print(f"replay measured with: {rows[0]['replay_by']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
