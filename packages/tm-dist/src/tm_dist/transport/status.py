"""The status board: what a transport's child process reports to its parent, in shared memory.

The child (a Twisted reactor) writes what happened — port bound, handshake acknowledged,
password refused, TLS failure, TCP_NODELAY confirmed — and the parent reads it, which is how
:class:`~tm_dist.transport.Link` turns tlspyo's silent reconnect loop into a clear exception.
"""

from __future__ import annotations

import enum
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["FailureKind", "LinkState", "Slot", "StatusBoard"]


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
    QUEUE_DROPS = 11
    """Messages dropped because a queue was at its cap (:mod:`tm_dist.transport.queues`)."""
    QUEUED_MESSAGES = 12
    QUEUED_BYTES = 13
    # relay
    ROLE_REJECTS = 14
    """Connections dropped for a HELLO or a destination their credential does not allow."""
    HELLO_REJECTS = 15
    """Connections dropped for a second HELLO (one identity per connection)."""
    PREAUTH_TIMEOUTS = 16
    """Connections dropped for not authenticating within the pre-auth timeout."""
    UNAUTHENTICATED_REJECTS = 17
    """Connections closed at once: the cap of unauthenticated connections was reached."""
    HEARTBEAT_TIMEOUTS = 18
    """Authenticated connections dropped after the heartbeat timeout without a byte."""
    UNAUTHENTICATED = 19
    """Connections open right now that have not authenticated yet."""
    # link (from 40: the relay's slots above may grow without colliding)
    DELIVERED = 40
    """Messages (``OBJ``) a link's relay has acknowledged: they are the relay's now."""
    DRAIN_TIMEOUT_MS = 41
    """Written by the parent before STOP: how long the child may keep flushing (ms)."""
    LINK_HEARTBEAT_TIMEOUTS = 42
    """Connections a link dropped because nothing came from the relay for its heartbeat timeout."""


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
        self._ints: Any = ctx.RawArray("q", max(Slot) + 1)  # slot numbers may have gaps
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
