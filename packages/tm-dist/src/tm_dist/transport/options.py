"""What :class:`~tm_dist.transport.RelayServer` and :class:`~tm_dist.transport.Link` are given:
defaults and the checks of their arguments (groups, password, TLS files, the plain-TCP policy),
the relay's roles (:class:`Credential`) and its timing rules (heartbeats, pre-auth limits).

Timing, in one place (the relay and the links use these defaults):

* a link sends ``PING`` every :data:`HEARTBEAT_INTERVAL_S` (2 s) once authenticated, and the relay
  acknowledges it like any frame;
* the relay drops a connection from which nothing arrived for :data:`HEARTBEAT_TIMEOUT_S`
  (10 s), and a link drops (then re-opens) its connection when nothing arrived from the relay for
  as long: a dead or black-holed peer is detected within 10 s (plus the relay's check period, at
  most 1 s);
* a connection must authenticate (a frame with a valid token, then a HELLO the role may send)
  within :data:`PREAUTH_TIMEOUT_S` (5 s), and at most :data:`MAX_UNAUTHENTICATED` (64) connections
  may be waiting to do so at a time: the relay closes further ones at once.

See :mod:`tm_dist.transport` for the public API.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tm_dist.errors import InvalidTypeError, InvalidValueError, MissingFileError
from tm_dist.security import (
    PASSWORD_HINT,
    InsecureConnectionError,
    PasswordError,
    is_loopback,
    normalize_host,
)

__all__ = [
    "CERT_FILE",
    "DEFAULT_GROUPS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_TIMEOUT_S",
    "KEY_FILE",
    "MAX_UNAUTHENTICATED",
    "PREAUTH_TIMEOUT_S",
    "TRAINER_PASSWORD_FILE",
    "Credential",
    "SupportsReveal",
    "check_groups",
    "check_positive",
    "check_security",
    "free_local_port",
    "normalize_host",
    "read_pem",
    "reveal_password",
]

DEFAULT_GROUPS: tuple[str, ...] = ("workers", "trainers", "server")
"""The groups a relay accepts and a link may join."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CERT_FILE = "certificate.pem"
KEY_FILE = "key.pem"
TRAINER_PASSWORD_FILE = "trainer_password"
"""The trainer's password, in keys_dir beside :data:`CERT_FILE` and :data:`KEY_FILE` (written by
``tm-dist make-cert``; the relay and the trainer read it, workers never get it)."""

HEARTBEAT_INTERVAL_S = 2.0
"""Seconds between a link's ``PING`` frames once it is authenticated."""
HEARTBEAT_TIMEOUT_S = 10.0
"""Seconds of silence after which the relay drops a connection (and a link its connection)."""
PREAUTH_TIMEOUT_S = 5.0
"""Seconds a new connection has to authenticate (a valid token, then an allowed HELLO)."""
MAX_UNAUTHENTICATED = 64
"""Connections that may wait to authenticate at a time; the relay closes further ones at once."""


class SupportsReveal(Protocol):
    """A secret wrapper such as ``tm_dist.settings.Secret``."""

    def reveal(self) -> str: ...


def _group_set(name: str, groups: Any) -> frozenset[str]:
    if isinstance(groups, str | bytes) or not isinstance(groups, Iterable):
        raise InvalidTypeError(
            f"Credential.{name} must be a set of group names, got {groups!r}; "
            "write e.g. frozenset({'workers'})"
        )
    out: frozenset[Any] = frozenset(groups)
    for group in out:
        if not isinstance(group, str) or not group:
            raise InvalidTypeError(
                f"Credential.{name}: group names are non-empty str, got {group!r}"
            )
    return out


@dataclass(frozen=True)
class Credential:
    """A role at the relay: the password its links use and what they may do.

    The relay fixes a connection's role by the token (:func:`tm_dist.transport.framing.auth_token`)
    of its first frame; later frames must carry the same one. A HELLO naming a group outside
    ``may_join``, or a message sent to a group outside ``may_send`` (consumables, ``copies > 0``)
    or broadcast to one outside ``may_broadcast`` (``copies < 0``), drops the connection; the
    relay logs it and counts it in :attr:`RelayStats.role_rejects
    <tm_dist.transport.RelayStats.role_rejects>`.

    Args:
        role: A name for logs ("worker", "trainer", or any).
        password: The role's password (a str, or a secret with ``.reveal()``); never shown in
            ``repr``.
        may_join: Groups a HELLO from this role may name.
        may_send: Groups it may send consumables to.
        may_broadcast: Groups it may broadcast to (the relay keeps the last one for late joiners).

    >>> Credential("worker", "pw", frozenset({"workers"}), frozenset({"trainers"}), frozenset())
    Credential(role='worker', may_join=frozenset({'workers'}), may_send=frozenset({'trainers'}), may_broadcast=frozenset())
    """

    role: str
    password: str | SupportsReveal = field(repr=False)
    may_join: frozenset[str]
    may_send: frozenset[str]
    may_broadcast: frozenset[str]

    def __post_init__(self) -> None:
        role: Any = self.role
        if not isinstance(role, str) or not role:
            raise InvalidValueError(f"Credential.role must be a non-empty str, got {self.role!r}")
        if not isinstance(self.password, str) and not callable(
            getattr(self.password, "reveal", None)
        ):
            raise InvalidTypeError(
                "Credential.password must be a str or a secret with .reveal(), got "
                f"{type(self.password).__name__}"
            )
        for name in ("may_join", "may_send", "may_broadcast"):
            object.__setattr__(self, name, _group_set(name, getattr(self, name)))

    def groups(self) -> frozenset[str]:
        """Every group this credential names."""
        return self.may_join | self.may_send | self.may_broadcast


def check_positive(name: str, value: float, *, integer: bool = False) -> None:
    """Refuse a duration or count that is not a positive number (bool is not a number here)."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        what = "a positive whole number" if integer else "a positive number of seconds"
        raise InvalidValueError(f"{name} must be {what}, got {value!r}")


def free_local_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (an IPv4 or IPv6 address, brackets allowed) that the operating
    system reports free right now.

    Prefer ``RelayServer(port=0)``, which has no window between choosing and binding.
    """
    address = normalize_host(host)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def check_security(host: str, use_tls: bool, insecure: bool) -> None:
    """Refuse plaintext to (or listening on) an address that is not loopback.

    Every frame carries the password's token (:func:`~tm_dist.transport.framing.auth_token`),
    which lets whoever reads it connect as that role, so without TLS anyone on the path can. (:func:`tm_dist.security.check_connection_security` also checks the password;
    this is the part the transport needs, with the same exception class.)

    Raises:
        InsecureConnectionError: ``use_tls`` is False, ``host`` is not loopback and
            ``insecure`` is False.
    """
    if use_tls or insecure or is_loopback(host):
        return
    raise InsecureConnectionError(
        f"refusing plaintext to {host!r}: only loopback addresses (127.0.0.1, ::1, localhost) "
        "may go without TLS, because every frame carries the password's token. Use TLS (run "
        "`tm-dist make-cert` and pass keys_dir), or accept the risk on a trusted network "
        "with --insecure (insecure=True)."
    )


def reveal_password(password: str | SupportsReveal, insecure: bool) -> str:
    """The text of ``password``; empty is refused unless ``insecure``."""
    if isinstance(password, str):
        value = password
    elif callable(getattr(password, "reveal", None)):
        value = password.reveal()
    else:
        raise InvalidTypeError(
            f"password must be a str or a secret with .reveal(), got {type(password).__name__}"
        )
    if not value and not insecure:
        raise PasswordError(f"the password is empty. {PASSWORD_HINT}")
    return value


def read_pem(keys_dir: str | Path | None, names: Sequence[str]) -> list[bytes]:
    if keys_dir is None:
        raise InvalidValueError(
            "TLS needs keys_dir (a folder holding certificate.pem, and key.pem on the server): "
            "run `tm-dist make-cert`, or use_tls=False on loopback"
        )
    folder = Path(keys_dir)
    parts = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise MissingFileError(
                f"TLS file {path} not found: expected {', '.join(names)} in {folder} "
                "(create them with `tm-dist make-cert`; workers need the server's certificate.pem)"
            )
        parts.append(path.read_bytes())
    return parts


def check_groups(groups: str | Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    names = (groups,) if isinstance(groups, str) else tuple(groups)
    if not names:
        raise InvalidValueError(f"groups is empty: expected one or more of {list(allowed)}")
    for name in names:
        if name not in allowed:
            raise InvalidValueError(f"unknown group {name!r}: expected one of {list(allowed)}")
    return names
