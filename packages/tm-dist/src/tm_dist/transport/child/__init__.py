"""What the transport's child processes (each running a Twisted reactor) share with the parent.

tlspyo runs each Relay and each Endpoint as a Twisted reactor in a child process that the
parent drives over a local socket. The modules :mod:`~tm_dist.transport.child.relay` and
:mod:`~tm_dist.transport.child.link` keep tlspyo's relay logic (groups, broadcasts,
consumables, acknowledgements) and its frame format (a 10-byte ASCII length, then for frames
sent to the relay the password, then the serialized tuple), and subclasses its protocols to add:

- ``TCP_NODELAY`` on every connection, relay side and endpoint side, plain TCP and TLS alike
  (a TLS transport forwards ``setTcpNoDelay`` to the TCP transport underneath);
- a constant-time password check that never writes the received password anywhere;
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
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tm_dist.transport.status import Slot, StatusBoard

__all__ = ["STOP_SIGNALS", "enable_nodelay", "prepare_signals", "run_reactor", "stop_reactor"]

STOP_SIGNALS = ("SIGINT", "SIGTERM")
"""Blocked by the parent while it starts a child (see :func:`prepare_signals`)."""

logger = logging.getLogger(__name__)


def prepare_signals(reactor: Any) -> None:
    """The child's signal handling; call first thing in the child.

    The parent owns shutdown: it sends STOP, and the child drains its acknowledgements. So a
    Ctrl-C (SIGINT to the whole process group) is ignored here, and SIGTERM (``kill``, or a
    supervisor signalling the whole group) stops the reactor once, quietly: Twisted's own
    handlers would stop it a second time when STOP arrives and print ``ReactorNotRunning``.
    The parent starts the child with these signals blocked (:meth:`ChildProcess.start
    <tm_dist.transport.process.ChildProcess.start>`), so one that arrives while the child
    starts waits for these handlers instead of killing it with a traceback.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stop_reactor, reactor))
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
