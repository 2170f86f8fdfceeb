"""A process's connection to the relay: :class:`Link` (exported by :mod:`tm_dist.transport`).

Delivery promise of :meth:`Link.send` and :meth:`Link.broadcast`, as seen by the sender:

* a message ``send()`` accepted (it returned without raising) is *delivered* once the relay has
  acknowledged it; from then on the relay keeps it for a member of the group (its queue has
  caps, see :mod:`tm_dist.transport.queues`, and drops past them are counted in
  :attr:`RelayStats.queue_drops <tm_dist.transport.RelayStats.queue_drops>`);
* while the connection is down the link keeps unsent and unacknowledged messages and sends
  them again on reconnection (at least once: a receiver may see a duplicate); past the
  outbox caps the oldest are dropped and counted in :attr:`LinkStats.queue_drops`;
* :meth:`Link.stop` flushes: it returns once the relay has acknowledged everything accepted,
  or after ``timeout_s``; it returns the number it could not deliver, logs it, and keeps it in
  :attr:`LinkStats.undelivered`. So a message is lost without a count only when its whole
  process is killed (SIGKILL, power loss) before the relay acknowledged it.

What a *receiver* loses on stop: messages already pushed to it (in its inbox, or in flight from
the relay) when it stops are gone; the relay does not keep consumables it delivered.
"""

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

from tm_dist.errors import InvalidTypeError, InvalidValueError
from tm_dist.security import PASSWORD_HINT, normalize_host
from tm_dist.transport.child.link import LinkProcess
from tm_dist.transport.errors import (
    AuthenticationError,
    MessageTooLargeError,
    ReceiveTimeoutError,
    RelayUnreachableError,
    TLSHandshakeError,
    TransportError,
)
from tm_dist.transport.framing import (
    FRAME_OVERHEAD,
    HEADER_SIZE,
    Deserializer,
    Serializer,
    default_codec,
)
from tm_dist.transport.options import (
    CERT_FILE,
    DEFAULT_GROUPS,
    DEFAULT_MAX_MESSAGE_BYTES,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TIMEOUT_S,
    SupportsReveal,
    check_groups,
    check_security,
    read_pem,
    reveal_password,
)
from tm_dist.transport.process import ChildProcess
from tm_dist.transport.queues import (
    DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_QUEUE_MAX_MESSAGES,
    BoundedQueue,
    check_caps,
)
from tm_dist.transport.status import FailureKind, LinkState, Slot, StatusBoard

if TYPE_CHECKING:
    from tm_dist.settings import ConnectionSettings

__all__ = ["Link", "LinkStats"]

logger = logging.getLogger(__name__)

_FAILURE_WORDS = {
    FailureKind.REFUSED: "connection refused",
    FailureKind.TIMEOUT: "connection timed out",
    FailureKind.DNS: "host name not found",
    FailureKind.OTHER: "connection failed",
}


@dataclasses.dataclass(frozen=True)
class LinkStats:
    """What a link has seen since it started."""

    connected: bool
    authentications: int
    tcp_nodelay_connections: int
    connect_failures: int
    password_rejects: int
    tls_failures: int
    dropped_messages: int
    queue_drops: int = 0
    """Messages dropped because a queue was at its cap, oldest first: received ones nobody
    took (this process) plus unsent ones while the relay was unreachable (the child)."""
    accepted: int = 0
    """Messages ``send()`` and ``broadcast()`` accepted."""
    delivered: int = 0
    """Of those, the messages the relay has acknowledged."""
    undelivered: int = 0
    """Messages the last :meth:`Link.stop` could not deliver within its timeout (0 while
    running; the outbox's cap drops are in ``queue_drops``, not here)."""
    heartbeat_timeouts: int = 0
    """Connections dropped because nothing arrived from the relay for ``heartbeat_timeout_s``."""


class Link:
    """One process's membership of relay groups: send, broadcast and receive objects.

    A context manager: entering calls :meth:`connect`, which returns once the relay has
    acknowledged the password, and raises otherwise. Afterwards the link reconnects by itself
    if the connection drops; messages sent meanwhile are kept and delivered on reconnection.

    Args:
        password: The relay password (a str, or a secret with ``.reveal()``).
        host: Address of the relay. Anything but loopback needs TLS or ``insecure``.
        port: Port of the relay.
        groups: Group(s) this link joins, among ``allowed_groups``.
        use_tls: Use TLS, trusting only ``keys_dir/certificate.pem``.
        insecure: Allow plaintext to an address other than loopback.
        keys_dir: Folder holding the relay's certificate.
        tls_hostname: Name the certificate must carry (``make-cert`` and tlspyo use "default").
        connect_timeout_s: How long :meth:`connect` waits for the relay's acknowledgement.
        max_message_bytes: Largest message sent or accepted.
        queue_max_messages / queue_max_bytes: Caps of the inbox (received, not yet taken) and
            of the outbox (waiting for the relay while disconnected); past a cap the oldest are
            dropped and counted in :attr:`LinkStats.queue_drops`.
        serializer / deserializer: Codec for tlspyo's frames and payloads (default: tm_dist.wire).
        reconnect_initial_delay_s / reconnect_max_delay_s: Back-off between reconnections.
        allowed_groups: Group names accepted for ``groups`` (the relay's list).
        start_method: ``multiprocessing`` start method (None: the platform's default).
        heartbeat_interval_s: Seconds between ``PING`` frames once authenticated.
        heartbeat_timeout_s: When nothing at all arrived from the relay for this long, the
            connection is dropped (``connected`` turns False) and re-opened; must exceed
            ``heartbeat_interval_s``.

    The child process that holds the connection stops when this process dies, even by
    SIGKILL (see :mod:`tm_dist.transport.child`).
    """

    def __init__(
        self,
        password: str | SupportsReveal,
        *,
        host: str = "127.0.0.1",
        port: int,
        groups: str | Sequence[str],
        use_tls: bool = True,
        insecure: bool = False,
        keys_dir: str | Path | None = None,
        tls_hostname: str = "default",
        connect_timeout_s: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        queue_max_messages: int = DEFAULT_QUEUE_MAX_MESSAGES,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        serializer: Serializer | None = None,
        deserializer: Deserializer | None = None,
        reconnect_initial_delay_s: float = 0.5,
        reconnect_max_delay_s: float = 15.0,
        allowed_groups: Sequence[str] = DEFAULT_GROUPS,
        start_method: str | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        if not 1 <= port <= 65535:
            raise InvalidValueError(f"port must be in [1, 65535], got {port}")
        if connect_timeout_s <= 0:
            raise InvalidValueError(f"connect_timeout_s must be positive, got {connect_timeout_s}")
        if max_message_bytes <= FRAME_OVERHEAD:
            raise InvalidValueError(
                f"max_message_bytes must exceed {FRAME_OVERHEAD}, got {max_message_bytes}"
            )
        if not 0 < reconnect_initial_delay_s <= reconnect_max_delay_s:
            raise InvalidValueError(
                "expected 0 < reconnect_initial_delay_s <= reconnect_max_delay_s, got "
                f"{reconnect_initial_delay_s} and {reconnect_max_delay_s}"
            )
        if not 0 < heartbeat_interval_s < heartbeat_timeout_s:
            raise InvalidValueError(
                "expected 0 < heartbeat_interval_s < heartbeat_timeout_s, got "
                f"{heartbeat_interval_s} and {heartbeat_timeout_s}: the relay must have time "
                "to answer a PING before the link gives up on it"
            )
        check_security(host, use_tls, insecure)
        check_caps(queue_max_messages, queue_max_bytes)
        self._queue_caps = (queue_max_messages, queue_max_bytes)
        self._heartbeat = (heartbeat_interval_s, heartbeat_timeout_s)
        self._password = reveal_password(password, insecure)
        self._host = normalize_host(host)  # "[::1]" -> "::1"
        self._port = port
        self._groups = check_groups(groups, allowed_groups)
        self._allowed_groups = tuple(allowed_groups)
        self._cert_pem = read_pem(keys_dir, (CERT_FILE,))[0] if use_tls else None
        self._tls_hostname = tls_hostname
        self._connect_timeout_s = connect_timeout_s
        self._max_message_bytes = max_message_bytes
        self._serializer, self._deserializer = default_codec(
            serializer, deserializer, max_message_bytes
        )
        self._reconnect = (reconnect_initial_delay_s, reconnect_max_delay_s)
        self._ctx = multiprocessing.get_context(start_method)
        self._status = StatusBoard(self._ctx)
        self._inbox: BoundedQueue[Any] = BoundedQueue(queue_max_messages, queue_max_bytes)
        self._arrived = threading.Condition()
        self._dropped = 0
        self._accepted = 0
        self._undelivered = 0
        self._count_lock = threading.Lock()
        self._child: ChildProcess | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: ConnectionSettings,
        *,
        groups: str | Sequence[str],
        role: str = "worker",
        **options: Any,
    ) -> Link:
        """A link to the relay described by ``settings``, joining ``groups`` as ``role``.

        ``role="worker"`` uses ``settings.password``; ``role="trainer"`` uses
        ``settings.trainer_password`` (falling back to ``settings.password`` only when that is
        empty and ``settings.insecure``: a relay without roles).

        Raises:
            InvalidValueError: ``role`` is neither "worker" nor "trainer".
            PasswordError: ``role="trainer"`` and no trainer password is set (not insecure).
        """
        return cls(
            _role_password(settings, role),
            host=settings.host,
            port=settings.port,
            groups=groups,
            use_tls=settings.use_tls,
            insecure=settings.insecure,
            keys_dir=settings.keys_dir,
            max_message_bytes=settings.max_message_bytes,
            connect_timeout_s=settings.connect_timeout_s,
            queue_max_messages=settings.queue_max_messages,
            queue_max_bytes=settings.queue_max_bytes,
            **options,
        )

    def __repr__(self) -> str:
        state = "connected" if self.connected else "not connected"
        return f"Link({self._host}:{self._port}, groups={list(self._groups)}, {state})"

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def groups(self) -> tuple[str, ...]:
        return self._groups

    @property
    def pid(self) -> int | None:
        """Process id of the child holding the connection, None before connect."""
        return None if self._child is None else self._child.process.pid

    @property
    def connected(self) -> bool:
        """Whether the relay has acknowledged this link on its current connection."""
        alive = self._child is not None and self._child.process.is_alive()
        return alive and self._status.get(Slot.STATE) == LinkState.AUTHENTICATED

    # ---------------------------------------------------------------------------- lifecycle

    def connect(self) -> Link:
        """Start the link and wait until the relay acknowledges it (no-op if started).

        Raises:
            AuthenticationError: The relay closed the connection on receiving the password.
            TLSHandshakeError: The relay was reached but TLS failed (certificate, host name,
                or one side not using TLS).
            RelayUnreachableError: No acknowledgement within ``connect_timeout_s``.
        """
        with self._lock:
            if self._child is not None:
                return self
            initial, maximum = self._reconnect
            process = LinkProcess(
                host=self._host,
                port=self._port,
                password=self._password,
                groups=self._groups,
                serializer=self._serializer,
                deserializer=self._deserializer,
                max_message_bytes=self._max_message_bytes,
                tls_cert_pem=self._cert_pem,
                tls_hostname=self._tls_hostname,
                connect_timeout_s=self._connect_timeout_s,
                reconnect_initial_delay_s=initial,
                reconnect_max_delay_s=maximum,
                status=self._status,
                queue_max_messages=self._queue_caps[0],
                queue_max_bytes=self._queue_caps[1],
                heartbeat_interval_s=self._heartbeat[0],
                heartbeat_timeout_s=self._heartbeat[1],
            )
            child = ChildProcess(process.run, process, self._ctx, "tm-dist-link")
            self._status.set(Slot.DRAIN_TIMEOUT_MS, 0)
            child.start(max(self._connect_timeout_s, 10.0), self._status, "link")
            self._child = child
            self._reader = threading.Thread(
                target=self._read_loop, args=(child,), name="tm-dist-link-reader", daemon=True
            )
            self._reader.start()
        try:
            self._wait_authenticated()
        except BaseException:
            self.stop()
            raise
        logger.info("link %s joined %s", self.address, ", ".join(self._groups))
        return self

    def _wait_authenticated(self) -> None:
        status = self._status
        deadline = time.monotonic() + self._connect_timeout_s
        while status.get(Slot.AUTHENTICATED) == 0:
            if status.get(Slot.PASSWORD_REJECTS) > 0:
                raise AuthenticationError(
                    f"wrong password: the relay at {self.address} was reached but closed the "
                    "connection as soon as it received this link's password: the password is "
                    f"wrong; give this machine the server's password. {PASSWORD_HINT}"
                )
            if status.get(Slot.TLS_FAILURES) > 0:
                raise TLSHandshakeError(
                    f"the relay at {self.address} was reached but the TLS handshake failed "
                    f"({status.last_note}). Check that keys_dir holds the server's "
                    f"certificate.pem, that it names {self._tls_hostname!r}, and that the "
                    "server uses TLS too."
                )
            child = self._child
            if child is None or not child.process.is_alive():
                raise TransportError(f"the link to {self.address} stopped while connecting")
            if time.monotonic() > deadline:
                raise self._timeout_error()
            time.sleep(0.01)

    def _timeout_error(self) -> TransportError:
        status = self._status
        waited = f"within {self._connect_timeout_s} s"
        state = status.get(Slot.STATE)
        if state in (LinkState.TCP_CONNECTED, LinkState.GREETED):
            return TLSHandshakeError(
                f"reached {self.address} but got no tlspyo greeting {waited}: is it a tm-dist "
                "server, and do both sides agree on TLS (use_tls / --insecure)?"
            )
        if status.get(Slot.CONNECT_FAILURES) > 0:
            kind = FailureKind(status.get(Slot.FAILURE_KIND))
            words = _FAILURE_WORDS.get(kind, "connection failed")
            return RelayUnreachableError(
                f"cannot reach a relay at {self.address} ({words}: {status.last_note}) "
                f"{waited}: is `tm-dist server` running there, are the host and port right, "
                "and does the firewall let the port through?"
            )
        return RelayUnreachableError(
            f"no answer from a relay at {self.address} {waited}: check the host and port, "
            "or raise connect_timeout_s on a slow network"
        )

    def stop(self, timeout_s: float = 10.0) -> int:
        """Deliver what was accepted, close the connection and stop the child process.

        Waits until the relay has acknowledged every message :meth:`send` and
        :meth:`broadcast` accepted, or ``timeout_s`` (reconnecting meanwhile if the connection
        is down). Returns the number of messages it could not deliver in that time (0 when
        all went through; also 0, a no-op, when the link is not running); a positive count is
        logged and kept in :attr:`LinkStats.undelivered`. Messages dropped earlier at the
        outbox cap are counted in :attr:`LinkStats.queue_drops` instead.
        """
        if timeout_s <= 0:
            raise InvalidValueError(f"timeout_s must be positive, got {timeout_s}")
        with self._lock:
            child, self._child = self._child, None
            reader, self._reader = self._reader, None
        if child is None:
            return 0
        self._status.set(Slot.DRAIN_TIMEOUT_MS, max(1, round(timeout_s * 1000)))
        # the child drains for timeout_s and then stops by itself: the margin is its exit
        child.stop(timeout_s + 3.0, self._serializer(("STOP", None, self._serializer(None))))
        if reader is not None:
            reader.join(timeout_s)
        if child.conn is not None:
            child.conn.close()
        undelivered = self._in_flight()
        self._undelivered = undelivered
        if undelivered:
            logger.warning(
                "link %s stopped with %d of %d accepted message(s) not acknowledged by the "
                "relay within %.3g s (unreachable or too slow): they may be lost",
                self.address,
                undelivered,
                self._accepted,
                timeout_s,
            )
        return undelivered

    def _in_flight(self) -> int:
        """Messages accepted and neither acknowledged by the relay nor dropped at a cap."""
        s = self._status
        with self._count_lock:
            accepted = self._accepted
        return max(0, accepted - s.get(Slot.DELIVERED) - s.get(Slot.QUEUE_DROPS))

    def __enter__(self) -> Link:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------------- sending

    def _send(self, group: str, copies: int, obj: Any) -> None:
        if group not in self._allowed_groups:
            raise InvalidValueError(
                f"unknown group {group!r}: expected one of {list(self._allowed_groups)}"
            )
        child = self._child
        if child is None:
            raise TransportError("the link is not started: call connect() (or use `with`) first")
        payload = self._serializer(obj)
        if len(payload) + FRAME_OVERHEAD > self._max_message_bytes:
            raise MessageTooLargeError(
                f"message of {len(payload)} B exceeds max_message_bytes="
                f"{self._max_message_bytes} (minus {FRAME_OVERHEAD} B of framing): split it, "
                "or raise the limit on the relay and on every link"
            )
        child.send(self._serializer(("OBJ", {group: copies}, payload)))
        with self._count_lock:
            self._accepted += 1

    def send(self, group: str, obj: Any) -> None:
        """Queue ``obj`` for exactly one member of ``group`` (kept at the relay until one joins)."""
        self._send(group, 1, obj)

    def broadcast(self, group: str, obj: Any) -> None:
        """Send ``obj`` to every member of ``group``; the relay also keeps it for later joiners.

        Each broadcast replaces the previous one kept for that group.
        """
        self._send(group, -1, obj)

    # ---------------------------------------------------------------------------- receiving

    def _read_loop(self, child: ChildProcess) -> None:
        conn = child.conn
        assert conn is not None
        buffer = bytearray()
        while True:
            try:
                chunk = conn.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= HEADER_SIZE:
                try:
                    length = int(buffer[:HEADER_SIZE])
                except ValueError:
                    logger.error("link lost framing with its child process; closing the reader")
                    return
                end = HEADER_SIZE + length
                if len(buffer) < end:
                    break
                frame = bytes(buffer[HEADER_SIZE:end])
                del buffer[:end]
                self._deliver(frame)

    def _deliver(self, frame: bytes) -> None:
        try:
            _stamp, cmd, payload = self._deserializer(frame)
            if cmd != "OBJ":
                return
            if not isinstance(payload, bytes):
                raise InvalidTypeError(f"payload is {type(payload).__name__}, expected bytes")
            obj = self._deserializer(payload)
        except Exception as exc:
            self._dropped += 1
            logger.warning(
                "link %s dropped a message that failed to decode (%s: %.200s)",
                self.address,
                type(exc).__name__,
                exc,
            )
            return
        with self._arrived:
            dropped = self._inbox.dropped
            self._inbox.append(obj)
            if self._inbox.dropped > dropped and dropped == 0:
                logger.warning(
                    "link %s inbox at its cap (%d messages, %d bytes): dropping the oldest "
                    "received messages (counted in queue_drops); is this process keeping up?",
                    self.address,
                    self._inbox.max_messages,
                    self._inbox.max_bytes,
                )
            self._arrived.notify()

    def receive(self, timeout: float | None = None) -> Any:
        """The oldest received object, waiting up to ``timeout`` seconds (None: forever).

        Raises:
            ReceiveTimeoutError: Nothing arrived in time (a :class:`TimeoutError`).
        """
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._inbox) > 0, timeout=timeout):
                raise ReceiveTimeoutError(
                    f"link {self.address} received nothing within {timeout} s"
                )
            return self._inbox.popleft()

    def receive_all(self) -> list[Any]:
        """Every object received so far, oldest first (possibly empty); does not wait."""
        with self._arrived:
            items = list(self._inbox)
            self._inbox.clear()
        return items

    def get_last(self) -> Any | None:
        """The newest received object (None if there is none), discarding the older ones."""
        items = self.receive_all()
        return items[-1] if items else None

    def stats(self) -> LinkStats:
        s = self._status
        return LinkStats(
            connected=self.connected,
            authentications=s.get(Slot.AUTHENTICATED),
            tcp_nodelay_connections=s.get(Slot.NODELAY),
            connect_failures=s.get(Slot.CONNECT_FAILURES),
            password_rejects=s.get(Slot.PASSWORD_REJECTS),
            tls_failures=s.get(Slot.TLS_FAILURES),
            dropped_messages=self._dropped,
            queue_drops=self._inbox.dropped + s.get(Slot.QUEUE_DROPS),
            accepted=self._accepted,
            delivered=s.get(Slot.DELIVERED),
            undelivered=self._undelivered,
            heartbeat_timeouts=s.get(Slot.LINK_HEARTBEAT_TIMEOUTS),
        )


def _role_password(settings: ConnectionSettings, role: str) -> str | SupportsReveal:
    """The password ``role`` uses at the relay described by ``settings``."""
    if role == "worker":
        return settings.password
    if role != "trainer":
        raise InvalidValueError(f"role={role!r}: expected 'worker' or 'trainer'")
    trainer: Any = getattr(settings, "trainer_password", None)  # older settings lack it
    if trainer is not None and reveal_password(trainer, insecure=True):
        return trainer
    if settings.insecure:
        return settings.password  # a relay without roles (insecure, no trainer password)
    from tm_dist.security import PasswordError

    raise PasswordError(
        "role='trainer' needs the trainer password (connection.trainer_password): run "
        "`tm-dist make-cert`, which writes KEYS_DIR/trainer_password, and copy it to the "
        "trainer machine, or set TM_DIST_TRAINER_PASSWORD"
    )
