"""A link's child process: tlspyo's endpoint client, observed (see
:mod:`tm_dist.transport.child`).

Beyond tlspyo's client it keeps its connection honest and its messages accounted for:

* heartbeats: once authenticated it sends ``PING`` every ``heartbeat_interval_s`` (the relay
  acknowledges it); when nothing at all has arrived from the relay for ``heartbeat_timeout_s``
  it aborts the connection (counted in ``Slot.LINK_HEARTBEAT_TIMEOUTS``), reports
  DISCONNECTED and reconnects as usual, so a black-holed relay is noticed;
* delivery: each message (``OBJ``) the relay acknowledges is counted in ``Slot.DELIVERED``;
  unacknowledged ones are sent again after a reconnection; on STOP (or when the parent is
  gone) the child keeps running until every message it was given is acknowledged or the
  drain time (``Slot.DRAIN_TIMEOUT_MS``) has passed, and logs how many it could not deliver.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tlspyo.client import Client, ClientProtocol
from tlspyo.local_protocol_for_client import LocalProtocolForClient, LocalProtocolForClientFactory
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.python.failure import Failure

from tm_dist.transport.child import enable_nodelay, prepare_signals, run_reactor, stop_reactor
from tm_dist.transport.framing import (
    AUTH_TOKEN_SIZE,
    HEADER_SIZE,
    Deserializer,
    Serializer,
    auth_token,
    parse_length,
)
from tm_dist.transport.queues import BoundedQueue
from tm_dist.transport.status import FailureKind, LinkState, Slot, StatusBoard

__all__ = ["LinkFactory", "LinkProcess", "LinkProtocol"]

logger = logging.getLogger(__name__)

STANDING_CREDIT = 1 << 40
"""Consumables a link asks for on each (re)connection: in practice, all of them, as they come."""

DEFAULT_DRAIN_S = 5.0
"""How long a child flushes when its parent did not say (the parent died, or SIGTERM)."""


class LinkProtocol(ClientProtocol):
    """A link's connection to the relay: tlspyo's handshake, observed and reported."""

    _state: str  # tlspyo's: HANDSHAKE, ALIVE, DEAD; ours: KILLED

    def __init__(self, client: LinkProcess) -> None:
        super().__init__(
            client=client,
            password=auth_token(client.password),  # the token stands for the password
            header_size=HEADER_SIZE,
            groups=client.groups,
        )
        self._link = client
        self._buffer = bytearray()  # appended in place: big frames arrive in many pieces
        self._greeted = False
        self._hello_stamp: int | None = None
        self._authenticated = False
        self._heard_at = self._pinged_at = time.monotonic()
        self._heartbeat: Any = None

    def connectionMade(self) -> None:
        status = self._link.status
        status.add(Slot.CONNECTIONS)
        status.set(Slot.STATE, LinkState.TCP_CONNECTED)
        enable_nodelay(self.transport, status)
        super().connectionMade()
        from twisted.internet.task import LoopingCall

        link = self._link
        self._heard_at = self._pinged_at = time.monotonic()
        period = min(link.heartbeat_interval_s, link.heartbeat_timeout_s / 4)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.start(period, now=False)

    def _beat(self) -> None:
        """PING when due (authenticated only); abort after ``heartbeat_timeout_s`` of silence."""
        if self._state in ("KILLED", "DEAD"):
            return
        link = self._link
        now = time.monotonic()
        if now - self._heard_at > link.heartbeat_timeout_s:
            link.status.add(Slot.LINK_HEARTBEAT_TIMEOUTS)
            link.status.note(
                f"nothing arrived from the relay for {link.heartbeat_timeout_s:.3g} s "
                "(heartbeat timeout): reconnecting"
            )
            logger.warning(
                "link heard nothing from the relay for %.3g s: dropping the connection and "
                "reconnecting",
                link.heartbeat_timeout_s,
            )
            self._state = "KILLED"
            self.transport.abortConnection()
            return
        if self._authenticated and now - self._pinged_at >= link.heartbeat_interval_s:
            self._pinged_at = now
            self.send_obj(cmd="PING", obj=None)

    def send_obj(self, cmd: str = "OBJ", dest: Any = None, obj: Any = None) -> None:
        super().send_obj(cmd=cmd, dest=dest, obj=obj)
        if cmd == "OBJ":
            self._link.unconfirmed.add(self._link.ack_stamp)

    def connectionLost(self, reason: Failure) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        status = self._link.status
        if self._state != "KILLED":
            if not self._greeted:
                from OpenSSL.SSL import Error as TLSError

                if reason.check(TLSError) is not None:
                    status.add(Slot.TLS_FAILURES)
                    status.note(f"TLS handshake failed: {reason.getErrorMessage()}")
            elif self._hello_stamp is not None and not self._authenticated:
                status.add(Slot.PASSWORD_REJECTS)
                status.note("the relay closed the connection right after receiving the password")
        self._requeue_unacknowledged()
        status.set(Slot.STATE, LinkState.DISCONNECTED)
        super().connectionLost(reason)

    def _requeue_unacknowledged(self) -> None:
        """Messages the relay never acknowledged go out again after the reconnection.

        Their acknowledgements can never come on a new connection; the messages themselves may
        or may not have reached the relay, so they are sent again (at least once: the trainer
        drops the duplicates it gets).
        """
        pending = self._link.pending_acks
        self._link.unconfirmed.clear()
        again: list[tuple[str, Any, Any]] = []
        skip = HEADER_SIZE + AUTH_TOKEN_SIZE
        for stamp in sorted(pending):
            frame = pending[stamp][1]
            try:
                _stamp, cmd, dest, obj = self._link.deserializer(frame[skip:])
            except Exception:  # our own frame: cannot happen, but never crash the reactor
                logger.warning("link could not re-read an unacknowledged message; dropped")
                continue
            if cmd == "OBJ":  # HELLO, NTF and PING are sent afresh on every connection
                again.append((cmd, dest, obj))
        pending.clear()
        if again:
            logger.info("link will resend %d unacknowledged message(s)", len(again))
            self._link.store.prepend(again)

    def _kill(self, why: str) -> None:
        self._link.status.add(Slot.FRAME_REJECTS)
        logger.warning("link dropped its connection to the relay: %s", why)
        self._state = "KILLED"
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._state == "KILLED":
            return
        self._heard_at = time.monotonic()
        self._buffer += data
        while len(self._buffer) >= HEADER_SIZE:
            length = parse_length(self._buffer, self._link.max_message_bytes)
            if length is None:
                self._kill("malformed or oversized frame header")
                return
            end = HEADER_SIZE + length
            if len(self._buffer) < end:
                return
            frame = bytes(self._buffer[:end])
            del self._buffer[:end]
            try:
                stamp, cmd, obj = self._link.deserializer(frame[HEADER_SIZE:])
            except Exception as exc:
                self._kill(f"a frame failed to decode ({type(exc).__name__})")
                return
            self._handle(stamp, cmd, obj, frame)

    def _handle(self, stamp: Any, cmd: Any, obj: Any, frame: bytes) -> None:
        if cmd == "ACK":
            link = self._link
            link.pending_acks.pop(stamp, None)
            if stamp in link.unconfirmed:
                link.unconfirmed.discard(stamp)
                link.status.add(Slot.DELIVERED)
            if stamp == self._hello_stamp and not self._authenticated:
                self._on_authenticated()
            return
        self.send_ack(stamp)
        if cmd == "HELLO":
            self._greeted = True
            self._link.status.set(Slot.STATE, LinkState.GREETED)
            self.send_obj(cmd="HELLO", obj=list(self._link.groups))
            self._hello_stamp = self._link.ack_stamp
            self._state = "ALIVE"
            while self._link.store:
                cmd_, dest, payload = self._link.store.popleft()
                self.send_obj(cmd=cmd_, dest=dest, obj=payload)
        elif cmd == "OBJ":
            endpoint = self._link.endpoint
            if endpoint is not None:
                endpoint.transport.write(frame)
            elif not self._link.stopping:
                logger.warning("link child has no parent connection, discarding a message")
        else:
            logger.warning("link ignored an unknown command from the relay: %r", cmd)

    def _on_authenticated(self) -> None:
        self._authenticated = True
        status = self._link.status
        status.add(Slot.AUTHENTICATED)
        status.set(Slot.STATE, LinkState.AUTHENTICATED)
        status.set(Slot.FAILURE_KIND, FailureKind.NONE)
        # A standing request for the consumables of our groups: each is pushed as it arrives.
        credit = {group: STANDING_CREDIT for group in self._link.groups}
        self.send_obj(cmd="NTF", dest=credit, obj=None)


def _failure_kind(reason: Failure) -> FailureKind:
    from twisted.internet import error

    if reason.check(error.ConnectionRefusedError) is not None:
        return FailureKind.REFUSED
    if reason.check(error.TimeoutError, error.TCPTimedOutError) is not None:
        return FailureKind.TIMEOUT
    if reason.check(error.DNSLookupError) is not None:
        return FailureKind.DNS
    return FailureKind.OTHER


class LinkFactory(ReconnectingClientFactory):
    """Reconnects with exponential back-off and reports each failed attempt."""

    def __init__(self, client: LinkProcess) -> None:
        self._link = client
        self.initialDelay = client.reconnect_initial_delay_s
        self.maxDelay = round(client.reconnect_max_delay_s)
        self.factor = 1.5
        self.jitter = 0.1
        self.delay = self.initialDelay

    def buildProtocol(self, addr: Any) -> LinkProtocol:
        self.resetDelay()
        return LinkProtocol(self._link)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        status = self._link.status
        status.add(Slot.CONNECT_FAILURES)
        status.set(Slot.FAILURE_KIND, _failure_kind(reason))
        status.set(Slot.STATE, LinkState.DISCONNECTED)
        status.note(reason.getErrorMessage())
        super().clientConnectionFailed(connector, reason)


class _LocalForLink(LocalProtocolForClient):
    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._client.close(1)  # the parent is gone (or sent STOP): stop


class _LocalForLinkFactory(LocalProtocolForClientFactory):
    def buildProtocol(self, addr: Any) -> _LocalForLink:
        return _LocalForLink(self.client)


class LinkProcess(Client):
    """tlspyo's endpoint client with our protocol, TLS options, limits and status board."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        password: str,
        groups: tuple[str, ...],
        serializer: Serializer,
        deserializer: Deserializer,
        max_message_bytes: int,
        tls_cert_pem: bytes | None,
        tls_hostname: str,
        connect_timeout_s: float,
        reconnect_initial_delay_s: float,
        reconnect_max_delay_s: float,
        status: StatusBoard,
        queue_max_messages: int,
        queue_max_bytes: int,
        heartbeat_interval_s: float,
        heartbeat_timeout_s: float,
    ) -> None:
        super().__init__(
            ip_server=host,
            port_server=port,
            password=password,
            serializer=serializer,
            deserializer=deserializer,
            header_size=HEADER_SIZE,
            groups=groups,
            local_com_port=-1,
            security="TLS" if tls_cert_pem is not None else "TCP",
            hostname=tls_hostname,
            recon_max_delay=reconnect_max_delay_s,
            recon_initial_delay=reconnect_initial_delay_s,
        )
        self.max_message_bytes = max_message_bytes
        self.status = status
        self.reconnect_initial_delay_s = reconnect_initial_delay_s
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self._tls_cert_pem = tls_cert_pem
        self._connect_timeout_s = connect_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.unconfirmed: set[int] = set()
        """Stamps of the messages sent on this connection that the relay has not acknowledged."""
        self._stopping = False
        self._drain_deadline = 0.0
        self._queue_caps = (queue_max_messages, queue_max_bytes)

    @property
    def stopping(self) -> bool:
        """Whether STOP arrived (or the parent is gone): the child is flushing, then stops."""
        return self._stopping

    def undelivered(self) -> int:
        """Messages given to this child that the relay has not acknowledged yet."""
        stored = sum(1 for item in self.store if item and item[0] == "OBJ")
        return len(self.unconfirmed) + stored

    def _dropped(self, n: int) -> None:
        if self.status.get(Slot.QUEUE_DROPS) == 0:
            logger.warning(
                "link outbox at its cap while the relay is unreachable: dropping the oldest "
                "messages (counted in the link's queue_drops)"
            )
        self.status.add(Slot.QUEUE_DROPS, n)

    def run(self) -> None:
        """Connect, reconnect and relay messages until STOP (runs in the child process)."""
        from twisted.internet import reactor as twisted_reactor
        from twisted.internet import ssl

        reactor: Any = twisted_reactor  # zope interfaces do not type-check as methods
        self._reactor = reactor
        prepare_signals(reactor, on_stop=lambda: self.close(1))
        # messages waiting for the relay while the connection is down: bounded, oldest dropped
        # (made here, in the child: a queue with a callback does not cross "spawn")
        self.store: BoundedQueue[Any] = BoundedQueue(*self._queue_caps, on_drop=self._dropped)
        reactor.connectTCP("127.0.0.1", self._local_com_port, _LocalForLinkFactory(self))
        factory = LinkFactory(self)
        self.status.set(Slot.STATE, LinkState.CONNECTING)
        timeout = max(1, round(self._connect_timeout_s))
        if self._tls_cert_pem is not None:
            authority = ssl.Certificate.loadPEM(self._tls_cert_pem)
            options = ssl.optionsForClientTLS(hostname=self._hostname, trustRoot=authority)
            reactor.connectSSL(
                self._ip_server, self._port_server, factory, options, timeout=timeout
            )
        else:
            reactor.connectTCP(self._ip_server, self._port_server, factory, timeout=timeout)
        run_reactor(reactor)
        self._reactor = None

    def close(self, counter: int) -> None:
        """Flush, then stop: called once STOP arrived or the parent is gone (idempotent).

        The child keeps running (reconnecting if need be) until the relay has acknowledged every
        message it was given, or until the drain time is over: the parent's
        ``Slot.DRAIN_TIMEOUT_MS``, else :data:`DEFAULT_DRAIN_S`. What is left is logged; the
        parent counts it (messages it accepted, minus those delivered or dropped at a cap).
        ``counter`` is tlspyo's (it calls ``close(1)``); only the first call counts.
        """
        if self._stopping:
            return
        self._stopping = True
        drain_ms = self.status.get(Slot.DRAIN_TIMEOUT_MS)
        drain_s = drain_ms / 1000 if drain_ms > 0 else DEFAULT_DRAIN_S
        self._drain_deadline = time.monotonic() + drain_s
        self._drain()

    def _drain(self) -> None:
        left = self.undelivered()
        if left and time.monotonic() < self._drain_deadline:
            if self._reactor is not None:
                self._reactor.callLater(0.02, self._drain)
            return
        if left:
            logger.warning(
                "link stopping with %d message(s) the relay has not acknowledged (the relay "
                "was unreachable or too slow during the drain time); they are counted in the "
                "link's undelivered",
                left,
            )
        if self._reactor is not None:
            if self.to_server is not None:
                self.to_server.transport.loseConnection()
            stop_reactor(self._reactor)
