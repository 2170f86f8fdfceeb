"""The relay: :class:`RelayServer` runs tlspyo's relay in a child process (exported by
:mod:`tm_dist.transport`)."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tm_dist.errors import InvalidValueError
from tm_dist.transport.child.relay import RelayProcess, RoleRule, ServerTLSContext
from tm_dist.transport.errors import TransportError
from tm_dist.transport.framing import (
    FRAME_OVERHEAD,
    Deserializer,
    Serializer,
    auth_token,
    default_codec,
)
from tm_dist.transport.options import (
    CERT_FILE,
    DEFAULT_GROUPS,
    DEFAULT_MAX_MESSAGE_BYTES,
    HEARTBEAT_TIMEOUT_S,
    KEY_FILE,
    MAX_UNAUTHENTICATED,
    PREAUTH_TIMEOUT_S,
    Credential,
    SupportsReveal,
    check_groups,
    check_positive,
    check_security,
    normalize_host,
    read_pem,
    reveal_password,
)
from tm_dist.transport.process import ChildProcess
from tm_dist.transport.queues import DEFAULT_QUEUE_MAX_BYTES, DEFAULT_QUEUE_MAX_MESSAGES, check_caps
from tm_dist.transport.status import Slot, StatusBoard

if TYPE_CHECKING:
    from tm_dist.settings import ConnectionSettings

__all__ = ["RelayServer", "RelayStats"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RelayStats:
    """What a relay has seen since it started (counts of connections unless said otherwise).

    A dropped connection is counted once, under the first reason found.
    """

    port: int
    connections: int
    """Connections taken in (those closed at once by the unauthenticated cap are not)."""
    tcp_nodelay_connections: int
    password_rejects: int
    """Dropped for a token that matches no credential, or that changed on a connection."""
    frame_rejects: int
    """Dropped for a malformed, oversized or undecodable frame, an unknown command, or a
    message sent before the connection's HELLO."""
    queue_drops: int = 0
    """Messages dropped because a group's queue was at its cap (oldest first)."""
    queued_messages: int = 0
    """Messages waiting in the groups' queues (e.g. episode chunks while no trainer is there)."""
    queued_bytes: int = 0
    role_rejects: int = 0
    """Dropped for a HELLO naming a group its credential may not join, or a message to a group
    it may not send or broadcast to (e.g. a worker credential joining "trainers")."""
    hello_rejects: int = 0
    """Dropped for a second HELLO (one identity per connection)."""
    preauth_timeouts: int = 0
    """Dropped for not authenticating (valid token and HELLO) within ``preauth_timeout_s``."""
    unauthenticated_rejects: int = 0
    """Closed at once because ``max_unauthenticated`` connections were already waiting."""
    heartbeat_timeouts: int = 0
    """Authenticated connections dropped after ``heartbeat_timeout_s`` without a byte."""
    unauthenticated: int = 0
    """Connections open now that have not authenticated yet (a gauge, not a count)."""


class RelayServer:
    """tlspyo's relay in a child process (a context manager; start/stop are idempotent).

    Args:
        password: The relay password (a str, or a secret with ``.reveal()``) when
            ``credentials`` is None: then every link with it may join, send to and broadcast to
            every group of ``groups``. Ignored (pass ``""``) when ``credentials`` are given.
        credentials: The roles (:class:`~tm_dist.transport.options.Credential`): each
            connection's role is fixed by the token of its first frame, and a HELLO or a
            destination the role does not allow drops the connection
            (:attr:`RelayStats.role_rejects`). Passwords must differ between roles.
        port: TCP port to listen on; 0 lets the operating system choose (see :attr:`port`).
        host: Interface to listen on: an address (``"::"`` listens on IPv6, and on IPv4 too
            where the OS makes dual-stack sockets, as Linux does by default; ``"[::1]"`` is
            taken as ``"::1"``). Anything but loopback needs TLS or ``insecure``.
        use_tls: Serve TLS with ``keys_dir/key.pem`` and ``keys_dir/certificate.pem``.
        insecure: Allow plaintext on an interface other than loopback.
        keys_dir: Folder of the TLS key and certificate.
        groups: Groups that links may join.
        max_message_bytes: Frames announcing a larger payload are dropped with their connection.
        queue_max_messages / queue_max_bytes: Caps of each group's queue of messages waiting
            for a member (:mod:`tm_dist.transport.queues`: past a cap the oldest are dropped
            and counted in :attr:`RelayStats.queue_drops`).
        serializer / deserializer: Codec for tlspyo's frames and payloads (default: tm_dist.wire).
        heartbeat_timeout_s: Drop an authenticated connection from which nothing arrived for
            this long (links send a ``PING`` every 2 s; see :mod:`tm_dist.transport.options`).
        preauth_timeout_s: Drop a connection that has not authenticated (a valid token, then a
            HELLO its role allows) within this long.
        max_unauthenticated: At most this many connections may wait to authenticate; the relay
            closes further ones at once (:attr:`RelayStats.unauthenticated_rejects`).
        start_timeout_s: How long :meth:`start` waits for the child to listen.
        start_method: ``multiprocessing`` start method (None: the platform's default).

    Raises:
        InvalidValueError: a bad port, size, duration, count, or credentials that name unknown
            groups or share a password.
        PasswordError: an empty password (or a credential's) without ``insecure``.
    """

    def __init__(
        self,
        password: str | SupportsReveal,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        use_tls: bool = True,
        insecure: bool = False,
        keys_dir: str | Path | None = None,
        groups: Sequence[str] = DEFAULT_GROUPS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        queue_max_messages: int = DEFAULT_QUEUE_MAX_MESSAGES,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        serializer: Serializer | None = None,
        deserializer: Deserializer | None = None,
        credentials: Sequence[Credential] | None = None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        preauth_timeout_s: float = PREAUTH_TIMEOUT_S,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        start_timeout_s: float = 10.0,
        start_method: str | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise InvalidValueError(f"port must be in [0, 65535] (0: chosen by the OS), got {port}")
        if max_message_bytes <= FRAME_OVERHEAD:
            raise InvalidValueError(
                f"max_message_bytes must exceed {FRAME_OVERHEAD}, got {max_message_bytes}"
            )
        check_positive("heartbeat_timeout_s", heartbeat_timeout_s)
        check_positive("preauth_timeout_s", preauth_timeout_s)
        check_positive("max_unauthenticated", max_unauthenticated, integer=True)
        host = normalize_host(host)
        check_security(host, use_tls, insecure)
        check_caps(queue_max_messages, queue_max_bytes)
        self._queue_caps = (queue_max_messages, queue_max_bytes)
        self._requested_port = port
        self._host = host
        self._groups = check_groups(groups, tuple(groups))
        self._roles = _role_rules(password, credentials, self._groups, insecure)
        self._limits = (float(heartbeat_timeout_s), float(preauth_timeout_s), max_unauthenticated)
        self._tls = _server_tls(keys_dir) if use_tls else None
        self._max_message_bytes = max_message_bytes
        self._serializer, self._deserializer = default_codec(
            serializer, deserializer, max_message_bytes
        )
        self._start_timeout_s = start_timeout_s
        self._ctx = multiprocessing.get_context(start_method)
        self._status = StatusBoard(self._ctx)
        self._child: ChildProcess | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: ConnectionSettings, *, listen_host: str = "0.0.0.0", **options: Any
    ) -> RelayServer:
        """A relay for ``settings`` (passwords, port, TLS, keys, limits) on ``listen_host``.

        ``settings.host`` is where endpoints reach the relay; the relay itself listens on
        ``listen_host`` (every IPv4 interface by default; ``"::"`` for IPv6, see the class),
        which needs TLS unless it is loopback. The roles are
        :func:`tm_dist.settings.fleet_credentials` (a worker and a trainer credential) unless
        ``options`` give ``credentials``.

        Raises:
            PasswordError: no trainer password and not ``settings.insecure``.
        """
        if "credentials" not in options:
            from tm_dist.settings import fleet_credentials

            options["credentials"] = fleet_credentials(settings)
        return cls(
            settings.password,
            port=settings.port,
            host=listen_host,
            use_tls=settings.use_tls,
            insecure=settings.insecure,
            keys_dir=settings.keys_dir,
            max_message_bytes=settings.max_message_bytes,
            queue_max_messages=settings.queue_max_messages,
            queue_max_bytes=settings.queue_max_bytes,
            **options,
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RelayServer(host={self._host!r}, port={self.port}, {state})"

    @property
    def port(self) -> int:
        """The port the relay listens on (the OS-chosen one once started with ``port=0``)."""
        return self._status.get(Slot.PORT) or self._requested_port

    @property
    def pid(self) -> int | None:
        """Process id of the child running the relay, None before start."""
        return None if self._child is None else self._child.process.pid

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.process.is_alive()

    def start(self) -> RelayServer:
        """Start the relay and wait until it listens; no-op if already started."""
        with self._lock:
            if self._child is not None:
                return self
            process = RelayProcess(
                port=self._requested_port,
                host=self._host,
                roles=self._roles,
                groups=self._groups,
                serializer=self._serializer,
                deserializer=self._deserializer,
                max_message_bytes=self._max_message_bytes,
                tls=self._tls,
                status=self._status,
                queue_max_messages=self._queue_caps[0],
                queue_max_bytes=self._queue_caps[1],
                heartbeat_timeout_s=self._limits[0],
                preauth_timeout_s=self._limits[1],
                max_unauthenticated=self._limits[2],
            )
            child = ChildProcess(process.run, process, self._ctx, "tm-dist-relay")
            child.start(self._start_timeout_s, self._status, "relay")
            self._child = child
        deadline = time.monotonic() + self._start_timeout_s
        while self._status.get(Slot.PORT) == 0:
            if self._status.get(Slot.FATAL) or not child.process.is_alive():
                note = self._status.last_note
                self.stop()
                raise TransportError(f"relay failed to start: {note}")
            if time.monotonic() > deadline:
                self.stop()
                raise TransportError(f"relay did not listen within {self._start_timeout_s} s")
            time.sleep(0.01)
        logger.info("relay listening on %s:%d", self._host, self.port)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the relay (closing every connection); no-op if not running."""
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            stop = self._serializer(("STOP", None))
            child.stop(timeout_s, stop)
            if child.conn is not None:
                child.conn.close()

    def stats(self) -> RelayStats:
        s = self._status
        return RelayStats(
            port=self.port,
            connections=s.get(Slot.CONNECTIONS),
            tcp_nodelay_connections=s.get(Slot.NODELAY),
            password_rejects=s.get(Slot.PASSWORD_REJECTS),
            frame_rejects=s.get(Slot.FRAME_REJECTS),
            queue_drops=s.get(Slot.QUEUE_DROPS),
            queued_messages=s.get(Slot.QUEUED_MESSAGES),
            queued_bytes=s.get(Slot.QUEUED_BYTES),
            role_rejects=s.get(Slot.ROLE_REJECTS),
            hello_rejects=s.get(Slot.HELLO_REJECTS),
            preauth_timeouts=s.get(Slot.PREAUTH_TIMEOUTS),
            unauthenticated_rejects=s.get(Slot.UNAUTHENTICATED_REJECTS),
            heartbeat_timeouts=s.get(Slot.HEARTBEAT_TIMEOUTS),
            unauthenticated=s.get(Slot.UNAUTHENTICATED),
        )

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _role_rules(
    password: str | SupportsReveal,
    credentials: Sequence[Credential] | None,
    groups: tuple[str, ...],
    insecure: bool,
) -> tuple[RoleRule, ...]:
    """What the relay child needs of the roles: tokens (never passwords) and allowed groups."""
    everything = frozenset(groups)
    if credentials is None:
        token = auth_token(reveal_password(password, insecure)).encode("ascii")
        return (RoleRule("any", token, everything, everything, everything),)
    if isinstance(credentials, Credential) or not credentials:
        raise InvalidValueError(
            "credentials must be a non-empty sequence of Credential (or None for one password "
            f"allowing every group), got {credentials!r}"
        )
    rules: list[RoleRule] = []
    for cred in credentials:
        if not isinstance(cred, Credential):
            raise InvalidValueError(f"credentials holds {type(cred).__name__}, expected Credential")
        unknown = sorted(cred.groups() - everything)
        if unknown:
            raise InvalidValueError(
                f"credential {cred.role!r} names unknown group(s) {unknown}: the relay's groups "
                f"are {list(groups)}"
            )
        token = auth_token(reveal_password(cred.password, insecure)).encode("ascii")
        for other in rules:
            if other.token == token:
                raise InvalidValueError(
                    f"credentials {other.role!r} and {cred.role!r} have the same password, so "
                    "the relay could not tell them apart: give each role its own password"
                )
        rules.append(RoleRule(cred.role, token, cred.may_join, cred.may_send, cred.may_broadcast))
    return tuple(rules)


def _server_tls(keys_dir: str | Path | None) -> ServerTLSContext:
    key_pem, cert_pem = read_pem(keys_dir, (KEY_FILE, CERT_FILE))
    tls = ServerTLSContext(key_pem, cert_pem)
    try:
        tls.getContext()  # fail here, with a clear message, rather than in the child
    except Exception as exc:
        raise InvalidValueError(
            f"cannot use the TLS key and certificate in {keys_dir} ({type(exc).__name__}): "
            "expected matching PEM files key.pem (unencrypted) and certificate.pem; "
            "recreate them with `tm-dist make-cert`"
        ) from None
    return tls
