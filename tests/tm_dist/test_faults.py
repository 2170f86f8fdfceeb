"""Kill and restart each role of a running tm-dist deployment (real processes on loopback).

A module-scoped deployment runs ``tm-dist server``, ``tm-dist trainer`` and two
``tm-dist worker`` processes, each in its own session so that a SIGKILL takes its transport
child with it, as a crash of the machine would. The trainer checkpoints every 300 environment
steps; the tests watch its progress through those checkpoints (``state.json`` meta), and its log
for what it says. Every process is stopped in a ``finally`` by its own process group id.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tm_algos.checkpoint import latest_checkpoint
from tm_dist.transport import free_local_port

PASSWORD = "faults-test-password-9876"
BUFFER = 5000
OVERRIDES = (
    "algo.hyperparameters.learning_starts=200",
    "algo.hyperparameters.batch_size=32",
    f"algo.hyperparameters.buffer_size={BUFFER}",
    "policy.net_arch=[32,32]",
    "env.kwargs.ep_max_length=100",
)
CHECKPOINT_EVERY = 300
WAIT_S = 120.0  # generous: a shared 2-core machine; conditions usually hold in seconds

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="process groups and signals: POSIX"),
    pytest.mark.slow,  # a deployment of real processes, killed and restarted
]


@dataclass
class Role:
    """One ``python -m tm_dist.cli`` process, its own session, its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self._close()
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in _close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tm_dist.cli", *self.argv],
            env=self.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        """``sig`` to the role and its transport child (its process group is its PID)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def crash(self) -> None:
        """SIGKILL the whole group, then reap the role."""
        self.signal_group(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.signal_group(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=15)
            self.signal_group(signal.SIGKILL)  # whatever is left of the group
            if self.proc.poll() is None:
                self.proc.wait(timeout=15)
        self._close()

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


@dataclass
class Deployment:
    run_dir: Path
    port: int
    server: Role
    trainer: Role
    workers: list[Role] = field(default_factory=list)

    @property
    def roles(self) -> list[Role]:
        return [self.server, self.trainer, *self.workers]

    def ensure_running(self) -> None:
        """Restart the server and trainer if a test left them down, and a worker if none runs."""
        for role in (self.server, self.trainer):
            if not role.alive:
                role.start()
        if not any(w.alive for w in self.workers):
            self.workers[0].start()

    def checkpoint(self) -> dict[str, Any] | None:
        """The newest complete checkpoint's facts, None before the first."""
        for _ in range(20):  # the trainer deletes old checkpoints while we read
            try:
                path = latest_checkpoint(self.run_dir / "checkpoints")
                if path is None:
                    return None
                state = json.loads((path / "state.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            meta = state["meta"]
            return {
                "path": path,
                "env_steps": int(meta["learner"]["env_steps"]),
                "dropped": int(meta["learner"]["dropped_episodes"]),
                "version": int(meta["version"]),
                "saved_at_ns": int(state["saved_at_ns"]),
                "buffer": state["replay_buffer"]["scalars"],
                "files": sorted(p.name for p in path.iterdir()),
            }
        raise AssertionError("could not read the newest checkpoint")

    def steps(self) -> int:
        ckpt = self.checkpoint()
        return -1 if ckpt is None else ckpt["env_steps"]

    def wait_steps(self, what: str, at_least: int) -> dict[str, Any]:
        _wait_for(what, lambda: self.steps() >= at_least, self)
        ckpt = self.checkpoint()
        assert ckpt is not None
        return ckpt

    def wait_checkpoint_after(self, what: str, t_ns: int) -> dict[str, Any]:
        def newer() -> bool:
            ckpt = self.checkpoint()
            return ckpt is not None and ckpt["saved_at_ns"] > t_ns

        _wait_for(what, newer, self)
        ckpt = self.checkpoint()
        assert ckpt is not None
        return ckpt


def _wait_for(what: str, predicate: Callable[[], bool], dep: Deployment | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            logs = (
                ""
                if dep is None
                else "\n".join(f"--- {r.name}:\n{r.text()[-3000:]}" for r in dep.roles)
            )
            raise AssertionError(f"timed out after {WAIT_S} s waiting for: {what}\n{logs}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("faults")
    port = free_local_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_DIST_")}
    env |= {
        "TM_DIST_PASSWORD": PASSWORD,
        "TM_DIST_TRAINER_PASSWORD": PASSWORD + "-trainer",  # the relay's and trainer's role
        "TM_DIST_CONNECTION_PORT": str(port),
        "TM_DIST_CONNECTION_HOST": "127.0.0.1",
        "TM_DIST_TRAINER_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
        "TM_DIST_TRAINER_BROADCAST_EVERY": "200",
        "XDG_CONFIG_HOME": str(root / "config"),
        "OMP_NUM_THREADS": "1",
    }
    run_dir = root / "run"
    trainer_argv = ["trainer", "-v", "--run-dir", str(run_dir), "--device", "cpu"]
    for item in OVERRIDES:
        trainer_argv += ["--set", item]
    d = Deployment(
        run_dir=run_dir,
        port=port,
        server=Role("server", ["server", "--bind", "127.0.0.1"], env, root / "server.log"),
        trainer=Role("trainer", trainer_argv, env, root / "trainer.log"),
    )
    for i in range(2):
        argv = ["worker", "-v", "--name", f"w{i}", "--max-steps-per-s", "250"]
        d.workers.append(Role(f"w{i}", argv, env, root / f"w{i}.log"))
    try:
        for role in d.roles:
            role.start()
        yield d
    finally:
        for role in reversed(d.roles):
            role.stop()


# ------------------------------------------------------------------------------------ workers


def test_worker_crash_loses_only_its_episode_and_a_restart_contributes(dep: Deployment) -> None:
    dep.ensure_running()
    for w in dep.workers:
        if not w.alive:
            w.start()
    w0, w1 = dep.workers
    before = dep.wait_steps("the first checkpoint", CHECKPOINT_EVERY)

    w1.crash()  # mid-episode: it drives all the time
    s = dep.steps()
    dep.wait_steps("w0 alone keeps the trainer fed", s + CHECKPOINT_EVERY)

    w1.start()
    _wait_for(
        "the restarted w1 greeting the trainer",
        lambda: dep.trainer.text().count("worker w1 joined") >= 2,
        dep,
    )
    w0.crash()
    s = dep.steps()
    after = dep.wait_steps("the restarted w1 alone feeds the trainer", s + CHECKPOINT_EVERY)
    # a crash costs at most the episode in flight; the trainer counts only what it can see
    assert after["dropped"] - before["dropped"] <= 2
    assert dep.trainer.alive and dep.server.alive
    w0.start()


# ------------------------------------------------------------------------------------ server


def test_server_crash_and_restart_on_the_same_port(dep: Deployment) -> None:
    dep.ensure_running()
    dep.wait_steps("training under way", CHECKPOINT_EVERY)
    dep.server.crash()
    s = dep.steps()
    time.sleep(1.0)  # links notice and start reconnecting
    assert dep.trainer.alive and any(w.alive for w in dep.workers)
    dep.server.start()
    dep.wait_steps("episodes flowing again after the restart", s + CHECKPOINT_EVERY)
    assert "Traceback" not in dep.trainer.text()
    for role in dep.roles:  # the password went through the environment only
        assert PASSWORD not in role.text() and PASSWORD not in " ".join(role.argv)


# ------------------------------------------------------------------------------------ trainer


def _assert_resumed(ckpt: dict[str, Any], prior: dict[str, Any]) -> None:
    assert ckpt["env_steps"] >= prior["env_steps"]
    assert ckpt["version"] >= prior["version"]
    buf = ckpt["buffer"]  # every transition ever received is in the restored ring buffer
    assert buf["pos"] == ckpt["env_steps"] % BUFFER
    assert buf["full"] == (ckpt["env_steps"] >= BUFFER)
    assert ckpt["files"] == ["replay_buffer.npz", "state.json", "weights.safetensors"]


def test_trainer_crash_resumes_from_its_checkpoint(dep: Deployment) -> None:
    dep.ensure_running()
    dep.wait_steps("a few checkpoints", 2 * CHECKPOINT_EVERY)
    resumes = dep.trainer.text().count("resumed from")
    dep.trainer.crash()
    prior = dep.checkpoint()
    assert prior is not None
    t_ns = time.time_ns()
    dep.trainer.start()
    ckpt = dep.wait_checkpoint_after("a checkpoint of the restarted trainer", t_ns)
    assert dep.trainer.text().count("resumed from") == resumes + 1
    _assert_resumed(ckpt, prior)
    assert ckpt["env_steps"] > prior["env_steps"]  # the workers kept going


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_trainer_stopped_by_a_signal_writes_a_final_checkpoint(dep: Deployment, how: str) -> None:
    dep.ensure_running()
    t_start = time.time_ns()
    dep.wait_checkpoint_after("the trainer at work", t_start)  # it has built, joined, trained
    t_ns = time.time_ns()
    if how == "SIGTERM":
        assert dep.trainer.proc is not None
        os.kill(dep.trainer.proc.pid, signal.SIGTERM)
    else:  # a terminal sends SIGINT to the whole foreground group
        dep.trainer.signal_group(signal.SIGINT)
    assert dep.trainer.wait(timeout=60) == 130
    final = dep.checkpoint()
    assert final is not None and final["saved_at_ns"] > t_ns
    assert "interrupted" in dep.trainer.text()
    if how != "SIGTERM":
        return  # resuming from a final checkpoint is the same for both: check it once

    t_ns = time.time_ns()
    dep.trainer.start()
    ckpt = dep.wait_checkpoint_after("the trainer resuming from its final checkpoint", t_ns)
    _assert_resumed(ckpt, final)
