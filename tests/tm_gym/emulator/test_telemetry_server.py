"""The emulator's telemetry server: handshake, one client at a time, non-blocking publish, and
round trips with the real client. Loopback only, OS-chosen ports, every socket closed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.emulator.telemetry_server import TelemetryServer
from tm_gym.error import TelemetryError
from tm_gym.game.telemetry import MAGIC_V2, decode_record, record_size
from tm_gym.game.telemetry_client import TelemetryClient


def make_record(i: int = 0) -> TelemetryRecord:
    return TelemetryRecord(
        speed_kmh=50.0 + i,
        distance=2.0 * i,
        x=10.0 + i,
        y=9.0,
        z=-4.0,
        steer=0.25,
        gas=1.0,
        brake=0.0,
        finished=False,
        gear=2,
        rpm=6000.0,
        race_time=0.5 * i,
        checkpoint=1,
        vx=13.0,
        vy=0.0,
        vz=-1.0,
        yaw=1.5,
        pitch=0.0,
        roll=-0.125,
        version=2,
    )


def until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def telemetry_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tm-gym-telemetry")]


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    yield
    assert until(lambda: not telemetry_threads(), 3.0), telemetry_threads()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., TelemetryServer]]:
    made: list[TelemetryServer] = []

    def make(**kw: Any) -> TelemetryServer:
        s = TelemetryServer(**kw)
        made.append(s)
        s.open()
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


@pytest.fixture
def raw_clients() -> Iterator[Callable[[int], socket.socket]]:
    """Plain client sockets, all closed at the end of the test."""
    made: list[socket.socket] = []

    def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        made.append(s)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(5.0)
        s.connect(("127.0.0.1", port))
        return s

    try:
        yield connect
    finally:
        for s in made:
            s.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"stream ended after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


def test_rejects_bad_arguments() -> None:
    with pytest.raises(TelemetryError, match="version 3"):
        TelemetryServer(version=3)
    with pytest.raises(TelemetryError, match="port -1"):
        TelemetryServer(port=-1)
    with pytest.raises(TelemetryError, match="send_timeout 0"):
        TelemetryServer(send_timeout=0)


def test_port_is_chosen_by_the_os(server_factory: Callable[..., TelemetryServer]) -> None:
    unopened = TelemetryServer()
    with pytest.raises(TelemetryError, match="call open"):
        _ = unopened.port
    assert TelemetryServer(port=9123).port == 9123
    server = server_factory()
    assert 0 < server.port < 65536
    assert len(telemetry_threads()) == 1 and telemetry_threads()[0].daemon
    assert str(server.port) in repr(server)


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = TelemetryServer(port=port)
        with pytest.raises(TelemetryError, match=rf"127\.0\.0\.1:{port}.*another port"):
            server.open()
        server.close()


@pytest.mark.parametrize("version", [1, 2])
def test_handshake_and_wire_format(
    version: int,
    server_factory: Callable[..., TelemetryServer],
    raw_clients: Callable[[int], socket.socket],
) -> None:
    server = server_factory(version=version)
    sock = raw_clients(server.port)
    assert until(lambda: server.has_client)
    assert server.publish(make_record(1))
    size = record_size(version)
    if version == 2:
        assert recv_exactly(sock, len(MAGIC_V2)) == MAGIC_V2
    rec = decode_record(recv_exactly(sock, size), version)
    assert rec.speed_kmh == pytest.approx(51.0) and rec.version == version
    if version == 2:
        assert rec == make_record(1)
    assert server.records_sent == 1 and server.clients_served == 1


def test_publish_without_client_returns_false(
    server_factory: Callable[..., TelemetryServer],
) -> None:
    server = server_factory()
    assert not server.has_client
    assert server.publish(make_record()) is False
    server.close()
    assert server.publish(make_record()) is False
    assert server.records_sent == 0


def test_new_client_replaces_the_old_one(
    server_factory: Callable[..., TelemetryServer],
    raw_clients: Callable[[int], socket.socket],
) -> None:
    server = server_factory(version=2)
    first = raw_clients(server.port)
    assert until(lambda: server.clients_served == 1)
    assert recv_exactly(first, 8) == MAGIC_V2
    second = raw_clients(server.port)
    assert until(lambda: server.clients_served == 2)
    assert first.recv(16) == b""  # the old connection was closed
    assert server.publish(make_record(3))
    assert recv_exactly(second, 8) == MAGIC_V2  # each client gets the header
    assert decode_record(recv_exactly(second, record_size(2)), 2).speed_kmh == pytest.approx(53.0)


def test_departed_client_is_dropped(
    server_factory: Callable[..., TelemetryServer],
    raw_clients: Callable[[int], socket.socket],
) -> None:
    server = server_factory()
    sock = raw_clients(server.port)
    assert until(lambda: server.has_client)
    sock.close()
    # The first writes after the peer left may still succeed; an error follows soon.
    assert until(lambda: not server.publish(make_record()), 2.0)
    assert not server.has_client
    again = raw_clients(server.port)
    assert until(lambda: server.clients_served == 2)
    assert server.publish(make_record(4))
    assert recv_exactly(again, 8) == MAGIC_V2


def test_slow_client_does_not_block_publish(
    server_factory: Callable[..., TelemetryServer],
    raw_clients: Callable[..., socket.socket],
) -> None:
    server = server_factory(send_timeout=0.05)
    raw_clients(server.port, rcvbuf=4096)  # never reads
    assert until(lambda: server.has_client)
    t0 = time.monotonic()
    n = 0
    while server.publish(make_record(n)):
        n += 1
        assert time.monotonic() - t0 < 20.0, "publish never gave up on a client that never reads"
    assert n > 0 and not server.has_client
    assert server.records_sent == n


def test_close_is_idempotent_and_reopens_on_the_same_port(
    raw_clients: Callable[[int], socket.socket],
) -> None:
    server = TelemetryServer()
    with server:
        port = server.port
        sock = raw_clients(port)
        assert until(lambda: server.has_client)
    assert not telemetry_threads()
    assert sock.recv(16) == MAGIC_V2 and sock.recv(16) == b""  # closed on our side
    server.close()
    server.close()
    with pytest.raises(ConnectionRefusedError):
        raw_clients(port)
    with server:
        assert server.port == port
        raw_clients(port)
        assert until(lambda: server.clients_served == 2)
    assert not telemetry_threads()


@pytest.mark.parametrize("version", [1, 2])
def test_round_trip_with_the_client(
    version: int, server_factory: Callable[..., TelemetryServer]
) -> None:
    server = server_factory(version=version)
    with TelemetryClient(port=server.port, timeout=2.0, reconnect_interval=0.05) as client:
        assert until(lambda: server.has_client)
        for i in range(5):
            assert server.publish(make_record(i))
            rec = client.wait_fresh()
            assert rec.speed_kmh == pytest.approx(50.0 + i) and rec.version == version
        if version == 2:
            assert rec == make_record(4)
        else:
            assert rec.checkpoint == -1 and rec.position == make_record(4).position
        assert client.protocol_version == version


def test_client_follows_a_restarted_server(server_factory: Callable[..., TelemetryServer]) -> None:
    server = server_factory()
    with TelemetryClient(port=server.port, timeout=2.0, reconnect_interval=0.05) as client:
        assert until(lambda: server.has_client)
        server.publish(make_record(1))
        assert client.wait_fresh().speed_kmh == pytest.approx(51.0)
        server.disconnect_client()  # the plugin drops us: the client reconnects by itself
        assert until(lambda: server.clients_served == 2)
        server.publish(make_record(2))
        assert client.wait_fresh().speed_kmh == pytest.approx(52.0)
        server.close()  # the game exits ...
        assert until(lambda: not client.connected)
        server.open()  # ... and starts again on the same port
        assert until(lambda: server.has_client)
        server.publish(make_record(3))
        assert client.wait_fresh().speed_kmh == pytest.approx(53.0)
