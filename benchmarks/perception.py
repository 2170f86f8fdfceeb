"""Perception benchmark: how well a CNN reads the LIDAR off 64 × 64 frames on unseen tracks.

Trains a :class:`tm_algos.perception.PerceptionEncoder` on frames of training tracks (the three
built-ins and ``gen:SEED`` tracks with seeds outside 1001–1099, which are kept for evaluation)
under random looks (``visuals="random"``), driven by the scripted expert with steering noise,
then measures the mean absolute error of its 19 predicted distances (metres and % of the 150 m
range) on:

* ``train-tracks``: new episodes of the training tracks, training looks (in distribution);
* ``held-out``: ``gen:1001``… tracks, training looks;
* ``held-out/standard``: the same tracks, the standard look (``visuals=None``);
* ``held-out/edge``: the same tracks, looks drawn at and beyond the edges of the training
  ranges (darker and brighter, other grass and road tones, other camera heights, pitches and
  fields of view).

Peers measured in the same run: the training set's mean scan (a constant predictor), and the
classic pixel LIDAR (``tm_gym.preprocess.pixel_lidar``, TMRL's method: march each beam until a
dark border pixel) on the same 64 × 64 frames with the standard camera.

With ``--policy DIR`` (a LIDAR policy, e.g. from ``tm-train lidar-sac``) it also drives that
policy through :class:`tm_algos.perception.PixelLidarWrapper` (pixels → predicted LIDAR) and on
exact LIDAR, on the default track and ``--drive-tracks`` unseen ones: finished or not, lap time.

Run from the repository root (2 CPU cores: keep one thread)::

    python benchmarks/perception.py --minutes 8 --out /tmp/perception
    python benchmarks/perception.py --policy /tmp/h3-run/best --encoder /tmp/perception/encoder
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

EVAL_SEEDS = range(1001, 1100)  # reserved for evaluation: never train on them

EDGE_RANGES: dict[str, Any] = {
    # at and beyond the edges of DEFAULT_VISUAL_RANGES (training), every field drawn
    "sky": [[20, 50, 110], [60, 100, 170]],
    "grass": [[25, 80, 20], [60, 125, 50]],
    "road": [[70, 70, 70], [95, 95, 100]],
    "border_dark": [[30, 30, 30], [50, 50, 50]],
    "border_light": [[170, 170, 170], [200, 200, 200]],
    "brightness": [0.6, 0.8],
    "camera_height_m": [2.0, 2.3],
    "camera_pitch_deg": [6.0, 7.5],
    "fov_deg": [75.0, 85.0],
}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/perception"), help="results folder")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget")
    p.add_argument("--gen-tracks", type=int, default=12, help="gen:1..N training tracks")
    p.add_argument("--train-steps", type=int, default=800, help="steps per training car")
    p.add_argument("--cars-per-track", type=int, default=2)
    p.add_argument("--eval-tracks", type=int, default=10, help="held-out gen:1001..")
    p.add_argument("--eval-steps", type=int, default=300, help="steps per evaluation car")
    p.add_argument("--epochs", type=int, default=40, help="planned epochs (the budget may cut)")
    p.add_argument("--width", type=int, default=16, help="EncoderConfig.width")
    p.add_argument("--photometric", type=float, default=0.4, help="train_encoder photometric")
    p.add_argument("--encoder", type=Path, help="evaluate this saved encoder, do not train")
    p.add_argument("--policy", type=Path, help="a LIDAR policy to drive through the wrapper")
    p.add_argument(
        "--drive-tracks", nargs="*", default=["default", "gen:1001", "gen:1002", "gen:1003"]
    )
    p.add_argument(
        "--skip-mae", action="store_true", help="only the driving part (needs --encoder)"
    )
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def train_tracks(n_gen: int) -> list[str]:
    gen = [f"gen:{s}" for s in range(1, n_gen + 1) if s not in EVAL_SEEDS]
    return ["default", "speedway", "technical", *gen]


def peer_pixel_lidar(frames: np.ndarray) -> np.ndarray:
    from tm_gym.preprocess import pixel_lidar

    return np.stack(
        [pixel_lidar(np.repeat(f[0][:, :, None], 3, axis=2)).distances for f in frames]
    ).astype(np.float32)


def evaluate_sets(enc: Any, sets: dict[str, Any], mean_scan: np.ndarray) -> list[dict[str, Any]]:
    from tm_algos.perception import lidar_error

    rows = []
    for name, data in sets.items():
        e = lidar_error(enc.predict(data.frames), data.lidar)
        m = lidar_error(np.broadcast_to(mean_scan, data.lidar.shape), data.lidar)
        px = lidar_error(peer_pixel_lidar(data.frames), data.lidar)
        rows.append(
            {
                "set": name,
                "samples": len(data),
                "encoder": dataclasses.asdict(e),
                "mean_scan": dataclasses.asdict(m),
                "pixel_lidar": dataclasses.asdict(px),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'set':<20}{'samples':>8}{'MAE m':>8}{'% range':>9}{'median m':>10}"
        f"{'mean-scan m':>13}{'pixel-LIDAR m':>15}{'vs mean':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        e, m, px = r["encoder"], r["mean_scan"], r["pixel_lidar"]
        print(
            f"{r['set']:<20}{r['samples']:>8}{e['mae_m']:>8.2f}{e['mae_pct']:>8.2f}%"
            f"{e['median_m']:>10.2f}{m['mae_m']:>13.2f}{px['mae_m']:>15.2f}"
            f"{e['mae_m'] / m['mae_m']:>9.2f}"
        )
    beams = " ".join(f"{v:5.1f}" for v in rows[1]["encoder"]["per_beam_m"]) if len(rows) > 1 else ""
    if beams:
        print(f"per beam ({rows[1]['set']}, left→right, m): {beams}")


def drive(policy_dir: Path, encoder_dir: Path, tracks: Sequence[str]) -> list[dict[str, Any]]:
    import gymnasium as gym

    import tm_gym  # noqa: F401
    from tm_algos.evaluation import evaluate
    from tm_algos.perception import PixelLidarWrapper, load_encoder
    from tm_algos.policy import load_policy

    policy = load_policy(policy_dir)
    enc = load_encoder(encoder_dir)
    rows = []
    for track in tracks:
        row: dict[str, Any] = {"track": track}
        for mode in ("exact", "pixels"):
            if mode == "exact":
                env = gym.make("TrackMania-Sim-v0", obs_type="lidar", track=track)
            else:
                env = PixelLidarWrapper(
                    gym.make("TrackMania-Sim-v0", obs_type="images", track=track), enc
                )
            t0 = time.perf_counter()
            rep = evaluate(policy, env=env, n_episodes=1, keep_best=False)
            ep = rep.episodes[0]
            row[mode] = {
                "finished": bool(ep.finished),
                "lap_time": float(ep.lap_time or 0.0) if ep.finished else None,
                "progress": float(ep.progress),
                "wall_s": time.perf_counter() - t0,
            }
            env.close()
        rows.append(row)
        ex, px = row["exact"], row["pixels"]

        def fmt(d: dict[str, Any]) -> str:
            return (
                f"{d['lap_time']:.2f} s" if d["finished"] else f"DNF ({100 * d['progress']:.0f}%)"
            )

        print(f"{track:<12} exact LIDAR: {fmt(ex):<14} pixels→LIDAR: {fmt(px)}")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from tm_algos.perception import (
        EncoderConfig,
        collect_pairs,
        load_encoder,
        save_encoder,
        train_encoder,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    enc_dir = args.encoder or args.out / "encoder"
    if not args.skip_mae:
        tracks = train_tracks(args.gen_tracks)
        held = [f"gen:{s}" for s in range(1001, 1001 + args.eval_tracks)]
        t0 = time.perf_counter()
        n_cars = args.cars_per_track * len(tracks)
        train = collect_pairs(tracks, args.train_steps, n_envs=n_cars, seed=0)
        sets = {
            "train-tracks": collect_pairs(
                tracks, args.eval_steps // 2, n_envs=len(tracks), seed=77
            ),
            "held-out": collect_pairs(held, args.eval_steps, seed=1),
            "held-out/standard": collect_pairs(held, args.eval_steps, seed=2, visuals=None),
            "held-out/edge": collect_pairs(
                held, args.eval_steps, seed=3, visuals={"random": EDGE_RANGES}
            ),
        }
        collect_s = time.perf_counter() - t0
        print(
            f"collected {len(train)} training pairs on {len(tracks)} tracks "
            f"({n_cars} cars) and {sum(len(d) for d in sets.values())} evaluation pairs in "
            f"{collect_s:.0f} s"
        )
        if args.encoder is None:

            def on_epoch(epoch: int, h: Any) -> None:
                v = h.val[-1]
                print(
                    f"epoch {epoch}: {h.updates} updates, {h.wall_s:.0f} s, train MAE "
                    f"{h.train_mae_m[-1]:.2f} m, held-out MAE {v.mae_m:.2f} m",
                    flush=True,
                )

            enc, hist = train_encoder(
                train,
                config=EncoderConfig(width=args.width),
                epochs=args.epochs,
                seconds=args.minutes * 60,
                photometric=args.photometric,
                validation=sets["held-out"],
                on_epoch=on_epoch,
            )
            save_encoder(enc, enc_dir)
            result["training"] = {
                "pairs": len(train),
                "updates": hist.updates,
                "epochs": hist.epochs,
                "wall_s": hist.wall_s,
                "train_mae_m": hist.train_mae_m,
                "held_out_mae_m": [v.mae_m for v in hist.val],
            }
        else:
            enc = load_encoder(args.encoder)
        rows = evaluate_sets(enc, sets, train.lidar.mean(axis=0))
        print_table(rows)
        result["mae"] = rows
    if args.policy is not None:
        result["drive"] = drive(args.policy, enc_dir, args.drive_tracks)
    (args.out / "perception.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'perception.json'}; encoder in {enc_dir}")


if __name__ == "__main__":
    main()
