"""The relay's child process: tlspyo's relay with our protocol (see
:mod:`tm_dist.transport.child`)."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from tlspyo.local_protocol_for_server import LocalProtocolForServer, LocalProtocolForServerFactory
from tlspyo.server import Server, ServerProtocol
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from tm_dist.errors import InvalidValueError
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
from tm_dist.transport.status import Slot, StatusBoard

__all__ = ["RelayFactory", "RelayProcess", "RelayProtocol", "ServerTLSContext"]

logger = logging.getLogger(__name__)

MAX_COPIES = 16
"""Largest copy count a destination may ask for; tlspyo would append that many copies."""


@implementer(IOpenSSLContextFactory)
class ServerTLSContext:
    """The relay's TLS context (TLS 1.2 or newer), built from PEM key and certificate bytes.

    The key and certificate go through the ``cryptography`` package: handing pyOpenSSL its
    own, deprecated certificate objects (what Twisted's helpers do) warns on every connection.
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        self._key_pem = key_pem
        self._cert_pem = cert_pem
        self._context: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """What a spawned relay child receives: the PEM bytes, never the built context (an
        OpenSSL object, which cannot cross a process; the child builds its own)."""
        return {"_key_pem": self._key_pem, "_cert_pem": self._cert_pem, "_context": None}

    def getContext(self) -> Any:
        if self._context is None:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import load_pem_private_key
            from OpenSSL import SSL

            context = SSL.Context(SSL.TLS_SERVER_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.use_certificate(x509.load_pem_x509_certificate(self._cert_pem))
            context.use_privatekey(load_pem_private_key(self._key_pem, password=None))  # type: ignore[arg-type]
            context.check_privatekey()
            self._context = context
        return self._context


# --------------------------------------------------------------------------------------------
# Relay side
# --------------------------------------------------------------------------------------------


class RelayProtocol(ServerProtocol):
    """One endpoint's connection to the relay."""

    def __init__(self, server: RelayProcess, peer: str) -> None:
        super().__init__(server)
        self._relay = server
        self._peer = peer
        self._expected_token = auth_token(server.password).encode("ascii")
        self._len_password = AUTH_TOKEN_SIZE  # what tlspyo's loop waits for before a header
        self._my_stamps: set[int] = set()

    def connectionMade(self) -> None:
        # tlspyo appends each received piece to its buffer: a bytes buffer copies it all every
        # time (quadratic in the frame size); a bytearray grows in place.
        self._buffer = bytearray()
        self._relay.status.add(Slot.CONNECTIONS)
        enable_nodelay(self.transport, self._relay.status)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        # Acknowledgements this connection still owed will never come: forget them, so that
        # the relay neither keeps their messages in memory nor waits for them when stopping.
        for stamp in self._my_stamps:
            self._relay.pending_acks.pop(stamp, None)
        self._my_stamps.clear()
        super().connectionLost(reason)

    def send_obj(self, cmd: str = "OBJ", obj: Any = None) -> None:
        super().send_obj(cmd=cmd, obj=obj)
        self._my_stamps.add(self._relay.ack_stamp)
        if len(self._my_stamps) > 4096:
            self._my_stamps.intersection_update(self._relay.pending_acks.keys())

    def _reject(self, why: str, slot: Slot) -> tuple[int, int, None]:
        self._relay.status.add(slot)
        logger.warning("relay dropped the connection from %s: %s", self._peer, why)
        self._state = "KILLED"
        self.transport.abortConnection()
        return 0, len(self._buffer) + 1, None

    def process_header(self) -> tuple[int, int, None]:
        start = HEADER_SIZE + AUTH_TOKEN_SIZE  # the same for every password: its length is secret
        if len(self._buffer) < start:
            return 0, len(self._buffer) + 1, None
        length = parse_length(self._buffer, self._relay.max_message_bytes)
        if length is None:
            return self._reject(
                f"malformed or oversized frame header (limit {self._relay.max_message_bytes} B)",
                Slot.FRAME_REJECTS,
            )
        received = bytes(self._buffer[HEADER_SIZE:start])
        if not hmac.compare_digest(received, self._expected_token):
            return self._reject("wrong password", Slot.PASSWORD_REJECTS)
        return start, start + length, None

    def dataReceived(self, data: bytes) -> None:
        if self._state in ("KILLED", "CLOSED", "DEAD"):
            return
        try:
            super().dataReceived(data)
        except Exception as exc:  # tlspyo has already aborted the connection
            self._relay.status.add(Slot.FRAME_REJECTS)
            logger.warning(
                "relay dropped the connection from %s: a frame failed to decode (%s)",
                self._peer,
                type(exc).__name__,
            )

    def forward_obj_to_dest(self, obj: Any, dest: Any) -> None:
        if not isinstance(dest, dict) or not all(
            isinstance(group, str) and isinstance(copies, int) and abs(copies) <= MAX_COPIES
            for group, copies in dest.items()
        ):
            raise InvalidValueError("destination must map group names to copy counts in [-16, 16]")
        super().forward_obj_to_dest(obj=obj, dest=dest)
        self._relay.report_queues()

    def retrieve_consumables(self, groups: Any) -> None:
        if not isinstance(groups, dict) or not all(
            isinstance(group, str) and isinstance(count, int) for group, count in groups.items()
        ):
            raise InvalidValueError("a notification must map group names to counts")
        super().retrieve_consumables(groups=groups)
        self._relay.report_queues()


class RelayFactory(Factory):
    """Builds a :class:`RelayProtocol` for each accepted connection."""

    def __init__(self, server: RelayProcess) -> None:
        self._relay = server

    def buildProtocol(self, addr: Any) -> RelayProtocol:
        peer = f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"
        return RelayProtocol(self._relay, peer)


class _LocalForRelay(LocalProtocolForServer):
    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._server.close(1)  # the parent is gone (or sent STOP): stop serving


class _LocalForRelayFactory(LocalProtocolForServerFactory):
    def buildProtocol(self, addr: Any) -> _LocalForRelay:
        return _LocalForRelay(self.server)


class RelayProcess(Server):
    """tlspyo's relay with our protocol, listening address, TLS options and status board."""

    def __init__(
        self,
        *,
        port: int,
        host: str,
        password: str,
        groups: tuple[str, ...],
        serializer: Serializer,
        deserializer: Deserializer,
        max_message_bytes: int,
        tls: ServerTLSContext | None,
        status: StatusBoard,
        queue_max_messages: int,
        queue_max_bytes: int,
    ) -> None:
        super().__init__(
            port=port,
            password=password,
            serializer=serializer,
            deserializer=deserializer,
            accepted_groups={g: {"max_count": None, "max_consumables": None} for g in groups},
            header_size=HEADER_SIZE,
            local_com_port=-1,
            security="TLS" if tls is not None else "TCP",
        )
        self.host = host
        self.max_message_bytes = max_message_bytes
        self.status = status
        self.queue_max_messages = queue_max_messages
        self.queue_max_bytes = queue_max_bytes
        self._tls = tls
        self._stopping = False

    def add_group(self, group: str, max_consumables: int | None = None) -> None:
        """tlspyo's group, with its consumables in a :class:`BoundedQueue` (drop oldest)."""
        fresh = group not in self.group_info
        super().add_group(group, max_consumables)
        if fresh:
            self.group_info[group]["to_consume"] = BoundedQueue(
                self.queue_max_messages, self.queue_max_bytes, on_drop=self._dropped
            )

    def _dropped(self, n: int) -> None:
        if self.status.get(Slot.QUEUE_DROPS) == 0:
            logger.warning(
                "relay queue at its cap (%d messages, %d bytes): dropping the oldest messages "
                "(counted in the relay's queue_drops); is the trainer connected and keeping up?",
                self.queue_max_messages,
                self.queue_max_bytes,
            )
        self.status.add(Slot.QUEUE_DROPS, n)

    def report_queues(self) -> None:
        """Publish how many messages and bytes wait in the groups' queues."""
        queues = [g["to_consume"] for g in self.group_info.values()]
        self.status.set(Slot.QUEUED_MESSAGES, sum(len(q) for q in queues))
        self.status.set(Slot.QUEUED_BYTES, sum(getattr(q, "queued_bytes", 0) for q in queues))

    def run(self) -> None:
        """Listen and serve until the parent sends STOP (runs in the child process)."""
        from twisted.internet import reactor as twisted_reactor
        from twisted.internet.error import CannotListenError

        reactor: Any = twisted_reactor  # zope interfaces do not type-check as methods

        prepare_signals(reactor)
        reactor.connectTCP("127.0.0.1", self._local_com_port, _LocalForRelayFactory(self))
        factory = RelayFactory(self)
        try:
            if self._tls is not None:
                port = reactor.listenSSL(self._port, factory, self._tls, interface=self.host)
            else:
                port = reactor.listenTCP(self._port, factory, interface=self.host)
        except CannotListenError as exc:
            self.status.note(f"cannot listen on {self.host}:{self._port}: {exc.socketError}")
            self.status.set(Slot.FATAL, 1)
            return
        self.status.set(Slot.PORT, port.getHost().port)
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
                for identifier in list(self.to_clients):
                    self.to_clients[identifier].transport.loseConnection()
                    self.delete_client(identifier)
                stop_reactor(self._reactor)
        else:
            from twisted.internet import reactor as twisted_reactor

            reactor: Any = twisted_reactor
            reactor.callLater(0.05, self.close, counter + 1)
