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

import logging
from typing import Any

from tm_dist.transport.status import Slot, StatusBoard

__all__ = ["enable_nodelay"]

logger = logging.getLogger(__name__)


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
