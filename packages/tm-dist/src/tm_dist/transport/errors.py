"""The transport's errors: what can go wrong between a process and the relay.

Imports nothing but :mod:`tm_dist.errors`, so a caller can catch these without loading tlspyo
or Twisted.
"""

from __future__ import annotations

from tm_dist.errors import TMDistError

__all__ = [
    "AuthenticationError",
    "DisconnectedError",
    "MessageTooLargeError",
    "ReceiveTimeoutError",
    "RelayUnreachableError",
    "TLSHandshakeError",
    "TransportError",
]


class TransportError(TMDistError, RuntimeError):
    """Base class of the transport's errors: the relay or a link cannot do its job."""


class RelayUnreachableError(TransportError, ConnectionError):
    """No relay answered at the given address."""


class AuthenticationError(TransportError):
    """The relay was reached but refused the password."""


class TLSHandshakeError(TransportError, ConnectionError):
    """The relay was reached but the TLS handshake failed."""


class DisconnectedError(TransportError):
    """The trainer disconnected this worker: too many of its chunks were refused (the message
    says why; fix the worker, its environment or its sensors, then start it again)."""


class MessageTooLargeError(TransportError, ValueError):
    """A message is larger than the configured ``max_message_bytes``."""


class ReceiveTimeoutError(TMDistError, TimeoutError):
    """:meth:`Link.receive <tm_dist.transport.Link.receive>` got nothing within its timeout.

    Not a :class:`TransportError`: the link is fine, nobody sent anything yet.
    """
