"""``tm-gym tracks``: list the built-in tracks, with the scripted expert's lap time on each."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from tm_gym.cli._common import EXIT_OK

if TYPE_CHECKING:
    from rich.console import Console


def add_parser(subparsers: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tracks",
        parents=parents,
        help="list the built-in tracks and the expert's lap time on each",
        description=(
            "List the built-in tracks: name, length, checkpoints, description and the scripted "
            "expert's lap time (the expert drives each track once, which takes a few seconds "
            "per track; --no-expert skips it). Other tracks can be loaded from a .json file or "
            "generated with gen:SEED wherever a command takes --track."
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout and nothing else"
    )
    parser.add_argument(
        "--no-expert", action="store_true", help="do not drive the expert; leave lap times out"
    )
    parser.set_defaults(handler=run)


def describe_tracks(*, with_expert: bool, err: Console | None = None) -> list[dict[str, Any]]:
    """One plain-JSON record per built-in track, in ``builtin_track_names()`` order."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from tm_gym.sim.tracks import builtin_track_names, load_track
    from tm_gym.viz import format_race_time

    names = list(builtin_track_names())
    records: list[dict[str, Any]] = []
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=err is None,
    )
    with progress:
        task = progress.add_task("loading tracks", total=len(names))
        for name in names:
            track = load_track(name)
            record: dict[str, Any] = {
                "name": name,
                "length_m": round(float(track.length), 1),
                "checkpoints": len(np.asarray(track.checkpoints_xy).reshape(-1, 2)),
                "description": track.description,
            }
            if with_expert:
                from tm_gym.sim.expert import run_expert

                progress.update(task, description=f"expert driving {name}")
                lap = run_expert(track, record_frames=False)
                lap_time = (
                    round(float(lap.lap_time), 6)
                    if lap.finished and lap.lap_time is not None
                    else None
                )
                record["expert_finished"] = bool(lap.finished)
                record["expert_lap_time"] = lap_time
                record["expert_lap_time_text"] = (
                    None if lap_time is None else format_race_time(lap_time)
                )
            records.append(record)
            progress.advance(task)
    return records


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.markup import escape
    from rich.table import Table

    records = describe_tracks(with_expert=not args.no_expert, err=err)
    if args.json:
        out.file.write(json.dumps({"tracks": records}) + "\n")
        out.file.flush()
        return EXIT_OK

    table = Table(title="Built-in tracks", title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("length", justify="right", no_wrap=True)
    table.add_column("checkpoints", justify="right")
    if not args.no_expert:
        table.add_column("expert lap", justify="right", no_wrap=True)
    table.add_column("description")
    for record in records:
        row = [escape(record["name"]), f"{record['length_m']:.0f} m", str(record["checkpoints"])]
        if not args.no_expert:
            text = record["expert_lap_time_text"]
            row.append("[red]DNF[/]" if text is None else text)
        row.append(escape(record["description"]))
        table.add_row(*row)
    out.print(table)
    out.print("Drive one with: tm-gym drive --expert --track NAME --out DIR", style="dim")
    return EXIT_OK
