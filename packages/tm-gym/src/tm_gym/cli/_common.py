"""What every TrackMaster command line shares: the runner, exit codes, errors and argparse types.

Every ``main()`` of the three packages (``tm-gym``, ``tm-train``, ``tm-eval``, ``tm-dist``) parses
its arguments and hands the work to :func:`run_cli`, which owns what a command line decides and a
library never does: logging setup, turning errors into one red line and an exit code, Ctrl-C::

    def main(argv: Sequence[str] | None = None) -> int:
        args = parse_args(build_parser(), argv)
        if isinstance(args, int):  # --help, --version or a usage error argparse explained
            return args
        return run_cli(run, args, prog="tm-eval", debug=args.debug)

:func:`run_cli` catches :class:`~tm_gym.error.TrackMasterError` (the root of every error the
three packages raise on purpose, :class:`CLIError` included) and the classes named in
``exit_codes``; anything else is a bug and keeps its traceback.

Importing this module is cheap: rich and the simulator load only when a function needs them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from tm_gym.error import TMGymError, TrackMasterError

if TYPE_CHECKING:
    from rich.console import Console

    from tm_gym.sim.track import Track

__all__ = [
    "EXIT_DNF",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CLIError",
    "Handler",
    "load_track_or_explain",
    "parse_args",
    "positive_float",
    "positive_int",
    "run_cli",
]

EXIT_OK = 0
"""The command did what was asked."""
EXIT_DNF = 1
"""It ran, but the outcome failed: the car did not finish, a check failed, a connection broke."""
EXIT_ERROR = 2
"""Usage or input error: something the user can fix (an argument, a file, a missing package)."""
EXIT_INTERRUPTED = 130
"""Interrupted with Ctrl-C (128 + SIGINT, as shells report it)."""

Handler = Callable[[argparse.Namespace, "Console", "Console"], int]
"""A subcommand: ``handler(args, out, err)`` with rich consoles on stdout and stderr, returning
the exit code."""


class CLIError(TrackMasterError):
    """A problem with what the user asked for, reported as one red line (exit code 2).

    Raised by command-line code only; the message says what was received, what was expected and
    how to fix it.
    """


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace | int:
    """Parse ``argv`` with ``parser``; argparse's own exits become exit codes.

    ``--help`` and ``--version`` return :data:`EXIT_OK`, a usage error (which argparse has already
    explained on stderr) returns its code, 2; ``main`` returns that code instead of exiting, so it
    can be called from tests and other Python code.
    """
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR


def run_cli(
    handler: Handler,
    args: argparse.Namespace,
    *,
    prog: str,
    debug: bool = False,
    verbose: bool = False,
    error_exit: int = EXIT_ERROR,
    exit_codes: Mapping[type[BaseException], int] | None = None,
) -> int:
    """Run one command: ``handler(args, out, err)``, with logging set up and errors reported.

    Args:
        handler: the command itself; ``out`` and ``err`` are rich consoles on stdout and stderr.
        args: the parsed arguments, passed on to ``handler``.
        prog: the program name that starts each error line (``tm-gym: error: ...``).
        debug: show DEBUG logs with their source, and let every error and Ctrl-C raise with its
            full traceback instead of one line (the ``--debug`` flag).
        verbose: show INFO logs (DEBUG when ``debug``); otherwise WARNING and above.
        error_exit: the exit code of a :class:`~tm_gym.error.TrackMasterError`.
        exit_codes: more classes to report as one line, each with its exit code, for example
            ``{ConnectionError: EXIT_DNF, OSError: EXIT_ERROR}``; the first entry (in order) the
            error is an instance of wins, and it is looked up before ``TrackMasterError``, so it
            can also give a TrackMaster error class its own code.

    Returns:
        the handler's exit code; ``error_exit`` (or the code from ``exit_codes``) after an error;
        :data:`EXIT_INTERRUPTED` after Ctrl-C.

    Logs go to stderr through a rich handler, configured with :func:`logging.basicConfig` (so a
    host that already configured logging keeps its own). Nothing is printed on stdout except what
    the handler prints.
    """
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.markup import escape

    out = Console()
    err = Console(stderr=True)
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=debug)]
    )
    codes = dict(exit_codes or {})
    caught: tuple[type[BaseException], ...] = (*codes, TrackMasterError)
    try:
        return handler(args, out, err)
    except KeyboardInterrupt:
        if debug:
            raise
        err.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    except caught as exc:
        if debug:
            raise
        err.print(f"[bold red]{escape(prog)}: error:[/] [red]{escape(str(exc))}[/]", soft_wrap=True)
        return next((code for cls, code in codes.items() if isinstance(exc, cls)), error_exit)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
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
    """Load a track by built-in name, ``.json`` path or ``gen:SEED``; on failure say what exists.

    Raises:
        CLIError: the track cannot be loaded; the message gives the reason and the choices.
    """
    from tm_gym.sim.tracks import builtin_track_names, load_track

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
