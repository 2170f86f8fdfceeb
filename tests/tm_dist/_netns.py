"""Helpers for the multi-host tests of tm-dist (``test_netns.py``).

- :class:`NetnsTopology`: one network namespace per host (relay server, trainer, workers), the
  server's namespace holding a bridge with one veth pair per other host, so every host reaches
  the server at ``10.77.<subnet>.1``; a host's link is cut with ``ip link set eth0 down`` on
  its side. Nothing is created in the caller's own namespace except the namespace names.
- :class:`PausableProxy`: the loopback stand-in for a cut link, a TCP relay on an OS-chosen port
  that stops moving bytes while paused (connections stay open, as with a pulled cable) or
  aborts its connections (as after a router restart).
- :class:`RoleProcess`: one ``python -m tm_dist.cli ...`` process (optionally under
  ``ip netns exec``), its output in a file, stopped by its PID and process group.
- Readers for what the roles report: the episodes a worker says it sent, the episodes the
  trainer's latest checkpoint says it received.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

IP = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({proc.returncode}): {proc.stderr}")
    return proc


def netns_unavailable_reason() -> str | None:
    """Why namespaces and veth pairs cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    probe = f"tmd{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed (needs root or CAP_NET_ADMIN): {made.stderr.strip()}"
        steps = (
            ("netns", "exec", probe, "true"),
            ("-n", probe, "link", "add", "va", "type", "veth", "peer", "name", "vb"),
            ("-n", probe, "link", "add", "br0", "type", "bridge"),
        )
        for step in steps:
            done = _ip(*step, check=False)
            if done.returncode != 0:
                return f"`ip {' '.join(step)}` failed: {done.stderr.strip()}"
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot run `ip`: {e}"
    finally:
        _ip("netns", "del", probe, check=False)


class NetnsTopology:
    """A star of namespaces around a server namespace (a context manager that cleans up).

    Args:
        tag: Makes the namespace names unique (include the PID).
        hosts: Names of the hosts besides the server (short: they end up in namespace names).
        subnet: Third byte of the 10.77.X.0/24 network.
    """

    def __init__(self, tag: str, hosts: Sequence[str], subnet: int) -> None:
        if not 0 <= subnet <= 255:
            raise ValueError(f"subnet must be in [0, 255], got {subnet}")
        self.server_ns = f"tmd{tag}-server"
        self.ns = {h: f"tmd{tag}-{h}" for h in hosts}
        self.server_ip = f"10.77.{subnet}.1"
        self.ips = {h: f"10.77.{subnet}.{10 + i}" for i, h in enumerate(hosts)}
        self._made: list[str] = []

    def create(self) -> NetnsTopology:
        srv = self.server_ns
        self._add_ns(srv)
        _ip("-n", srv, "link", "add", "br0", "type", "bridge")
        _ip("-n", srv, "addr", "add", f"{self.server_ip}/24", "dev", "br0")
        _ip("-n", srv, "link", "set", "br0", "up")
        for i, (host, ns) in enumerate(self.ns.items()):
            self._add_ns(ns)
            port = f"p{i}"
            _ip("-n", srv, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", srv, "link", "set", port, "master", "br0")
            _ip("-n", srv, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.ips[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")  # a link talks to its child on loopback

    def prefix(self, host: str | None) -> list[str]:
        """The command prefix that runs a program on ``host`` (None: the server)."""
        return [IP, "netns", "exec", self.server_ns if host is None else self.ns[host]]

    def cut(self, host: str) -> None:
        _ip("-n", self.ns[host], "link", "set", "eth0", "down")

    def restore(self, host: str) -> None:
        _ip("-n", self.ns[host], "link", "set", "eth0", "up")

    def close(self) -> None:
        """Delete every namespace made (their veth ends and the bridge go with them)."""
        while self._made:
            _ip("netns", "del", self._made.pop(), check=False)

    def __enter__(self) -> NetnsTopology:
        try:
            return self.create()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PausableProxy:
    """Forwards TCP connections from an OS-chosen loopback port to ``target_port``.

    While paused it neither reads, writes nor accepts: bytes wait in the kernel's buffers and
    the connections stay open, as they would behind a link that went down. :meth:`reset` also
    aborts every open connection (both ends see a reset), as after a router restart.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.connections = 0

    def start(self) -> PausableProxy:
        self._spawn(self._accept_loop)
        return self

    def pause(self) -> None:
        self._flowing.clear()

    def reset(self) -> None:
        """Pause, then abort every forwarded connection; new ones wait for :meth:`resume`."""
        self.pause()
        time.sleep(0.3)  # every pump finishes its recv (0.1 s timeout) and waits: no fd in use
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # with a zero linger: a reset, not a graceful close

    def resume(self) -> None:
        self._flowing.set()

    def _spawn(self, target: Callable[..., None], *args: socket.socket) -> None:
        t = threading.Thread(target=target, args=args, name="pausable-proxy", daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if not self._flowing.wait(0.1):
                continue  # a new connection would not get through a cut link either
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(0.1)
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._stop.is_set():
            if not self._flowing.wait(0.1):
                continue
            try:
                data = src.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            while not self._flowing.wait(0.1):  # read just before a pause: hold it
                if self._stop.is_set():
                    return
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()
        for t in threads:
            t.join(timeout=2)

    def __enter__(self) -> PausableProxy:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RoleProcess:
    """``[prefix...] python -m tm_dist.cli ARGV`` in its own session, output in ``log``."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        prefix: Sequence[str] = (),
    ) -> None:
        self.argv = [*prefix, sys.executable, "-m", "tm_dist.cli", *argv]
        self.env = dict(env)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RoleProcess:
        with open(self.log, "wb") as out:
            # `ip netns exec` execs the program: proc.pid is the Python process itself, and its
            # session id (and process group) is that PID, shared by the children it forks.
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float) -> int:
        if self.proc is None:
            raise RuntimeError("start() the process before waiting for it")
        return self.proc.wait(timeout=timeout)

    def interrupt(self) -> None:
        """Ctrl-C: the role stops cleanly (see :meth:`stop` to wait for it)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """Ctrl-C (so the role cleans up), then SIGKILL to its whole process group."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            self.interrupt()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # the group of our own child: forked helpers too
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        return p.returncode


def worker_episodes(text: str, name: str) -> int:
    """The last training-episode count worker ``name`` printed (``-v`` output), 0 if none."""
    counts = re.findall(rf"^{re.escape(name)}: (\d+) episodes", text, flags=re.M)
    return int(counts[-1]) if counts else 0


def trainer_episodes(run_dir: Path) -> int:
    """Training episodes received, from the trainer's newest readable checkpoint (0 if none)."""
    states = sorted((run_dir / "checkpoints").glob("step-*/state.json"), reverse=True)
    for state in states:
        try:
            meta = json.loads(state.read_text(encoding="utf-8"))["meta"]
        except (OSError, ValueError, KeyError):
            continue  # being replaced or pruned by the trainer right now
        return int(meta["learner"]["episodes"])
    return 0


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    every_s: float = 0.25,
) -> None:
    """Poll ``predicate`` until true; on timeout fail with ``what`` and ``details()``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}\n{details()}"
            )
        time.sleep(every_s)
