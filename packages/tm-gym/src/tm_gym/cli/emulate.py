"""``tm-gym emulate``: run the simulator as a stand-in for the game (window, telemetry, keys)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from tm_gym.cli._common import EXIT_OK, load_track_or_explain, positive_float

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "emulate",
        parents=parents,
        help="run the simulator as a stand-in for TrackMania (window, telemetry, keyboard)",
        description=(
            "Open a window titled like the game showing the simulator's driver's view, stream "
            "OpenPlanet-protocol telemetry on a TCP port, and drive the car from the keys the "
            "keyboard controller sends (arrows or WASD, BackSpace/Delete to respawn). "
            "TrackMania-v0 with controller='keyboard' then runs against it as against the game."
        ),
    )
    parser.add_argument("--track", default="default", help="track name, .json path or gen:SEED")
    parser.add_argument("--title", default="Trackmania", help="window title (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="telemetry address (default: loopback)")
    parser.add_argument(
        "--port", type=int, default=9000, help="telemetry TCP port, 0 picks a free one (9000)"
    )
    parser.add_argument(
        "--port-file", default=None, help="write the telemetry port to this file once listening"
    )
    parser.add_argument(
        "--protocol",
        type=int,
        choices=(1, 2),
        default=2,
        help="telemetry layout: 1 = TMRL's 11 floats, 2 = tm-gym v2 (default)",
    )
    parser.add_argument("--size", default="256x128", help="window client size WxH (256x128)")
    parser.add_argument("--fps", type=positive_float, default=60.0, help="frames per second (60)")
    parser.add_argument(
        "--countdown",
        type=float,
        default=1.5,
        help="seconds the car is held after a respawn, like the start lights (1.5)",
    )
    parser.add_argument("--max-seconds", type=positive_float, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from tm_gym.cli._common import CLIError
    from tm_gym.emulator.app import EmulatorConfig, TkEmulator

    load_track_or_explain(args.track)  # a clear error before any window opens
    try:
        w_text, h_text = str(args.size).lower().split("x")
        width, height = int(w_text), int(h_text)
    except ValueError:
        raise CLIError(
            f"--size {args.size!r}: expected WIDTHxHEIGHT, for example 256x128"
        ) from None
    config = EmulatorConfig(
        track=args.track,
        title=args.title,
        host=args.host,
        port=args.port,
        protocol=args.protocol,
        width=width,
        height=height,
        fps=args.fps,
        countdown=args.countdown,
    )
    try:
        import tkinter  # noqa: F401
    except ImportError:
        raise CLIError(
            "tkinter is not available: install your Python's Tk support (Debian/Ubuntu: "
            "apt install python3-tk)"
        ) from None
    err.print(
        f"emulating [bold]{args.track}[/] in window [bold]{args.title!r}[/], telemetry on "
        f"{args.host}:{args.port or '(free port)'}; close the window or press Ctrl-C to stop"
    )
    try:
        TkEmulator(config, port_file=args.port_file).run(max_seconds=args.max_seconds)
    except Exception as exc:  # Tk raises TclError without a display
        if type(exc).__name__ == "TclError":
            raise CLIError(
                f"cannot open a window ({exc}); on a machine without a screen run it under "
                "Xvfb: xvfb-run tm-gym emulate"
            ) from None
        raise
    return EXIT_OK
