"""The commands behind :mod:`tm_dist.cli`: each role with its console output."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from tm_gym.cli._common import EXIT_OK, CLIError


def make_cert_command(args: argparse.Namespace, out: Console, err: Console) -> int:
    from tm_dist.certs import make_cert, make_trainer_keys
    from tm_dist.settings import default_keys_dir

    keys_dir = args.keys_dir or default_keys_dir(os.environ)
    if args.trainer_keys_only:
        written = make_trainer_keys(keys_dir, overwrite=args.overwrite)
        for written_path in written:
            out.print(str(written_path), highlight=False)
        err.print(
            f"Copy {written[1].name} to every worker; keep {written[0].name} on the trainer "
            f"machine; {written[2].name} goes to the relay and the trainer.",
            highlight=False,
        )
        return EXIT_OK
    files = make_cert(keys_dir, hostname=args.hostname, overwrite=args.overwrite)
    table = Table(title="TLS certificate and trainer keys", show_header=False)
    table.add_row("certificate", str(files.certificate))
    table.add_row("private key", str(files.private_key))
    # the trainer's files (older make_cert versions return none of them)
    extra = {
        "trainer signing key": getattr(files, "signing_key", None),
        "trainer verify key": getattr(files, "verify_key", None),
        "trainer password": getattr(files, "trainer_password", None),
    }
    for label, path in extra.items():
        if path is not None:
            table.add_row(label, str(path))
    table.add_row("SHA-256", files.fingerprint)
    table.add_row("valid until", str(files.not_valid_after))
    out.print(table)
    err.print(_where_files_go(files), highlight=False)
    return EXIT_OK


def _where_files_go(files: Any) -> str:
    """Which machine gets which file (only the files ``make_cert`` wrote)."""
    cert = files.certificate.name
    key = files.private_key.name
    names = {
        attr: path.name
        for attr in ("signing_key", "verify_key", "trainer_password")
        if (path := getattr(files, attr, None)) is not None
    }
    workers = [cert] + [names[a] for a in ("verify_key",) if a in names]
    relay = [key, cert] + [names[a] for a in ("trainer_password",) if a in names]
    trainer = [cert] + [names[a] for a in ("signing_key", "trainer_password") if a in names]
    return (
        "Copy each machine its files, into its keys directory (or pass --keys-dir):\n"
        f"  workers: {', '.join(workers)}\n"
        f"  relay (tm-dist server): {', '.join(relay)}\n"
        f"  trainer: {', '.join(trainer)}\n"
        f"Never copy {key} or the trainer's secrets to workers; compare the SHA-256 on "
        "each machine."
    )


def server_command(settings: Any, args: argparse.Namespace, err: Console) -> int:
    import dataclasses

    from tm_dist.certs import check_cert
    from tm_dist.roles import run_server
    from tm_dist.security import is_loopback

    follow_parent(os.environ)
    conn = settings.connection
    if conn.tls is None and not is_loopback(args.bind):
        # the relay is reachable from other machines: TLS unless told otherwise
        conn = dataclasses.replace(conn, tls=True)
        settings = dataclasses.replace(settings, connection=conn)
    if conn.use_tls:
        check_cert(conn.keys_dir, require_key=True)
    mode = "TLS" if conn.use_tls else "plain TCP"

    def listening(port: int) -> None:
        err.print(f"relay on {args.bind}:{port} ({mode}); Ctrl-C stops it", highlight=False)
        if args.port_file is not None:
            tmp = Path(f"{args.port_file}.tmp")
            tmp.write_text(f"{port}\n")
            tmp.replace(args.port_file)  # readers never see a half-written file

    def show(stats: Any) -> None:
        err.print(f"[dim]{stats}[/dim]")

    run_server(
        settings,
        listen_host=args.bind,
        on_stats=show if args.verbose else None,
        on_listening=listening,
    )
    return EXIT_OK


def _check_endpoint(settings: Any) -> None:
    """Refuse plain TCP off loopback and a missing certificate before connecting.

    Raises InsecureConnectionError, PasswordError or CertificateError (exit code 2 in the CLI).
    """
    from tm_dist.certs import check_cert
    from tm_dist.settings import SettingsError

    conn = settings.connection
    if conn.port == 0:
        raise SettingsError(
            "connection.port = 0 means 'any free port' and only the server can use it: give "
            "workers and trainers the port the server printed (or wrote with --port-file)"
        )
    conn.check_security()
    if conn.use_tls:
        check_cert(conn.keys_dir)


def worker_command(settings: Any, args: argparse.Namespace, err: Console) -> int:
    from tm_dist.roles import WorkerReport, run_worker

    follow_parent(os.environ)
    _check_endpoint(settings)
    name = settings.worker.name
    err.print(f"worker {name} → {settings.connection.host}:{settings.connection.port}")

    def show(r: WorkerReport) -> None:
        if args.verbose:
            test = f", last test {r.last_test}" if r.last_test is not None else ""
            err.print(
                f"[dim]{name}: {r.episodes} episodes, {r.steps:,} steps, "
                f"weights v{r.weights_version}{test}[/dim]"
            )

    report = run_worker(settings, max_episodes=args.episodes, on_episode=show)
    err.print(
        f"worker {name}: {report.episodes} episodes, {report.steps:,} steps, "
        f"{report.bytes_sent / max(report.steps, 1):.0f} B/step sent"
    )
    return EXIT_OK


def _progress_table(stats: Any, t0: float) -> Table:
    table = Table(title="tm-dist trainer", show_header=False, min_width=60)
    elapsed = time.perf_counter() - t0
    table.add_row("wall time", f"{elapsed / 60:.1f} min")
    table.add_row(
        "env steps", f"{stats.env_steps:,} ({stats.env_steps / max(elapsed, 1e-9):,.0f}/s)"
    )
    table.add_row("train steps", f"{stats.train_steps:,}")
    table.add_row("episodes", f"{stats.episodes:,} (+{stats.test_episodes} test)")
    if stats.last_progress is not None:
        table.add_row("last episode progress", f"{stats.last_progress:.0%}")
    if stats.last_test is not None:
        t = stats.last_test
        lap = t.get("lap_time")
        table.add_row(
            "last test", f"lap {lap:.3f} s" if lap is not None else f"{t.get('progress', 0):.0%}"
        )
    if stats.best_test_lap is not None:
        table.add_row("best test lap", f"{stats.best_test_lap:.3f} s")
    if stats.episodes_by_worker:
        per = ", ".join(f"{k} {v}" for k, v in sorted(stats.episodes_by_worker.items()))
        table.add_row("by worker", per)
    if stats.dropped_episodes or stats.stale_episodes:
        table.add_row("dropped / stale", f"{stats.dropped_episodes} / {stats.stale_episodes}")
    if stats.invalid_by_worker:
        per = ", ".join(f"{k} {v}" for k, v in sorted(stats.invalid_by_worker.items()))
        banned = (
            f"; disconnected: {', '.join(stats.banned_workers)}" if stats.banned_workers else ""
        )
        table.add_row("invalid chunks", f"{per}{banned}")
    if stats.skipped_updates:
        table.add_row("updates undone (non-finite)", f"{stats.skipped_updates}")
    return table


def _run_trainer_live(settings: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    from tm_dist.roles import run_trainer

    t0 = time.perf_counter()
    last_line = [0.0]

    def as_line(stats: Any) -> None:  # not a terminal (a log file, tm-dist local's pipe)
        now = time.perf_counter()
        if now - last_line[0] >= 10.0:
            last_line[0] = now
            lap = stats.best_test_lap
            err.print(
                f"{(now - t0) / 60:.1f} min: {stats.env_steps:,} env steps, "
                f"{stats.train_steps:,} train steps, {stats.episodes:,} episodes "
                f"{dict(stats.episodes_by_worker)}, best test lap "
                f"{'—' if lap is None else f'{lap:.3f} s'}"
                + (
                    f", invalid chunks {dict(stats.invalid_by_worker)}"
                    if stats.invalid_by_worker
                    else ""
                )
                + (f", updates undone {stats.skipped_updates}" if stats.skipped_updates else ""),
                highlight=False,
            )

    kwargs: dict[str, Any] = {
        "minutes": args.minutes,
        "until_finish": args.until_finish,
        "resume": not args.fresh,
    }
    if not err.is_terminal:
        report = run_trainer(settings, on_progress=as_line, **kwargs)
    else:
        with Live(console=err, refresh_per_second=2, transient=False) as live:
            report = run_trainer(
                settings, on_progress=lambda s: live.update(_progress_table(s, t0)), **kwargs
            )
    table = Table(title="tm-dist trainer: done", show_header=False)
    for key, value in vars(report).items():
        table.add_row(key.replace("_", " "), str(value))
    out.print(table)
    if args.until_finish and report.best_test_lap is None:
        err.print("[yellow]stopped before a test episode finished the track[/yellow]")
    return EXIT_OK


def trainer_command(settings: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    follow_parent(os.environ)
    _check_endpoint(settings)
    ts = settings.trainer
    err.print(
        f"trainer: preset {ts.preset}, run dir {ts.run_dir} → "
        f"{settings.connection.host}:{settings.connection.port}"
    )
    return _run_trainer_live(settings, args, out, err)


# -- local -----------------------------------------------------------------------------------


PARENT_PID_ENV = "TRACKMASTER_PARENT_PID"
"""Set by ``tm-dist local`` for the roles it starts: a role whose parent is gone stops. (Not a
``TM_DIST_*`` name: those are settings.)"""

ORPHAN_GRACE_S = 30.0
"""How long an orphaned role may take to stop cleanly before it exits at once."""


def follow_parent(env: Any) -> None:
    """Stop this role when the process named by ``env[PARENT_PID_ENV]`` dies (no-op if unset).

    ``tm-dist local`` starts its roles that way: when it dies, even by SIGKILL, they stop
    as if interrupted (SIGTERM: links flush, the relay closes its port), and exit at once if
    that takes more than :data:`ORPHAN_GRACE_S`. On Linux the kernel sends the SIGTERM
    (``PR_SET_PDEATHSIG``); everywhere a thread also checks the parent every 0.5 s.
    """
    from tm_dist.transport.child import PARENT_CHECK_INTERVAL_S, die_with_parent, pid_alive

    value = env.get(PARENT_PID_ENV)
    if not value:
        return
    try:
        parent = int(value)
    except ValueError:
        raise CLIError(f"{PARENT_PID_ENV}={value!r}: expected a process id") from None
    direct = os.getppid() == parent
    if direct:
        die_with_parent()  # the kernel's SIGTERM, then the check below for other systems

    def alive() -> bool:
        return os.getppid() == parent if direct else pid_alive(parent)

    def watch() -> None:
        while alive():
            time.sleep(PARENT_CHECK_INTERVAL_S)
        _interrupt_main()
        time.sleep(ORPHAN_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="tm-dist-parent-watch", daemon=True).start()


def _interrupt_main() -> None:
    """SIGTERM to the main thread (it unwinds like Ctrl-C, see ``tm_dist.cli``)."""
    import signal

    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
    else:
        import _thread

        _thread.interrupt_main(signal.SIGTERM)


class _Child:
    """A role in its own process, restarted if it dies while the run goes on.

    It stops when ``tm-dist local`` dies (:func:`follow_parent`, given this process's id in
    :data:`PARENT_PID_ENV`). On Linux the kernel's signal follows the *thread* that started
    the child: a role restarted by the watcher thread also gets SIGTERM when that thread ends,
    which happens only once the run is over and the roles are being stopped anyway.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tm_dist.cli", *self.argv],
            env={**self.env, PARENT_PID_ENV: str(os.getpid())},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.restarts += 1
            self.stop()
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def local_command(args: argparse.Namespace, out: Console, err: Console) -> int:
    from tm_dist import security
    from tm_dist.security import PASSWORD_ENV, Secret
    from tm_dist.settings import load_settings
    from tm_dist.transport import free_local_port

    if args.workers < 1:
        raise CLIError(f"--workers {args.workers}: expected at least 1 worker process")
    password = Secret.generate()
    port = free_local_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_DIST_")}
    env.pop(PARENT_PID_ENV, None)
    env[PASSWORD_ENV] = password.reveal()
    env["TM_DIST_CONNECTION_PORT"] = str(port)
    env["TM_DIST_CONNECTION_HOST"] = "127.0.0.1"
    # the relay and the trainer (this process) share a trainer password; workers never get it
    trainer_env = dict(env)
    trainer_variable = getattr(security, "TRAINER_PASSWORD_ENV", None)
    if trainer_variable is not None:
        trainer_env[trainer_variable] = Secret.generate().reveal()
    settings = load_settings(
        args.config,
        env=trainer_env,
        overrides={
            "trainer.preset": args.preset,
            "trainer.overrides": list(args.overrides) if args.overrides else None,
            "trainer.run_dir": args.run_dir,
            "trainer.device": args.device,
        },
    )
    logs = Path(settings.trainer.run_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server_argv = ["server", "--bind", "127.0.0.1"]
    children = [_Child("server", server_argv, trainer_env, logs / "server.log")]
    for i in range(args.workers):
        argv = ["worker", "--name", f"local-{i}", "--max-steps-per-s", str(args.worker_rate)]
        children.append(_Child(f"worker-{i}", argv, env, logs / f"worker-{i}.log"))
    err.print(
        f"local run: relay on 127.0.0.1:{port}, {args.workers} workers, "
        f"preset {settings.trainer.preset}, logs in {logs}"
    )
    stop_watch = threading.Event()

    def watch() -> None:
        while not stop_watch.wait(1.0):
            for c in children:
                c.check()

    watcher = threading.Thread(target=watch, name="tm-dist-local-watch", daemon=True)
    try:
        for c in children:
            c.start()
        watcher.start()
        code = _run_trainer_live(settings, args, out, err)
    finally:
        stop_watch.set()
        if watcher.is_alive():
            watcher.join(timeout=5)
        for c in reversed(children):
            c.stop()
    restarted = {c.name: c.restarts for c in children if c.restarts}
    if restarted:
        err.print(f"restarted during the run: {restarted}")
    return code
