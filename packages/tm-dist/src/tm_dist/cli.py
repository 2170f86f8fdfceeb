"""``tm-dist``: relay server, rollout workers and trainer across machines (or all on one).

Commands::

    tm-dist make-cert                      # once, on the server: TLS certificate + key
    tm-dist server                         # the relay (TLS unless every peer is on loopback)
    tm-dist trainer --host SERVER          # the GPU machine
    tm-dist worker --host SERVER           # each game PC (or simulator box)
    tm-dist local --workers 2              # everything on this machine
    tm-dist config --example               # a commented settings file

Settings: defaults < ``--config FILE`` (TOML) < ``TM_DIST_*`` variables < flags. The password
comes from ``TM_DIST_PASSWORD``, a password file (``--password-file``) or a prompt: never from a
flag. Exit codes: 0 done, 1 runtime failure (connection, authentication), 2 usage or settings
error, 130 interrupted (Ctrl-C or SIGTERM); :func:`tm_gym.cli._common.run_cli` reports errors as
one red line (``--debug``: with the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tm_gym.cli._common import EXIT_DNF, EXIT_OK, parse_args, run_cli

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["PROG", "build_parser", "main"]

PROG = "tm-dist"


def _connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--host", help="relay address (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="relay port (default 7714; server: 0 = any free port)")
    g.add_argument("--tls", dest="tls", action="store_const", const=True, help="force TLS")
    g.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="allow plain TCP to a non-loopback address (trusted networks only)",
    )
    g.add_argument("--keys-dir", type=Path, help="where the certificate (and key) are")
    g.add_argument("--password-file", type=Path, help="file holding the password (chmod 600)")
    g.add_argument(
        "--trainer-password-file",
        type=Path,
        help="server and trainer: file holding the trainer's password "
        "(default: KEYS_DIR/trainer_password, written by make-cert)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file")
    common.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    common.add_argument(
        "--debug", action="store_true", help="debug logs, and full tracebacks instead of one line"
    )
    p = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Distributed training for TrackMaster over TLS (see `tm-dist config --example`).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("server", parents=[common], help="run the relay server")
    _connection_flags(s)
    s.add_argument(
        "--bind",
        default="0.0.0.0",
        help="address to listen on (%(default)s: every IPv4 interface). Use :: for IPv6, which "
        "on Linux (by default) and macOS also accepts IPv4; Windows listens on IPv6 only then. "
        "127.0.0.1 or ::1 keeps the relay on this machine",
    )
    s.add_argument(
        "--port-file",
        type=Path,
        help="write the port listened on to this file once listening (useful with --port 0)",
    )

    w = sub.add_parser("worker", parents=[common], help="drive episodes and send them")
    _connection_flags(w)
    w.add_argument("--name", help="worker name (default: hostname-pid)")
    w.add_argument("--episodes", type=int, help="stop after this many training episodes")
    w.add_argument("--max-steps-per-s", type=float, help="pace a simulator worker")
    w.add_argument(
        "--debug-codec",
        action="store_const",
        const=True,
        help="send observation digests so the trainer checks its rebuild",
    )

    t = sub.add_parser("trainer", parents=[common], help="learn and broadcast weights")
    _connection_flags(t)
    _trainer_flags(t)

    loc = sub.add_parser("local", parents=[common], help="relay, trainer and workers here")
    _trainer_flags(loc)
    loc.add_argument("--workers", type=int, default=2, help="worker processes (%(default)s)")
    loc.add_argument(
        "--worker-rate",
        type=float,
        default=250.0,
        help="steps/s per simulator worker, so the trainer keeps up (%(default)s)",
    )

    c = sub.add_parser("make-cert", parents=[common], help="create a TLS certificate and key")
    c.add_argument("--keys-dir", type=Path, help="output directory (default: per-user config)")
    c.add_argument("--hostname", default="default", help="name in the certificate (%(default)s)")
    c.add_argument("--overwrite", action="store_true")
    c.add_argument(
        "--trainer-keys-only",
        action="store_true",
        help="add only the trainer's signing keys and password to an existing keys folder "
        "(one made by an older tm-dist), keeping its certificate",
    )

    cfg = sub.add_parser("config", parents=[common], help="print settings")
    g = cfg.add_mutually_exclusive_group(required=True)
    g.add_argument("--example", action="store_true", help="a commented example file")
    g.add_argument("--show", action="store_true", help="the merged settings (password hidden)")
    return p


def _trainer_flags(t: argparse.ArgumentParser) -> None:
    t.add_argument("--preset", help="tm-algos preset (default lidar-sac)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a preset value (repeatable)",
    )
    t.add_argument("--run-dir", type=Path, help="checkpoints, policy and logs (runs/dist)")
    t.add_argument("--device", help="torch device (auto)")
    t.add_argument("--minutes", type=float, help="stop after this wall-clock time")
    t.add_argument(
        "--until-finish",
        action="store_true",
        help="stop at the first test episode that finishes the track",
    )
    t.add_argument("--fresh", action="store_true", help="do not resume from the run directory")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pick = {
        "connection.host": "host",
        "connection.port": "port",
        "connection.tls": "tls",
        "connection.insecure": "insecure",
        "connection.keys_dir": "keys_dir",
        "connection.password_file": "password_file",
        "connection.trainer_password_file": "trainer_password_file",
        "worker.name": "name",
        "worker.max_steps_per_s": "max_steps_per_s",
        "worker.debug_codec": "debug_codec",
        "trainer.preset": "preset",
        "trainer.run_dir": "run_dir",
        "trainer.device": "device",
    }
    out = {k: getattr(args, a, None) for k, a in pick.items()}
    if getattr(args, "overrides", None):
        out["trainer.overrides"] = list(args.overrides)
    return out


def _settings(args: argparse.Namespace, *, need_password: bool = True) -> Any:
    from tm_dist.security import tty_prompt
    from tm_dist.settings import load_settings

    return load_settings(
        args.config,
        env=os.environ,
        overrides=_overrides(args),
        prompt=tty_prompt() if need_password else None,
    )


def _sigterm_as_interrupt() -> None:
    """SIGTERM (``kill``, a supervisor stopping us) unwinds like Ctrl-C: links close, the
    trainer writes its last checkpoint, ``tm-dist local`` stops its children."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _forget_handled_interrupt() -> None:
    """Keep the exit code run_cli chose after a Ctrl-C or SIGTERM it handled.

    CPython (3.11) notes a KeyboardInterrupt that passes through a nested ``PyRun_String``
    (extension modules run code that way) as *unhandled* even when it is caught later, and a
    ``python -m tm_dist.cli`` process then kills itself with SIGINT at exit (status -2 instead
    of 130; ``tm-dist local`` starts its roles that way). The interrupt was handled: clear
    that private flag when this interpreter has it.
    """
    import ctypes

    try:
        flag = ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt")
    except (AttributeError, ValueError, OSError):  # another interpreter, or another version
        return
    flag.value = 0


def _exit_codes() -> dict[type[BaseException], int]:
    """Runtime failures (the relay, the network, a wrong password) exit with 1; every other
    error tm-dist raises on purpose (settings, password, certificate, TLS policy) with 2."""
    from tm_dist.transport.errors import TransportError

    return {TransportError: EXIT_DNF, ConnectionError: EXIT_DNF}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from tm_dist.security import PasswordError, reject_password_arguments

    try:
        reject_password_arguments(argv)  # before argparse, which would echo the value
    except PasswordError as exc:
        return run_cli(_raise, argparse.Namespace(error=exc), prog=PROG)
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):  # --help, or a usage error argparse explained
        return args
    _sigterm_as_interrupt()
    code = run_cli(
        _dispatch,
        args,
        prog=PROG,
        debug=args.debug,
        verbose=args.verbose,
        exit_codes=_exit_codes(),
    )
    _forget_handled_interrupt()
    return code


def _raise(args: argparse.Namespace, out: Console, err: Console) -> int:
    raise args.error


def _dispatch(args: argparse.Namespace, out: Console, err: Console) -> int:
    import tm_dist.cli_roles as cli_roles

    # tlspyo warns once per message while a link is down ("storing message"): the link's own
    # reconnect log says it once
    logging.getLogger("tlspyo").setLevel(logging.ERROR)
    cmd = args.command
    if cmd == "config":
        return _config_command(args)
    if cmd == "make-cert":
        return cli_roles.make_cert_command(args, out, err)
    if cmd == "local":
        return cli_roles.local_command(args, out, err)
    settings = _settings(args)
    if cmd == "server":
        return cli_roles.server_command(settings, args, err)
    if cmd == "worker":
        return cli_roles.worker_command(settings, args, err)
    return cli_roles.trainer_command(settings, args, out, err)


def _config_command(args: argparse.Namespace) -> int:
    """``tm-dist config``: the example file, or the merged settings as JSON (plain stdout, so
    that it can be redirected into a file)."""
    if args.example:
        from tm_dist.settings import example_config

        sys.stdout.write(example_config())
        return EXIT_OK
    import json

    shown = _settings(args, need_password=False).as_dict()
    sys.stdout.write(json.dumps(shown, indent=2, default=str) + "\n")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
