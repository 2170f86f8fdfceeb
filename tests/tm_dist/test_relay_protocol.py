"""The relay's protocol rules (issue 15): roles, one identity per connection, pre-auth limits,
heartbeats, a password check that does not reveal the password's length, IPv6 literals.

Most tests speak to the relay through raw sockets, which is what an attacker does: each frame
sent to the relay is a 10-byte length, the 64-character token standing for the password, then
a ``(stamp, command, destination, object)`` tuple in tm_dist.wire's codec; frames from the relay
carry no token. Every relay and link a test starts is stopped, then killed by its PID.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tm_dist.settings import ConnectionSettings, Secret
from tm_dist.transport import Link, RelayServer
from tm_dist.wire import tlspyo_deserializer, tlspyo_serializer

PASSWORD = "workers-password-for-the-protocol-tests"
TRAINER_PASSWORD = "trainer-password-for-the-protocol-tests"
PLAIN: dict[str, Any] = {"use_tls": False, "max_message_bytes": 1 << 20}
HEADER = 10
TOKEN = 64


def _token(password: str) -> str:
    """What an endpoint puts in every frame in place of the password (HMAC-SHA256 of a fixed
    domain string keyed by the password, as hex), computed here from the protocol's definition.

    Before the token existed the relay read the password itself, so against that code the raw
    clients below send the password: the tests then fail on the rule they check, not on an
    authentication detail.
    """
    try:
        from tm_dist.transport.framing import AUTH_TOKEN_SIZE  # noqa: F401
    except ImportError:
        return password
    return hmac.new(password.encode(), b"tm-dist relay auth v1", hashlib.sha256).hexdigest()


class RawPeer:
    """A hand-made client of the relay: sends frames, reads the relay's frames."""

    def __init__(self, port: int, password: str = PASSWORD, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.token = _token(password).encode()
        self._buffer = b""
        self._stamp = 1000

    def send(self, cmd: str, dest: Any = None, obj: Any = None, stamp: int | None = None) -> int:
        if stamp is None:
            self._stamp += 1
            stamp = self._stamp
        payload = tlspyo_serializer((stamp, cmd, dest, obj))
        self.sock.sendall(f"{len(payload):<{HEADER}}".encode() + self.token + payload)
        return stamp

    def hello(self, *groups: str) -> int:
        return self.send("HELLO", obj=list(groups))

    def frames(self, timeout: float) -> list[tuple[Any, ...]]:
        """The relay's frames that arrive within ``timeout`` (fewer if it closes the socket)."""
        out: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            self._buffer += data
            while len(self._buffer) >= HEADER:
                end = HEADER + int(self._buffer[:HEADER])
                if len(self._buffer) < end:
                    break
                out.append(tuple(tlspyo_deserializer(self._buffer[HEADER:end])))
                self._buffer = self._buffer[end:]
        return out

    def closed_by_relay(self, timeout: float) -> bool:
        """Whether the relay closes this connection within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[..., RawPeer]]:
    """Open raw peers (``raw(port, password=..., host=...)``), all closed at the end."""
    opened: list[RawPeer] = []

    def open_peer(port: int, password: str = PASSWORD, host: str = "127.0.0.1") -> RawPeer:
        peer = RawPeer(port, password, host)
        opened.append(peer)
        return peer

    try:
        yield open_peer
    finally:
        for peer in opened:
            peer.close()


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _link(closing: Callable[[Any], Any], password: str, port: int, groups: str) -> Link:
    link = Link(password, port=port, groups=groups, connect_timeout_s=10.0, **PLAIN)
    closing(link)
    return link.connect()


def _fleet_relay(closing: Callable[[Any], Any], **options: Any) -> RelayServer:
    from tm_dist.transport import Credential

    worker = Credential(
        "worker", PASSWORD, frozenset({"workers"}), frozenset({"trainers"}), frozenset()
    )
    trainer = Credential(
        "trainer", TRAINER_PASSWORD, frozenset({"trainers"}), frozenset(), frozenset({"workers"})
    )
    relay = RelayServer("", port=0, credentials=[worker, trainer], **PLAIN, **options)
    return closing(relay.start())


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (cannot bind ::1)"
)


# ------------------------------------------------------------------------------ in process
# The relay's protocol driven in this process with an in-memory transport: fast, and its log
# lines are visible (the relay child's are not).


class _Transport:
    """Just what the relay's protocol uses of a TCP transport."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abortConnection(self) -> None:
        self.aborted = True

    def loseConnection(self) -> None:
        self.aborted = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True


class _InProcess:
    """A relay (:class:`RelayProcess`, never started) and its connections, in this process."""

    def __init__(self, **limits: Any) -> None:
        import multiprocessing

        from tm_dist.transport.child.relay import RelayProcess, RoleRule
        from tm_dist.transport.status import StatusBoard

        every = frozenset({"workers", "trainers", "server"})
        worker = RoleRule(
            "worker", _token(PASSWORD).encode(), frozenset({"workers"}), frozenset({"trainers"}),
            frozenset(),
        )  # fmt: skip
        trainer = RoleRule(
            "trainer", _token(TRAINER_PASSWORD).encode(), frozenset({"trainers"}), frozenset(),
            frozenset({"workers"}),
        )  # fmt: skip
        options: dict[str, Any] = {
            "heartbeat_timeout_s": 10.0, "preauth_timeout_s": 5.0, "max_unauthenticated": 64,
            **limits,
        }  # fmt: skip
        self.status = StatusBoard(multiprocessing.get_context())
        self.relay = RelayProcess(
            port=0, host="127.0.0.1", roles=(worker, trainer), groups=tuple(sorted(every)),
            serializer=tlspyo_serializer, deserializer=tlspyo_deserializer,
            max_message_bytes=1 << 20, tls=None, status=self.status, queue_max_messages=100,
            queue_max_bytes=1 << 20, **options,
        )  # fmt: skip

    def connect(self, port: int = 40000) -> tuple[Any, _Transport]:
        from twisted.internet.address import IPv4Address

        from tm_dist.transport.child.relay import RelayFactory

        protocol = RelayFactory(self.relay).buildProtocol(IPv4Address("TCP", "10.1.2.3", port))
        transport = _Transport()
        protocol.makeConnection(transport)
        return protocol, transport

    @staticmethod
    def frame(password: str, stamp: int, cmd: str, dest: Any = None, obj: Any = None) -> bytes:
        payload = tlspyo_serializer((stamp, cmd, dest, obj))
        return f"{len(payload):<{HEADER}}".encode() + _token(password).encode() + payload


def test_role_refusals_are_logged_with_peer_role_and_what(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = _InProcess()
    with caplog.at_level(logging.WARNING, logger="tm_dist"):
        spy, spy_transport = relay.connect(40001)
        spy.dataReceived(relay.frame(PASSWORD, 1, "HELLO", obj=["trainers"]))
        impostor, impostor_transport = relay.connect(40002)
        impostor.dataReceived(relay.frame(PASSWORD, 1, "HELLO", obj=["workers"]))
        impostor.dataReceived(relay.frame(PASSWORD, 2, "OBJ", {"workers": -1}, b"weights"))
    assert spy_transport.aborted and impostor_transport.aborted
    assert relay.relay.group_info["workers"]["to_broadcast"] is None  # nothing kept
    refusals = [r.getMessage() for r in caplog.records if "role" in r.getMessage()]
    assert any(
        "10.1.2.3:40001" in m and "worker" in m and "may not join ['trainers']" in m
        for m in refusals
    )
    assert any("10.1.2.3:40002" in m and "broadcast to 'workers'" in m for m in refusals)
    assert relay.status.get(_slot("ROLE_REJECTS")) == 2
    assert PASSWORD not in caplog.text and _token(PASSWORD) not in caplog.text


def _slot(name: str) -> Any:
    from tm_dist.transport.status import Slot

    return Slot[name]


def test_a_second_hello_is_logged_and_the_first_identity_leaves_its_groups(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = _InProcess()
    ghost, transport = relay.connect()
    with caplog.at_level(logging.WARNING, logger="tm_dist"):
        ghost.dataReceived(relay.frame(TRAINER_PASSWORD, 1, "HELLO", obj=["trainers"]))
        ghost.dataReceived(relay.frame(TRAINER_PASSWORD, 2, "NTF", {"trainers": 1 << 40}))
        assert relay.relay.group_info["trainers"]["ids"]  # joined, with credit
        ghost.dataReceived(relay.frame(TRAINER_PASSWORD, 3, "HELLO", obj=["trainers"]))
    assert transport.aborted
    assert relay.relay.group_info["trainers"]["ids"] == []  # no ghost, even before the close
    assert relay.relay.to_clients == {}
    assert relay.status.get(_slot("HELLO_REJECTS")) == 1
    assert any("second HELLO" in r.getMessage() for r in caplog.records)


def test_the_sweep_drops_late_and_silent_connections_with_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = _InProcess(preauth_timeout_s=5.0, heartbeat_timeout_s=10.0, max_unauthenticated=3)
    idle = [relay.connect(41000 + i) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="tm_dist"):
        extra = [relay.connect(42000 + i) for i in range(4)]  # beyond the cap of 3
        assert all(t.aborted for _, t in extra)
        assert relay.status.get(_slot("UNAUTHENTICATED_REJECTS")) == 4
        _, live_transport = relay.connect(43000)  # refused too: still 3 waiting
        assert live_transport.aborted
        for protocol, _ in idle:
            protocol.opened_at -= 6.0  # as if 6 s had passed
        relay.relay.sweep()
        assert all(t.aborted for _, t in idle)
        assert relay.status.get(_slot("PREAUTH_TIMEOUTS")) == 3
        talker, talker_transport = relay.connect(44000)  # room again
        assert not talker_transport.aborted
        talker.dataReceived(relay.frame(PASSWORD, 1, "HELLO", obj=["workers"]))
        assert relay.status.get(_slot("UNAUTHENTICATED")) == 0
        talker.heard_at -= 11.0  # silent for 11 s
        relay.relay.sweep()
    assert talker_transport.aborted
    assert relay.status.get(_slot("HEARTBEAT_TIMEOUTS")) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("already waiting" in m for m in messages) == 1  # once for the whole burst
    assert sum("not authenticated within" in m for m in messages) == 1  # one line per sweep
    assert any("heartbeat timeout" in m and "10.1.2.3:44000" in m for m in messages)


def test_ping_is_acknowledged_and_other_commands_need_a_hello() -> None:
    relay = _InProcess()
    peer, transport = relay.connect()
    peer.dataReceived(relay.frame(PASSWORD, 7, "PING"))
    assert not transport.aborted
    payload = bytes(transport.written)  # the relay's HELLO, then the ACK
    frames = []
    while payload:
        end = HEADER + int(payload[:HEADER])
        frames.append(tuple(tlspyo_deserializer(payload[HEADER:end])))
        payload = payload[end:]
    assert (7, "ACK", None) in frames
    peer.dataReceived(relay.frame(PASSWORD, 8, "OBJ", {"trainers": 1}, b"before HELLO"))
    assert transport.aborted
    assert relay.status.get(_slot("FRAME_REJECTS")) == 1


# ------------------------------------------------------------------------------ roles


@pytest.mark.slow  # relay and link processes
def test_a_worker_credential_cannot_join_the_trainers_nor_broadcast(
    closing: Callable[[Any], Any], raw: Callable[..., RawPeer]
) -> None:
    relay = _fleet_relay(closing)

    spy = raw(relay.port)
    spy.hello("trainers")  # to receive the episodes
    assert spy.closed_by_relay(5), "a worker credential joined the trainers group"

    impostor = raw(relay.port)
    impostor.hello("workers")
    impostor.send("OBJ", {"workers": -1}, b"poisoned weights")  # publish to every worker
    assert impostor.closed_by_relay(5), "a worker credential broadcast to the workers"

    hoarder = raw(relay.port)
    hoarder.hello("workers")
    hoarder.send("OBJ", {"workers": 1}, b"a consumable for the workers")
    assert hoarder.closed_by_relay(5)
    _wait_for(lambda: relay.stats().role_rejects == 3)

    # the real trainer and worker are unaffected; nothing of the above reached them
    trainer = _link(closing, TRAINER_PASSWORD, relay.port, "trainers")
    worker = _link(closing, PASSWORD, relay.port, "workers")
    worker.send("trainers", "an episode")
    assert trainer.receive(timeout=10) == "an episode"
    trainer.broadcast("workers", "weights v1")
    assert worker.receive(timeout=10) == "weights v1"
    time.sleep(0.3)
    assert worker.receive_all() == [] and trainer.receive_all() == []
    assert relay.stats().role_rejects == 3


@pytest.mark.slow  # a relay process
def test_a_trainer_credential_may_not_send_as_a_worker_and_tokens_cannot_change(
    closing: Callable[[Any], Any], raw: Callable[..., RawPeer]
) -> None:
    relay = _fleet_relay(closing)
    trainer = raw(relay.port, TRAINER_PASSWORD)
    trainer.hello("workers")  # the trainer's role joins "trainers" only
    assert trainer.closed_by_relay(5)
    _wait_for(lambda: relay.stats().role_rejects == 1)

    # a connection that authenticated as a worker cannot switch to the trainer's token
    switcher = raw(relay.port)
    switcher.hello("workers")
    switcher.token = _token(TRAINER_PASSWORD).encode()
    switcher.send("OBJ", {"workers": -1}, b"weights")
    assert switcher.closed_by_relay(5)

    wrong = raw(relay.port, "not any role's password")
    wrong.hello("workers")
    assert wrong.closed_by_relay(5)
    _wait_for(lambda: relay.stats().password_rejects == 2)


def test_credentials_are_checked_when_the_relay_is_made() -> None:
    from tm_dist.errors import InvalidValueError
    from tm_dist.transport import Credential

    same = [
        Credential("worker", "pw-1234567890", frozenset({"workers"}), frozenset(), frozenset()),
        Credential("trainer", "pw-1234567890", frozenset({"trainers"}), frozenset(), frozenset()),
    ]
    with pytest.raises(InvalidValueError, match="same password"):
        RelayServer("", credentials=same, **PLAIN)
    unknown = [Credential("x", "pw", frozenset({"wrokers"}), frozenset(), frozenset())]
    with pytest.raises(InvalidValueError, match="wrokers"):
        RelayServer("", credentials=unknown, **PLAIN)
    with pytest.raises(TypeError, match="set of group names"):
        Credential("x", "pw", "workers", frozenset(), frozenset())  # type: ignore[arg-type]
    assert "pw" not in repr(unknown[0])


# ------------------------------------------------------------------------------ one identity


@pytest.mark.slow  # relay and link processes
def test_a_second_hello_is_refused_and_leaves_no_ghost(
    closing: Callable[[Any], Any], raw: Callable[..., RawPeer]
) -> None:
    relay = closing(RelayServer(PASSWORD, port=0, **PLAIN).start())
    ghost = raw(relay.port)
    ghost.hello("trainers")
    ghost.send("NTF", {"trainers": 1 << 40})  # credit: every episode would go to it
    ghost.hello("workers")
    ghost.frames(0.3)
    ghost.close()
    time.sleep(0.3)

    trainer = _link(closing, PASSWORD, relay.port, "trainers")
    worker = _link(closing, PASSWORD, relay.port, "workers")
    n = 200
    for i in range(n):
        worker.send("trainers", i)
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(trainer.receive(timeout=1))
        except TimeoutError:
            continue
    assert len(got) == n, f"the real trainer received {len(got)} of {n} messages"
    assert relay.stats().hello_rejects == 1


# ------------------------------------------------------------------------------ pre-auth limits


@pytest.mark.slow  # relay and link processes
def test_idle_connections_time_out_and_are_capped(
    closing: Callable[[Any], Any], raw: Callable[..., RawPeer]
) -> None:
    relay = closing(
        RelayServer(PASSWORD, port=0, preauth_timeout_s=0.5, max_unauthenticated=8, **PLAIN)
    )
    relay.start()
    idle = [raw(relay.port) for _ in range(20)]
    # beyond the cap: closed at once, without even the relay's greeting
    late = idle[8:]
    assert all(p.closed_by_relay(2) for p in late)
    _wait_for(lambda: relay.stats().unauthenticated_rejects == len(late))
    # the first 8 were greeted, then dropped for not authenticating in 0.5 s
    early = idle[:8]
    assert all(p.closed_by_relay(3) for p in early)
    _wait_for(lambda: relay.stats().preauth_timeouts == 8)
    assert relay.stats().unauthenticated == 0

    # a real link gets in while the 20 sockets are still open on our side
    worker = _link(closing, PASSWORD, relay.port, "workers")
    trainer = _link(closing, PASSWORD, relay.port, "trainers")
    worker.send("trainers", "through")
    assert trainer.receive(timeout=10) == "through"


@pytest.mark.slow  # relay and link processes
@pytest.mark.skipif(sys.platform != "linux", reason="lowers the relay's limit with prlimit")
def test_idle_sockets_cannot_exhaust_the_relays_file_descriptors(
    closing: Callable[[Any], Any], raw: Callable[..., RawPeer]
) -> None:
    """The relay child gets a limit of 128 descriptors, then 150 idle sockets connect (the
    issue's 1,100 against 1,024): with the defaults (at most 64 waiting, 5 s to authenticate)
    a real link still gets in."""
    import resource

    relay = closing(RelayServer(PASSWORD, port=0, **PLAIN).start())
    assert relay.pid is not None
    resource.prlimit(relay.pid, resource.RLIMIT_NOFILE, (128, 128))
    idle, reset = [], 0
    for _ in range(150):
        try:
            idle.append(raw(relay.port))
        except ConnectionError:  # past the cap the relay closes at once: a busy machine may
            reset += 1  # see that reset while the connection is still being set up
    link = closing(
        Link(PASSWORD, port=relay.port, groups="workers", connect_timeout_s=20.0, **PLAIN)
    )
    link.connect()
    assert link.connected
    assert len(idle) + reset == 150 and len(idle) >= 64  # the cap's worth stayed open


@pytest.mark.slow  # a relay process
def test_a_token_without_hello_does_not_count_as_authenticated(
    closing: Callable[[Any], Any],
    raw: Callable[..., RawPeer],
) -> None:
    relay = closing(RelayServer(PASSWORD, port=0, preauth_timeout_s=0.5, **PLAIN).start())
    peer = raw(relay.port)
    peer.send("PING")  # a valid token, but no HELLO: still unauthenticated
    assert peer.closed_by_relay(3)
    assert relay.stats().preauth_timeouts == 1


# ------------------------------------------------------------------------------ heartbeats


@pytest.mark.slow  # a relay process
def test_the_relay_answers_ping_and_drops_silent_peers(
    closing: Callable[[Any], Any], raw: Callable[..., RawPeer]
) -> None:
    relay = closing(RelayServer(PASSWORD, port=0, heartbeat_timeout_s=0.8, **PLAIN).start())

    talker = raw(relay.port)
    talker.hello("workers")
    stamp = talker.send("PING")
    acks = [f for f in talker.frames(0.3) if f[1] == "ACK"]
    assert (stamp, "ACK", None) in acks
    silent = raw(relay.port)
    silent.hello("workers")
    for _ in range(8):  # 1.6 s: the talker stays, pinging every 0.2 s
        talker.send("PING")
        time.sleep(0.2)
    assert silent.closed_by_relay(2)
    assert not talker.closed_by_relay(0.1)
    assert relay.stats().heartbeat_timeouts == 1


# ------------------------------------------------------------------------------ password length


@pytest.mark.slow  # a relay process
@pytest.mark.parametrize("password", ["abc", "p" * 300])
def test_the_relay_decides_after_the_same_bytes_whatever_the_password_length(
    closing: Callable[[Any], Any], raw: Callable[..., RawPeer], password: str
) -> None:
    relay = closing(RelayServer(password, port=0, **PLAIN).start())
    peer = raw(relay.port)
    # a header, then exactly 64 bytes of a wrong token: enough to decide, nothing more
    peer.sock.sendall(f"{20:<{HEADER}}".encode() + b"0" * TOKEN)
    assert peer.closed_by_relay(3), "the relay waited for more bytes than the token"
    assert relay.stats().password_rejects == 1


# ------------------------------------------------------------------------------ IPv6


@needs_ipv6
@pytest.mark.slow  # relay and link processes
def test_a_bracketed_ipv6_loopback_works_for_relay_and_links(
    closing: Callable[[Any], Any],
) -> None:
    relay = closing(RelayServer(PASSWORD, host="[::1]", port=0, **PLAIN).start())
    settings = ConnectionSettings(
        host="[::1]", port=relay.port, password=Secret(PASSWORD), connect_timeout_s=5.0
    )
    assert settings.host == "::1" and not settings.use_tls
    trainer = closing(Link.from_settings(settings, groups="trainers").connect())
    worker = closing(Link.from_settings(settings, groups="workers").connect())
    worker.send("trainers", "over IPv6")
    assert trainer.receive(timeout=10) == "over IPv6"
    direct = closing(  # a Link built by hand takes the bracketed literal too
        Link(PASSWORD, host="[::1]", port=relay.port, groups="workers", **PLAIN).connect()
    )
    direct.send("trainers", "by hand")
    assert trainer.receive(timeout=10) == "by hand"


def _dual_stack_default() -> bool:
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            return f.read().strip() == "0"
    except OSError:
        return False


@needs_ipv6
@pytest.mark.slow  # a relay process
def test_binding_the_ipv6_wildcard_listens_on_ipv6_and_where_dual_stack_ipv4(
    closing: Callable[[Any], Any],
    raw: Callable[..., RawPeer],
) -> None:
    relay = closing(RelayServer(PASSWORD, host="::", port=0, insecure=True, **PLAIN).start())
    hosts = ["::1", "127.0.0.1"] if _dual_stack_default() else ["::1"]
    for host in hosts:
        greeting = raw(relay.port, host=host).frames(1.0)
        assert greeting and greeting[0][1] == "HELLO", f"no greeting over {host}"


def test_ipv6_literals_in_settings() -> None:
    from tm_dist.settings import SettingsError, is_loopback, load_settings

    assert ConnectionSettings(host="[::1]").host == "::1"
    assert ConnectionSettings(host="[fe80::1]").host == "fe80::1"
    assert ConnectionSettings(host="::1").host == "::1"
    assert is_loopback("::1") and is_loopback("[::1]")
    s = load_settings(None, env={"TM_DIST_CONNECTION_HOST": "[::1]"})
    assert s.connection.host == "::1" and not s.connection.use_tls
    for bad in ("[::1]:7714", "[example.com]", "[::1"):
        with pytest.raises(SettingsError):
            ConnectionSettings(host=bad)


@needs_ipv6
@pytest.mark.slow  # a tm-dist server process
def test_tm_dist_server_bind_ipv6_wildcard(tmp_path: Path) -> None:
    """``tm-dist server --bind ::`` accepts connections over IPv6 (and IPv4 on a dual-stack
    system, Linux's default)."""
    from tm_dist.certs import make_cert
    from tm_dist.testing import kill_by_pid

    keys = make_cert(tmp_path / "keys").keys_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_DIST_")}
    env |= {
        "TM_DIST_PASSWORD": PASSWORD,
        "TM_DIST_TRAINER_PASSWORD": TRAINER_PASSWORD,
        "TM_DIST_CONNECTION_KEYS_DIR": str(keys),
    }
    port_file = tmp_path / "port"
    argv = ["server", "--bind", "::", "--port", "0", "--port-file", str(port_file)]
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "tm_dist.cli", *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: port_file.is_file() or server.poll() is not None, timeout=60)
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        port = int(port_file.read_text())
        for host in ["::1", "127.0.0.1"] if _dual_stack_default() else ["::1"]:
            with socket.create_connection((host, port), timeout=5):
                pass  # accepted: the relay listens on this family
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_by_pid(server.pid)
