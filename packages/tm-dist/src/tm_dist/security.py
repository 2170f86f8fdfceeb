"""Security policy of tm-dist: the password and when plain TCP is allowed.

Sources, and only these: the ``TM_DIST_PASSWORD`` environment variable, a password file (on
POSIX not readable by other users), or an interactive prompt. Never a command-line flag:
command lines are visible to every user of the machine (process list, shell history), and never
the TOML settings file, which gets shared and committed. :mod:`tm_dist.settings` picks the source;
this module holds the pieces, and :func:`check_connection_security`, which refuses plain TCP off
loopback and empty passwords unless the user asked for ``insecure``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tm_dist.errors import InvalidTypeError, InvalidValueError, TMDistError

__all__ = [
    "PASSWORD_ENV",
    "PASSWORD_FILE_ENV",
    "PASSWORD_HINT",
    "TRAINER_PASSWORD_ENV",
    "TRAINER_PASSWORD_FILE_ENV",
    "TRAINER_PASSWORD_HINT",
    "InsecureConnectionError",
    "PasswordError",
    "Secret",
    "check_connection_security",
    "is_loopback",
    "normalize_host",
    "read_password_file",
    "reject_password_arguments",
    "tty_prompt",
]

logger = logging.getLogger(__name__)

PASSWORD_ENV = "TM_DIST_PASSWORD"
PASSWORD_FILE_ENV = "TM_DIST_PASSWORD_FILE"
PASSWORD_HINT = (
    f"Set {PASSWORD_ENV}, or write the password to a file only you can read (chmod 600) and "
    "pass --password-file FILE or set connection.password_file."
)
"""How to give a password; ends every error message about a missing one."""

TRAINER_PASSWORD_ENV = "TM_DIST_TRAINER_PASSWORD"
TRAINER_PASSWORD_FILE_ENV = "TM_DIST_TRAINER_PASSWORD_FILE"
TRAINER_PASSWORD_HINT = (
    "Run `tm-dist make-cert` on the server, which writes KEYS_DIR/trainer_password, and copy "
    f"that file to the trainer's keys folder; or set {TRAINER_PASSWORD_ENV} (or "
    f"{TRAINER_PASSWORD_FILE_ENV}, connection.trainer_password_file, --trainer-password-file)."
)
"""How to give the trainer's password (the relay and the trainer need it, workers never do)."""

_MASK = "********"
_MAX_FILE_BYTES = 4096
_PASSWORD_FLAGS = ("--password", "--passwd", "--pass", "--pw", "--pwd")


class PasswordError(TMDistError, ValueError):
    """The password is missing, came from a forbidden place, or its file is unsafe."""


class InsecureConnectionError(TMDistError, ValueError):
    """Plain TCP was requested towards a host that is not this machine."""


class Secret:
    """A password that shows as ``********`` in repr, str, f-strings and so in logs.

    ``reveal()`` returns the text: call it only where it is handed to the network layer.
    Copies are the same object; Python object serialization is refused.

    >>> s = Secret("hunter2")
    >>> s, f"{s}", s.reveal()
    (Secret('********'), '********', 'hunter2')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        if not isinstance(value, str):
            raise InvalidTypeError(f"Secret expects a str, got {type(value).__name__}")
        self._value = value

    @classmethod
    def generate(cls, nbytes: int = 24) -> Secret:
        """A random URL-safe password, e.g. for ``tm-dist local`` where nobody types it."""
        return cls(secrets.token_urlsafe(nbytes))

    def reveal(self) -> str:
        return self._value

    @property
    def is_empty(self) -> bool:
        return not self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, format_spec: str) -> str:
        return format(_MASK, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise InvalidTypeError(
            "a Secret cannot be serialized; pass secret.reveal() where it is needed"
        )


def read_password_file(path: Path | str) -> Secret:
    """The first line of ``path`` (without its line ending) as a :class:`Secret`.

    Raises:
        PasswordError: the file is missing, not a regular file, readable or writable by every
            user (POSIX; group access only logs a warning), larger than 4 KiB, or empty.
    """
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except OSError as e:
        raise PasswordError(f"cannot read the password file {path}: {e}. {PASSWORD_HINT}") from e
    if not stat.S_ISREG(st.st_mode):
        raise PasswordError(f"password file {path} is not a regular file. {PASSWORD_HINT}")
    if os.name == "posix":
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o007:
            raise PasswordError(
                f"password file {path} has mode {mode:03o}: every user of this machine can "
                f"access it. Run `chmod 600 {path}` and try again."
            )
        if mode & 0o070:
            logger.warning("password file %s is accessible to its group; chmod 600 it", path)
    if st.st_size > _MAX_FILE_BYTES:
        raise PasswordError(
            f"password file {path} holds {st.st_size} bytes (at most {_MAX_FILE_BYTES} "
            "expected): is it the right file?"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0]:
        raise PasswordError(f"password file {path} is empty. {PASSWORD_HINT}")
    return Secret(lines[0])


def tty_prompt() -> Callable[[str], str] | None:
    """``getpass.getpass`` when standard input is a terminal, else None.

    Pass the result as ``prompt=`` to :func:`tm_dist.settings.load_settings`.
    """
    import getpass

    return getpass.getpass if sys.stdin is not None and sys.stdin.isatty() else None


def reject_password_arguments(argv: Sequence[str]) -> None:
    """Raise :class:`PasswordError` when ``argv`` tries to pass a password as a flag.

    For CLIs, before parsing. The message names the flag, never the value.
    """
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.lower() in _PASSWORD_FLAGS:
            raise PasswordError(
                f"{flag} is not accepted: a password on the command line is visible to every "
                f"user of this machine (process list, shell history). {PASSWORD_HINT}"
            )


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (also bracketed or IPv4-mapped)."""
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def normalize_host(host: str) -> str:
    """``host`` as sockets take it: an IPv6 literal written with URL brackets loses them
    (``"[::1]"`` → ``"::1"``); any other host is returned unchanged.

    Raises:
        InvalidValueError: brackets that do not hold exactly an IPv6 address, e.g. ``"[::1"``,
            ``"[example.com]"``, or a port after them (``"[::1]:7714"``: the port is a setting
            of its own).
    """
    if not host.startswith("["):
        if host.endswith("]"):
            raise InvalidValueError(
                f"host {host!r} has an unmatched ']': write an IPv6 address as ::1 or [::1]"
            )
        return host
    inner, bracket, rest = host[1:].partition("]")
    if not bracket:
        raise InvalidValueError(
            f"host {host!r} has an unmatched '[': write an IPv6 address as ::1 or [::1]"
        )
    if rest:
        raise InvalidValueError(
            f"host {host!r} carries {rest!r} after the address: give the host alone ({inner} or "
            f"[{inner}]) and the port separately (port=, --port, connection.port)"
        )
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        raise InvalidValueError(
            f"host {host!r}: brackets may only hold an IPv6 address, got {inner!r}; "
            "write a host name or an IPv4 address without brackets"
        ) from None
    return inner


def check_connection_security(
    host: str,
    port: int,
    *,
    use_tls: bool,
    insecure: bool,
    password: Secret,
    keys_dir: Path | None = None,
) -> None:
    """Refuse plain TCP to a remote host and an empty password, unless ``insecure`` is set.

    An empty password is refused even on loopback: a tlspyo relay listens on every interface.

    Raises:
        InsecureConnectionError: TLS is off, ``host`` is not loopback and insecure is False.
        PasswordError: the password is empty and insecure is False.
    """
    remote = not is_loopback(host)
    if remote and not use_tls:
        if not insecure:
            where = f"into {keys_dir} " if keys_dir is not None else ""
            raise InsecureConnectionError(
                f"refusing plain TCP to {host}:{port}: the password and all traffic would cross "
                "the network unencrypted. Run `tm-dist make-cert` on the server, copy its "
                f"certificate.pem {where}on this machine and leave TLS on; or pass --insecure "
                "if this network is trusted."
            )
        logger.warning("plain TCP to %s:%d (insecure mode)", host, port)
    if password.is_empty:
        if not insecure:
            raise PasswordError(f"no password is set. {PASSWORD_HINT}")
        logger.warning("empty password (insecure mode): anyone who can reach the relay joins")
    elif remote and len(password.reveal()) < 12:
        logger.warning("the password is shorter than 12 characters; use a longer one")
