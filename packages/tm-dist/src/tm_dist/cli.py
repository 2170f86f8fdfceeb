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
error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["main"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--host", help="relay address (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="relay port (default 7714)")
    g.add_argument("--tls", dest="tls", action="store_const", const=True, help="force TLS")
    g.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="allow plain TCP to a non-loopback address (trusted networks only)",
    )
    g.add_argument("--keys-dir", type=Path, help="where the certificate (and key) are")
    g.add_argument("--password-file", type=Path, help="file holding the password (chmod 600)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file")
    common.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    p = argparse.ArgumentParser(
        prog="tm-dist",
        parents=[common],
        description="Distributed training for TrackMaster over TLS (see `tm-dist config --example`).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("server", parents=[common], help="run the relay server")
    _connection_flags(s)
    s.add_argument("--bind", default="0.0.0.0", help="interface to listen on (%(default)s)")

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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True)
    from tm_dist.security import InsecureConnectionError, PasswordError, reject_password_arguments

    try:
        reject_password_arguments(argv)
    except PasswordError as e:
        err.print(f"[red]tm-dist:[/red] {e}")
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    _sigterm_as_interrupt()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # tlspyo warns once per message while a link is down ("storing message"): the link's own
    # reconnect log says it once
    logging.getLogger("tlspyo").setLevel(logging.ERROR)
    from tm_dist.certs import CertificateError
    from tm_dist.settings import SettingsError
    from tm_dist.transport import AuthenticationError, TransportError

    try:
        return _dispatch(args, err)
    except (SettingsError, PasswordError, InsecureConnectionError, CertificateError) as e:
        err.print(f"[red]tm-dist:[/red] {e}")
        return EXIT_USAGE
    except AuthenticationError as e:
        err.print(f"[red]tm-dist: wrong password.[/red] {e}")
        return EXIT_FAIL
    except (TransportError, ConnectionError) as e:
        err.print(f"[red]tm-dist:[/red] {e}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace, err: Console) -> int:
    from tm_dist import cli_roles

    cmd = args.command
    if cmd == "config":
        from tm_dist.settings import example_config

        if args.example:
            print(example_config(), end="")
            return EXIT_OK
        import json

        print(json.dumps(_settings(args, need_password=False).as_dict(), indent=2, default=str))
        return EXIT_OK
    if cmd == "make-cert":
        return cli_roles.make_cert_command(args, err)
    if cmd == "local":
        return cli_roles.local_command(args, err)
    settings = _settings(args)
    if cmd == "server":
        return cli_roles.server_command(settings, args, err)
    if cmd == "worker":
        return cli_roles.worker_command(settings, args, err)
    return cli_roles.trainer_command(settings, args, err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
