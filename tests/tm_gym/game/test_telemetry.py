"""The telemetry protocol (pure encode/decode) and the TCP client, against raw loopback servers.

Servers here are plain sockets bound to OS-chosen loopback ports, so each test controls the
exact bytes on the wire (TMRL's 44-byte records, v2 with its magic, byte-by-byte writes,
garbage). Every socket a test opens is closed by its fixture.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tm_gym.core.ports import TelemetrySource
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import TelemetryError, TMGymError
from tm_gym.game.telemetry import (
    MAGIC_V2,
    TMRL_FLOATS,
    V2_FLOATS,
    decode_record,
    encode_record,
    record_size,
)
from tm_gym.game.telemetry_client import TelemetryClient

TIMEOUT = 0.5
RECONNECT = 0.05


def make_record(i: int = 0, *, version: int = 2) -> TelemetryRecord:
    """A record whose values are exact in float32 and depend on ``i``."""
    extra = (
        {
            "race_time": 0.25 * i,
            "checkpoint": i % 4,
            "vx": 1.5,
            "vy": -0.5,
            "vz": 2.0 + i,
            "yaw": 0.125,
            "pitch": -0.25,
            "roll": 0.5,
        }
        if version == 2
        else {}
    )
    return TelemetryRecord(
        speed_kmh=100.0 + i,
        distance=10.0 * i,
        x=1.0 + i,
        y=2.0,
        z=-3.0 - i,
        steer=-0.5,
        gas=1.0,
        brake=0.0,
        finished=i % 2 == 1,
        gear=1 + i % 5,
        rpm=5000.0 + i,
        version=version,
        **extra,  # type: ignore[arg-type]
    )


def same_record(a: TelemetryRecord, b: TelemetryRecord) -> bool:
    """Equality where NaN equals NaN (TMRL-layout records carry NaN extras) and the speed may
    differ by float32 rounding (the TMRL layout carries it in m/s, the record in km/h)."""
    for name in a.__dataclass_fields__:
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, float) and math.isnan(va):
            if not (isinstance(vb, float) and math.isnan(vb)):
                return False
        elif name == "speed_kmh":
            if not math.isclose(va, vb, rel_tol=1e-6):
                return False
        elif va != vb:
            return False
    return True


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


class RawServer:
    """A listening loopback socket; the test accepts and writes bytes itself."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4)
        self.listener.settimeout(5.0)
        self.port: int = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []

    def accept(self) -> socket.socket:
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()
        self.listener.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., RawServer]]:
    """Factory of raw servers, all closed at the end of the test."""
    made: list[RawServer] = []

    def make(port: int = 0) -> RawServer:
        s = RawServer(port)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


@pytest.fixture
def clients() -> Iterator[Callable[..., TelemetryClient]]:
    """Factory of opened clients, all closed at the end of the test."""
    made: list[TelemetryClient] = []

    def make(port: int, **kw: float) -> TelemetryClient:
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("reconnect_interval", RECONNECT)
        c = TelemetryClient("127.0.0.1", port, **kw)
        made.append(c)
        c.open()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- pure protocol ---------------------------------------------------------------------------


def test_record_sizes() -> None:
    assert record_size(1) == 4 * TMRL_FLOATS == 44
    assert record_size(2) == 4 * V2_FLOATS == 76
    assert len(MAGIC_V2) == 8
    with pytest.raises(TelemetryError, match="version 3"):
        record_size(3)


@pytest.mark.parametrize("version", [1, 2])
def test_encode_decode_round_trip(version: int) -> None:
    rec = make_record(3, version=version)
    data = encode_record(rec, version)
    assert len(data) == record_size(version)
    out = decode_record(data, version)
    assert out.version == version
    if version == 2:
        assert out == rec
    else:  # the TMRL layout has no extras: NaN / -1
        assert out.race_time != out.race_time and math.isnan(out.yaw)
        assert out.checkpoint == -1
        assert out.speed_kmh == pytest.approx(103.0, rel=1e-6)
        assert (out.position, out.gear, out.finished) == ((4.0, 2.0, -6.0), 4, True)


def test_tmrl_layout_field_order() -> None:
    """The 11 floats of TMRL's plugin, in its order; its speed is in m/s."""
    vals = (12.5, 456.0, 1.0, 2.0, 3.0, -0.25, 1.0, 0.0, 1.0, 3.0, 7000.0)
    rec = decode_record(struct.pack("<11f", *vals), 1)
    assert rec.speed_kmh == pytest.approx(45.0) and rec.distance == 456.0
    assert rec.position == (1.0, 2.0, 3.0)
    assert (rec.steer, rec.gas, rec.brake) == (-0.25, 1.0, 0.0)
    assert rec.finished is True and rec.gear == 3 and rec.rpm == 7000.0


def test_decode_rejects_wrong_size_and_non_finite() -> None:
    good = encode_record(make_record(), 1)
    with pytest.raises(TelemetryError, match=r"43 bytes.*44 bytes"):
        decode_record(good[:-1], 1)
    with pytest.raises(TelemetryError, match="non-finite"):
        decode_record(struct.pack("<11f", math.nan, *[0.0] * 10), 1)
    with pytest.raises(TelemetryError, match="non-finite"):
        decode_record(struct.pack("<11f", *[0.0] * 10, math.inf), 1)
    with pytest.raises(TelemetryError, match="version 7"):
        encode_record(make_record(), 7)
    with pytest.raises(TelemetryError, match="version 0"):
        decode_record(good, 0)


def test_v2_extras_may_be_non_finite() -> None:
    """Only the TMRL fields must be finite; v2 extras may be NaN (not available)."""
    rec = make_record(version=1)  # extras are NaN
    out = decode_record(encode_record(rec, 2), 2)
    assert math.isnan(out.race_time) and out.version == 2


def test_magic_is_not_a_plausible_tmrl_record() -> None:
    speed = struct.unpack("<f", MAGIC_V2[:4])[0]
    assert not (math.isfinite(speed) and abs(speed) < 1e6)


f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(
    base=st.lists(f32, min_size=11, max_size=11),
    finished=st.booleans(),
    gear=st.integers(-1, 7),
    checkpoint=st.integers(-1, 1000),
    extras=st.lists(f32, min_size=7, max_size=7),
    version=st.sampled_from([1, 2]),
)
def test_round_trip_property(
    base: list[float],
    finished: bool,
    gear: int,
    checkpoint: int,
    extras: list[float],
    version: int,
) -> None:
    rec = TelemetryRecord(
        speed_kmh=base[0],
        distance=base[1],
        x=base[2],
        y=base[3],
        z=base[4],
        steer=base[5],
        gas=base[6],
        brake=base[7],
        finished=finished,
        gear=gear,
        rpm=base[10],
        race_time=extras[0],
        checkpoint=checkpoint,
        vx=extras[1],
        vy=extras[2],
        vz=extras[3],
        yaw=extras[4],
        pitch=extras[5],
        roll=extras[6],
        version=version,
    )
    out = decode_record(encode_record(rec, version), version)
    if version == 2:
        assert out == rec
    else:
        assert out.checkpoint == -1 and math.isnan(out.race_time)
        # m/s in float32 on the wire: km/h come back to float32 precision (or underflow).
        assert out.speed_kmh == pytest.approx(rec.speed_kmh, rel=1e-6, abs=1e-37)
        assert (out.distance, out.position) == (rec.distance, rec.position)
        assert (out.steer, out.gas, out.brake, out.rpm) == (rec.steer, rec.gas, rec.brake, rec.rpm)
        assert (out.finished, out.gear) == (finished, gear)


# -- client: construction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"port": 0}, "port 0"),
        ({"port": 70000}, "port 70000"),
        ({"port": True}, "port True"),
        ({"timeout": 0}, "timeout 0"),
        ({"timeout": math.nan}, "timeout nan"),
        ({"reconnect_interval": -1.0}, "reconnect_interval -1.0"),
    ],
)
def test_client_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(TelemetryError, match=match):
        TelemetryClient(**kwargs)  # type: ignore[arg-type]


def test_client_is_a_telemetry_source_and_lazy() -> None:
    client = TelemetryClient(port=free_port())
    assert isinstance(client, TelemetrySource)
    assert not telemetry_threads()  # nothing starts before open()
    assert client.protocol_version is None and not client.connected
    assert client.records_received == 0 and client.age == math.inf
    with pytest.raises(TelemetryError, match="not open"):
        client.latest()
    with pytest.raises(TelemetryError, match="not open"):
        client.wait_fresh(0.1)
    client.close()  # closing an unopened client is fine


# -- client: decoding ------------------------------------------------------------------------


def test_raw_tmrl_server_is_decoded(
    servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port)
    conn = server.accept()
    recs = [make_record(i, version=1) for i in range(3)]
    conn.sendall(b"".join(encode_record(r, 1) for r in recs))
    client.wait_fresh()
    assert until(lambda: client.records_received == 3)
    assert same_record(client.latest(), recs[-1])
    assert client.protocol_version == 1 and client.connected


def test_v2_stream_is_detected(
    servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port)
    conn = server.accept()
    rec = make_record(5, version=2)
    conn.sendall(MAGIC_V2 + encode_record(rec, 2))
    assert client.wait_fresh() == rec
    assert client.protocol_version == 2


@pytest.mark.parametrize("version", [1, 2])
def test_records_split_byte_by_byte(
    version: int, servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port, timeout=5.0)
    conn = server.accept()
    recs = [make_record(i, version=version) for i in range(4)]
    data = (MAGIC_V2 if version == 2 else b"") + b"".join(encode_record(r, version) for r in recs)
    for b in data:
        conn.sendall(bytes([b]))
    assert until(lambda: client.records_received == 4)
    assert same_record(client.latest(), recs[-1])
    assert client.records_skipped == 0 and client.protocol_version == version


def test_malformed_records_are_skipped(
    servers: Callable[..., RawServer],
    clients: Callable[..., TelemetryClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = servers()
    client = clients(server.port)
    conn = server.accept()
    nan_rec = struct.pack("<11f", *[math.nan] * 11)
    inf_rec = struct.pack("<11f", math.inf, *[1.0] * 10)
    with caplog.at_level(logging.WARNING, logger="tm_gym.game.telemetry_client"):
        conn.sendall(nan_rec + encode_record(make_record(1, version=1), 1))
        assert client.wait_fresh().speed_kmh == pytest.approx(101.0)
        conn.sendall(inf_rec)
        assert until(lambda: client.records_skipped == 2)
        conn.sendall(encode_record(make_record(2, version=1), 1))
        assert client.wait_fresh().speed_kmh == pytest.approx(102.0)
    assert client.records_received == 2 and client.connected
    assert any("malformed" in r.getMessage() for r in caplog.records)


def test_unsupported_protocol_header_does_not_crash(
    servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port)
    conn = server.accept()
    conn.sendall(b"TMGYM\x09\x00\x00" + bytes(100))
    with pytest.raises(TelemetryError, match="unsupported tm-gym protocol"):
        client.wait_fresh(0.3)
    # It keeps trying: the next connection speaks v2 and is read.
    conn2 = server.accept()
    conn2.sendall(MAGIC_V2 + encode_record(make_record(version=2), 2))
    assert client.wait_fresh().version == 2


# -- client: freshness -----------------------------------------------------------------------


def test_latest_and_wait_fresh_semantics(
    servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port, timeout=2.0)
    conn = server.accept()
    conn.sendall(MAGIC_V2)
    assert until(lambda: client.protocol_version == 2)
    with pytest.raises(
        TelemetryError, match=rf"no telemetry record from 127\.0\.0\.1:{server.port}"
    ):
        client.latest()  # nothing received yet: no waiting

    conn.sendall(encode_record(make_record(1), 2))
    first = client.wait_fresh()
    assert first.speed_kmh == pytest.approx(101.0)
    assert client.latest() is first  # latest() repeats the newest record
    assert client.age < 2.0
    with pytest.raises(TelemetryError, match="no new telemetry record"):
        client.wait_fresh(0.1)  # nothing newer than what was returned

    conn.sendall(encode_record(make_record(2), 2))
    assert until(lambda: client.records_received == 2)
    assert client.wait_fresh(0).speed_kmh == pytest.approx(102.0)  # already there: no wait
    conn.sendall(encode_record(make_record(3), 2))
    assert until(lambda: client.records_received == 3)
    assert client.latest().speed_kmh == pytest.approx(103.0)  # latest() also counts as returned
    with pytest.raises(TelemetryError):
        client.wait_fresh(0.05)
    with pytest.raises(TelemetryError, match="wait_fresh timeout -1"):
        client.wait_fresh(-1)


def test_wait_fresh_wakes_on_arrival(
    servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port, timeout=5.0)
    conn = server.accept()
    sender = threading.Timer(0.1, conn.sendall, args=(encode_record(make_record(7, version=1), 1),))
    sender.start()
    try:
        assert client.wait_fresh().speed_kmh == pytest.approx(107.0)
    finally:
        sender.cancel()
        sender.join()


def test_silent_connection_goes_stale(
    servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port, timeout=0.3)
    conn = server.accept()
    conn.sendall(encode_record(make_record(version=1), 1))
    client.wait_fresh()
    assert until(lambda: client.age > 0.35)
    with pytest.raises(TelemetryError, match=r"s old.*connected.*silent") as info:
        client.latest()
    assert f"port {server.port}" in str(info.value) and "tm-gym check" in str(info.value)
    assert client.connected


def test_stopped_server_raises_and_does_not_spin(
    servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port)
    conn = server.accept()
    conn.sendall(encode_record(make_record(version=1), 1))
    client.wait_fresh()
    server.close()  # the plugin goes away: EOF, then nothing listens
    assert until(lambda: not client.connected)
    t0 = time.monotonic()
    with pytest.raises(TelemetryError) as info:
        client.wait_fresh()
    assert time.monotonic() - t0 < TIMEOUT + 1.0
    msg = str(info.value)
    assert f"127.0.0.1:{server.port}" in msg and ("refused" in msg or "closed by the peer" in msg)
    with pytest.raises(TelemetryError, match="s old"):
        client.latest()
    cpu0 = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - cpu0 < 0.3  # the reader sleeps between reconnection attempts
    assert telemetry_threads()  # ... and is still alive, retrying


def test_restarted_server_recovers(
    servers: Callable[..., RawServer],
    clients: Callable[..., TelemetryClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = servers()
    port = server.port
    client = clients(port)
    with caplog.at_level(logging.WARNING, logger="tm_gym.game.telemetry_client"):
        server.accept().sendall(encode_record(make_record(1, version=1), 1))
        assert client.wait_fresh().speed_kmh == pytest.approx(101.0)
        server.close()
        time.sleep(0.3)  # several refused reconnection attempts
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert 1 <= len(warnings) <= 2  # the outage is logged once, not per attempt
        server2 = servers(port)
        conn = server2.accept()
        conn.sendall(MAGIC_V2 + encode_record(make_record(2), 2))
        rec = client.wait_fresh(2.0)
    assert (
        rec.speed_kmh == pytest.approx(102.0) and client.protocol_version == 2 and client.connected
    )
    assert client.records_received == 2


def test_peer_closing_mid_record_recovers(
    servers: Callable[..., RawServer], clients: Callable[..., TelemetryClient]
) -> None:
    server = servers()
    client = clients(server.port, timeout=2.0)
    conn = server.accept()
    conn.sendall(encode_record(make_record(1, version=1), 1)[:20])
    conn.close()
    conn2 = server.accept()  # the client reconnects
    conn2.sendall(encode_record(make_record(2, version=1), 1))
    assert client.wait_fresh().speed_kmh == pytest.approx(102.0)
    assert client.records_received == 1


def test_connection_refused_error(clients: Callable[..., TelemetryClient]) -> None:
    port = free_port()
    client = clients(port)
    with pytest.raises(TelemetryError) as info:
        client.wait_fresh()
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "refused" in msg and f"port {port}" in msg
    assert "OpenPlanet plugin" in msg and "tm-gym check" in msg
    assert isinstance(info.value, TMGymError)
    with pytest.raises(TelemetryError, match="refused"):
        client.latest()


# -- client: lifecycle -----------------------------------------------------------------------


def test_close_stops_the_thread_and_is_idempotent(
    servers: Callable[..., RawServer],
) -> None:
    server = servers()
    client = TelemetryClient(port=server.port, timeout=TIMEOUT, reconnect_interval=RECONNECT)
    with client:
        conn = server.accept()
        conn.sendall(encode_record(make_record(version=1), 1))
        client.wait_fresh()
        assert len(telemetry_threads()) == 1
        assert telemetry_threads()[0].daemon
    assert not telemetry_threads()
    assert not client.connected
    client.close()
    client.close()
    with pytest.raises(TelemetryError, match="not open"):
        client.latest()
    assert conn.recv(16) == b""  # the client's socket is closed


def test_close_wakes_a_waiting_reader(clients: Callable[..., TelemetryClient]) -> None:
    client = clients(free_port(), timeout=10.0)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            client.wait_fresh()
        except TelemetryError as e:
            errors.append(e)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    client.close()
    waiter.join(2.0)
    assert not waiter.is_alive() and errors and "not open" in str(errors[0])


def test_reopen_after_close(servers: Callable[..., RawServer]) -> None:
    server = servers()
    client = TelemetryClient(port=server.port, timeout=2.0, reconnect_interval=RECONNECT)
    try:
        for i in range(2):
            client.open()
            client.open()  # no second thread
            assert len(telemetry_threads()) == 1
            server.accept().sendall(encode_record(make_record(i, version=1), 1))
            assert client.wait_fresh().speed_kmh == pytest.approx(100.0 + i)
            assert client.records_received == 1  # a reopened client starts from scratch
            client.close()
    finally:
        client.close()
