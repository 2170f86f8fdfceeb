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
from collections.abc import Sequence
from importlib import metadata

from tm_gym.cli._common import EXIT_ERROR, Handler, parse_args, run_cli

__all__ = ["build_parser", "main"]


def _version() -> str:
    try:
        return metadata.version("tm-gym")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand sets ``handler`` to its ``run`` function."""
    from tm_gym.cli import (
        drive,
        emulate,
        game_commands,
        import_tmrl,
        play,
        record,
        record_reward,
        tracks,
    )

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
    for module in (drive, tracks, play, emulate, record_reward, record, import_tmrl):
        module.add_parser(subparsers, parents=[common])
    game_commands.add_parsers(subparsers, parents=[common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tm-gym`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    handler: Handler = args.handler
    return run_cli(
        handler,
        args,
        prog="tm-gym",
        debug=bool(getattr(args, "debug", False)),
        # a missing file or a bad value reaching the CLI is the user's to fix, as before
        exit_codes={FileNotFoundError: EXIT_ERROR, ValueError: EXIT_ERROR},
    )
