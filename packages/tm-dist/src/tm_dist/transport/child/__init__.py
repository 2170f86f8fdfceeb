"""What the transport's child processes (each running a Twisted reactor) share with the parent.

tlspyo runs each Relay and each Endpoint as a Twisted reactor in a child process that the
parent drives over a local socket. The modules :mod:`~tm_dist.transport.child.relay` and
:mod:`~tm_dist.transport.child.link` keep tlspyo's relay logic (groups, broadcasts,
consumables, acknowledgements) and its frame format (a 10-byte ASCII length, then for frames
sent to the relay the password, then the serialized tuple), and subclasses its protocols to add:

- ``TCP_NODELAY`` on every connection, relay side and endpoint side, plain TCP and TLS alike
  (a TLS transport forwards ``setTcpNoDelay`` to the TCP transport underneath);
- a token in place of the password (:func:`~tm_dist.transport.framing.auth_token`), read at a
  fixed length and checked in constant time against every role's token, never logged;
- a size limit per frame, checked on the header before any payload is buffered;
- a connection that sends a frame which does not decode is dropped and counted, never taking
  the relay down;
- a :class:`~tm_dist.transport.status.StatusBoard` in shared memory through which the child
  reports what happened (port bound, handshake acknowledged, password refused, TLS failure,
  TCP_NODELAY confirmed) so that the parent can turn tlspyo's silent reconnect loop into a
  clear exception.

Everything here is started by the parent through :mod:`multiprocessing`; it works with the
``fork``, ``spawn`` and ``forkserver`` start methods because the classes are importable and the
hooks live in subclasses, not in patches applied to the parent process.

A child never outlives its parent, even one killed with SIGKILL. Three mechanisms, any one of
which suffices: the parent's end of the local socket closes when it dies (the child stops
when it reads end-of-file; no other child holds a copy of that socket, see
:mod:`tm_dist.transport.process`); on Linux, ``PR_SET_PDEATHSIG`` sends SIGTERM when the
parent dies (only when the parent started the child from its main thread: the signal
follows the *thread* that forked); and everywhere the reactor checks every
:data:`PARENT_CHECK_INTERVAL_S` whether the parent is still there (:func:`adopt_parent`,
:func:`parent_alive`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from tm_dist.transport.status import Slot, StatusBoard

__all__ = [
    "PARENT_CHECK_INTERVAL_S",
    "STOP_SIGNALS",
    "adopt_parent",
    "die_with_parent",
    "enable_nodelay",
    "parent_alive",
    "pid_alive",
    "prepare_signals",
    "run_reactor",
    "stop_reactor",
]

STOP_SIGNALS = ("SIGINT", "SIGTERM")
"""Blocked by the parent while it starts a child (see :func:`prepare_signals`)."""

PARENT_CHECK_INTERVAL_S = 0.5
"""How often a child checks that its parent is still alive."""

_PR_SET_PDEATHSIG = 1

logger = logging.getLogger(__name__)

_parent: tuple[int, bool] | None = None
"""(parent pid, whether it is our direct parent), set by :func:`adopt_parent` in the child."""


def die_with_parent(signum: int | None = None) -> bool:
    """Linux: ask the kernel to send ``signum`` (default SIGTERM) to this process when its
    parent dies, even by SIGKILL. Returns False where ``prctl`` does not exist (other systems).

    The kernel follows the parent *thread* that forked this process: call it only in a child
    started from a thread that lives as long as its process (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        code = libc.prctl(_PR_SET_PDEATHSIG, int(signum or signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return bool(code == 0)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as alive on POSIX)."""
    if sys.platform == "win32":
        import _winapi

        synchronize = 0x00100000
        try:
            handle = _winapi.OpenProcess(synchronize, False, pid)
        except OSError:
            return False
        try:
            return bool(_winapi.WaitForSingleObject(handle, 0) != 0)  # 0: it has exited
        finally:
            _winapi.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def adopt_parent(parent_pid: int, *, pdeathsig: bool) -> bool:
    """Remember ``parent_pid`` as this child's parent (first thing in the child).

    With ``pdeathsig`` (and on Linux, when ``parent_pid`` is our direct parent, not a fork
    server), the kernel sends SIGTERM when it dies. Returns whether the parent is still alive.
    """
    global _parent
    direct = os.getppid() == parent_pid
    _parent = (parent_pid, direct)
    if pdeathsig and direct:
        die_with_parent()
    return parent_alive()


def parent_alive() -> bool:
    """Whether the parent given to :func:`adopt_parent` is still alive (True if none was)."""
    if _parent is None:
        return True
    pid, direct = _parent
    if direct:
        return os.getppid() == pid  # an orphan is adopted by init or a subreaper at once
    return pid_alive(pid)


def _watch_parent(reactor: Any, on_orphan: Callable[[], None]) -> None:
    from twisted.internet.task import LoopingCall

    fired = [False]

    def check() -> None:
        if fired[0] or parent_alive():
            return
        fired[0] = True
        logger.warning("transport child %d: its parent process is gone, stopping", os.getpid())
        on_orphan()

    loop = LoopingCall(check)
    loop.clock = reactor
    loop.start(PARENT_CHECK_INTERVAL_S, now=True)


def prepare_signals(reactor: Any, on_stop: Callable[[], None] | None = None) -> None:
    """The child's signal handling and parent watch; call first thing in the child.

    The parent owns shutdown: it sends STOP, and the child drains its acknowledgements. So a
    Ctrl-C (SIGINT to the whole process group) is ignored here, and SIGTERM (``kill``, a
    supervisor signalling the whole group, or the kernel when the parent died) calls
    ``on_stop`` once (default: stop the reactor, quietly: Twisted's own handlers would stop it
    a second time when STOP arrives and print ``ReactorNotRunning``). The same ``on_stop``
    runs when the parent is found gone (:func:`parent_alive`, checked every
    :data:`PARENT_CHECK_INTERVAL_S`). The parent starts the child with these signals blocked
    (:meth:`ChildProcess.start <tm_dist.transport.process.ChildProcess.start>`), so one that
    arrives while the child starts waits for these handlers instead of killing it with a
    traceback.
    """
    import signal
    import threading

    stop = on_stop if on_stop is not None else (lambda: stop_reactor(reactor))
    _watch_parent(reactor, stop)
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stop))
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {getattr(signal, name) for name in STOP_SIGNALS})


def run_reactor(reactor: Any) -> None:
    """Run the child's reactor until stopped, without Twisted's signal handlers."""
    reactor.run(installSignalHandlers=False)


def stop_reactor(reactor: Any) -> None:
    """Stop ``reactor`` unless it is already stopping (never raises ReactorNotRunning)."""
    from twisted.internet.error import ReactorNotRunning

    with contextlib.suppress(ReactorNotRunning):
        reactor.stop()


def enable_nodelay(transport: Any, status: StatusBoard) -> None:
    """Turn Nagle's algorithm off on ``transport`` and count it if the socket confirms."""
    try:
        transport.setTcpNoDelay(True)
        confirmed = bool(transport.getTcpNoDelay())
    except (AttributeError, OSError) as exc:
        logger.warning("could not set TCP_NODELAY on a connection: %s", exc)
        return
    if confirmed:
        status.add(Slot.NODELAY)
