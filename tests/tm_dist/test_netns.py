"""tm-dist across hosts over TLS, with one worker's link cut and restored.

The relay server, the trainer and two workers each run as their own ``tm-dist`` process. In
:func:`test_netns_tls_link_cut` each lives in its own network namespace (``ip netns`` + veth
to a bridge in the server's namespace), so traffic crosses a real, if virtual, network and the
clients choose TLS on their own because the server is not on loopback; worker 1's link is cut
with ``ip link set eth0 down`` (TCP stalls, then resumes). :func:`test_loopback_tls_link_cut` is
the same scenario on 127.0.0.1 with TLS forced, worker 1 going through a TCP relay of the test's
that is paused (a stalled link), then made to reset its connections (worker 1 must reconnect);
it runs everywhere, the namespace version only where namespaces can be made (root or
CAP_NET_ADMIN).

How arrival is proven without per-worker counts on the trainer: the trainer's checkpoints give
the training episodes it received (T), each worker prints the episodes it has sent (W1, W2, read
after T, +1 for the episode being sent). T > W2 + k means at least k episodes came from worker
1; during the cut, T <= W1(at the cut) + W2 means nothing of worker 1 got through.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tm_dist.settings import DEFAULT_PORT
from tm_dist.transport import free_local_port


def _load_helpers() -> ModuleType:
    """``_netns.py`` beside this file (the test folders are not packages)."""
    path = Path(__file__).with_name("_netns.py")
    spec = importlib.util.spec_from_file_location("tm_dist_test_netns_helpers", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the test helpers from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _load_helpers()

pytestmark = pytest.mark.slow  # real tm-dist processes, over network namespaces

PASSWORD = "netns-test password, long enough"
W1, W2 = "w1", "w2"
STEPS_PER_S = "100"  # per worker: at most 5 episodes of 20 steps per second
TRAINER_SET = (
    "env.n_envs=1",
    "env.kwargs.ep_max_length=20",  # one chunk per episode: counts move quickly
    "algo.hyperparameters.learning_starts=100",
    "algo.hyperparameters.buffer_size=5000",
    "algo.hyperparameters.batch_size=32",
    "algo.hyperparameters.train_freq=8",
    "algo.hyperparameters.gradient_steps=1",
    "policy.net_arch=[16, 16]",
)
CUT_EPISODES = 5  # worker 2's episodes that must reach the trainer during the cut
START_S = 120.0  # four Python processes importing torch on a small, shared machine
PHASE_S = 60.0

# Run by a host's Python: a TLS handshake that trusts only our certificate and checks the name
# "default" in it, as tlspyo's endpoints do. Prints the protocol version.
TLS_PROBE = """
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
with socket.create_connection((sys.argv[2], int(sys.argv[3])), float(sys.argv[4])) as raw:
    with ctx.wrap_socket(raw, server_hostname="default") as tls:
        print(tls.version())
"""


@dataclass(frozen=True)
class Cut:
    """One way of cutting worker 1's link, and of restoring it."""

    name: str
    cut: Callable[[], None]
    restore: Callable[[], None]


@dataclass
class Deployment:
    """Where each role runs and how worker 1's link is cut."""

    server_argv: list[str]
    client_argv: dict[str, list[str]]  # by role: "trainer", W1, W2
    prefix: dict[str, list[str]]  # by role, "server" too: the command that puts it on its host
    relay_addr: dict[str, tuple[str, int]]  # by role: the relay's address as seen from it
    cuts: list[Cut]  # one after the other
    plaintext_refused: bool = True  # a remote host: the CLI must refuse plaintext


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def netns_reason() -> str | None:
    return H.netns_unavailable_reason()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate and key made by ``tm-dist make-cert`` (name in the certificate: default)."""
    keys = tmp_path_factory.mktemp("keys")
    done = subprocess.run(
        [sys.executable, "-m", "tm_dist.cli", "make-cert", "--keys-dir", str(keys)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (keys / "certificate.pem").is_file() and (keys / "key.pem").is_file()
    return keys


@pytest.fixture
def netns_deployment(netns_reason: str | None, keys_dir: Path) -> Iterator[Deployment]:
    if netns_reason is not None:
        pytest.skip(f"network namespaces unavailable: {netns_reason}")
    pid = os.getpid()
    with H.NetnsTopology(str(pid), ["trainer", W1, W2], subnet=pid % 200 + 20) as topo:
        # A private namespace: nothing else can hold the default port there.
        client = [
            "--host",
            topo.server_ip,
            "--port",
            str(DEFAULT_PORT),
            "--keys-dir",
            str(keys_dir),
        ]
        yield Deployment(
            server_argv=["server", "--bind", "0.0.0.0", "--port", str(DEFAULT_PORT)],
            client_argv={role: list(client) for role in ("trainer", W1, W2)},
            prefix={
                "server": topo.prefix(None),
                **{role: topo.prefix(role) for role in ("trainer", W1, W2)},
            },
            relay_addr={role: (topo.server_ip, DEFAULT_PORT) for role in ("trainer", W1, W2)},
            cuts=[Cut("link down", lambda: topo.cut(W1), lambda: topo.restore(W1))],
        )


@pytest.fixture
def loopback_deployment(keys_dir: Path) -> Iterator[Deployment]:
    port = free_local_port()
    tls = ["--host", "127.0.0.1", "--tls", "--keys-dir", str(keys_dir)]
    with H.PausableProxy(port) as proxy:
        yield Deployment(
            server_argv=["server", "--bind", "127.0.0.1", "--port", str(port), "--tls"],
            client_argv={
                "trainer": [*tls, "--port", str(port)],
                W1: [*tls, "--port", str(proxy.port)],
                W2: [*tls, "--port", str(port)],
            },
            prefix={},
            relay_addr={"trainer": ("127.0.0.1", port), W1: ("127.0.0.1", proxy.port)}
            | {W2: ("127.0.0.1", port)},
            cuts=[
                Cut("stalled link", proxy.pause, proxy.resume),
                # Both ends see a reset: worker 1's link has to reconnect.
                Cut("reset link", proxy.reset, proxy.resume),
            ],
            plaintext_refused=False,  # plain TCP on loopback is allowed by design
        )


# -- the scenario -----------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_DIST_")}
    env.update(
        TM_DIST_PASSWORD=PASSWORD,
        TM_DIST_CONNECTION_CONNECT_TIMEOUT_S="90",  # slow starts on a busy machine
        TM_DIST_WORKER_TEST_EVERY="3",  # after the first test episode, -v prints every episode
        TM_DIST_WORKER_CHUNK_STEPS="100",
        TM_DIST_TRAINER_CHECKPOINT_EVERY="60",  # the checkpoints are how we read the trainer
        TM_DIST_TRAINER_BROADCAST_EVERY="400",
        COLUMNS="400",  # one line per message from rich
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.setdefault("NUMBA_CACHE_DIR", "/tmp/nbcache")
    return env


def _tls_probe(dep: Deployment, keys_dir: Path, role: str, timeout_s: float = 10.0) -> str | None:
    """The TLS version of a handshake with the relay from ``role``'s host, None if it failed."""
    host, port = dep.relay_addr[role]
    cmd = [*dep.prefix.get(role, []), sys.executable, "-c", TLS_PROBE]
    cmd += [str(keys_dir / "certificate.pem"), host, str(port), str(timeout_s)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


class Scenario:
    """The relay, the trainer and two workers on ``dep``'s hosts, and what they have done.

    :meth:`run` starts them, checks TLS (and that plain TCP is refused where the deployment
    says so), waits for both workers' episodes, then cuts and restores each of ``dep.cuts``.
    """

    def __init__(self, dep: Deployment, keys_dir: Path, tmp: Path) -> None:
        self.dep, self.keys_dir = dep, keys_dir
        self.env = _env()
        self.run_dir = tmp / "run"
        self.logs = tmp / "logs"
        self.logs.mkdir()
        trainer_argv = ["trainer", "-v", "--run-dir", str(self.run_dir), "--fresh"]
        trainer_argv += ["--preset", "lidar-sac"]
        for item in TRAINER_SET:
            trainer_argv += ["--set", item]
        self.server = self.role("server", [*dep.server_argv, "-v", "--keys-dir", str(keys_dir)])
        self.trainer = self.role("trainer", [*trainer_argv, *dep.client_argv["trainer"]])
        self.workers = {
            w: self.role(w, ["worker", "-v", "--name", w, "--max-steps-per-s", STEPS_PER_S])
            for w in (W1, W2)
        }
        for w, proc in self.workers.items():
            proc.argv += dep.client_argv[w]
        self.everyone = [self.server, self.trainer, *self.workers.values()]
        self.notes: list[str] = []  # (trainer, worker 1, worker 2) episodes at each step
        self.t0 = time.monotonic()

    def role(self, name: str, argv: list[str], host: str | None = None) -> Any:
        prefix = self.dep.prefix.get(host or name, ())
        return H.RoleProcess(argv, self.env, self.logs / f"{name}.log", prefix)

    def note(self, what: str) -> None:
        self.notes.append(f"{time.monotonic() - self.t0:5.1f} s {what}: {self.counts()}")

    def report(self) -> str:
        logs = "\n".join(f"--- {p.log.name} ---\n{p.text()[-3000:]}" for p in self.everyone)
        return "\n".join(self.notes) + "\n" + logs

    def counts(self) -> tuple[int, int, int]:
        t = H.trainer_episodes(self.run_dir)  # first the trainer, then what the workers sent
        w1 = H.worker_episodes(self.workers[W1].text(), W1) + 1
        w2 = H.worker_episodes(self.workers[W2].text(), W2) + 1
        return t, w1, w2

    def run(self) -> None:
        try:
            self.start_over_tls()
            if self.dep.plaintext_refused:
                self.check_plaintext_refused()
            self.wait_for_both_workers()  # 1.
            for cut in self.dep.cuts:  # 2. and 3.
                self.cut_and_restore(cut)
            alive = (self.server, self.trainer, *self.workers.values())
            assert all(p.alive for p in alive), self.report()
        finally:
            for proc in self.everyone:
                proc.interrupt()  # all at once, then wait for each
            for proc in reversed(self.everyone):
                proc.stop()

    def start_over_tls(self) -> None:
        for proc in self.everyone:  # the trainer and workers retry until the relay listens
            proc.start()
        server = self.server
        H.wait_until(lambda: "relay listening" in server.text(), START_S, "the relay", self.report)
        self.note("relay listening")
        assert "(TLS)" in server.text(), self.report()
        version = _tls_probe(self.dep, self.keys_dir, W2)
        assert version is not None and version.startswith("TLSv1."), self.report()

    def check_plaintext_refused(self) -> None:
        plain = self.role("plain", ["worker", "--name", "plain", *self.dep.client_argv[W2]], W2)
        plain.env["TM_DIST_CONNECTION_TLS"] = "false"
        self.everyone.append(plain)
        plain.start()
        assert plain.wait(timeout=60) == 2, self.report()
        assert "refusing plain TCP" in plain.text(), self.report()

    def wait_for_both_workers(self) -> None:
        """1. Both workers' episodes reach the trainer."""

        def both_arrived() -> bool:
            t, w1, w2 = self.counts()
            return min(w1, w2) >= 3 and t >= max(w1, w2) + 2

        H.wait_until(both_arrived, START_S, "episodes from both workers", self.report)
        self.note("both arrived")
        joined = self.trainer.text()
        assert f"worker {W1} joined" in joined and f"worker {W2} joined" in joined, self.report()

    def cut_and_restore(self, cut: Cut) -> None:
        """Worker 1's link goes down: worker 2's episodes still arrive, worker 1's do not,
        though it goes on driving and sending (into buffers, or lost with a reset). Then the
        link comes back and worker 1's episodes arrive again."""
        report = self.report
        cut.cut()
        w1_at_cut = self.counts()[1]  # read after the cut: covers every episode sent before it
        t_at_cut, _, w2_at_cut = self.counts()
        self.note(f"{cut.name}: cut")
        probe = _tls_probe(self.dep, self.keys_dir, W1, timeout_s=2.0)
        assert probe is None, f"{cut.name}: worker 1's host still reaches the relay"

        def cut_holds() -> bool:
            t, w1, w2 = self.counts()
            if t > w1_at_cut + w2:
                raise AssertionError(
                    f"{cut.name}: the trainer has {t} episodes during the cut, more than "
                    f"worker 1 had sent before it ({w1_at_cut}) plus all of worker 2's "
                    f"({w2}): worker 1's traffic got through\n{report()}"
                )
            return t >= t_at_cut + CUT_EPISODES and min(w1 - w1_at_cut, w2 - w2_at_cut) >= 6

        H.wait_until(cut_holds, PHASE_S, f"worker 2's episodes during the {cut.name}", report)
        self.note(f"{cut.name}: end of the cut")
        assert self.workers[W1].alive, report()

        cut.restore()
        H.wait_until(
            lambda: _tls_probe(self.dep, self.keys_dir, W1) is not None,
            PHASE_S,
            "the link",
            report,
        )

        def w1_back() -> bool:
            t, _, w2 = self.counts()
            return t >= w1_at_cut + w2 + 3

        H.wait_until(w1_back, PHASE_S, f"worker 1's episodes after the {cut.name}", report)
        self.note(f"{cut.name}: restored")


def run_scenario(dep: Deployment, keys_dir: Path, tmp: Path) -> None:
    Scenario(dep, keys_dir, tmp).run()


# -- tests ------------------------------------------------------------------------------------


def test_netns_tls_link_cut(netns_deployment: Deployment, keys_dir: Path, tmp_path: Path) -> None:
    run_scenario(netns_deployment, keys_dir, tmp_path)


def test_loopback_tls_link_cut(
    loopback_deployment: Deployment, keys_dir: Path, tmp_path: Path
) -> None:
    run_scenario(loopback_deployment, keys_dir, tmp_path)
