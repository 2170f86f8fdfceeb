"""The roles end to end, in this process: a relay, a trainer thread and two worker threads.

A module-scoped cluster (lidar-sac shrunk to tiny networks and buffers) runs while the tests
look at it, attack it with hostile and fuzzed messages, and finally stop it. The trainer gets a
spying link that records what arrives, so the test knows which malformed messages the trainer
had to count. Wrong passwords, the CLI's refusals and PPO's stale-episode rule are checked on
their own. Every relay, link and thread is stopped in a ``finally``; child processes are then
killed by PID if they are still there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pickle
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tm_algos.presets import apply_overrides, load_preset
from tm_dist import cli
from tm_dist.learner import Learner
from tm_dist.roles import TrainerReport, WorkerReport, run_trainer, run_worker
from tm_dist.rollout import Rollout
from tm_dist.settings import (
    ConnectionSettings,
    DistSettings,
    Secret,
    TrainerSettings,
    WorkerSettings,
)
from tm_dist.testing import kill_by_pid
from tm_dist.transport import AuthenticationError, Link, RelayServer
from tm_dist.transport.framing import auth_token
from tm_dist.wire import (
    EpisodeChunk,
    MessageError,
    Weights,
    decode_message,
    encode_message,
    tlspyo_serializer,
)

PASSWORD = "roles-test-password-4711"
WRONG = "not-the-password-0815"
WORKERS = ("w0", "w1")
TINY = (
    "algo.hyperparameters.learning_starts=200",
    "algo.hyperparameters.batch_size=32",
    "algo.hyperparameters.buffer_size=5000",
    "policy.net_arch=[32,32]",
    "env.kwargs.ep_max_length=100",
)
WAIT_S = 90.0  # generous: this machine is shared; the conditions usually hold in seconds

torch.set_num_threads(1)


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.05)


def _conn(port: int, password: str = PASSWORD) -> ConnectionSettings:
    return ConnectionSettings(port=port, password=Secret(password), tls=False, connect_timeout_s=8)


class _CreatesFile:
    """Loading this with the standard library's object serializer would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


class SpyLink(Link):
    """The trainer's link, noting what the trainer is handed (read after the trainer stops)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.finals_from: set[str] = set()
        self.bad = 0  # messages the trainer must count as malformed

    def _note(self, raw: Any) -> None:
        with self.lock:
            try:
                msg = decode_message(raw)
            except MessageError:
                self.bad += 1
                return
            if isinstance(msg, EpisodeChunk):
                if msg.worker in WORKERS:
                    if msg.final:
                        self.finals_from.add(msg.worker)
                else:  # the intruder's chunks carry payloads no decoder accepts
                    self.bad += 1

    def receive(self, timeout: float | None = None) -> Any:
        raw = super().receive(timeout)
        self._note(raw)
        return raw

    def receive_all(self) -> list[Any]:
        items = super().receive_all()
        for raw in items:
            self._note(raw)
        return items


@dataclass
class Cluster:
    relay: RelayServer
    trainer_link: SpyLink
    stop: threading.Event
    threads: list[threading.Thread] = field(default_factory=list)
    progress: list[Any] = field(default_factory=list)
    workers: dict[str, WorkerReport] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)

    def latest(self) -> Any:
        return self.progress[-1] if self.progress else None

    def env_steps(self) -> int:
        s = self.latest()
        return 0 if s is None else int(s.env_steps)

    def finish(self) -> tuple[TrainerReport, dict[str, WorkerReport]]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a role did not stop"
        assert not self.errors, f"a role crashed: {self.errors!r}"
        return self.results["trainer"], {n: self.results[n] for n in WORKERS}


def _guard(cluster: Cluster, key: str, fn: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            cluster.results[key] = fn()
        except BaseException as e:  # reported by Cluster.finish
            cluster.errors.append(e)
            cluster.stop.set()

    return run


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One training cluster shared by the tests that only watch or poke it (any order)."""
    with _running_cluster(tmp_path_factory.mktemp("roles") / "run") as c:
        yield c


@contextlib.contextmanager
def _running_cluster(run_dir: Path) -> Iterator[Cluster]:
    """A relay, a trainer and two workers running in threads; stopped by their PIDs on exit."""
    relay = RelayServer(PASSWORD, port=0, use_tls=False)
    link: SpyLink | None = None
    c: Cluster | None = None
    try:
        relay.start()
        conn = _conn(relay.port)
        link = SpyLink(PASSWORD, port=relay.port, groups="trainers", use_tls=False)
        link.connect()
        c = Cluster(relay, link, threading.Event())
        trainer = DistSettings(
            connection=conn,
            trainer=TrainerSettings(
                run_dir=run_dir, overrides=TINY, broadcast_every=200, checkpoint_every=0
            ),
        )
        c.threads.append(
            threading.Thread(
                target=_guard(
                    c,
                    "trainer",
                    lambda: run_trainer(
                        trainer, stop=c.stop, resume=False, on_progress=c.progress.append, link=link
                    ),
                ),
                name="trainer",
            )
        )
        for i, name in enumerate(WORKERS):
            ws = WorkerSettings(
                name=name,
                test_every=2,
                chunk_steps=40,
                debug_codec=True,
                seed=i,
                max_steps_per_s=300.0,
            )
            settings_i = DistSettings(connection=conn, worker=ws)

            def on_episode(r: WorkerReport, name: str = name) -> None:
                c.workers[name] = r

            c.threads.append(
                threading.Thread(
                    target=_guard(
                        c,
                        name,
                        functools.partial(
                            run_worker, settings_i, stop=c.stop, on_episode=on_episode
                        ),
                    ),
                    name=name,
                )
            )
        for t in c.threads:
            t.start()
        yield c
    finally:
        if c is not None:
            c.stop.set()
            for t in c.threads:
                t.join(timeout=60)
        if link is not None:
            pid = link.pid
            link.stop()
            kill_by_pid(pid)
        pid = relay.pid
        relay.stop()
        kill_by_pid(pid)


@pytest.fixture(scope="module")
def intruder(cluster: Cluster) -> Iterator[Link]:
    """An authenticated member of "workers" that sends whatever it likes."""
    link = Link(PASSWORD, port=cluster.relay.port, groups="workers", use_tls=False)
    try:
        link.connect()
        yield link
    finally:
        pid = link.pid
        link.stop()
        kill_by_pid(pid)


# -------------------------------------------------------------------------------- the cluster


@pytest.mark.slow  # a relay process and a training cluster
def test_trainer_learns_from_both_workers_and_broadcasts(cluster: Cluster) -> None:
    _wait_for(
        "both workers driving with trained weights (version >= 2)",
        lambda: (
            len(cluster.workers) == 2
            and all(r.weights_version >= 2 for r in cluster.workers.values())
        ),
    )
    _wait_for("a test episode reported", lambda: (cluster.latest() or _Zero).test_episodes >= 1)
    s = cluster.latest()
    assert s.train_steps > 0
    assert s.episodes >= 2
    assert s.last_test is not None and "progress" in s.last_test
    # nothing of the honest workers is dropped (the intruder of another test may have been)
    assert not set(s.invalid_by_worker) & set(WORKERS) and s.stale_episodes == 0
    assert s.dropped_episodes == s.invalid_by_worker.get("intruder", 0)
    with cluster.trainer_link.lock:
        assert cluster.trainer_link.finals_from == set(WORKERS)
    assert not cluster.errors


def _unchanged_for(read: Callable[[], int], seconds: float) -> bool:
    """Whether ``read()`` gives the same value before and after ``seconds``."""
    first = read()
    time.sleep(seconds)
    return read() == first


class _Zero:
    test_episodes = 0
    train_steps = 0


def _raw_frame(payload: bytes) -> bytes:
    return f"{len(payload):<10}{auth_token(PASSWORD)}".encode() + payload


@pytest.mark.slow  # a relay process and a training cluster
def test_hostile_messages_are_dropped_and_training_goes_on(
    cluster: Cluster, intruder: Link, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "created-by-a-payload"
    hostile = pickle.dumps(_CreatesFile(marker))
    _wait_for("the trainer receiving episodes", lambda: cluster.env_steps() > 0)
    link = cluster.trainer_link
    # another test of this cluster (the fuzzer) may have messages still in flight: count from a
    # quiet trainer link, so that the six below are the only new malformed ones
    _wait_for("earlier malformed messages to arrive", lambda: _unchanged_for(lambda: link.bad, 1.0))
    with link.lock:
        bad_before = link.bad
    garbage_chunk = EpisodeChunk(
        worker="intruder",
        episode=0,
        chunk=0,
        final=True,
        test=False,
        weights_version=0,
        n_steps=3,
        payload=b"not a codec payload",
        stats={},
    )
    with caplog.at_level(logging.WARNING):
        intruder.send("trainers", b"\x00\xffgarbage bytes, not msgpack")
        intruder.send("trainers", msgpack.packb({"schema": "tm-dist", "version": 1}))
        intruder.send(
            "trainers",
            msgpack.packb(
                {"schema": "tm-dist", "version": 1, "type": "episode_chunk", "body": {"x": 1}}
            ),
        )
        intruder.send("trainers", hostile)  # bytes for the trainer's message decoder
        intruder.send("trainers", {"not": ["bytes", 1, 2.5]})
        intruder.send("trainers", encode_message(garbage_chunk))
        intruder.broadcast("workers", b"garbage for every worker")
        # the object serializer's bytes as a tlspyo payload: the trainer's link must refuse them
        with socket.create_connection(("127.0.0.1", cluster.relay.port), timeout=5) as sock:
            sock.sendall(_raw_frame(tlspyo_serializer((1, "HELLO", None, ("workers",)))))
            sock.sendall(_raw_frame(tlspyo_serializer((2, "OBJ", {"trainers": 1}, hostile))))
            _wait_for("the trainer's link dropping it", lambda: link.stats().dropped_messages >= 1)
        _wait_for("the trainer reading all six", lambda: link.bad >= bad_before + 6)
        _wait_for(
            "the trainer logging the drops",
            lambda: "from worker intruder" in caplog.text and "malformed message" in caplog.text,
        )
        _wait_for(
            "both workers dropping the broadcast garbage",
            lambda: all(r.dropped_messages >= 1 for r in cluster.workers.values()),
        )
    with link.lock:
        assert link.bad - bad_before == 6
    messages = caplog.text
    assert PASSWORD not in messages

    steps = cluster.env_steps()
    _wait_for("training going on", lambda: cluster.env_steps() > steps + 200)
    before = {n: r.episodes for n, r in cluster.workers.items()}
    _wait_for(
        "both workers still driving",
        lambda: all(cluster.workers[n].episodes > before[n] for n in WORKERS),
    )
    # the relay still serves newcomers, and keeps the trainer's weights for them
    with Link(PASSWORD, port=cluster.relay.port, groups="workers", use_tls=False) as newcomer:
        got = newcomer.receive(timeout=30)
        while not isinstance(got, bytes) or not isinstance(_decoded(got), Weights):
            got = newcomer.receive(timeout=30)
    assert not marker.exists()
    assert not cluster.errors


def _decoded(raw: bytes) -> Any:
    try:
        return decode_message(raw)
    except MessageError:
        return None


_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=16)
    | st.binary(max_size=32),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_header_shaped = st.fixed_dictionaries(
    {
        "schema": st.sampled_from(["tm-dist", "other"]),
        "version": st.sampled_from([1, 2, True, "1"]),
        "type": st.sampled_from(["episode_chunk", "weights", "hello", "status", "nope"]),
        "body": st.dictionaries(
            st.sampled_from(["worker", "episode", "chunk", "final", "payload", "version", "role"]),
            _plain,
            max_size=7,
        ),
    }
)


@pytest.mark.slow  # a relay process and a training cluster
@settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    value=st.binary(max_size=200)
    | _plain
    | _header_shaped.map(lambda d: msgpack.packb(d, use_bin_type=True))
)
def test_fuzzed_messages_never_stop_the_relay_or_the_trainer(
    cluster: Cluster, intruder: Link, value: Any
) -> None:
    try:
        intruder.send("trainers", value)
    except MessageError:
        assume(False)  # not even sendable (nesting too deep): nothing reaches the trainer
    assert not cluster.errors
    assert cluster.relay.running


@pytest.mark.slow  # a relay process and a training cluster of its own (it stops it)
def test_cluster_stops_cleanly_and_counted_every_malformed_message(tmp_path: Path) -> None:
    with (
        _running_cluster(tmp_path / "run") as cluster,
        Link(PASSWORD, port=cluster.relay.port, groups="workers", use_tls=False) as intruder,
    ):
        _wait_for("both workers driving", lambda: len(cluster.workers) == 2)
        link = cluster.trainer_link
        intruder.send("trainers", b"\x00\xffgarbage bytes, not msgpack")
        intruder.send("trainers", {"not": ["bytes", 1, 2.5]})
        intruder.broadcast("workers", b"garbage for every worker")
        _wait_for("the trainer reading both", lambda: link.bad >= 2)
        _wait_for(
            "both workers dropping the broadcast garbage",
            lambda: all(r.dropped_messages >= 1 for r in cluster.workers.values()),
        )
        _wait_for("some training", lambda: (cluster.latest() or _Zero).train_steps > 0)
        report, workers = cluster.finish()
    assert report.malformed_messages == link.bad == 2
    assert report.env_steps > 0 and report.train_steps > 0
    assert report.checkpoint is not None and Path(report.checkpoint).is_dir()
    for name in WORKERS:
        assert workers[name].episodes >= 1
        assert workers[name].dropped_messages >= 1  # the garbage broadcast, and nothing crashed


# -------------------------------------------------------------------------------- passwords


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayServer]:
    server = RelayServer(PASSWORD, port=0, use_tls=False)
    try:
        server.start()
        yield server
    finally:
        pid = server.pid
        server.stop()
        kill_by_pid(pid)


@pytest.fixture
def restore_sigterm() -> Iterator[None]:
    """The CLI turns SIGTERM into Ctrl-C for its process; give pytest its handler back."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow  # a relay process
def test_wrong_password_stops_a_worker_quickly(relay: RelayServer) -> None:
    settings_ = DistSettings(connection=_conn(relay.port, WRONG), worker=WorkerSettings(name="x"))
    start = time.monotonic()
    with pytest.raises(AuthenticationError, match="password is wrong") as info:
        run_worker(settings_)
    assert time.monotonic() - start < 8.0  # before connect_timeout_s: no reconnect loop
    assert WRONG not in str(info.value) and PASSWORD not in str(info.value)


@pytest.mark.slow  # a relay process
def test_wrong_password_stops_a_trainer_without_a_checkpoint(
    relay: RelayServer, tmp_path: Path
) -> None:
    ts = TrainerSettings(run_dir=tmp_path / "run", overrides=TINY)
    conn = dataclasses.replace(_conn(relay.port, WRONG), trainer_password=Secret(WRONG))
    with pytest.raises(AuthenticationError, match="password is wrong"):
        run_trainer(DistSettings(connection=conn, trainer=ts), resume=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # a relay process
def test_cli_worker_with_wrong_password_exits_1_without_showing_it(
    relay: RelayServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    restore_sigterm: None,
) -> None:
    monkeypatch.setenv("TM_DIST_PASSWORD", WRONG)
    monkeypatch.setenv("TM_DIST_CONNECTION_PORT", str(relay.port))
    code = cli.main(["worker", "--name", "cli-worker", "--host", "127.0.0.1"])
    out = capsys.readouterr()
    assert code == 1
    assert "wrong password" in out.err
    for text in (out.out, out.err, caplog.text):
        assert WRONG not in text and PASSWORD not in text


def test_cli_refuses_a_password_flag(
    capsys: pytest.CaptureFixture[str], restore_sigterm: None
) -> None:
    assert cli.main(["worker", "--password", "x"]) == 2
    err = capsys.readouterr().err
    assert "--password is not accepted" in err and "TM_DIST_PASSWORD" in err


def test_cli_refuses_plaintext_off_loopback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_sigterm: None,
) -> None:
    monkeypatch.setenv("TM_DIST_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no certificate there
    assert cli.main(["worker", "--host", "10.1.2.3"]) == 2  # TLS by default: needs the cert
    err = " ".join(capsys.readouterr().err.split())
    assert "certificate" in err and "tm-dist make-cert" in err

    monkeypatch.setenv("TM_DIST_CONNECTION_TLS", "false")
    assert cli.main(["worker", "--host", "10.1.2.3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "refusing plain TCP to 10.1.2.3" in err and "--insecure" in err
    assert PASSWORD not in err


# -------------------------------------------------------------------------------- PPO


PPO_PRESET = """
description = "tiny PPO on LIDAR for tests"

[env]
id = "TrackMania-Sim-v0"
obs_type = "lidar"
n_envs = 1

[env.kwargs]
ep_max_length = 30

[algo]
name = "ppo"
total_timesteps = 100000

[algo.hyperparameters]
n_steps = 64
batch_size = 32
n_epochs = 1

[policy]
extractor = "lidar-mlp"
net_arch = [16, 16]

[policy.extractor_kwargs]
hidden = []
"""


def _episode(rollout: Rollout) -> list[EpisodeChunk]:
    return list(rollout.episode())


def test_ppo_drops_and_counts_stale_episodes(tmp_path: Path) -> None:
    path = tmp_path / "tiny-ppo.toml"
    path.write_text(PPO_PRESET, encoding="utf-8")
    learner = Learner(load_preset(path), tmp_path / "run", tensorboard=False, device="cpu")
    assert not learner.off_policy
    rollout = Rollout("ppo-worker", test_every=10**6, chunk_steps=16, seed=0)
    rollout.offer(learner.weights())
    try:
        while not learner.ppo.ready():  # type: ignore[union-attr]
            for chunk in _episode(rollout):
                learner.ingest(chunk)
        held_back = _episode(rollout)  # driven with version 0, arrives after the update
        assert held_back[-1].weights_version == 0
        steps, episodes = learner.stats.env_steps, learner.stats.episodes

        assert learner.train() == 1
        assert learner.version == 1 and learner.should_broadcast()
        for chunk in held_back:
            assert learner.ingest(chunk) == 0
        assert learner.stats.stale_episodes == 1
        assert (learner.stats.env_steps, learner.stats.episodes) == (steps, episodes)

        rollout.offer(learner.weights())
        assert not learner.should_broadcast()
        fresh = _episode(rollout)
        assert fresh[-1].weights_version == 1
        added = sum(learner.ingest(c) for c in fresh)
        assert added == sum(c.n_steps for c in fresh) > 0
        assert learner.stats.env_steps == steps + added
        assert learner.stats.episodes == episodes + 1
        assert learner.stats.stale_episodes == 1
    finally:
        rollout.close()


# -------------------------------------------------------------------------------- checkpoints


def test_learner_checkpoint_is_safe_files_and_resumes(tmp_path: Path) -> None:
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    learner = Learner(preset, tmp_path, tensorboard=False, device="cpu", seed=1)
    rollout = Rollout("ckpt-worker", test_every=10**6, chunk_steps=50, seed=1)
    try:
        rollout.offer(learner.weights())
        while learner.stats.env_steps < 300:
            for chunk in _episode(rollout):
                learner.ingest(chunk)
        assert learner.train(max_steps=4) == 4
        path = learner.checkpoint()
    finally:
        rollout.close()
    names = sorted(p.name for p in path.iterdir())
    assert names == ["replay_buffer.npz", "state.json", "weights.safetensors"]
    assert not list(tmp_path.glob("checkpoints/.*"))  # no temporary left behind

    again = Learner(preset, tmp_path, tensorboard=False, device="cpu", resume=True)
    assert again.stats == learner.stats
    assert again.version == learner.version
    old_buf, new_buf = learner.model.replay_buffer, again.model.replay_buffer  # type: ignore[attr-defined]
    assert (new_buf.pos, new_buf.full) == (old_buf.pos, old_buf.full)
    n = old_buf.pos
    assert np.array_equal(new_buf.rewards[:n], old_buf.rewards[:n])
    assert np.array_equal(new_buf.actions[:n], old_buf.actions[:n])
    old_w = learner.model.policy.state_dict()
    for key, value in again.model.policy.state_dict().items():
        assert torch.equal(value, old_w[key]), key
