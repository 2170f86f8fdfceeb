"""A link's child process: tlspyo's endpoint client, observed (see
:mod:`tm_dist.transport.child`)."""

from __future__ import annotations

import logging
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


class LinkProtocol(ClientProtocol):
    """A link's connection to the relay: tlspyo's handshake, observed and reported."""

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

    def connectionMade(self) -> None:
        status = self._link.status
        status.add(Slot.CONNECTIONS)
        status.set(Slot.STATE, LinkState.TCP_CONNECTED)
        enable_nodelay(self.transport, status)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
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
        again: list[tuple[str, Any, Any]] = []
        skip = HEADER_SIZE + AUTH_TOKEN_SIZE
        for stamp in sorted(pending):
            frame = pending[stamp][1]
            try:
                _stamp, cmd, dest, obj = self._link.deserializer(frame[skip:])
            except Exception:  # our own frame: cannot happen, but never crash the reactor
                logger.warning("link could not re-read an unacknowledged message; dropped")
                continue
            if cmd == "OBJ":  # HELLO and NTF are sent afresh on every connection
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
            self._link.pending_acks.pop(stamp, None)
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
            else:
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
        self._stopping = False
        self._queue_caps = (queue_max_messages, queue_max_bytes)

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
        prepare_signals(reactor)
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
        self._reactor = reactor
        run_reactor(reactor)
        self._reactor = None

    def close(self, counter: int) -> None:
        """Stop once every acknowledgement is in, or after about a second (idempotent)."""
        if counter == 1:
            if self._stopping:
                return
            self._stopping = True
        if self.check_acks() or counter > 20:
            if self._reactor is not None:
                if self.to_server is not None:
                    self.to_server.transport.loseConnection()
                stop_reactor(self._reactor)
        else:
            from twisted.internet import reactor as twisted_reactor

            reactor: Any = twisted_reactor
            reactor.callLater(0.05, self.close, counter + 1)
