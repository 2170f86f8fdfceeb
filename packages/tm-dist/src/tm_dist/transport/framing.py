"""tlspyo's frame format and the codec of its frames, shared by both sides of the transport.

Every frame is a 10-byte ASCII length, then (for frames sent to the relay) the 64-character
authentication token derived from the password (:func:`auth_token`: the password itself never
crosses the network, and the relay always reads the same number of bytes whatever its length),
then the serialized tuple. The parent and its Twisted child speak the same framing over their local
socket. The codec is :mod:`tm_dist.wire`'s unless the caller gives its own: never the standard
library's object serialization.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from tm_dist.wire import tlspyo_deserializer, tlspyo_serializer

__all__ = [
    "AUTH_TOKEN_SIZE",
    "FRAME_OVERHEAD",
    "HEADER_SIZE",
    "Deserializer",
    "Serializer",
    "auth_token",
    "default_codec",
    "frame",
    "parse_length",
]

HEADER_SIZE = 10
"""Bytes of the ASCII length header in front of every frame (tlspyo's default)."""

FRAME_OVERHEAD = 1024
"""Bytes a frame may add around its payload (header, password, tuple); ``max_message_bytes``
must exceed it."""

AUTH_TOKEN_SIZE = 64
"""Characters of the token that stands for the password in every frame sent to the relay."""

_AUTH_DOMAIN = b"tm-dist relay auth v1"

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


def frame(payload: bytes) -> bytes:
    """``payload`` behind its length header."""
    return f"{len(payload):<{HEADER_SIZE}}".encode("ascii") + payload


def auth_token(password: str) -> str:
    """The token an endpoint puts in every frame in place of ``password``: 64 lowercase hex
    characters of HMAC-SHA256 keyed by the password (an empty password still has one)."""
    digest = hmac.new(password.encode("utf-8"), _AUTH_DOMAIN, hashlib.sha256).hexdigest()
    assert len(digest) == AUTH_TOKEN_SIZE
    return digest


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
