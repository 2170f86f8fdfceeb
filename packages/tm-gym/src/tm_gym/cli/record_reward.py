"""``tm-gym record-reward``: record the reward's reference trajectory by driving the track."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tm_gym.cli._common import EXIT_DNF, EXIT_OK, CLIError, positive_float

if TYPE_CHECKING:
    from rich.console import Console

    from tm_gym.game.record_reward import RecordedLap

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "record-reward",
        parents=parents,
        help="record the reference trajectory of the progress reward by driving the track",
        description=(
            "Listen to the game's telemetry while you drive the track from the start to the "
            "finish; save the positions resampled every 0.1 m as .npz (or .json). Recording "
            "starts when the car moves and stops at the finish; Ctrl-C stops early (saved only "
            "with --allow-unfinished). Pass the file to TrackMania-v0 as reward_trajectory=."
        ),
    )
    parser.add_argument("--out", required=True, help="output file (.npz or .json)")
    parser.add_argument("--host", default="127.0.0.1", help="telemetry host (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="telemetry port (9000)")
    parser.add_argument(
        "--max-time", type=positive_float, default=600.0, help="stop after this many seconds"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=10.0, help="telemetry timeout in seconds (10)"
    )
    parser.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="save even if the finish was not reached (Ctrl-C or --max-time)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from tm_gym.game.record_reward import record_reference
    from tm_gym.game.telemetry_client import TelemetryClient

    path = Path(args.out)
    if path.suffix not in (".npz", ".json"):
        raise CLIError(f"--out {args.out!r}: use a .npz or .json file name")
    if not path.parent.exists():
        raise CLIError(f"--out {args.out!r}: folder {str(path.parent)!r} does not exist")
    stop = threading.Event()
    result: dict[str, Any] = {}

    with TelemetryClient(args.host, args.port, timeout=args.timeout) as client:

        def work() -> None:
            try:
                result["lap"] = record_reference(
                    client, max_time=args.max_time, stop=stop, record_timeout=args.timeout
                )
            except BaseException as exc:  # re-raised in the main thread
                result["error"] = exc

        worker = threading.Thread(target=work, name="record-reward", daemon=True)
        err.print(
            f"listening on {args.host}:{args.port}: drive from the start to the finish "
            "(recording starts when the car moves; Ctrl-C stops)"
        )
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:
            stop.set()
            worker.join(args.timeout + 1.0)
    if "error" in result:
        raise result["error"]
    lap: RecordedLap = result["lap"]
    if not lap.finished and not args.allow_unfinished:
        err.print(
            f"[yellow]the finish was not reached ({lap.reference.length:.0f} m recorded); "
            "nothing saved — use --allow-unfinished to keep it[/]"
        )
        return EXIT_DNF
    lap.reference.save(path)
    out.print(
        f"saved {path}: {lap.reference.length:.1f} m, {len(lap.reference.points)} points every "
        f"0.1 m, {lap.duration:.1f} s driven{'' if lap.finished else ' (unfinished)'}"
    )
    return EXIT_OK
