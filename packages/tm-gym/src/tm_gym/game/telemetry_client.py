"""A TCP client for the OpenPlanet telemetry stream (TMRL's plugin or ours).

:class:`TelemetryClient` implements :class:`~tm_gym.core.ports.TelemetrySource`. Nothing happens in
the constructor; :meth:`TelemetryClient.open` (or ``with``) starts one daemon reader thread that

* connects to the plugin, retrying every ``reconnect_interval`` seconds while nothing listens;
* reads the first 8 bytes to tell the protocols apart (:data:`~tm_gym.game.telemetry.MAGIC_V2`
  starts a v2 stream; anything else is the start of the first 44-byte TMRL record);
* reads fixed-size records through a buffer (partial reads are fine) and keeps only the newest
  valid one, with a sequence number and its monotonic receive time;
* skips malformed records (non-finite values) with a log message instead of dying;
* on end of stream or a socket error, logs one WARNING, sleeps ``reconnect_interval`` and
  reconnects — it never busy-loops on a closed socket (TMRL's client does).

Readers never touch the socket: :meth:`~TelemetryClient.latest` returns the newest record at
once, :meth:`~TelemetryClient.wait_fresh` blocks until a newer one arrives. Both raise
:class:`~tm_gym.error.TelemetryError` when the stream has been silent for longer than
``timeout``, with a message naming the address, how long, what the socket is doing and what to
check.

A closed client can be opened again; it then starts from scratch (no record, sequence at 0).

Example::

    with TelemetryClient(port=9000, timeout=5.0) as tel:
        rec = tel.wait_fresh()
        print(rec.speed_kmh, rec.position)
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from types import TracebackType

from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import TelemetryError
from tm_gym.game.telemetry import MAGIC_V2, decode_record, record_size

__all__ = ["TelemetryClient"]

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 1.0
"""Seconds one connection attempt may take (loopback refusals are immediate)."""
_RECV_POLL = 0.5
"""Socket read timeout: how often a blocked reader re-checks that it should stop (close() also
shuts the socket down, which wakes it at once)."""
_JOIN_TIMEOUT = 2.0
_RECV_BYTES = 65536
_MAGIC_PREFIX = MAGIC_V2[:5]
_SKIP_LOG_INTERVAL = 5.0


class _Stop(Exception):
    """Internal: the reader was asked to stop."""


class TelemetryClient:
    """Newest telemetry record from the OpenPlanet plugin over TCP.

    Args:
        host: Address the plugin listens on.
        port: Its TCP port (TMRL's plugin and ours default to 9000).
        timeout: Seconds without a fresh record after which :meth:`latest` and
            :meth:`wait_fresh` raise :class:`~tm_gym.error.TelemetryError` (TMRL uses 10 s).
        reconnect_interval: Seconds between connection attempts while the plugin is unreachable.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9000,
        *,
        timeout: float = 10.0,
        reconnect_interval: float = 0.2,
    ) -> None:
        if not _is_int_in(port, 1, 65535):
            raise TelemetryError(
                f"telemetry port {port!r} is invalid; expected an integer in 1…65535 "
                "(the plugin's default is 9000)"
            )
        if not _is_positive_seconds(timeout):
            raise TelemetryError(
                f"telemetry timeout {timeout!r} is invalid; expected a finite number of seconds > 0"
            )
        if not _is_positive_seconds(reconnect_interval):
            raise TelemetryError(
                f"reconnect_interval {reconnect_interval!r} is invalid; expected a finite number "
                "of seconds > 0 (0.2 is a good value)"
            )
        self.host = host
        self.port = port
        self.timeout = float(timeout)
        self.reconnect_interval = float(reconnect_interval)

        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        # Everything below is guarded by self._cond.
        self._record: TelemetryRecord | None = None
        self._seq = 0
        self._returned_seq = 0
        self._recv_time = -math.inf
        self._opened_at = -math.inf
        self._version: int | None = None
        self._connected = False
        self._state = "not opened"
        self._problem: str | None = None
        """Why the last connection attempt or connection failed; cleared by a valid record."""
        self._skipped = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Start the reader thread (connects in the background; returns at once).

        Calling it on an open client does nothing.
        """
        if self._thread is not None and self._thread.is_alive() and not self._stop.is_set():
            return
        if self._thread is not None and self._thread.is_alive():
            raise TelemetryError(
                f"the previous reader thread of the telemetry client for {self.address} is still "
                "running after close(); wait a moment before opening it again"
            )
        with self._cond:
            self._record = None
            self._seq = 0
            self._returned_seq = 0
            self._recv_time = -math.inf
            self._opened_at = time.monotonic()
            self._version = None
            self._connected = False
            self._state = "connecting"
            self._problem = None
            self._skipped = 0
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"tm-gym-telemetry-{self.address}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the reader thread and close the socket. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with self._cond:
            sock = self._sock
            self._state = "closed"
            self._cond.notify_all()
        if sock is not None:
            # Wakes a recv() blocked in the reader thread; the thread closes the socket itself.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                logger.warning("telemetry reader thread for %s did not stop in time", self.address)
                return
        self._thread = None

    def __enter__(self) -> TelemetryClient:
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
        return (
            f"TelemetryClient({self.host!r}, {self.port}, timeout={self.timeout}, "
            f"reconnect_interval={self.reconnect_interval})"
        )

    # -- reading -----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def protocol_version(self) -> int | None:
        """1 (TMRL layout) or 2 (tm-gym v2) once the stream's first bytes are read, else None."""
        with self._cond:
            return self._version

    @property
    def connected(self) -> bool:
        """Whether the socket is connected right now."""
        with self._cond:
            return self._connected

    @property
    def records_received(self) -> int:
        """Valid records received since :meth:`open` (malformed ones are not counted)."""
        with self._cond:
            return self._seq

    @property
    def records_skipped(self) -> int:
        """Malformed records skipped since :meth:`open`."""
        with self._cond:
            return self._skipped

    @property
    def age(self) -> float:
        """Seconds since the newest record arrived (``inf`` if none has)."""
        with self._cond:
            return time.monotonic() - self._recv_time

    def latest(self) -> TelemetryRecord:
        """The newest record, without waiting.

        Raises:
            TelemetryError: no record has arrived yet, or the newest is older than ``timeout``.
        """
        with self._cond:
            rec = self._record
            now = time.monotonic()
            closed = self._thread is None or self._stop.is_set()
            if closed or rec is None or now - self._recv_time > self.timeout:
                raise TelemetryError(self._stall_message(now))
            self._returned_seq = self._seq
            return rec

    def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
        """Block until a record newer than the last one returned by :meth:`latest` or
        :meth:`wait_fresh` arrives, and return it.

        Args:
            timeout: Seconds to wait (default: the client's ``timeout``).

        Raises:
            TelemetryError: nothing new arrived within ``timeout``, or the client is closed.
        """
        limit = self.timeout if timeout is None else timeout
        if not (_is_positive_seconds(limit) or limit == 0):
            raise TelemetryError(
                f"wait_fresh timeout {timeout!r} is invalid; expected finite seconds >= 0, or None "
                f"for the client's timeout ({self.timeout:g} s)"
            )
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                if self._thread is None or self._stop.is_set():
                    raise TelemetryError(self._stall_message(time.monotonic()))
                rec = self._record
                if rec is not None and self._seq > self._returned_seq:
                    self._returned_seq = self._seq
                    return rec
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TelemetryError(self._stall_message(time.monotonic(), waited=limit))
                self._cond.wait(remaining)

    def _stall_message(self, now: float, waited: float | None = None) -> str:
        # Called with self._cond held.
        if self._thread is None or self._stop.is_set():
            return (
                f"the telemetry client for {self.address} is not open; call open() or use it in "
                "a `with` block"
            )
        if self._record is None:
            what = f"no telemetry record from {self.address} in {now - self._opened_at:.2f} s"
        elif waited is not None and now - self._recv_time <= self.timeout:
            what = f"no new telemetry record from {self.address} in {waited:.2f} s"
        else:
            what = (
                f"the newest telemetry record from {self.address} is "
                f"{now - self._recv_time:.2f} s old"
            )
        parts = [f"{what} (timeout {self.timeout:g} s); socket: {self._state}"]
        if self._problem is not None and self._problem != self._state:
            parts.append(f"last problem: {self._problem}")
        if self._connected:
            parts.append("the connection is open but silent: is the game paused or loading?")
        parts.append(
            "Is TrackMania running with the tm-gym (or TMRL) OpenPlanet plugin enabled, "
            f"listening on port {self.port}? Run `tm-gym check`."
        )
        return ". ".join(parts)

    # -- the reader thread -------------------------------------------------------------------

    def _set_state(self, state: str, *, connected: bool, problem: bool = False) -> None:
        with self._cond:
            if not self._stop.is_set():
                self._state = state
                if problem:
                    self._problem = state
            self._connected = connected

    def _run(self) -> None:
        warned = False  # one WARNING per outage, DEBUG for the retries that follow
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), _CONNECT_TIMEOUT)
            except OSError as e:
                state = _describe_connect_error(e, self.port)
                self._set_state(state, connected=False, problem=True)
                if not warned:
                    logger.warning(
                        "telemetry: cannot connect to %s (%s); retrying every %g s",
                        self.address,
                        state,
                        self.reconnect_interval,
                    )
                    warned = True
                else:
                    logger.debug("telemetry: still cannot connect to %s: %s", self.address, e)
                self._stop.wait(self.reconnect_interval)
                continue
            with self._cond:
                self._sock = sock
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(_RECV_POLL)
                self._set_state("connected, waiting for data", connected=True)
                logger.info("telemetry: connected to %s", self.address)
                warned = False
                reason = self._read_stream(sock)
            except _Stop:
                break
            except ConnectionResetError:
                reason = "closed by the peer (connection reset)"
            except OSError as e:
                reason = f"connection error ({e})"
            except Exception as e:  # a bug must not kill the stream silently: log and reconnect
                logger.exception("telemetry: unexpected error reading from %s", self.address)
                reason = f"internal error ({e!r})"
            finally:
                with self._cond:
                    self._sock = None
                    self._connected = False
                sock.close()
            if self._stop.is_set():
                break
            self._set_state(reason, connected=False, problem=True)
            logger.warning(
                "telemetry: %s: %s; reconnecting every %g s",
                self.address,
                reason,
                self.reconnect_interval,
            )
            warned = True
            self._stop.wait(self.reconnect_interval)

    def _recv(self, sock: socket.socket) -> bytes:
        """Next chunk of the stream; b"" at end of stream; raises _Stop when closing."""
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                return sock.recv(_RECV_BYTES)
            except TimeoutError:
                continue

    def _read_stream(self, sock: socket.socket) -> str:
        """Read records until the stream ends; returns why it ended."""
        buf = bytearray()
        while len(buf) < len(MAGIC_V2):
            chunk = self._recv(sock)
            if not chunk:
                return "closed by the peer before sending any record"
            buf += chunk
        head = bytes(buf[: len(MAGIC_V2)])
        if head == MAGIC_V2:
            version = 2
            del buf[: len(MAGIC_V2)]
        elif head.startswith(_MAGIC_PREFIX):
            return (
                f"the plugin speaks an unsupported tm-gym protocol (header {head!r}, expected "
                f"{MAGIC_V2!r}); install matching versions of tm-gym and its plugin"
            )
        else:
            version = 1
        with self._cond:
            self._version = version
            self._state = f"connected (protocol v{version})"
        logger.debug("telemetry: %s speaks protocol v%d", self.address, version)
        size = record_size(version)
        last_skip_log = -math.inf
        while True:
            if len(buf) >= size:
                last_skip_log = self._publish_records(buf, size, version, last_skip_log)
            chunk = self._recv(sock)
            if not chunk:
                if buf:
                    return (
                        f"closed by the peer in the middle of a record ({len(buf)} of {size} "
                        "bytes received)"
                    )
                return "closed by the peer"
            buf += chunk

    def _publish_records(
        self, buf: bytearray, size: int, version: int, last_skip_log: float
    ) -> float:
        """Decode and remove every complete record at the start of ``buf``; publish the newest.

        Malformed records are counted and skipped (logged at most once per
        ``_SKIP_LOG_INTERVAL`` seconds). Returns the time of the last such log, ``last_skip_log``
        when there was none now. Needs at least one complete record in ``buf``.
        """
        n = len(buf) // size
        now = time.monotonic()
        valid: TelemetryRecord | None = None
        n_valid = 0
        bad: list[str] = []
        for i in range(n):
            try:
                valid = decode_record(bytes(buf[i * size : (i + 1) * size]), version)
                n_valid += 1
            except TelemetryError as e:
                bad.append(str(e))
        del buf[: n * size]
        with self._cond:
            if valid is not None:
                self._record = valid
                self._seq += n_valid
                self._recv_time = now
                self._problem = None
                self._cond.notify_all()
            self._skipped += len(bad)
            skipped = self._skipped
        if bad and now - last_skip_log >= _SKIP_LOG_INTERVAL:
            logger.warning(
                "telemetry: skipped a malformed record from %s (%d so far): %s",
                self.address,
                skipped,
                bad[-1],
            )
            return now
        return last_skip_log


def _describe_connect_error(e: OSError, port: int) -> str:
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused (nothing is listening on port {port})"
    if isinstance(e, TimeoutError):
        return "connection attempt timed out (wrong host, or a firewall?)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e})"
    return f"cannot connect ({e})"


def _is_int_in(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
