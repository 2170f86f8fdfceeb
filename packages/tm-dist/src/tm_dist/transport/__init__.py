"""Message transport between tm-dist processes, on top of tlspyo.

A :class:`RelayServer` runs tlspyo's relay (in a child process with a Twisted reactor); each
worker, trainer or server process opens a :class:`Link` to it, joins groups (``"workers"``,
``"trainers"``, ``"server"``) and exchanges Python objects that the given serializer can carry
(by default :func:`tm_dist.wire.tlspyo_serializer`, never the standard library's object
serialization).

What this adds to tlspyo:

- ports chosen by the operating system: the relay listens on ``port=0`` if asked and reports
  the port, and the local socket between a parent and its Twisted child is always OS-chosen, so
  any number of relays and links share a machine without hand-picked ports;
- ``TCP_NODELAY`` on every connection (both sides, TCP and TLS), confirmed with ``getsockopt``;
- roles (:class:`Credential`): each connection's role is fixed by the token of its first frame,
  and the relay drops a connection whose HELLO or destination its role does not allow, so a
  worker's password cannot join the trainers or broadcast to the workers; one identity per
  connection (a second HELLO drops it);
- a pre-auth timeout, a cap on connections waiting to authenticate, and heartbeats: the relay
  drops a peer silent for ``HEARTBEAT_TIMEOUT_S`` (see :mod:`~tm_dist.transport.options` for the
  numbers);
- a wrong password raises :class:`AuthenticationError` instead of reconnecting forever, an
  unreachable relay raises :class:`RelayUnreachableError`, a TLS failure
  :class:`TLSHandshakeError`; the password never appears in logs or messages;
- frames that are malformed, oversized or fail to decode are dropped and logged, and the
  relay keeps serving everyone else;
- plaintext to a host other than loopback is refused unless ``insecure=True``;
- every queue is bounded in messages and bytes, dropping its oldest messages past the cap
  (:mod:`~tm_dist.transport.queues`);
- the child processes ignore Ctrl-C and stop quietly on SIGTERM: their parent decides when
  they stop, so a signal to the whole process group never prints a Twisted traceback.

The modules, by responsibility (each name below is importable from here, loaded on first use,
so catching :class:`TransportError` loads neither tlspyo nor Twisted):

* :mod:`~tm_dist.transport.relay`, :mod:`~tm_dist.transport.link` — the parent side:
  ``RelayServer`` and ``Link``, the objects users hold;
* :mod:`~tm_dist.transport.child` — the child processes running tlspyo's Twisted protocols
  (``child.relay``, ``child.link``);
* :mod:`~tm_dist.transport.framing` (frame format, codec), :mod:`~tm_dist.transport.status`
  (the shared-memory board a child reports on), :mod:`~tm_dist.transport.process` (the parent's
  handle on a child) — what both sides share;
* :mod:`~tm_dist.transport.options` — defaults and the checks of the constructors' arguments;
* :mod:`~tm_dist.transport.errors` — the exceptions.

Example:
    >>> with RelayServer("s3cret", port=0, use_tls=False) as relay:  # doctest: +SKIP
    ...     with Link("s3cret", port=relay.port, groups="trainers", use_tls=False) as trainer:
    ...         with Link("s3cret", port=relay.port, groups="workers", use_tls=False) as worker:
    ...             worker.send("trainers", b"episode")
    ...             trainer.receive(timeout=5.0)
    b'episode'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # name → the module that defines it
    "RelayServer": "tm_dist.transport.relay",
    "RelayStats": "tm_dist.transport.relay",
    "Link": "tm_dist.transport.link",
    "LinkStats": "tm_dist.transport.link",
    "DEFAULT_GROUPS": "tm_dist.transport.options",
    "Credential": "tm_dist.transport.options",
    "HEARTBEAT_INTERVAL_S": "tm_dist.transport.options",
    "HEARTBEAT_TIMEOUT_S": "tm_dist.transport.options",
    "MAX_UNAUTHENTICATED": "tm_dist.transport.options",
    "PREAUTH_TIMEOUT_S": "tm_dist.transport.options",
    "SupportsReveal": "tm_dist.transport.options",
    "check_security": "tm_dist.transport.options",
    "free_local_port": "tm_dist.transport.options",
    "AuthenticationError": "tm_dist.transport.errors",
    "DisconnectedError": "tm_dist.transport.errors",
    "MessageTooLargeError": "tm_dist.transport.errors",
    "ReceiveTimeoutError": "tm_dist.transport.errors",
    "RelayUnreachableError": "tm_dist.transport.errors",
    "TLSHandshakeError": "tm_dist.transport.errors",
    "TransportError": "tm_dist.transport.errors",
    "InsecureConnectionError": "tm_dist.security",
    "PasswordError": "tm_dist.security",
}

__all__ = [
    "DEFAULT_GROUPS",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_TIMEOUT_S",
    "MAX_UNAUTHENTICATED",
    "PREAUTH_TIMEOUT_S",
    "AuthenticationError",
    "Credential",
    "DisconnectedError",
    "InsecureConnectionError",
    "Link",
    "LinkStats",
    "MessageTooLargeError",
    "PasswordError",
    "ReceiveTimeoutError",
    "RelayServer",
    "RelayStats",
    "RelayUnreachableError",
    "SupportsReveal",
    "TLSHandshakeError",
    "TransportError",
    "check_security",
    "free_local_port",
]

if TYPE_CHECKING:
    from tm_dist.security import InsecureConnectionError, PasswordError
    from tm_dist.transport.errors import (
        AuthenticationError,
        DisconnectedError,
        MessageTooLargeError,
        ReceiveTimeoutError,
        RelayUnreachableError,
        TLSHandshakeError,
        TransportError,
    )
    from tm_dist.transport.link import Link, LinkStats
    from tm_dist.transport.options import (
        DEFAULT_GROUPS,
        HEARTBEAT_INTERVAL_S,
        HEARTBEAT_TIMEOUT_S,
        MAX_UNAUTHENTICATED,
        PREAUTH_TIMEOUT_S,
        Credential,
        SupportsReveal,
        check_security,
        free_local_port,
    )
    from tm_dist.transport.relay import RelayServer, RelayStats


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tm_dist.transport' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
