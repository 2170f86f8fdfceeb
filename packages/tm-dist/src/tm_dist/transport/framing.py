"""tlspyo's frame format and the codec of its frames, shared by both sides of the transport.

Every frame is a 10-byte ASCII length, then (for frames sent to the relay) the password, then
the serialized tuple. The parent and its Twisted child speak the same framing over their local
socket. The codec is :mod:`tm_dist.wire`'s unless the caller gives its own: never the standard
library's object serialization.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from tm_dist.wire import tlspyo_deserializer, tlspyo_serializer

__all__ = [
    "FRAME_OVERHEAD",
    "HEADER_SIZE",
    "Deserializer",
    "Serializer",
    "default_codec",
    "frame",
    "parse_length",
]

HEADER_SIZE = 10
"""Bytes of the ASCII length header in front of every frame (tlspyo's default)."""

FRAME_OVERHEAD = 1024
"""Bytes a frame may add around its payload (header, password, tuple); ``max_message_bytes``
must exceed it."""

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


def frame(payload: bytes) -> bytes:
    """``payload`` behind its length header."""
    return f"{len(payload):<{HEADER_SIZE}}".encode("ascii") + payload


def parse_length(buffer: bytes | bytearray, limit: int) -> int | None:
    """The payload length announced by a frame header, or None if it is malformed or too big."""
    try:
        length = int(buffer[:HEADER_SIZE])
    except ValueError:
        return None
    if length < 0 or length > limit:
        return None
    return length


def default_codec(
    serializer: Serializer | None, deserializer: Deserializer | None, max_message_bytes: int
) -> tuple[Serializer, Deserializer]:
    """The given codec, or :mod:`tm_dist.wire`'s with its size limit set to ours."""
    if serializer is None:
        serializer = tlspyo_serializer
    if deserializer is None:
        limit = max_message_bytes + FRAME_OVERHEAD
        deserializer = functools.partial(tlspyo_deserializer, max_bytes=limit)
    return serializer, deserializer
