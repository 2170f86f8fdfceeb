"""Errors, security policy and process plumbing shared by the relay and the link.

See :mod:`tm_dist.transport` for the public API.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from tm_dist.security import PASSWORD_HINT, InsecureConnectionError, PasswordError, is_loopback
from tm_dist.transport_child import HEADER_SIZE, Deserializer, Serializer, StatusBoard

logger = logging.getLogger(__name__)


DEFAULT_GROUPS: tuple[str, ...] = ("workers", "trainers", "server")
"""The groups a relay accepts and a link may join."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CERT_FILE = "certificate.pem"
KEY_FILE = "key.pem"
FRAME_OVERHEAD = 1024


class TransportError(RuntimeError):
    """Base class of the transport's errors."""


class RelayUnreachableError(TransportError, ConnectionError):
    """No relay answered at the given address."""


class AuthenticationError(TransportError):
    """The relay was reached but refused the password."""


class TLSHandshakeError(TransportError, ConnectionError):
    """The relay was reached but the TLS handshake failed."""


class MessageTooLargeError(TransportError, ValueError):
    """A message is larger than the configured ``max_message_bytes``."""


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
        raise TypeError(
            f"password must be a str or a secret with .reveal(), got {type(password).__name__}"
        )
    if not value and not insecure:
        raise PasswordError(f"the password is empty. {PASSWORD_HINT}")
    return value


def default_codec(
    serializer: Serializer | None, deserializer: Deserializer | None, max_message_bytes: int
) -> tuple[Serializer, Deserializer]:
    """The given codec, or :mod:`tm_dist.wire`'s with its size limit set to ours."""
    if serializer is None or deserializer is None:
        from tm_dist import wire  # imported late: only needed for the defaults

        if serializer is None:
            serializer = wire.tlspyo_serializer
        if deserializer is None:
            limit = max_message_bytes + FRAME_OVERHEAD
            deserializer = functools.partial(wire.tlspyo_deserializer, max_bytes=limit)
    return serializer, deserializer


def read_pem(keys_dir: str | Path | None, names: Sequence[str]) -> list[bytes]:
    if keys_dir is None:
        raise ValueError(
            "TLS needs keys_dir (a folder holding certificate.pem, and key.pem on the server): "
            "run `tm-dist make-cert`, or use_tls=False on loopback"
        )
    folder = Path(keys_dir)
    parts = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"TLS file {path} not found: expected {', '.join(names)} in {folder} "
                "(create them with `tm-dist make-cert`; workers need the server's certificate.pem)"
            )
        parts.append(path.read_bytes())
    return parts


def check_groups(groups: str | Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    names = (groups,) if isinstance(groups, str) else tuple(groups)
    if not names:
        raise ValueError(f"groups is empty: expected one or more of {list(allowed)}")
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown group {name!r}: expected one of {list(allowed)}")
    return names


def frame(payload: bytes) -> bytes:
    return f"{len(payload):<{HEADER_SIZE}}".encode("ascii") + payload


class ChildProcess:
    """A Twisted child process and the local socket through which its parent drives it."""

    def __init__(self, target: Callable[[], None], owner: Any, ctx: Any, name: str):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        owner._local_com_port = self._listener.getsockname()[1]
        self.process: BaseProcess = ctx.Process(target=target, name=name, daemon=True)
        self.conn: socket.socket | None = None
        self._send_lock = threading.Lock()

    def start(self, timeout_s: float, status: StatusBoard, what: str) -> None:
        self.process.start()
        self._listener.settimeout(0.05)
        deadline = time.monotonic() + timeout_s
        try:
            while self.conn is None:
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    if not self.process.is_alive():
                        note = status.last_note or f"exit code {self.process.exitcode}"
                        raise TransportError(f"{what} failed to start: {note}") from None
                    if time.monotonic() > deadline:
                        raise TransportError(f"{what} did not start within {timeout_s} s") from None
                    continue
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conn = conn
        except BaseException:
            self.stop(timeout_s=1.0)
            raise
        finally:
            self._listener.close()

    def send(self, payload: bytes) -> None:
        conn = self.conn
        if conn is None:
            raise TransportError("the transport is stopped: start it before sending")
        try:
            with self._send_lock:
                conn.sendall(frame(payload))
        except OSError as exc:
            raise TransportError(
                f"the transport's child process is gone (exit code {self.process.exitcode}, "
                f"{exc}): stop this object and start a new one"
            ) from exc

    def stop(self, timeout_s: float, stop_frame: bytes | None = None) -> None:
        """Ask the child to stop; terminate, then kill it if it does not."""
        if stop_frame is not None and self.conn is not None and self.process.is_alive():
            with contextlib.suppress(TransportError):
                self.send(stop_frame)
        if self.process.pid is not None:
            self.process.join(timeout_s)
            if self.process.is_alive():
                logger.warning("transport child %s did not stop, terminating it", self.process.pid)
                self.process.terminate()
                self.process.join(2.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(2.0)
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
