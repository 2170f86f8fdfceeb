"""``tm-gym emulate``: run the simulator as a stand-in for the game (window, telemetry, keys)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tm_gym.cli._common import EXIT_OK, load_track_or_explain, positive_float

if TYPE_CHECKING:
    from rich.console import Console

    from tm_gym.sim.physics import CarParams

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
    parser.add_argument(
        "--no-finish-popup",
        action="store_true",
        help="after a finish, respawn at once instead of showing the game's pop-up, which only "
        "a click on its Improve button closes (shown by default, like the game)",
    )
    parser.add_argument(
        "--visuals",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "the look: sky, sky_horizon, grass, road, border_dark, border_light (R,G,B 0-255), "
            "brightness (factor), camera_height_m, camera_pitch_deg, fov_deg; e.g. --visuals "
            "sky=40,60,200 brightness=0.8. A client using the pixel LIDAR must pass the same "
            "camera to make_env(camera=...)"
        ),
    )
    parser.add_argument(
        "--car",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "car physics (fields of tm_gym.sim.physics.CarParams), e.g. --car grip=20 "
            "power=600 upshift_kmh=60,110,170,240"
        ),
    )
    parser.add_argument("--max-seconds", type=positive_float, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def parse_car(items: Sequence[str]) -> CarParams:
    """:class:`~tm_gym.sim.physics.CarParams` from ``KEY=VALUE`` texts (``grip=20``; a tuple
    field as comma-separated numbers, ``upshift_kmh=60,110,170,240``).

    Raises:
        CLIError: an item that is not KEY=VALUE, an unknown key (the message lists the known
            ones), a value that is not a number, or values CarParams refuses.
    """
    from tm_gym.cli._common import CLIError
    from tm_gym.sim.physics import CarParams

    standard = CarParams()
    known = [f.name for f in dataclasses.fields(CarParams)]
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--car: {item!r} is not KEY=VALUE, e.g. grip=20")
        if key not in known:
            raise CLIError(f"--car: unknown key {key!r}; known keys: {', '.join(known)}")
        default = getattr(standard, key)
        parts = [p.strip() for p in text.strip().strip("[]").split(",")]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        size = len(default) if isinstance(default, tuple) else 1
        if len(numbers) != size:
            shape = f"{size} comma-separated numbers" if size > 1 else "a number"
            raise CLIError(f"--car {key}: got {text!r}, expected {shape} (standard: {default})")
        values[key] = tuple(numbers) if isinstance(default, tuple) else numbers[0]
    try:
        return CarParams(**values)
    except ValueError as exc:
        raise CLIError(f"--car: {exc}") from None


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from tm_gym.cli._common import CLIError
    from tm_gym.core.visuals import Visuals
    from tm_gym.emulator.app import EmulatorConfig, TkEmulator

    load_track_or_explain(args.track)  # a clear error before any window opens
    visuals = Visuals.from_assignments(args.visuals, "--visuals")
    car_params = parse_car(args.car)
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
        visuals=visuals,
        car_params=car_params,
        finish_popup=not args.no_finish_popup,
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
