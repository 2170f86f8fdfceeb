"""Bounded queues: every queue of the transport has a cap in messages and in bytes.

A worker that sends faster than the trainer takes (or while no trainer is connected) must not
grow any process without limit. Each queue below holds at most ``max_messages`` messages and
``max_bytes`` bytes of payload; when a new message would pass either cap, the **oldest**
messages are dropped (and counted) until it fits. Dropping the oldest keeps the freshest
experience, which an off-policy trainer prefers, and never blocks the sender, so a flood costs
the flooder its own old messages and nobody else anything. The newest message is always kept,
even alone above ``max_bytes`` (a weights message may be larger than a small cap).

Where the caps apply (``connection.queue_max_messages`` / ``connection.queue_max_bytes``):

* the relay: each group's consumables (the messages ``Link.send`` queues for one member, such as
  episode chunks waiting for a trainer);
* each link's child process: messages waiting for the relay while the connection is down;
* each link's parent: messages received and not yet taken with ``receive`` / ``receive_all``.

Broadcasts are not queued (the relay keeps only the latest per group).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from tm_dist.errors import InvalidValueError

__all__ = ["DEFAULT_QUEUE_MAX_BYTES", "DEFAULT_QUEUE_MAX_MESSAGES", "BoundedQueue", "check_caps"]

DEFAULT_QUEUE_MAX_MESSAGES = 100_000
DEFAULT_QUEUE_MAX_BYTES = 256 * 1024 * 1024

T = TypeVar("T")


def check_caps(max_messages: object, max_bytes: object) -> None:
    """Raise InvalidValueError unless both caps are positive ints."""
    for name, value in (("queue_max_messages", max_messages), ("queue_max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidValueError(f"{name}={value!r}: expected an int >= 1")


def payload_size(item: Any) -> int:
    """Bytes a queued item holds: its bytes, or the last bytes of a tuple, else a nominal 64."""
    if isinstance(item, (bytes, bytearray)):
        return len(item)
    if isinstance(item, tuple) and item and isinstance(item[-1], (bytes, bytearray)):
        return len(item[-1])
    return 64


class BoundedQueue(deque[T], Generic[T]):
    """A deque that drops its oldest items when a cap in items or bytes would be passed.

    It is a :class:`collections.deque` so that tlspyo's code, which appends to and pops from
    its queues, works unchanged. ``on_drop(n)`` is called with the number of items dropped;
    ``queued_bytes`` is kept up to date by ``append``, ``appendleft``, ``prepend``,
    ``popleft``, ``pop`` and ``clear`` (the operations the transport and tlspyo use).
    """

    def __init__(
        self,
        max_messages: int,
        max_bytes: int,
        *,
        on_drop: Callable[[int], None] | None = None,
        size_of: Callable[[Any], int] = payload_size,
    ) -> None:
        check_caps(max_messages, max_bytes)
        super().__init__()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.dropped = 0
        self._on_drop = on_drop
        self._size_of = size_of

    def append(self, item: T) -> None:
        size = self._size_of(item)
        dropped = 0
        while len(self) and (
            len(self) + 1 > self.max_messages or self.queued_bytes + size > self.max_bytes
        ):
            self.popleft()
            dropped += 1
        super().append(item)
        self.queued_bytes += size
        if dropped:
            self.dropped += dropped
            if self._on_drop is not None:
                self._on_drop(dropped)

    def prepend(self, items: Iterable[T]) -> None:
        """Put ``items`` (in order) in front, then drop from the front what passes the caps."""
        for item in reversed(list(items)):
            super().appendleft(item)
            self.queued_bytes += self._size_of(item)
        dropped = 0
        while len(self) > 1 and (
            len(self) > self.max_messages or self.queued_bytes > self.max_bytes
        ):
            self.popleft()
            dropped += 1
        if dropped:
            self.dropped += dropped
            if self._on_drop is not None:
                self._on_drop(dropped)

    def appendleft(self, item: T) -> None:
        self.prepend([item])

    def popleft(self) -> T:
        item = super().popleft()
        self.queued_bytes -= self._size_of(item)
        return item

    def pop(self, *index: int) -> T:
        if index:
            raise InvalidValueError("BoundedQueue.pop() takes no index; use popleft()")
        item = super().pop()
        self.queued_bytes -= self._size_of(item)
        return item

    def clear(self) -> None:
        super().clear()
        self.queued_bytes = 0
