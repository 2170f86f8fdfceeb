"""The emulator's side of the OpenPlanet telemetry protocol: a TCP server that streams records.

:class:`TelemetryServer` behaves like the game plugin: it listens on one port, serves one client
at a time (a newly connected client replaces the previous one, whose socket is closed), sends
:data:`~tm_gym.game.telemetry.MAGIC_V2` first when speaking protocol v2, then whatever records
the emulator :meth:`~TelemetryServer.publish`\\ es — one per rendered frame, like the game.

:meth:`~TelemetryServer.publish` never blocks the emulator for long: sends have a short socket
timeout, and a client that errors or cannot keep up is dropped (the server keeps listening for
the next one). A dropped client may have received part of a record; that is why it is dropped
rather than written to again.

Example::

    with TelemetryServer(port=0) as server, TelemetryClient(port=server.port) as client:
        server.publish(record)  # once per frame
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
from types import TracebackType

from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import TelemetryError
from tm_gym.game.telemetry import MAGIC_V2, encode_record

__all__ = ["TelemetryServer"]

logger = logging.getLogger(__name__)

_ACCEPT_POLL = 0.2
"""Seconds an idle accept() waits before re-checking that the server should stop."""
_JOIN_TIMEOUT = 2.0


class TelemetryServer:
    """A one-client telemetry server speaking the plugin's protocol.

    Args:
        host: Address to listen on (loopback by default; the game plugin listens on loopback).
        port: TCP port; 0 lets the operating system choose a free one (read it from
            :attr:`port` after :meth:`open`).
        version: Protocol: 1 = TMRL layout (no header), 2 = tm-gym v2 (magic, then 19 floats).
        send_timeout: Seconds one :meth:`publish` may block on a slow client before the
            client is dropped.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        version: int = 2,
        send_timeout: float = 0.1,
    ) -> None:
        if version not in (1, 2) or isinstance(version, bool):
            raise TelemetryError(
                f"telemetry protocol version {version!r} is unknown; expected 1 (TMRL layout) "
                "or 2 (tm-gym v2)"
            )
        if not _is_int_in(port, 0, 65535):
            raise TelemetryError(
                f"telemetry server port {port!r} is invalid; expected 0 (any free port) or 1…65535"
            )
        if not _is_positive_seconds(send_timeout):
            raise TelemetryError(
                f"send_timeout {send_timeout!r} is invalid; expected a finite number of seconds > 0"
            )
        self.host = host
        self.version = version
        self.send_timeout = float(send_timeout)
        self._requested_port = port
        self._port: int | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Guarded by self._lock (held while sending, so records never interleave):
        self._client: socket.socket | None = None
        self._clients_served = 0
        self._records_sent = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Bind, listen and start the accept thread. Calling it on an open server does nothing.

        Raises:
            TelemetryError: the address cannot be bound (port taken, host not local).
        """
        if self._listener is not None:
            return
        port = self._port if self._port is not None else self._requested_port
        try:
            family = socket.getaddrinfo(self.host, port, type=socket.SOCK_STREAM)[0][0]
            listener = socket.create_server((self.host, port), family=family, backlog=4)
        except OSError as e:
            raise TelemetryError(
                f"cannot listen for telemetry clients on {self.host}:{port}: {e}; choose another "
                "port (0 lets the system pick a free one) or stop the program using it"
            ) from e
        listener.settimeout(_ACCEPT_POLL)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._accept_loop,
            args=(listener,),
            name=f"tm-gym-telemetry-server-{self._port}",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "telemetry server listening on %s:%d (protocol v%d)",
            self.host,
            self._port,
            self.version,
        )

    def close(self) -> None:
        """Stop accepting, drop the client and close the listening socket. Idempotent.

        A closed server can be opened again; it listens on the same port as before.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                logger.warning(
                    "telemetry server thread on port %s did not stop in time", self._port
                )
        self._thread = None
        self.disconnect_client()
        listener = self._listener
        self._listener = None
        if listener is not None:
            listener.close()

    def __enter__(self) -> TelemetryServer:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TelemetryServer(host={self.host!r}, port={self.port}, version={self.version})"

    # -- state -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the OS-chosen one when created with ``port=0``).

        Raises:
            TelemetryError: the server was never opened and was created with ``port=0``.
        """
        if self._port is not None:
            return self._port
        if self._requested_port:
            return self._requested_port
        raise TelemetryError(
            "the telemetry server's port is chosen by the system when it opens; call open() "
            "(or enter its `with` block) before reading .port"
        )

    @property
    def has_client(self) -> bool:
        """Whether a client is connected right now."""
        with self._lock:
            return self._client is not None

    @property
    def clients_served(self) -> int:
        """Clients accepted since the server was created."""
        with self._lock:
            return self._clients_served

    @property
    def records_sent(self) -> int:
        """Records delivered to a client (to the socket's send buffer) since creation."""
        with self._lock:
            return self._records_sent

    # -- sending -----------------------------------------------------------------------------

    def publish(self, record: TelemetryRecord) -> bool:
        """Send ``record`` to the current client.

        Returns:
            True if it was written, False if no client is connected (or the server is closed)
            or the client was dropped because sending failed or timed out.
        """
        data = encode_record(record, self.version)
        with self._lock:
            client = self._client
            if client is None:
                return False
            try:
                client.sendall(data)
            except OSError as e:
                self._client = None
                _close_quietly(client)
                logger.info("telemetry server: dropped the client (%s)", e)
                return False
            self._records_sent += 1
            return True

    def disconnect_client(self) -> None:
        """Close the current client's connection (what the plugin does when the game exits)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _close_quietly(client)

    # -- the accept thread -------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                logger.warning("telemetry server: accept failed (%s)", e)
                self._stop.wait(_ACCEPT_POLL)
                continue
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(self.send_timeout)
                with self._lock:
                    if self.version == 2:
                        conn.sendall(MAGIC_V2)
                    old, self._client = self._client, conn
                    self._clients_served += 1
            except OSError as e:
                logger.info("telemetry server: client %s left during the handshake (%s)", peer, e)
                _close_quietly(conn)
                continue
            if old is not None:
                _close_quietly(old)
                logger.info("telemetry server: client %s replaces the previous one", peer)
            else:
                logger.info("telemetry server: client %s connected", peer)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _is_int_in(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
