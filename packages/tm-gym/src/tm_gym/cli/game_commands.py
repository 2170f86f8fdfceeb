"""``tm-gym install-plugin`` and ``tm-gym check``: get the live game ready.

* ``install-plugin`` copies the OpenPlanet telemetry plugin into the game's
  ``OpenplanetNext/Plugins/tm-gym/`` folder (found automatically, or ``--openplanet-dir`` /
  ``--plugins-dir``) and says how to load it. ``--op`` installs it packed as ``tm-gym.op``
  instead; ``--op --out FILE.op`` only writes the archive. ``--dry-run`` writes nothing.
* ``check`` runs :func:`tm_gym.game.check.run_checks` — telemetry, window, controller, time
  budget — and prints what passed and what to fix.

Exit codes: 0 success (every check passed), 1 a check failed, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tm_gym.cli._common import EXIT_DNF, EXIT_OK, positive_float

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXIT_CHECK_FAILED", "add_parsers", "run_check", "run_install_plugin"]

EXIT_CHECK_FAILED = EXIT_DNF
"""``check`` exits with 1 when a check failed."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1…65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1…65535, got {text!r}")
    return value


def add_parsers(subparsers: Any, *, parents: list[argparse.ArgumentParser] | None = None) -> None:
    """Register ``install-plugin`` and ``check`` on ``subparsers``."""
    parents = [] if parents is None else parents
    install = subparsers.add_parser(
        "install-plugin",
        parents=parents,
        help="install the OpenPlanet telemetry plugin into the game's Plugins folder",
        description=(
            "Copy the tm-gym OpenPlanet plugin (info.toml, main.as) into "
            "OpenplanetNext/Plugins/tm-gym/. The Plugins folder is found in the usual places "
            "(Windows user profile; Steam/Proton, Lutris and Wine prefixes on Linux) unless "
            "--openplanet-dir / --plugins-dir gives it. The plugin is unsigned: OpenPlanet loads "
            "it in Developer signature mode (which also turns on School mode). Then load it in "
            "the game: F3 → Developer → (Re)load plugin → tm-gym telemetry."
        ),
    )
    install.add_argument(
        "--openplanet-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the OpenplanetNext folder (the plugin goes to its Plugins folder); default: found",
    )
    install.add_argument(
        "--op",
        action="store_true",
        help="install the plugin packed as Plugins/tm-gym.op instead of the tm-gym/ folder",
    )
    install.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.op",
        help="with --op: only write the .op archive to FILE.op (no OpenPlanet folder needed)",
    )
    install.add_argument(
        "--plugins-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the OpenPlanet Plugins folder (…/OpenplanetNext/Plugins); default: found",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="show what would be copied; write nothing"
    )
    install.set_defaults(handler=run_install_plugin)

    check = subparsers.add_parser(
        "check",
        parents=parents,
        help="check telemetry, game window, controller and time budget before training",
        description=(
            "Check that the live game can be used: the OpenPlanet plugin is installed and "
            "streams telemetry, "
            "the game window is found, the controller works and a screenshot plus "
            "preprocessing fits in the time step. Each failed check says what to fix. "
            "Exit code 0 if every check passed, 1 otherwise."
        ),
    )
    check.add_argument(
        "--host", default="127.0.0.1", help="telemetry address (default: %(default)s)"
    )
    check.add_argument(
        "--port", type=_port, default=9000, help="telemetry TCP port (default: %(default)s)"
    )
    check.add_argument(
        "--window-title",
        default="Trackmania",
        help="exact title of the game window (default: %(default)s)",
    )
    check.add_argument(
        "--controller",
        choices=("keyboard", "gamepad"),
        default="keyboard",
        help="controller to check (default: %(default)s)",
    )
    check.add_argument(
        "--step-duration",
        type=positive_float,
        default=0.05,
        metavar="SECONDS",
        help="time step the budget is checked against (default: %(default)s)",
    )
    check.add_argument(
        "--timeout",
        type=positive_float,
        default=3.0,
        metavar="SECONDS",
        help="how long to wait for telemetry (default: %(default)s)",
    )
    check.add_argument(
        "--openplanet-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the OpenplanetNext folder to look for the plugin in (default: searched)",
    )
    check.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout and nothing else"
    )
    check.set_defaults(handler=run_check)


def run_install_plugin(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from tm_gym.cli._common import CLIError
    from tm_gym.game.install import build_op, install_plugin

    if args.out is not None:
        if not args.op:
            raise CLIError("--out writes the packed plugin: add --op (--op --out tm-gym.op)")
        if args.out.suffix != ".op":
            raise CLIError(f"--out {str(args.out)!r}: OpenPlanet loads packed plugins named *.op")
        if not args.dry_run:
            build_op(args.out)
        verb = "Would write" if args.dry_run else "Wrote"
        out.print(f"{verb} {escape(str(args.out))}; copy it into OpenplanetNext/Plugins/.")
        return EXIT_OK
    plan = install_plugin(
        args.plugins_dir,
        openplanet_dir=args.openplanet_dir,
        op=args.op,
        dry_run=args.dry_run,
    )
    title = "Would copy (dry run: nothing written)" if plan.dry_run else "Installed the plugin"
    table = Table(title=title, title_justify="left")
    table.add_column("file", style="bold cyan", no_wrap=True)
    table.add_column("to")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for copy in plan.copies:
        table.add_row(
            escape(copy.name),
            escape(str(copy.destination)),
            f"{copy.size} B",
            "[yellow]replaces[/]" if copy.replaces else "[green]new[/]",
        )
    out.print(table)
    if plan.dry_run:
        out.print("Run again without --dry-run to copy.", style="dim")
    else:
        out.print(escape(plan.next_steps))
    for note in plan.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    return EXIT_OK


def run_check(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from tm_gym.game import check as checks

    # The check reports an unreachable plugin itself; the client's own retry warnings would
    # only repeat it (--debug shows them).
    client_logger = logging.getLogger("tm_gym.game.telemetry_client")
    level = client_logger.level
    if not getattr(args, "debug", False):
        client_logger.setLevel(logging.ERROR)
    try:
        with err.status("checking the game setup…", spinner="dots"):
            results = checks.run_checks(
                telemetry_host=args.host,
                telemetry_port=args.port,
                window_title=args.window_title,
                controller=args.controller,
                step_duration=args.step_duration,
                timeout=args.timeout,
                openplanet_dir=args.openplanet_dir,
            )
    finally:
        client_logger.setLevel(level)
    ok = all(r.ok for r in results)
    if args.json:
        out.file.write(json.dumps({"ok": ok, "checks": [asdict(r) for r in results]}) + "\n")
        out.file.flush()
        return EXIT_OK if ok else EXIT_CHECK_FAILED

    table = Table(title="tm-gym check", title_justify="left")
    table.add_column("check", style="bold", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("found")
    table.add_column("fix")
    for r in results:
        table.add_row(
            escape(r.name),
            "[green]ok[/]" if r.ok else "[bold red]FAILED[/]",
            escape(r.detail),
            escape(r.fix),
        )
    out.print(table)
    if ok:
        out.print("[green]Ready:[/] the live game can be used.")
        return EXIT_OK
    failed = sum(not r.ok for r in results)
    out.print(f"[red]{failed} of {len(results)} checks failed[/]: see the fix column.")
    return EXIT_CHECK_FAILED
