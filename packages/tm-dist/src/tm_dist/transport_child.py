"""What the transport's child processes (each running a Twisted reactor) share with the parent.

tlspyo runs each Relay and each Endpoint as a Twisted reactor in a child process that the
parent drives over a local socket. The modules transport_child_relay and transport_child_link keep tlspyo's relay logic (groups, broadcasts,
consumables, acknowledgements) and its frame format (a 10-byte ASCII length, then for frames
sent to the relay the password, then the serialized tuple), and subclasses its protocols to add:

- ``TCP_NODELAY`` on every connection, relay side and endpoint side, plain TCP and TLS alike
  (a TLS transport forwards ``setTcpNoDelay`` to the TCP transport underneath);
- a constant-time password check that never writes the received password anywhere;
- a size limit per frame, checked on the header before any payload is buffered;
- a connection that sends a frame which does not decode is dropped and counted, never taking
  the relay down;
- a :class:`StatusBoard` in shared memory through which the child reports what happened
  (port bound, handshake acknowledged, password refused, TLS failure, TCP_NODELAY confirmed)
  so that the parent can turn tlspyo's silent reconnect loop into a clear exception.

Everything here is started by the parent through :mod:`multiprocessing`; it works with the
``fork``, ``spawn`` and ``forkserver`` start methods because the classes are importable and the
hooks live in subclasses, not in patches applied to the parent process.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

logger = logging.getLogger(__name__)

HEADER_SIZE = 10
"""Bytes of the ASCII length header in front of every frame (tlspyo's default)."""

STANDING_CREDIT = 1 << 40
"""Consumables a link asks for on each (re)connection: in practice, all of them, as they come."""

MAX_COPIES = 16
"""Largest copy count a destination may ask for; tlspyo would append that many copies."""

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


class Slot(enum.IntEnum):
    """Counters and values on a :class:`StatusBoard`."""

    STATE = 0
    PORT = 1
    CONNECTIONS = 2
    NODELAY = 3
    AUTHENTICATED = 4
    PASSWORD_REJECTS = 5
    FRAME_REJECTS = 6
    CONNECT_FAILURES = 7
    TLS_FAILURES = 8
    FAILURE_KIND = 9
    FATAL = 10


class LinkState(enum.IntEnum):
    """Where a link's connection to the relay stands (``Slot.STATE``)."""

    STARTING = 0
    CONNECTING = 1
    TCP_CONNECTED = 2
    GREETED = 3
    AUTHENTICATED = 4
    DISCONNECTED = 5


class FailureKind(enum.IntEnum):
    """Why the last attempt to open a TCP connection failed (``Slot.FAILURE_KIND``)."""

    NONE = 0
    REFUSED = 1
    TIMEOUT = 2
    DNS = 3
    OTHER = 4


class StatusBoard:
    """Integers and one line of text in shared memory: the child writes, the parent reads.

    Each slot has a single writer (the child's reactor thread), so no lock is needed.
    """

    NOTE_BYTES = 400

    def __init__(self, ctx: BaseContext) -> None:
        self._ints: Any = ctx.RawArray("q", len(Slot))
        self._text: Any = ctx.RawArray("c", self.NOTE_BYTES)

    def get(self, slot: Slot) -> int:
        return int(self._ints[slot])

    def set(self, slot: Slot, value: int) -> None:
        self._ints[slot] = value

    def add(self, slot: Slot, amount: int = 1) -> None:
        self._ints[slot] += amount

    def note(self, text: str) -> None:
        """Keep ``text`` (truncated) as the latest explanation of a failure."""
        raw = text.encode("utf-8", "replace")[: self.NOTE_BYTES - 1]
        self._text.value = raw

    @property
    def last_note(self) -> str:
        return bytes(self._text.value).decode("utf-8", "replace")


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


def parse_length(buffer: bytes | bytearray, limit: int) -> int | None:
    """The payload length announced by a frame header, or None if it is malformed or too big."""
    try:
        length = int(buffer[:HEADER_SIZE])
    except ValueError:
        return None
    if length < 0 or length > limit:
        return None
    return length
