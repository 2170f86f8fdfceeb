"""No process outlives its parent (issue 15, item 3), and ``make-cert`` says where files go.

Each test starts a parent in a subprocess — a Python program holding a relay or a link, or a
``tm-dist`` command — notes every descendant (from /proc), kills the parent with SIGKILL and
asserts that every descendant it started for tm-dist is gone within a few seconds, and that a
new relay binds the same port at once.

The parents that hold a relay or a link also fork a helper process of their own (what a vector
env or a data loader does): the helper inherits the parent's end of the child's local socket,
so the child never reads end-of-file when the parent dies; before the fix it stayed, holding
the port. The helper itself is the parent's business, not tm-dist's: it is killed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tm_dist import security
from tm_dist.testing import kill_by_pid, pid_running, process_tree
from tm_dist.transport import Link, RelayServer, free_local_port

PASSWORD = "lifecycle-test-password-4242"
GONE_WITHIN_S = 8.0  # a link child may flush for up to 5 s when its parent dies

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="descendants are read from /proc"
)

PARENT = """
import multiprocessing, sys, time
from tm_dist.transport import Link, RelayServer

kind, port = sys.argv[1], int(sys.argv[2])
if kind == "relay":
    held = RelayServer({password!r}, port=port, use_tls=False).start()
else:
    held = Link({password!r}, port=port, groups="workers", use_tls=False).connect()
    held.send("trainers", b"hello")
helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))
helper.start()  # inherits the parent's sockets, as a vector env's subprocess would
print("ready", helper.pid, flush=True)
time.sleep(600)
"""


def _gone(pids: list[int], within_s: float = GONE_WITHIN_S) -> list[int]:
    """The pids still running after ``within_s`` (empty when all are gone)."""
    deadline = time.monotonic() + within_s
    left = [p for p in pids if pid_running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if pid_running(p)]
    return left


def _names(pids: list[int]) -> dict[int, str]:
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def _assert_binds_at_once(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what Twisted does
        s.bind(("127.0.0.1", port))
        s.listen(1)


@contextlib.contextmanager
def _killing(pids: list[int]) -> Iterator[list[int]]:
    """Yield ``pids`` (filled by the test) and SIGKILL whatever is left of them at the end."""
    try:
        yield pids
    finally:
        for pid in pids:
            kill_by_pid(pid)


def _kill_the_parent_and_check_its_children(
    script: Path, mode: str, port: int, started: list[int]
) -> None:
    """Run ``script mode port`` (a parent holding a relay or a link child, plus a forked helper
    that inherits its sockets), SIGKILL it, and assert that its transport child is gone."""
    parent = subprocess.Popen(
        [sys.executable, str(script), mode, str(port)], stdout=subprocess.PIPE
    )
    started.append(parent.pid)
    assert parent.stdout is not None
    line = parent.stdout.readline().split()
    parent.stdout.close()
    assert line[:1] == [b"ready"], line
    helper = int(line[1])
    started.append(helper)
    ours = [p for p in process_tree(parent.pid) if p != helper]
    started += ours
    assert ours, f"the {mode} child was not found"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    left = _gone(ours)
    assert not left, f"still running after the parent's SIGKILL: {_names(left)}"


@pytest.mark.slow  # a Python parent with a relay child
def test_a_relay_child_dies_with_its_parent_and_frees_the_port(tmp_path: Path) -> None:
    port = free_local_port()
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(password=PASSWORD))
    with _killing([]) as started:
        _kill_the_parent_and_check_its_children(script, "relay", port, started)
        _assert_binds_at_once(port)
        with RelayServer(PASSWORD, port=port, use_tls=False) as relay:
            assert relay.port == port


@pytest.mark.slow  # a relay here, a Python parent with a link child
def test_a_link_child_dies_with_its_parent(tmp_path: Path, closing: Callable[[Any], Any]) -> None:
    relay = closing(RelayServer(PASSWORD, port=0, use_tls=False))
    relay.start()
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(password=PASSWORD))
    with _killing([]) as started:
        _kill_the_parent_and_check_its_children(script, "link", relay.port, started)
        # the message it had sent reached the relay before
        trainer = closing(Link(PASSWORD, port=relay.port, groups="trainers", use_tls=False))
        trainer.connect()
        assert trainer.receive(timeout=10) == b"hello"


@pytest.mark.slow  # relay and link processes
def test_a_forked_child_holds_no_local_socket_of_another(closing: Callable[[Any], Any]) -> None:
    """With ``fork``, a later child closes the local sockets it inherited from the parent."""
    relay = closing(RelayServer(PASSWORD, port=0, use_tls=False, start_method="fork"))
    relay.start()
    first = closing(
        Link(PASSWORD, port=relay.port, groups="workers", use_tls=False, start_method="fork")
    )
    first.connect()
    second = closing(
        Link(PASSWORD, port=relay.port, groups="trainers", use_tls=False, start_method="fork")
    )
    second.connect()
    inodes = set()
    for thing in (relay, first):
        conn = thing._child.conn  # the parent's end of each earlier child's local socket
        inodes.add(os.fstat(conn.fileno()).st_ino)
    assert second.pid is not None
    held = set()
    for fd in os.listdir(f"/proc/{second.pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{second.pid}/fd/{fd}")
            if target.startswith("socket:["):
                held.add(int(target[len("socket:[") : -1]))
    assert not inodes & held, "the second link's child holds an earlier child's local socket"


@pytest.mark.slow  # relay and link processes
def test_a_link_started_from_a_thread_outlives_the_thread(closing: Callable[[Any], Any]) -> None:
    """The kernel's parent-death signal follows the starting *thread*: it must not be used
    for a child started from a thread that ends before the process does."""
    relay = closing(RelayServer(PASSWORD, port=0, use_tls=False))
    relay.start()
    link = closing(Link(PASSWORD, port=relay.port, groups="workers", use_tls=False))
    starter = threading.Thread(target=link.connect)
    starter.start()
    starter.join(timeout=30)
    assert link.connected
    time.sleep(1.5)  # three parent checks
    assert link.connected and link.pid is not None and pid_running(link.pid)


# ----------------------------------------------------------------------------- tm-dist roles


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_DIST_")}
    env |= {
        "TM_DIST_PASSWORD": PASSWORD,
        "TM_DIST_CONNECTION_PORT": str(port),
        "TM_DIST_CONNECTION_HOST": "127.0.0.1",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "OMP_NUM_THREADS": "1",
    }
    trainer_variable = getattr(security, "TRAINER_PASSWORD_ENV", None)  # roles (issue 15)
    if trainer_variable is not None:
        env[trainer_variable] = PASSWORD + "-trainer"
    return env


def _cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tm_dist.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _wait_for(what: str, predicate: Callable[[], bool], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _kill_and_check(proc: subprocess.Popen[bytes], expect: int, started: list[int]) -> None:
    tree = process_tree(proc.pid)
    started += tree
    assert len(tree) >= expect, f"expected {expect}+ descendants, found {_names(tree)}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = _gone(tree, within_s=15.0)  # roles stop cleanly first (links flush)
    assert not left, f"still running after SIGKILL of {proc.args!r}: {_names(left)}"


@pytest.mark.slow  # tm-dist server
def test_tm_dist_server_killed_leaves_nothing_and_the_port_free(tmp_path: Path) -> None:
    port = free_local_port()
    log = tmp_path / "server.log"
    with _killing([]) as started:
        server = _cli(["server", "--bind", "127.0.0.1"], _env(tmp_path, port), log)
        started.append(server.pid)
        _wait_for("the relay", lambda: f":{port}" in log.read_text(), log)
        _kill_and_check(server, 1, started)
        _assert_binds_at_once(port)


@pytest.mark.slow  # tm-dist server and trainer
def test_tm_dist_trainer_killed_leaves_nothing(tmp_path: Path) -> None:
    port = free_local_port()
    env = _env(tmp_path, port)
    logs = {name: tmp_path / f"{name}.log" for name in ("server", "trainer")}
    with _killing([]) as started:
        server = _cli(["server", "--bind", "127.0.0.1"], env, logs["server"])
        started.append(server.pid)
        _wait_for("the relay", lambda: f":{port}" in logs["server"].read_text(), logs["server"])
        started += process_tree(server.pid)
        argv = ["trainer", "--run-dir", str(tmp_path / "run"), "--fresh", "--device", "cpu"]
        argv += ["--set", "policy.net_arch=[8]", "--set", "algo.hyperparameters.buffer_size=1000"]
        trainer = _cli(argv, env, logs["trainer"])
        started.append(trainer.pid)
        _wait_for(
            "the trainer's link", lambda: "min:" in logs["trainer"].read_text(), logs["trainer"]
        )
        _kill_and_check(trainer, 1, started)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow  # tm-dist local: relay, trainer and a worker
def test_tm_dist_local_killed_leaves_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path, 0)
    env = {k: v for k, v in env.items() if k == "TM_DIST_PASSWORD" or not k.startswith("TM_DIST_")}
    log = tmp_path / "local.log"
    argv = ["local", "--workers", "1", "--run-dir", str(tmp_path / "run"), "--fresh"]
    argv += ["--device", "cpu", "--minutes", "5", "--set", "policy.net_arch=[8]"]
    argv += ["--set", "algo.hyperparameters.buffer_size=1000"]
    worker_log = tmp_path / "run" / "logs" / "worker-0.log"
    with _killing([]) as started:
        local = _cli(argv, env, log)
        started.append(local.pid)
        _wait_for(
            "the worker and the trainer",
            lambda: (
                worker_log.is_file()
                and "worker local-0" in worker_log.read_text()
                and "min:" in log.read_text()
            ),
            log,
        )
        time.sleep(1.0)
        # the relay, its child, the worker, its link child and the trainer's link child
        _kill_and_check(local, 5, started)


# ----------------------------------------------------------------------------- make-cert


def test_make_cert_names_every_file_and_where_it_goes(tmp_path: Path) -> None:
    from tm_dist.cli_roles import make_cert_command

    out = Console(record=True, width=200)
    err = Console(record=True, width=200)
    args = argparse.Namespace(
        keys_dir=tmp_path / "keys", hostname="default", overwrite=False, trainer_keys_only=False
    )
    assert make_cert_command(args, out, err) == 0
    table, advice = out.export_text(), err.export_text()
    for name in ("certificate.pem", "key.pem"):
        assert name in table
    written = {p.name for p in (tmp_path / "keys").iterdir()}
    for name in ("trainer_signing.pem", "trainer_signing.pub", "trainer_password"):
        if name in written:  # tm-dist make-cert writes them (issue 15, item 1)
            assert name in table, f"{name} is missing from the table:\n{table}"
    lines = {line.split(":")[0].strip(): line for line in advice.splitlines() if ":" in line}
    assert "certificate.pem" in lines["workers"] and "key.pem" not in lines["workers"]
    assert "key.pem" in lines["relay (tm-dist server)"]
    assert "certificate.pem" in lines["trainer"] and "key.pem" not in lines["trainer"]
    if "trainer_password" in written:
        assert "trainer_password" not in lines["workers"]
        assert "trainer_signing.pub" in lines["workers"]
        assert "trainer_password" in lines["relay (tm-dist server)"]
        assert "trainer_signing.pem" in lines["trainer"]
        assert "trainer_password" in lines["trainer"]


def test_make_cert_trainer_keys_only_upgrades_an_old_keys_folder(tmp_path: Path) -> None:
    """A folder made by an older tm-dist (certificate and key only) gets the trainer's files
    and keeps its certificate, so workers need no new certificate."""
    from tm_dist.certs import make_cert
    from tm_dist.cli_roles import make_cert_command

    keys = tmp_path / "keys"
    make_cert(keys)
    for name in ("trainer_signing.pem", "trainer_signing.pub", "trainer_password"):
        (keys / name).unlink()
    cert = (keys / "certificate.pem").read_bytes()
    console = Console(record=True, width=200)
    args = argparse.Namespace(
        keys_dir=keys, hostname="default", overwrite=False, trainer_keys_only=True
    )
    assert make_cert_command(args, console, console) == 0
    assert (keys / "certificate.pem").read_bytes() == cert
    for name in ("trainer_signing.pem", "trainer_signing.pub", "trainer_password"):
        assert (keys / name).is_file()
    assert "Copy trainer_signing.pub to every worker" in console.export_text()
