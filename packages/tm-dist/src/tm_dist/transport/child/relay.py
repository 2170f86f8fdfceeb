"""The relay's child process: tlspyo's relay with our protocol (see
:mod:`tm_dist.transport.child`)."""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field
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
    parse_length,
)
from tm_dist.transport.queues import BoundedQueue
from tm_dist.transport.status import Slot, StatusBoard

__all__ = ["RelayFactory", "RelayProcess", "RelayProtocol", "RoleRule", "ServerTLSContext"]

logger = logging.getLogger(__name__)

MAX_COPIES = 16
"""Largest copy count a destination may ask for; tlspyo would append that many copies."""

MAX_CREDIT = 1 << 62
"""Largest count a notification (a request for consumables) may carry."""


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


@dataclass(frozen=True)
class RoleRule:
    """What the relay child knows of a :class:`~tm_dist.transport.options.Credential`: the
    token standing for its password (never the password) and the groups it may use."""

    role: str
    token: bytes = field(repr=False)  # as good as the password to whoever reads it
    may_join: frozenset[str]
    may_send: frozenset[str]
    may_broadcast: frozenset[str]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class RelayProtocol(ServerProtocol):
    """One endpoint's connection to the relay.

    tlspyo's frame loop is replaced by ours; its group and consumable bookkeeping is kept.
    A connection's role is fixed by the token of its first frame (compared, in constant time,
    with every role's token) and every later frame must carry the same token. It becomes
    authenticated with its one accepted HELLO; a second HELLO, a group or destination its role
    may not use, a malformed frame or an unknown command drops it. ``PING`` is acknowledged and
    otherwise ignored. The relay (:meth:`RelayProcess.sweep`) drops it when it stays
    unauthenticated too long or, once authenticated, silent too long.
    """

    def __init__(self, server: RelayProcess, peer: str) -> None:
        super().__init__(server)
        self._relay = server
        self._peer = peer
        self._identifier: int | None = None
        self._rule: RoleRule | None = None
        self._my_stamps: set[int] = set()
        self._prune_at = 4096  # prune acknowledged stamps past this many (amortised: doubles)
        self.opened_at = time.monotonic()
        self.heard_at = self.opened_at
        self.authenticated = False

    def __repr__(self) -> str:
        role = self._rule.role if self._rule is not None else "?"
        return f"RelayProtocol(peer={self._peer}, role={role}, state={self._state})"

    # -- connection life ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        # a bytearray grows in place; tlspyo's bytes buffer copied it all on every piece
        self._buffer = bytearray()
        if not self._relay.admit(self):
            self._state = "KILLED"
            self.transport.abortConnection()
            return
        self._relay.status.add(Slot.CONNECTIONS)
        enable_nodelay(self.transport, self._relay.status)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        self._relay.forget(self)
        # Acknowledgements this connection still owed will never come: forget them, so that
        # the relay neither keeps their messages in memory nor waits for them when stopping.
        for stamp in self._my_stamps:
            self._relay.pending_acks.pop(stamp, None)
        self._my_stamps.clear()
        super().connectionLost(reason)

    def drop(self, why: str, slot: Slot, *, log: bool = True) -> None:
        """Count ``slot``, log ``why`` (with the peer and role), leave every group at once (so
        nothing more is dispatched to this connection) and abort the connection."""
        self._relay.status.add(slot)
        self._relay.forget(self)  # at once: no second count, no place against the cap
        if log:
            role = self._rule.role if self._rule is not None else "none yet"
            logger.warning(
                "relay dropped the connection from %s (role %s): %s", self._peer, role, why
            )
        if self._identifier is not None and self._relay.has_client(self._identifier):
            self._relay.delete_client(self._identifier)
        self._identifier = None
        self._state = "KILLED"
        self.transport.abortConnection()

    # -- frames -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state in ("KILLED", "CLOSED", "DEAD"):
            return
        self.heard_at = time.monotonic()
        self._buffer += data
        try:
            while self._state not in ("KILLED", "CLOSED") and self._next_frame():
                pass
        except Exception as exc:  # a bug here must cost one connection, never the relay
            logger.exception("relay failed to handle a frame from %s", self._peer)
            self.drop(f"internal error ({type(exc).__name__})", Slot.FRAME_REJECTS, log=False)

    def _next_frame(self) -> bool:
        """Handle the first complete frame of the buffer; False when none is complete yet or
        the connection was dropped."""
        start = HEADER_SIZE + AUTH_TOKEN_SIZE  # the same for every password: its length is secret
        if len(self._buffer) < start:
            return False
        length = parse_length(self._buffer, self._relay.max_message_bytes)
        if length is None:
            limit = self._relay.max_message_bytes
            self.drop(f"malformed or oversized frame header (limit {limit} B)", Slot.FRAME_REJECTS)
            return False
        if not self._check_token(bytes(self._buffer[HEADER_SIZE:start])):
            return False
        end = start + length
        if len(self._buffer) < end:
            return False
        payload = bytes(self._buffer[start:end])
        del self._buffer[:end]
        try:
            stamp, cmd, dest, obj = self._relay.deserializer(payload)
        except Exception as exc:
            self.drop(f"a frame failed to decode ({type(exc).__name__})", Slot.FRAME_REJECTS)
            return False
        self._handle(stamp, cmd, dest, obj)
        return self._state not in ("KILLED", "CLOSED")

    def _check_token(self, received: bytes) -> bool:
        """Fix the role on the first frame (comparing with every role's token, no early exit);
        later frames must carry the same token."""
        if self._rule is not None:
            if hmac.compare_digest(received, self._rule.token):
                return True
            self.drop(
                "a frame carried another token than the connection's first", Slot.PASSWORD_REJECTS
            )
            return False
        match: RoleRule | None = None
        for rule in self._relay.roles:
            if hmac.compare_digest(received, rule.token) and match is None:
                match = rule
        if match is None:
            self.drop("wrong password", Slot.PASSWORD_REJECTS)
            return False
        self._rule = match
        return True

    def _handle(self, stamp: Any, cmd: Any, dest: Any, obj: Any) -> None:
        if cmd == "ACK":
            self._relay.pending_acks.pop(stamp, None)
        elif cmd == "PING":
            self.send_ack(stamp)
        elif cmd == "HELLO":
            self._hello(stamp, obj)
        elif not self.authenticated:
            self.drop(f"sent {_short(cmd)} before its HELLO", Slot.FRAME_REJECTS)
        elif cmd == "OBJ":
            if self._destination_allowed(dest):
                self.send_ack(stamp)
                self.forward_obj_to_dest(obj=obj, dest=dest)
        elif cmd == "NTF":
            if not _is_group_map(dest, MAX_CREDIT):
                self.drop("a notification must map group names to counts", Slot.FRAME_REJECTS)
                return
            self.send_ack(stamp)
            self.retrieve_consumables(groups=dest)
        else:
            self.drop(f"unknown command {_short(cmd)}", Slot.FRAME_REJECTS)

    def _hello(self, stamp: Any, obj: Any) -> None:
        """Accept the connection's one HELLO if its role may join every group it names."""
        rule = self._rule
        assert rule is not None  # _check_token ran first
        if self.authenticated:
            self.drop(
                "a second HELLO (one identity per connection; its first identity left its groups)",
                Slot.HELLO_REJECTS,
            )
            return
        groups = (obj,) if isinstance(obj, str) else obj
        if (
            not isinstance(groups, list | tuple)
            or not groups
            or not all(isinstance(g, str) for g in groups)
        ):
            self.drop(f"a HELLO must name its groups, got {_short(obj)}", Slot.FRAME_REJECTS)
            return
        refused = sorted({g for g in groups if g not in rule.may_join})
        if refused:
            self.drop(f"may not join {refused}", Slot.ROLE_REJECTS)
            return
        self.send_ack(stamp)
        unique = tuple(dict.fromkeys(groups))  # a group named twice would leave a ghost id
        self._identifier = self._relay.add_client(groups=unique, client=self)
        self._state = "ALIVE"
        self.authenticated = True
        self._relay.authenticated(self)
        logger.info("relay: %s joined %s as %s", self._peer, list(unique), rule.role)
        self.retrieve_broadcast()

    def _destination_allowed(self, dest: Any) -> bool:
        """Whether this connection's role may send (copies > 0) or broadcast (copies < 0) to
        every group of ``dest``; drops the connection if not."""
        rule = self._rule
        assert rule is not None
        if not _is_group_map(dest, MAX_COPIES):
            self.drop(
                f"a destination must map group names to copy counts in [-{MAX_COPIES}, "
                f"{MAX_COPIES}], got {_short(dest)}",
                Slot.FRAME_REJECTS,
            )
            return False
        refused = [f"send to {g!r}" for g, n in dest.items() if n > 0 and g not in rule.may_send]
        refused += [
            f"broadcast to {g!r}" for g, n in dest.items() if n < 0 and g not in rule.may_broadcast
        ]
        if refused:
            self.drop("may not " + ", ".join(refused), Slot.ROLE_REJECTS)
            return False
        return True

    # -- tlspyo's bookkeeping, observed -------------------------------------------------------

    def send_obj(self, cmd: str = "OBJ", obj: Any = None) -> None:
        super().send_obj(cmd=cmd, obj=obj)
        self._my_stamps.add(self._relay.ack_stamp)
        if len(self._my_stamps) > self._prune_at:
            # forget the stamps acknowledged since; with many still pending (a slow trainer
            # being sent a long queue), wait for twice as many before the next pass, so that
            # sending stays linear instead of rescanning every pending stamp on each send
            self._my_stamps.intersection_update(self._relay.pending_acks.keys())
            self._prune_at = max(4096, 2 * len(self._my_stamps))

    def forward_obj_to_dest(self, obj: Any, dest: Any) -> None:
        if not _is_group_map(dest, MAX_COPIES):
            raise InvalidValueError("destination must map group names to copy counts in [-16, 16]")
        super().forward_obj_to_dest(obj=obj, dest=dest)
        self._relay.report_queues()

    def retrieve_consumables(self, groups: Any) -> None:
        if not _is_group_map(groups, MAX_CREDIT):
            raise InvalidValueError("a notification must map group names to counts")
        super().retrieve_consumables(groups=groups)
        self._relay.report_queues()


def _is_group_map(value: Any, limit: int) -> bool:
    """Whether ``value`` maps group names (str) to whole numbers within ``[-limit, limit]``."""
    return isinstance(value, dict) and all(
        isinstance(group, str)
        and isinstance(count, int)
        and not isinstance(count, bool)
        and abs(count) <= limit
        for group, count in value.items()
    )


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
    """tlspyo's relay with our protocol, listening address, TLS options, roles, connection
    limits and status board."""

    def __init__(
        self,
        *,
        port: int,
        host: str,
        roles: tuple[RoleRule, ...],
        groups: tuple[str, ...],
        serializer: Serializer,
        deserializer: Deserializer,
        max_message_bytes: int,
        tls: ServerTLSContext | None,
        status: StatusBoard,
        queue_max_messages: int,
        queue_max_bytes: int,
        heartbeat_timeout_s: float,
        preauth_timeout_s: float,
        max_unauthenticated: int,
    ) -> None:
        super().__init__(
            port=port,
            password="",  # unused: RelayProtocol checks the roles' tokens
            serializer=serializer,
            deserializer=deserializer,
            accepted_groups={g: {"max_count": None, "max_consumables": None} for g in groups},
            header_size=HEADER_SIZE,
            local_com_port=-1,
            security="TLS" if tls is not None else "TCP",
        )
        self.host = host
        self.roles = roles
        self.max_message_bytes = max_message_bytes
        self.status = status
        self.queue_max_messages = queue_max_messages
        self.queue_max_bytes = queue_max_bytes
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.preauth_timeout_s = preauth_timeout_s
        self.max_unauthenticated = max_unauthenticated
        self._tls = tls
        self._stopping = False
        self._open: set[RelayProtocol] = set()
        self._waiting: set[RelayProtocol] = set()  # open, not authenticated yet
        self._cap_logged = False

    # -- connection limits --------------------------------------------------------------------

    def admit(self, protocol: RelayProtocol) -> bool:
        """Take a new connection in, unless ``max_unauthenticated`` already wait (then count
        it, and log once per burst of refusals)."""
        if len(self._waiting) >= self.max_unauthenticated:
            self.status.add(Slot.UNAUTHENTICATED_REJECTS)
            if not self._cap_logged:
                self._cap_logged = True
                logger.warning(
                    "relay closing new connections at once: %d are already waiting to "
                    "authenticate (max_unauthenticated; counted in unauthenticated_rejects)",
                    len(self._waiting),
                )
            return False
        self._cap_logged = False
        self._open.add(protocol)
        self._waiting.add(protocol)
        self.status.set(Slot.UNAUTHENTICATED, len(self._waiting))
        return True

    def authenticated(self, protocol: RelayProtocol) -> None:
        """``protocol`` sent its valid token and HELLO: it no longer counts against the cap."""
        self._waiting.discard(protocol)
        self.status.set(Slot.UNAUTHENTICATED, len(self._waiting))

    def forget(self, protocol: RelayProtocol) -> None:
        """``protocol``'s connection is gone."""
        self._open.discard(protocol)
        self._waiting.discard(protocol)
        self.status.set(Slot.UNAUTHENTICATED, len(self._waiting))

    def sweep(self) -> None:
        """Drop the connections not authenticated within ``preauth_timeout_s`` (one log line
        per sweep) and the authenticated ones silent for ``heartbeat_timeout_s``."""
        now = time.monotonic()
        late = [p for p in self._waiting if now - p.opened_at > self.preauth_timeout_s]
        for protocol in late:
            protocol.drop("not authenticated in time", Slot.PREAUTH_TIMEOUTS, log=False)
        if late:
            logger.warning(
                "relay closed %d connection(s) not authenticated within %.3g s "
                "(counted in preauth_timeouts)",
                len(late),
                self.preauth_timeout_s,
            )
        for protocol in [p for p in self._open if p.authenticated]:
            if now - protocol.heard_at > self.heartbeat_timeout_s:
                protocol.drop(
                    f"nothing heard for {self.heartbeat_timeout_s:.3g} s (heartbeat timeout)",
                    Slot.HEARTBEAT_TIMEOUTS,
                )

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
        from twisted.internet.task import LoopingCall

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
        period = min(1.0, max(0.02, min(self.preauth_timeout_s, self.heartbeat_timeout_s) / 5))
        LoopingCall(self.sweep).start(period, now=False)
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
