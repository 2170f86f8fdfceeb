"""A link never loses silently what ``send()`` accepted, notices a dead relay, and knows its
role (issue 15, items 4 and 5, and the link side of the heartbeats).

A :class:`~tm_dist.testing.TcpProxy` between the link and the relay makes the network slow
(throttled) or dead (a black hole: bytes vanish, no reset, no FIN).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tm_dist.errors import InvalidValueError
from tm_dist.security import PasswordError
from tm_dist.settings import load_settings
from tm_dist.testing import TcpProxy
from tm_dist.transport import AuthenticationError, Link, RelayServer

PASSWORD = "link-delivery-password-777"
TRAINER_PASSWORD = "link-delivery-trainer-password-778"
BLOCK = b"x" * (20 * 1024 - 8)


def _relay(closing: Callable[[Any], Any], password: str = PASSWORD) -> RelayServer:
    relay = closing(RelayServer(password, port=0, use_tls=False, queue_max_messages=10**6))
    relay.start()
    return relay


def _received(relay: RelayServer, closing: Callable[[Any], Any], quiet_s: float) -> set[int]:
    """Message numbers a trainer joining now receives (until ``quiet_s`` without any)."""
    trainer = closing(Link(PASSWORD, port=relay.port, groups="trainers", use_tls=False))
    trainer.connect()
    got: set[int] = set()
    while True:
        try:
            got.add(int.from_bytes(trainer.receive(timeout=quiet_s)[:8], "big"))
        except TimeoutError:
            return got


@pytest.mark.slow  # relay and link processes, ~3 s through a throttled proxy
def test_stop_delivers_everything_send_accepted(closing: Callable[[Any], Any]) -> None:
    """On the code before, stop() waited about a second for acknowledgements and then ended
    the child: what was still on its way (here most of it) was lost without a word."""
    relay = _relay(closing)
    n = 300  # 6 MB at 3 MB/s
    with TcpProxy(relay.port, rate_bytes_per_s=3e6) as proxy:
        worker = closing(Link(PASSWORD, port=proxy.port, groups="workers", use_tls=False))
        worker.connect()
        for i in range(n):
            worker.send("trainers", i.to_bytes(8, "big") + BLOCK)
        undelivered = worker.stop(timeout_s=60)
    got = _received(relay, closing, quiet_s=3)
    assert len(got) == n, f"{n - len(got)} of {n} accepted messages were lost"
    assert undelivered == 0
    stats = worker.stats()
    assert stats.accepted == stats.delivered == n and stats.undelivered == 0


@pytest.mark.slow  # relay and link processes, a very slow proxy
def test_what_stop_cannot_deliver_in_time_is_counted(closing: Callable[[Any], Any]) -> None:
    relay = _relay(closing)
    n = 100  # 2 MB at 200 kB/s: about 10 s, and stop gives it 1 s
    with TcpProxy(relay.port, rate_bytes_per_s=2e5) as proxy:
        worker = closing(Link(PASSWORD, port=proxy.port, groups="workers", use_tls=False))
        worker.connect()
        for i in range(n):
            worker.send("trainers", i.to_bytes(8, "big") + BLOCK)
        t0 = time.monotonic()
        undelivered = worker.stop(timeout_s=1.0)
        took = time.monotonic() - t0
    got = _received(relay, closing, quiet_s=3)
    assert isinstance(undelivered, int) and 0 < undelivered <= n
    assert worker.stats().undelivered == undelivered
    # never silent: whatever the relay did not get was reported (it may have got a few of
    # the unacknowledged ones: acknowledgements were still on their way)
    assert n - len(got) <= undelivered, (len(got), undelivered)
    assert took < 1.0 + 5.0


@pytest.mark.slow  # relay and link processes
def test_stop_waits_for_a_relay_that_comes_back(closing: Callable[[Any], Any]) -> None:
    """Messages sent while the relay is down are delivered by stop() once it is back."""
    relay = _relay(closing)
    port = relay.port
    worker = closing(
        Link(
            PASSWORD,
            port=port,
            groups="workers",
            use_tls=False,
            reconnect_initial_delay_s=0.2,
            reconnect_max_delay_s=0.5,
        )
    )
    worker.connect()
    relay.stop()
    deadline = time.monotonic() + 10
    while worker.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(20):
        worker.send("trainers", i.to_bytes(8, "big") + BLOCK)
    relay2 = closing(RelayServer(PASSWORD, port=port, use_tls=False))
    relay2.start()
    assert worker.stop(timeout_s=20) == 0
    assert len(_received(relay2, closing, quiet_s=2)) == 20


@pytest.mark.slow  # relay and link processes, a black-holed proxy
def test_a_black_holed_relay_is_noticed_and_the_link_recovers(
    closing: Callable[[Any], Any],
) -> None:
    """On the code before, a link stayed ``connected`` through a 15 s black hole."""
    relay = _relay(closing)
    interval, timeout = 0.2, 1.0
    with TcpProxy(relay.port) as proxy:
        worker = closing(
            Link(
                PASSWORD,
                port=proxy.port,
                groups="workers",
                use_tls=False,
                heartbeat_interval_s=interval,
                heartbeat_timeout_s=timeout,
                reconnect_initial_delay_s=0.2,
                reconnect_max_delay_s=0.5,
            )
        )
        worker.connect()
        time.sleep(3 * interval)
        assert worker.connected  # PINGs are answered: an idle link stays up
        proxy.blackhole()
        t0 = time.monotonic()
        while worker.connected and time.monotonic() - t0 < timeout + 3.0:
            time.sleep(0.02)
        assert not worker.connected, "the link still reports connected through a black hole"
        assert time.monotonic() - t0 <= timeout + 1.0
        assert worker.stats().heartbeat_timeouts >= 1
        for i in range(5):  # kept while disconnected, delivered after the recovery
            worker.send("trainers", i.to_bytes(8, "big") + b"during the black hole")
        proxy.forward()
        deadline = time.monotonic() + timeout + 10.0
        while not worker.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.connected, "the link did not recover once the proxy forwarded again"
        assert worker.stop(timeout_s=10) == 0
    assert _received(relay, closing, quiet_s=2) == set(range(5))


def test_heartbeat_arguments_are_checked() -> None:
    with pytest.raises(InvalidValueError, match="heartbeat_interval_s < heartbeat_timeout_s"):
        Link(
            PASSWORD,
            port=1,
            groups="workers",
            use_tls=False,
            heartbeat_interval_s=5.0,
            heartbeat_timeout_s=5.0,
        )


# ------------------------------------------------------------------------------- roles


def _settings(port: int, *, trainer: bool, insecure: bool = False) -> Any:
    env = {"TM_DIST_PASSWORD": PASSWORD, "TM_DIST_CONNECTION_PORT": str(port)}
    env["TM_DIST_CONNECTION_TLS"] = "false"
    if insecure:
        env["TM_DIST_CONNECTION_INSECURE"] = "true"
    if trainer:
        env["TM_DIST_TRAINER_PASSWORD"] = TRAINER_PASSWORD
    return load_settings(None, env=env).connection


@pytest.mark.slow  # relay and link processes
def test_a_trainer_link_from_settings_uses_the_trainer_password(
    closing: Callable[[Any], Any],
) -> None:
    relay = _relay(closing, TRAINER_PASSWORD)  # accepts only the trainer's password
    settings = _settings(relay.port, trainer=True)
    trainer = closing(Link.from_settings(settings, groups="trainers", role="trainer"))
    trainer.connect()
    assert trainer.connected
    worker = closing(Link.from_settings(settings, groups="workers"))
    with pytest.raises(AuthenticationError):
        worker.connect()


def test_a_trainer_link_needs_a_trainer_password() -> None:
    with pytest.raises(PasswordError, match="TM_DIST_TRAINER_PASSWORD"):
        Link.from_settings(_settings(9, trainer=False), groups="trainers", role="trainer")
    with pytest.raises(InvalidValueError, match="role='relay'"):
        Link.from_settings(_settings(9, trainer=True), groups="trainers", role="relay")
    # insecure and no trainer password: a relay without roles, the one password
    link = Link.from_settings(
        _settings(9, trainer=False, insecure=True), groups="trainers", role="trainer"
    )
    assert link._password == PASSWORD
