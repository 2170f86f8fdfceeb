"""Entry point of the ``tm-gym`` command line.

``main`` parses the arguments, runs one subcommand and returns its exit code; the console script
wrapper passes that code to ``sys.exit``. Errors a user can fix (an unknown track, a missing file,
a missing optional dependency) are printed as one red line on stderr with exit code 2; ``--debug``
shows the full traceback instead.

Exit codes: 0 success, 1 the car did not finish (``drive``, ``record-reward``) or a check
failed (``check``), 2 usage or input error,
130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING

from tm_gym.error import TMGymError

if TYPE_CHECKING:
    from rich.console import Console

    from tm_gym.sim.track import Track

__all__ = [
    "EXIT_DNF",
    "EXIT_ERROR",
    "EXIT_OK",
    "CLIError",
    "build_parser",
    "load_track_or_explain",
    "main",
]

EXIT_OK = 0
EXIT_DNF = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace, "Console", "Console"], int]


class CLIError(Exception):
    """A problem with what the user asked for, reported as one line with exit code 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def load_track_or_explain(spec: str) -> Track:
    """Load a track by built-in name, ``.json`` path or ``gen:SEED``; on failure say what exists."""
    from tm_gym.sim.track import builtin_track_names, load_track

    try:
        return load_track(spec)
    except (TMGymError, KeyError, ValueError, FileNotFoundError) as exc:
        names = list(builtin_track_names())
        reason = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        message = reason if spec in reason else f"cannot load track {spec!r}: {reason}"
        if not all(name in message for name in names):
            message += (
                f" (built-in tracks: {', '.join(names)}; or give a path to a .json track file, "
                "or gen:SEED for a generated track)"
            )
        raise CLIError(message) from exc


def _version() -> str:
    try:
        return metadata.version("tm-gym")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand sets ``handler`` to its ``run`` function."""
    from tm_gym.cli import drive, emulate, game_commands, play, record, record_reward, tracks

    # --debug is accepted before or after the subcommand. SUPPRESS keeps the subparser's default
    # from overwriting a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show full tracebacks and debug logs instead of one-line errors",
    )
    parser = argparse.ArgumentParser(
        prog="tm-gym",
        description=(
            "TrackMania 2020 tools: drive the expert, list tracks, play, emulate the game, "
            "record episodes, install the OpenPlanet plugin and check a game setup."
        ),
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (drive, tracks, play, emulate, record_reward, record):
        module.add_parser(subparsers, parents=[common])
    game_commands.add_parsers(subparsers, parents=[common])
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace | int:
    """Parse arguments; argparse's own exits (--help, usage errors) become return codes."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tm-gym`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.markup import escape

    parsed = _parse(argv)
    if isinstance(parsed, int):
        return parsed
    args = parsed
    debug = bool(getattr(args, "debug", False))
    out = Console()
    err = Console(stderr=True)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=debug)],
    )
    handler: Handler = args.handler
    try:
        return handler(args, out, err)
    except KeyboardInterrupt:
        if debug:
            raise
        err.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    except (CLIError, TMGymError, FileNotFoundError, ValueError) as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] [red]{escape(str(exc))}[/]", soft_wrap=True)
        return EXIT_ERROR
