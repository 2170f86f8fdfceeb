"""The parent's handle on a transport child process, and the local socket that drives it.

Each :class:`~tm_dist.transport.RelayServer` and :class:`~tm_dist.transport.Link` runs tlspyo in
a child process (see :mod:`tm_dist.transport.child`); the parent listens on an OS-chosen
loopback port, the child connects to it, and the two exchange frames
(:mod:`tm_dist.transport.framing`) over that socket.

Lifecycle: a child stops when its parent dies (see :mod:`tm_dist.transport.child`), and no
child keeps another alive. With the ``fork`` start method a child inherits every socket its
parent has open, including the local sockets of the children started before it: while it
held a copy, an older child would never read end-of-file from its dead parent. So each child
closes, first thing, every local socket of this module that it inherited
(:func:`_child_main`); ``spawn`` and ``forkserver`` children inherit none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from tm_dist.transport.child import STOP_SIGNALS, adopt_parent
from tm_dist.transport.errors import TransportError
from tm_dist.transport.framing import frame
from tm_dist.transport.status import StatusBoard

__all__ = ["ChildProcess"]

logger = logging.getLogger(__name__)


_LOCAL_SOCKETS: weakref.WeakSet[socket.socket] = weakref.WeakSet()
"""Every local socket (listener or connection) that this process holds to drive a child."""


def _local_socket(sock: socket.socket) -> socket.socket:
    _LOCAL_SOCKETS.add(sock)
    return sock


def _child_main(target: Callable[[], None], parent_pid: int, pdeathsig: bool) -> None:
    """What a transport child runs: drop inherited local sockets, watch the parent, run."""
    for sock in list(_LOCAL_SOCKETS):  # "fork": the parent's, other children's included
        with contextlib.suppress(OSError):
            sock.close()
    _LOCAL_SOCKETS.clear()
    if not adopt_parent(parent_pid, pdeathsig=pdeathsig):
        return  # the parent died while this child started: nothing to serve
    target()


class ChildProcess:
    """A Twisted child process and the local socket through which its parent drives it.

    The child runs ``target`` once it has dropped the local sockets it inherited and
    registered its parent (:func:`tm_dist.transport.child.adopt_parent`): it stops when this
    process dies. ``PR_SET_PDEATHSIG`` is asked for only when the child is started from the
    main thread (the kernel would signal it when the starting thread ends).
    """

    def __init__(self, target: Callable[[], None], owner: Any, ctx: Any, name: str):
        self._listener = _local_socket(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        owner._local_com_port = self._listener.getsockname()[1]
        pdeathsig = threading.current_thread() is threading.main_thread()
        self.process: BaseProcess = ctx.Process(
            target=_child_main, args=(target, os.getpid(), pdeathsig), name=name, daemon=True
        )
        self.conn: socket.socket | None = None
        self._send_lock = threading.Lock()

    def start(self, timeout_s: float, status: StatusBoard, what: str) -> None:
        # the child inherits SIGINT/SIGTERM blocked and unblocks them once its own handlers are
        # in place (tm_dist.transport.child.prepare_signals); a signal meanwhile waits
        blocked = {getattr(signal, name) for name in STOP_SIGNALS}
        masking = hasattr(signal, "pthread_sigmask")
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if masking else None
        try:
            self.process.start()
        except BaseException:
            self._listener.close()  # the child never started: nothing will connect
            raise
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._listener.settimeout(0.05)
        deadline = time.monotonic() + timeout_s
        try:
            while self.conn is None:
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    if not self.process.is_alive():
                        note = status.last_note or f"exit code {self.process.exitcode}"
                        raise TransportError(f"{what} failed to start: {note}") from None
                    if time.monotonic() > deadline:
                        raise TransportError(f"{what} did not start within {timeout_s} s") from None
                    continue
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conn = _local_socket(conn)
        except BaseException:
            self.stop(timeout_s=1.0)
            raise
        finally:
            self._listener.close()

    def send(self, payload: bytes) -> None:
        conn = self.conn
        if conn is None:
            raise TransportError("the transport is stopped: start it before sending")
        try:
            with self._send_lock:
                conn.sendall(frame(payload))
        except OSError as exc:
            raise TransportError(
                f"the transport's child process is gone (exit code {self.process.exitcode}, "
                f"{exc}): stop this object and start a new one"
            ) from exc

    def stop(self, timeout_s: float, stop_frame: bytes | None = None) -> None:
        """Ask the child to stop and wait ``timeout_s`` for it; then terminate, then kill it."""
        if stop_frame is not None and self.conn is not None and self.process.is_alive():
            with contextlib.suppress(TransportError):
                self.send(stop_frame)
        if self.process.pid is not None:
            self.process.join(timeout_s)
            if self.process.is_alive():
                logger.warning("transport child %s did not stop, terminating it", self.process.pid)
                self.process.terminate()
                self.process.join(2.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(2.0)
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
