"""What :class:`~tm_dist.transport.RelayServer` and :class:`~tm_dist.transport.Link` are given:
defaults and the checks of their arguments (groups, password, TLS files, the plain-TCP policy).

See :mod:`tm_dist.transport` for the public API.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tm_dist.errors import InvalidTypeError, InvalidValueError, MissingFileError
from tm_dist.security import PASSWORD_HINT, InsecureConnectionError, PasswordError, is_loopback

__all__ = [
    "CERT_FILE",
    "DEFAULT_GROUPS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KEY_FILE",
    "SupportsReveal",
    "check_groups",
    "check_security",
    "free_local_port",
    "read_pem",
    "reveal_password",
]

DEFAULT_GROUPS: tuple[str, ...] = ("workers", "trainers", "server")
"""The groups a relay accepts and a link may join."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CERT_FILE = "certificate.pem"
KEY_FILE = "key.pem"


class SupportsReveal(Protocol):
    """A secret wrapper such as ``tm_dist.settings.Secret``."""

    def reveal(self) -> str: ...


def free_local_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that the operating system reports free right now.

    Prefer ``RelayServer(port=0)``, which has no window between choosing and binding.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def check_security(host: str, use_tls: bool, insecure: bool) -> None:
    """Refuse plaintext to (or listening on) an address that is not loopback.

    The tlspyo password travels in every frame header, so without TLS anyone on the path
    can read it. (:func:`tm_dist.security.check_connection_security` also checks the password;
    this is the part the transport needs, with the same exception class.)

    Raises:
        InsecureConnectionError: ``use_tls`` is False, ``host`` is not loopback and
            ``insecure`` is False.
    """
    if use_tls or insecure or is_loopback(host):
        return
    raise InsecureConnectionError(
        f"refusing plaintext to {host!r}: only loopback addresses (127.0.0.1, ::1, localhost) "
        "may go without TLS, because the password travels in every frame. Use TLS (run "
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
