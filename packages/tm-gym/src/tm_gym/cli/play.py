"""``tm-gym play``: drive the simulator yourself with the keyboard in a pygame window.

Keys: Up/W gas, Down/S brake, Left/A and Right/D steer, Backspace or Delete respawn, Esc quit.
The window, the key mapping and the loop are :mod:`tm_gym.human`; this module is the command.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from tm_gym.cli._common import EXIT_OK, load_track_or_explain, positive_int
from tm_gym.human import PlaySession, PlayWindow, run_loop

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_parser", "run"]

ENV_ID = "TrackMania-Sim-v0"


def add_parser(subparsers: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "play",
        parents=parents,
        help="drive the simulator yourself with the keyboard",
        description=(
            "Drive the simulator with the keyboard in a window. Up/W gas, Down/S brake, "
            "Left/A and Right/D steer, Backspace or Delete respawn, Esc quit."
        ),
    )
    parser.add_argument(
        "--track",
        default="default",
        metavar="NAME_OR_PATH",
        help="built-in track name, path to a .json track, or gen:SEED (default: %(default)s)",
    )
    parser.add_argument(
        "--scale",
        type=positive_int,
        default=4,
        help="window scale of the 256x128 view (default: %(default)s)",
    )
    parser.add_argument(
        "--fps",
        type=positive_int,
        default=20,
        help="frames per second; one frame is one 50 ms env step, so 20 is real time "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-frames", type=positive_int, default=None, help=argparse.SUPPRESS
    )  # for tests and demos
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    import gymnasium

    import tm_gym  # noqa: F401  (registers TrackMania-Sim-v0)

    track = load_track_or_explain(args.track)
    checkpoints = len(np.asarray(track.checkpoints_xy).reshape(-1, 2))
    env = gymnasium.make(ENV_ID, track=track, obs_type="lidar", render_mode="rgb_array")
    try:
        session = PlaySession(env, checkpoints_total=checkpoints)
        err.print(
            f"driving [bold]{track.name}[/]: Up/W gas, Down/S brake, Left/A Right/D steer, "
            "Backspace respawn, Esc quit"
        )
        with PlayWindow(
            scale=args.scale, fps=args.fps, title=f"tm-gym play: {track.name}"
        ) as window:
            run_loop(session, window, max_frames=args.max_frames)
    finally:
        env.close()
    return EXIT_OK
