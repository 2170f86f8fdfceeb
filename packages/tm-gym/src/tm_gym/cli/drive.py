"""``tm-gym drive``: drive one lap and write a video, a map and a JSON summary.

Outputs in ``--out DIR``:

- ``lap.mp4``: the driver's view, sampled at 20 Hz (skipped with ``--no-video``);
- ``trajectory.png``: the track from above, the driven line coloured by speed;
- ``speed.png``: speed against race time;
- ``lap.json``: the summary (also printed on stdout with ``--json``).

Exit code 0 when the car finished, 1 when it did not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tm_gym.cli._common import (
    EXIT_DNF,
    EXIT_OK,
    load_track_or_explain,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from rich.console import Console

    from tm_gym.sim.expert import ExpertLap
    from tm_gym.sim.track import Track

EXPERT_SAMPLE_RATE_HZ = 20


def add_parser(subparsers: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "drive",
        parents=parents,
        help="drive one lap with the scripted expert; write video, map and summary",
        description=(
            "Drive one lap and write DIR/lap.mp4 (driver's view), DIR/trajectory.png (map "
            "coloured by speed), DIR/speed.png and DIR/lap.json. Only the scripted expert can "
            "drive for now, so --expert is required; driving a trained policy will come later. "
            "Exit code 0 if the lap was finished, 1 if not."
        ),
    )
    parser.add_argument(
        "--expert",
        action="store_true",
        required=True,
        help="drive with the scripted expert (required for now; policies come later)",
    )
    parser.add_argument(
        "--track",
        default="default",
        metavar="NAME_OR_PATH",
        help="built-in track name, path to a .json track, or gen:SEED (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object on stdout and nothing else",
    )
    parser.add_argument("--no-video", action="store_true", help="skip rendering lap.mp4 (faster)")
    parser.add_argument(
        "--fps",
        type=positive_int,
        default=EXPERT_SAMPLE_RATE_HZ,
        help="playback frame rate of lap.mp4; frames are sampled at 20 Hz, so 20 is real time "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--scale",
        type=positive_int,
        default=3,
        help="integer upscaling of the 256x128 driver's view in lap.mp4 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-time",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="give up after this much race time (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def lap_summary(lap: ExpertLap, track: Track) -> dict[str, Any]:
    """Plain-JSON numbers describing a lap (no file paths)."""
    from tm_gym.viz import format_race_time

    positions = np.asarray(lap.positions, dtype=np.float64)
    speeds = np.asarray(lap.speeds_kmh, dtype=np.float64)
    times = np.asarray(lap.times, dtype=np.float64)
    moves = np.diff(positions, axis=0)
    distance = float(np.sum(np.linalg.norm(moves, axis=1))) if len(moves) else 0.0
    lap_time = None if lap.lap_time is None else round(float(lap.lap_time), 6)
    return {
        "track": lap.track_name,
        "finished": bool(lap.finished),
        "lap_time": lap_time,
        "lap_time_text": None if lap_time is None else format_race_time(lap_time),
        "steps": max(len(times) - 1, 0),  # times starts with the state before the first step
        "race_time_driven": round(float(times[-1]), 6) if len(times) else 0.0,
        "distance_m": round(distance, 3),
        "max_speed_kmh": round(float(speeds.max()), 3) if len(speeds) else 0.0,
        "mean_speed_kmh": round(float(speeds.mean()), 3) if len(speeds) else 0.0,
        "track_length_m": round(float(track.length), 3),
        "checkpoints": len(np.asarray(track.checkpoints_xy).reshape(-1, 2)),
        "wall_contacts": int(lap.wall_contacts),
    }


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from tm_gym import viz
    from tm_gym.sim.expert import run_expert

    track = load_track_or_explain(args.track)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    with err.status(f"the expert is driving [bold]{track.name}[/] ...", spinner="dots"):
        lap = run_expert(track, record_frames=not args.no_video, max_time=args.max_time)

    video: Path | None = None
    if not args.no_video:
        if lap.frames is None or len(lap.frames) == 0:
            err.print("[yellow]warning:[/] the expert recorded no frames; lap.mp4 not written")
        else:
            with err.status(f"encoding {len(lap.frames)} frames to lap.mp4 ...", spinner="dots"):
                video = viz.save_video(
                    lap.frames, out_dir / "lap.mp4", fps=args.fps, scale=args.scale
                )

    with err.status("drawing the trajectory map ...", spinner="dots"):
        lap_map = viz.save_trajectory_map(
            track, lap.positions, lap.speeds_kmh, out_dir / "trajectory.png", lap_time=lap.lap_time
        )
        speed_plot = viz.save_speed_profile(
            lap.times, lap.speeds_kmh, out_dir / "speed.png", title=f"{track.name}: speed"
        )

    json_path = out_dir / "lap.json"
    summary = lap_summary(lap, track)
    summary["track_spec"] = args.track
    summary["driver"] = {
        "kind": "expert",
        "description": "scripted expert following the track's racing line",
        "sample_rate_hz": EXPERT_SAMPLE_RATE_HZ,
        "max_time": args.max_time,
    }
    summary["video"] = None if video is None else str(video.resolve())
    summary["map"] = str(lap_map.resolve())
    summary["speed_profile"] = str(speed_plot.resolve())
    summary["json"] = str(json_path.resolve())
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    if args.json:
        # Plain write: rich would wrap or colour the text.
        out.file.write(json.dumps(summary) + "\n")
        out.file.flush()
    else:
        _print_summary(out, summary)
    return EXIT_OK if lap.finished else EXIT_DNF


def _print_summary(out: Console, summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['track']} — expert lap", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    if summary["finished"]:
        table.add_row("result", f"[green]FINISHED {summary['lap_time_text']}[/]")
    else:
        table.add_row("result", f"[red]DID NOT FINISH[/] after {summary['race_time_driven']:.2f} s")
    table.add_row("steps", str(summary["steps"]))
    table.add_row("distance", f"{summary['distance_m']:.0f} m of {summary['track_length_m']:.0f} m")
    table.add_row("max speed", f"{summary['max_speed_kmh']:.1f} km/h")
    table.add_row("mean speed", f"{summary['mean_speed_kmh']:.1f} km/h")
    for label, key in (
        ("video", "video"),
        ("map", "map"),
        ("speed", "speed_profile"),
        ("summary", "json"),
    ):
        if summary[key] is not None:
            table.add_row(label, summary[key])
    out.print(table)
