"""The tlspyo transport: relay and links on loopback, TLS, handshake errors, hostile input.

Every relay and link runs a child process; fixtures stop them and then make sure, by PID,
that nothing is left running.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tm_dist.certs import make_cert
from tm_dist.settings import ConnectionSettings, Secret
from tm_dist.testing import kill_by_pid
from tm_dist.transport import (
    AuthenticationError,
    InsecureConnectionError,
    Link,
    MessageTooLargeError,
    PasswordError,
    RelayServer,
    RelayUnreachableError,
    TLSHandshakeError,
    check_security,
    free_local_port,
)
from tm_dist.transport.framing import auth_token
from tm_dist.wire import tlspyo_serializer

PASSWORD = "correct horse battery staple"
TRAINER_PASSWORD = "the trainer's own password"
MAX_BYTES = 1 << 20

CODEC: dict[str, Any] = {}  # tm_dist.wire's codec, the default
PLAIN: dict[str, Any] = {"use_tls": False, "max_message_bytes": MAX_BYTES}

# A codec of our own, to show that any bytes codec works: msgpack keeps tuples as arrays, which
# tlspyo unpacks the same way; functools.partial of module functions survives "spawn".
MSGPACK_CODEC: dict[str, Any] = {
    "serializer": functools.partial(msgpack.packb, use_bin_type=True),
    "deserializer": functools.partial(msgpack.unpackb, raw=False, use_list=False),
}


def _is_gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayServer]:
    server = RelayServer(PASSWORD, port=0, **PLAIN)
    try:
        server.start()
        yield server
    finally:
        pid = server.pid
        server.stop()
        kill_by_pid(pid)


def _link(closing: Callable[[Any], Any], port: int, groups: str, **kwargs: Any) -> Link:
    options = {**PLAIN, "connect_timeout_s": 10.0, **kwargs}
    link = Link(PASSWORD, port=port, groups=groups, **options)
    closing(link)
    return link.connect()


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ------------------------------------------------------------------------------ small pieces


def test_free_local_port_is_bindable() -> None:
    port = free_local_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_plaintext_is_allowed_on_loopback(host: str) -> None:
    check_security(host, use_tls=False, insecure=False)


@pytest.mark.parametrize("host", ["192.168.1.20", "0.0.0.0", "example.com"])
def test_plaintext_off_loopback_needs_insecure(host: str) -> None:
    with pytest.raises(InsecureConnectionError, match="--insecure"):
        check_security(host, use_tls=False, insecure=False)
    check_security(host, use_tls=False, insecure=True)
    check_security(host, use_tls=True, insecure=False)
    with pytest.raises(InsecureConnectionError, match=host):
        Link(PASSWORD, host=host, port=5000, groups="workers", **PLAIN)


def test_bad_arguments_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown group 'worker'"):
        Link(PASSWORD, port=5000, groups="worker", **PLAIN)
    with pytest.raises(PasswordError, match="password is empty"):
        Link("", port=5000, groups="workers", **PLAIN)
    with pytest.raises(FileNotFoundError, match=r"certificate\.pem"):
        Link(PASSWORD, port=5000, groups="workers", keys_dir=tmp_path)
    with pytest.raises(ValueError, match="keys_dir"):
        RelayServer(PASSWORD)


# ------------------------------------------------------------------------------ exchanges


@pytest.mark.slow  # relay and link processes
def test_worker_to_trainer_and_broadcast_to_workers(closing: Callable[[Any], Any]) -> None:
    # a relay of its own: the shared one keeps the last broadcast of whichever test ran before
    relay = closing(RelayServer(PASSWORD, port=0, **PLAIN).start())
    trainer = _link(closing, relay.port, "trainers")
    workers = [_link(closing, relay.port, "workers") for _ in range(2)]

    workers[0].send("trainers", {"episode": 1, "frames": b"\x00\x01"})
    assert trainer.receive(timeout=10) == {"episode": 1, "frames": b"\x00\x01"}

    trainer.broadcast("workers", {"version": 3})
    for worker in workers:
        assert worker.receive(timeout=10) == {"version": 3}
    assert workers[1].get_last() is None


@pytest.mark.slow  # relay and link processes
def test_request_response_round_trips_over_nodelay_sockets(
    closing: Callable[[Any], Any],
) -> None:
    relay = closing(RelayServer(PASSWORD, port=0, **PLAIN).start())  # no earlier broadcast
    trainer = _link(closing, relay.port, "trainers")
    worker = _link(closing, relay.port, "workers")
    for i in range(30):
        worker.send("trainers", i)
        assert trainer.receive(timeout=10) == i
        trainer.broadcast("workers", -i)
        assert worker.receive(timeout=10) == -i
    # Each child read TCP_NODELAY back from its socket after setting it.
    assert worker.stats().tcp_nodelay_connections == 1
    assert trainer.stats().tcp_nodelay_connections == 1
    stats = relay.stats()
    assert stats.connections >= 2
    assert stats.tcp_nodelay_connections == stats.connections


@pytest.mark.slow  # relay and link processes
def test_link_started_with_spawn_still_sets_nodelay(
    relay: RelayServer, closing: Callable[[Any], Any]
) -> None:
    trainer = _link(closing, relay.port, "trainers")
    worker = _link(closing, relay.port, "workers", start_method="spawn")
    assert worker.stats().tcp_nodelay_connections == 1
    worker.send("trainers", "from a spawned child")
    assert trainer.receive(timeout=10) == "from a spawned child"


@pytest.mark.slow  # relay and link processes
def test_any_bytes_codec_can_replace_wire(closing: Callable[[Any], Any]) -> None:
    options = {**PLAIN, **MSGPACK_CODEC}
    server = closing(RelayServer(PASSWORD, port=0, **options).start())
    trainer = _link(closing, server.port, "trainers", **MSGPACK_CODEC)
    worker = _link(closing, server.port, "workers", **MSGPACK_CODEC)
    worker.send("trainers", {"any": ["msgpack", "value"]})
    assert trainer.receive(timeout=10) == {"any": ("msgpack", "value")}


@pytest.mark.slow  # relay and link processes
def test_links_and_relays_from_connection_settings(closing: Callable[[Any], Any]) -> None:
    settings = ConnectionSettings(
        host="127.0.0.1",
        port=free_local_port(),
        password=Secret(PASSWORD),
        trainer_password=Secret(TRAINER_PASSWORD),
        connect_timeout_s=5.0,
    )
    assert not settings.use_tls  # loopback: plaintext by default
    server = closing(RelayServer.from_settings(settings, listen_host="127.0.0.1").start())
    trainer = closing(
        Link(TRAINER_PASSWORD, port=settings.port, groups="trainers", **PLAIN).connect()
    )
    worker = closing(Link.from_settings(settings, groups=["workers"]).connect())
    worker.send("trainers", "configured")
    assert trainer.receive(timeout=10) == "configured"
    assert server.port == settings.port
    with pytest.raises(InsecureConnectionError):
        RelayServer.from_settings(settings)  # every interface, without TLS


@pytest.mark.slow  # relay and link processes
def test_oversized_message_is_refused_before_sending(
    relay: RelayServer, closing: Callable[[Any], Any]
) -> None:
    worker = _link(closing, relay.port, "workers")
    with pytest.raises(MessageTooLargeError, match="max_message_bytes"):
        worker.send("trainers", b"x" * MAX_BYTES)


@pytest.mark.slow  # relay and link processes
def test_stop_ends_the_child_processes(closing: Callable[[Any], Any]) -> None:
    server = closing(RelayServer(PASSWORD, port=0, **PLAIN).start())
    link = _link(closing, server.port, "workers")
    link_pid, relay_pid = link.pid, server.pid
    link.stop()
    link.stop()  # idempotent
    server.stop()
    server.stop()
    assert _is_gone(link_pid)
    assert _is_gone(relay_pid)
    assert not link.connected


# ------------------------------------------------------------------------------ failures


@pytest.mark.slow  # relay and link processes
def test_wrong_password_raises_authentication_error_quickly(
    relay: RelayServer, closing: Callable[[Any], Any]
) -> None:
    wrong = "not the password"
    link = closing(Link(wrong, port=relay.port, groups="workers", connect_timeout_s=8.0, **PLAIN))
    before = relay.stats().password_rejects
    start = time.monotonic()
    with pytest.raises(AuthenticationError, match="TM_DIST_PASSWORD") as info:
        link.connect()
    assert time.monotonic() - start < 8.0
    assert wrong not in str(info.value)
    assert PASSWORD not in str(info.value)
    assert relay.stats().password_rejects > before
    assert link.pid is None  # the link stopped itself


@pytest.mark.slow  # relay and link processes
def test_no_server_raises_unreachable(closing: Callable[[Any], Any]) -> None:
    port = free_local_port()
    link = closing(Link(PASSWORD, port=port, groups="workers", connect_timeout_s=1.0, **PLAIN))
    with pytest.raises(RelayUnreachableError, match="connection refused"):
        link.connect()


@pytest.mark.slow  # relay and link processes
def test_port_in_use_is_reported(closing: Callable[[Any], Any]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = closing(RelayServer(PASSWORD, port=taken.getsockname()[1], **PLAIN))
        with pytest.raises(RuntimeError, match="cannot listen"):
            server.start()


@pytest.mark.slow  # relay and link processes
def test_links_reconnect_after_relay_restart(closing: Callable[[Any], Any]) -> None:
    first = closing(RelayServer(PASSWORD, port=0, **PLAIN).start())
    port = first.port
    trainer = _link(closing, port, "trainers")
    worker = _link(closing, port, "workers")
    first.stop()
    _wait_for(lambda: not worker.connected and not trainer.connected)

    worker.send("trainers", "sent while the relay was down")
    closing(RelayServer(PASSWORD, port=port, **PLAIN).start())
    assert trainer.receive(timeout=15) == "sent while the relay was down"
    trainer.broadcast("workers", "and back")
    assert worker.receive(timeout=15) == "and back"
    assert worker.stats().authentications == 2


@pytest.mark.slow  # relay and link processes
def test_unacknowledged_messages_are_resent_after_a_relay_crash(
    closing: Callable[[Any], Any],
) -> None:
    first = closing(RelayServer(PASSWORD, port=0, **PLAIN).start())
    port, pid = first.port, first.pid
    assert pid is not None
    trainer = _link(closing, port, "trainers")
    worker = _link(closing, port, "workers")
    worker.send("trainers", "before")
    assert trainer.receive(timeout=10) == "before"
    os.kill(pid, signal.SIGSTOP)  # frozen: it takes the bytes in and acknowledges nothing
    try:
        sent = [f"episode chunk {i}" for i in range(20)]
        for item in sent:
            worker.send("trainers", item)
        time.sleep(0.5)  # they have left the worker's process, unacknowledged
    finally:
        os.kill(pid, signal.SIGKILL)  # the relay dies with them
    _wait_for(lambda: not worker.connected and not trainer.connected)
    closing(RelayServer(PASSWORD, port=port, **PLAIN).start())
    got: set[Any] = set()
    deadline = time.monotonic() + 20
    while len(got) < len(sent) and time.monotonic() < deadline:
        try:
            got.add(trainer.receive(timeout=1))
        except TimeoutError:
            continue
    assert got == set(sent)  # at least once each; the trainer drops duplicates itself


# ------------------------------------------------------------------------------ TLS


@pytest.mark.slow  # a relay process
def test_a_tls_relay_starts_as_a_spawned_process(
    tmp_path: Path, closing: Callable[[Any], Any]
) -> None:
    """Windows and macOS spawn children (and importing some libraries, TorchRL among them,
    makes Linux do so too): the relay's TLS settings must cross to a spawned child."""
    keys = make_cert(tmp_path / "server").keys_dir
    server = RelayServer(PASSWORD, port=0, keys_dir=keys, use_tls=True, start_method="spawn")
    closing(server.start())
    assert server.running and server.port > 0


@pytest.mark.slow  # relay and link processes
def test_tls_exchange_and_wrong_certificate(tmp_path: Path, closing: Callable[[Any], Any]) -> None:
    keys = make_cert(tmp_path / "server").keys_dir
    tls: dict[str, Any] = {"use_tls": True, "max_message_bytes": MAX_BYTES}
    server = closing(RelayServer(PASSWORD, port=0, keys_dir=keys, **tls).start())
    trainer = _link(closing, server.port, "trainers", keys_dir=keys, **tls)
    worker = _link(closing, server.port, "workers", keys_dir=keys, **tls)
    worker.send("trainers", b"over TLS")
    assert trainer.receive(timeout=10) == b"over TLS"
    trainer.broadcast("workers", b"weights over TLS")
    assert worker.receive(timeout=10) == b"weights over TLS"
    assert worker.stats().tcp_nodelay_connections == 1
    assert server.stats().tcp_nodelay_connections == server.stats().connections

    other = make_cert(tmp_path / "impostor").keys_dir
    stranger = closing(Link(PASSWORD, port=server.port, groups="workers", keys_dir=other, **tls))
    with pytest.raises(TLSHandshakeError, match="TLS handshake failed"):
        stranger.connect()


# ------------------------------------------------------------------------------ hostile input


class _CreatesFile:
    """An object whose loading by the standard library's object serializer creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _raw_frame(payload: bytes, password: str = PASSWORD) -> bytes:
    return f"{len(payload):<10}{auth_token(password)}".encode() + payload


def _send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        try:
            while sock.recv(4096):  # until the relay drops us
                pass
        except (ConnectionResetError, TimeoutError):
            pass


@pytest.mark.slow  # relay and link processes
def test_garbage_and_hostile_frames_are_dropped(
    relay: RelayServer,
    closing: Callable[[Any], Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The shared relay keeps the last broadcast to "workers"; start from a fresh worker's view.
    worker = _link(closing, relay.port, "workers")
    time.sleep(0.2)
    worker.receive_all()
    trainer = _link(closing, relay.port, "trainers")
    marker = tmp_path / "created-by-a-payload"
    hostile = pickle.dumps(_CreatesFile(marker))
    before = relay.stats()

    _send_raw(relay.port, b"this is not a tlspyo frame at all" * 4)
    _send_raw(relay.port, b"9999999999" + auth_token(PASSWORD).encode() + b"x" * 64)  # oversized
    _send_raw(relay.port, _raw_frame(hostile))  # relay's deserializer must refuse it
    _send_raw(relay.port, _raw_frame(tlspyo_serializer(12345)))  # decodes, but is no tlspyo frame
    _send_raw(relay.port, _raw_frame(hostile, password="guess" * 6))
    _wait_for(lambda: relay.stats().frame_rejects >= before.frame_rejects + 4)
    assert relay.stats().password_rejects >= before.password_rejects + 1

    # An authenticated raw client forwards a hostile payload: the trainer must drop it.
    with (
        caplog.at_level(logging.WARNING, logger="tm_dist"),
        socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock,
    ):
        sock.sendall(_raw_frame(tlspyo_serializer((1, "HELLO", None, ("workers",)))))
        sock.sendall(_raw_frame(tlspyo_serializer((2, "OBJ", {"trainers": 1}, hostile))))
        _wait_for(lambda: trainer.stats().dropped_messages >= 1)
    assert any("failed to decode" in r.getMessage() for r in caplog.records)
    assert PASSWORD not in caplog.text

    # The relay and both links still work.
    worker.send("trainers", "still alive")
    assert trainer.receive(timeout=10) == "still alive"
    trainer.broadcast("workers", "so am I")
    assert worker.receive(timeout=10) == "so am I"
    assert not marker.exists()
