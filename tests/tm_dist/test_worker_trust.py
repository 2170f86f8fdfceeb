"""Workers never trust the network (issue 15, items 1-2): for code, for paths, for shapes, or for
who sent the weights.

Hostile :class:`Weights` are built from an honest trainer's (a tiny lidar-sac learner) by
editing their JSON configuration or their tensors, then offered to a :class:`Rollout` (or to a
worker's inbox, which checks the trainer's signature first). Each must be refused with a log
line, counted, and the worker must drive on with the policy it had. Files and modules a hostile
message names are watched with an audit hook and a module that leaves a marker when imported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from tm_algos.presets import apply_overrides, load_preset
from tm_dist.certs import make_cert
from tm_dist.learner import Learner
from tm_dist.roles import WorkerReport, _WorkerInbox, run_trainer, run_worker
from tm_dist.rollout import Rollout
from tm_dist.settings import (
    ConnectionSettings,
    DistSettings,
    Secret,
    TrainerSettings,
    WorkerSettings,
)
from tm_dist.transport import DisconnectedError, Link, RelayServer
from tm_dist.wire import Disconnect, EpisodeChunk, Weights, encode_message

# tm_dist.signing and tm_dist.trust are imported inside the tests that use them, so that the
# findings' reproductions run (and fail for their real reason) on the code before issue 15

torch.set_num_threads(1)

TINY = (
    "algo.hyperparameters.learning_starts=200",
    "algo.hyperparameters.batch_size=32",
    "algo.hyperparameters.buffer_size=5000",
    "policy.net_arch=[32,32]",
    "env.kwargs.ep_max_length=20",
)

# -- what the process opens, seen by an audit hook (installed once, recording only on demand) --

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and args and isinstance(args[0], (str, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """The paths opened (by anything in this process) while the test runs."""
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


# -- honest and hostile weights ---------------------------------------------------------------


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Weights:
    """Version 0 of a tiny lidar-sac trainer, taking its policy's actions (not random ones)."""
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    learner = Learner(
        preset, tmp_path_factory.mktemp("trust"), tensorboard=False, device="cpu", seed=0
    )
    return _edited(learner.weights(), lambda c: c.update(random_actions=False), version=0)


def _edited(
    w: Weights, edit: Callable[[dict[str, Any]], None], version: int | None = None
) -> Weights:
    config = json.loads(w.config_json)
    edit(config)
    return Weights(
        version=w.version + 1 if version is None else version,
        safetensors=w.safetensors,
        config_json=json.dumps(config),
    )


def _env(**kwargs: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c["env"]["kwargs"].update(kwargs)


def _env_id(env_id: str) -> Callable[[dict[str, Any]], None]:
    return lambda c: c["env"].update(id=env_id)


def _policy(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c["policy"].update({key: value})


def _extractor(**kwargs: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c["policy"]["features_extractor_kwargs"].update(kwargs)


def _brake_full_right(w: Weights) -> Weights:
    """The same network with tensors that always brake and steer fully (a valid policy)."""
    tensors = load_tensors(w.safetensors)
    for name, t in tensors.items():
        if name.endswith(("mu.weight", "log_std.weight")):
            tensors[name] = torch.zeros_like(t)
        elif name.endswith("mu.bias"):
            tensors[name] = torch.tensor([-10.0, 10.0, 10.0], dtype=t.dtype)  # gas, brake, steer
        elif name.endswith("log_std.bias"):
            tensors[name] = torch.full_like(t, -20.0)
    data = save_tensors(tensors, metadata={"format": "tm-algos-policy/1"})
    return Weights(version=w.version + 1000, safetensors=data, config_json=w.config_json)


def _drive(rollout: Rollout) -> list[EpisodeChunk]:
    return list(rollout.episode())


@pytest.fixture
def driving(honest: Weights) -> Iterator[Rollout]:
    """A rollout that has driven one episode with the honest version 0."""
    rollout = Rollout("w-trust", test_every=10**6, chunk_steps=10, seed=0)
    try:
        rollout.offer(honest)
        assert _drive(rollout)[-1].weights_version == 0
        yield rollout
    finally:
        rollout.close()


def _assert_refused_and_drives_on(rollout: Rollout, hostile: Weights, *reason: str) -> None:
    rollout.offer(hostile)
    chunks = _drive(rollout)  # the worker does not die, and drives with what it had
    assert chunks and chunks[-1].final
    assert {c.weights_version for c in chunks} == {0}
    assert rollout.version == 0
    assert rollout.rejected_weights == 1
    assert rollout.last_refusal is not None
    for word in reason:
        assert word in rollout.last_refusal


# -- the findings of issue 15 (each fails on the code before it) --------------------------------


def test_env_id_with_a_module_prefix_is_refused_and_the_module_never_imported(
    driving: Rollout, honest: Weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "tm_h3_planted.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("tm_h3_planted", "this"):
        assert module not in sys.modules
        hostile = _edited(honest, _env_id(f"{module}:TrackMania-Sim-v0"))
        rollout = Rollout("fresh", test_every=10**6, chunk_steps=10, seed=0)
        try:
            rollout.offer(hostile)
            assert not rollout.prepare()  # a late joiner offered only this: keeps waiting
        finally:
            rollout.close()
        assert module not in sys.modules
    assert not marker.exists()
    _assert_refused_and_drives_on(
        driving, _edited(honest, _env_id("tm_h3_planted:TrackMania-Sim-v0")), "names a module"
    )
    assert not marker.exists()


def test_a_network_of_width_minus_one_is_refused_and_the_worker_drives_on(
    driving: Rollout, honest: Weights
) -> None:
    _assert_refused_and_drives_on(driving, _edited(honest, _policy("net_arch", [-1])), "net_arch")


@pytest.mark.parametrize("key", ["track", "reward_trajectory"])
def test_env_kwargs_naming_a_file_are_refused_and_the_file_never_opened(
    driving: Rollout, honest: Weights, opened: list[str], key: str
) -> None:
    _assert_refused_and_drives_on(driving, _edited(honest, _env(**{key: "/etc/hostname"})), key)
    assert "/etc/hostname" not in opened


def test_a_valid_hostile_policy_signed_by_another_key_is_refused(
    driving: Rollout, honest: Weights
) -> None:
    from tm_dist.signing import generate_signing_key, sign_message

    trainer, attacker = generate_signing_key(), generate_signing_key()
    hostile = _brake_full_right(honest)
    report = WorkerReport()
    link = _FakeLink([encode_message(sign_message(hostile, attacker))])
    inbox = _WorkerInbox(link, driving, report, "w-trust", trainer.public_key())  # type: ignore[arg-type]
    inbox.poll(0.0)
    assert report.refused_weights == 1
    assert {c.weights_version for c in _drive(driving)} == {0}

    # the same bytes signed by the trainer are taken: the policy is valid, and hostile
    link.items = [encode_message(sign_message(hostile, trainer))]
    inbox.poll(0.0)
    assert driving.prepare() and driving.version == hostile.version
    assert driving.env is not None and driving.policy is not None
    obs, _ = driving.env.reset(seed=1)
    action = driving.policy.act(obs, deterministic=False)
    np.testing.assert_allclose(action, [-1.0, 1.0, 1.0], atol=1e-3)
    assert report.refused_weights == 1


# -- more refusals: shapes, arguments, builds ---------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_policy("net_arch", [0]), "net_arch[0]"),
        (_policy("net_arch", [10**9]), "net_arch[0]"),
        (_policy("net_arch", [32] * 9), "9 layers"),
        (_policy("net_arch", {"pi": [32, -1]}), "net_arch['pi'][1]"),
        (_policy("net_arch", "big"), "net_arch"),
        (_policy("net_arch", [4096] * 8), "hidden-layer weights"),
        (_extractor(hidden=[-1]), "hidden"),
        (_extractor(depth=10**4), "depth"),
        (_extractor(path="encoder"), "path"),
        (_policy("policy_kwargs", {"n_critics": 10**6}), "n_critics"),
        (_policy("policy_kwargs", {"clip_mean": float("nan")}), "clip_mean"),
        (
            _policy("action_space", {"kind": "Box", "shape": [10**6, 10**6], "dtype": "float32"}),
            "action_space",
        ),
        (_env(img_size=10**6), "img_size"),
        (_env(obs_type=["lidar"]), "obs_type"),
        (_env(recording="/etc/hostname"), "recording"),
        (_env(telemetry_host="10.0.0.1"), "telemetry_host"),
        (_env(entry_point="os:system"), "allow-list"),
        (_env_id("CartPole-v1"), "CartPole-v1"),
        (lambda c: c["env"].update(kwargs=["x"]), "mapping"),
        (lambda c: c.update(policy=[]), "'policy'"),
        (lambda c: c.update(random_actions="yes"), "random_actions"),
    ],
)
def test_unbounded_or_unsafe_configurations_are_refused(
    driving: Rollout,
    honest: Weights,
    caplog: pytest.LogCaptureFixture,
    edit: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tm_dist.rollout"):
        _assert_refused_and_drives_on(driving, _edited(honest, edit), reason)
    assert "refused weights version 1" in caplog.text
    assert "driving on with version 0" in caplog.text


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_env(obs_type="images"), "does not fit"),  # a LIDAR policy for camera images
        (_env(time_step_duration=0.01, start_obs_capture=0.04), "start_obs_capture"),
    ],
)
def test_weights_whose_env_or_policy_would_not_work_are_refused_at_the_swap(
    driving: Rollout, honest: Weights, edit: Callable[[dict[str, Any]], None], reason: str
) -> None:
    env_before = driving.env
    _assert_refused_and_drives_on(driving, _edited(honest, edit), reason)
    assert driving.env is env_before  # the environment it had is kept, not rebuilt


def test_a_refused_offer_never_displaces_good_pending_weights(
    driving: Rollout, honest: Weights
) -> None:
    good = _edited(honest, lambda c: None, version=5)
    assert driving.offer(good)
    assert not driving.offer(_edited(good, _policy("net_arch", [-1])))
    assert driving.prepare() and driving.version == 5


def test_accepted_configurations(honest: Weights) -> None:
    from tm_dist.trust import (
        UntrustedConfigError,
        WorkerTrust,
        check_env_id,
        check_env_kwargs,
        check_policy_config,
    )

    trust = WorkerTrust()
    assert check_env_id("tm_gym:TrackMania-Sim-v0", trust) == "TrackMania-Sim-v0"
    assert check_env_id("TrackMania-v0", trust) == "TrackMania-v0"
    ok = {
        "track": "gen:42",
        "obs_type": "lidar_progress",
        "visuals": {"sky": [40, 60, 200], "random": {"brightness": [0.6, 1.4]}},
        "realtime": True,
        "time_step_duration": 0.05,
        "start_jitter": 1,
    }
    assert check_env_kwargs(ok, trust) == ok
    assert check_env_kwargs({"track": "technical", "backend": "game"}, trust)
    for bad in ({"track": "gen:-1"}, {"track": "gen:1e9"}, {"backend": "replay"}):
        with pytest.raises(UntrustedConfigError):
            check_env_kwargs(bad, trust)
    check_policy_config(json.loads(honest.config_json)["policy"], trust)
    with pytest.raises(ValueError, match="plain registered ids"):
        WorkerTrust(env_ids=frozenset({"os:Thing-v0"}))


@pytest.mark.slow  # builds a learner per preset
@pytest.mark.filterwarnings("ignore:You have specified a mini-batch size")  # PPO on one car
@pytest.mark.parametrize("preset", ["images-ppo", "images-vit-ppo", "images-sac", "lidar-redq"])
def test_every_kind_of_trainer_preset_passes_the_workers_checks(
    preset: str, tmp_path: Path
) -> None:
    from tm_dist.rollout import WeightsConfig

    weights = Learner(load_preset(preset), tmp_path, tensorboard=False, device="cpu").weights()
    config = WeightsConfig.parse(weights.config_json)
    assert config.env_id == "TrackMania-Sim-v0"


# -- the worker's inbox: signatures on every message it acts on --------------------------------


class _FakeLink:
    def __init__(self, items: list[bytes]) -> None:
        self.items = items

    def receive_all(self) -> list[bytes]:
        items, self.items = self.items, []
        return items

    def receive(self, timeout: float | None = None) -> bytes:
        raise TimeoutError


def test_unsigned_weights_are_refused_when_the_worker_has_the_trainers_key(
    driving: Rollout, honest: Weights, caplog: pytest.LogCaptureFixture
) -> None:
    from tm_dist.signing import generate_signing_key, sign_message

    key = generate_signing_key()
    report = WorkerReport()
    newer = dataclasses.replace(honest, version=3)
    link = _FakeLink([encode_message(newer)])
    inbox = _WorkerInbox(link, driving, report, "w-trust", key.public_key())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="tm_dist.roles"):
        inbox.poll(0.0)
    assert report.refused_weights == 1
    assert "refused weights version 3: unsigned Weights" in caplog.text
    assert driving.prepare() and driving.version == 0
    link.items = [encode_message(sign_message(newer, key))]
    inbox.poll(0.0)
    assert driving.prepare() and driving.version == 3
    assert report.refused_weights == 1


def test_only_the_trainers_disconnect_stops_a_worker(driving: Rollout) -> None:
    from tm_dist.signing import generate_signing_key, sign_message

    trainer, attacker = generate_signing_key(), generate_signing_key()
    stop = Disconnect(worker="w-trust", reason="12 of its chunks were invalid")
    report = WorkerReport()
    link = _FakeLink([encode_message(stop), encode_message(sign_message(stop, attacker))])
    inbox = _WorkerInbox(link, driving, report, "w-trust", trainer.public_key())  # type: ignore[arg-type]
    inbox.poll(0.0)
    assert report.refused_disconnects == 2
    link.items = [encode_message(sign_message(stop, trainer))]
    with pytest.raises(DisconnectedError, match="12 of its chunks"):
        inbox.poll(0.0)


def test_with_tls_the_worker_and_trainer_need_their_keys_before_connecting(
    tmp_path: Path,
) -> None:
    from tm_dist.signing import SigningKeyMissingError

    conn = ConnectionSettings(
        port=1, password=Secret("pw"), tls=True, keys_dir=tmp_path, connect_timeout_s=1
    )
    with pytest.raises(SigningKeyMissingError, match=r"trainer_signing\.pub.*TLS"):
        run_worker(DistSettings(connection=conn, worker=WorkerSettings(name="w")))
    ts = TrainerSettings(run_dir=tmp_path / "run", overrides=TINY)
    with pytest.raises(SigningKeyMissingError, match=r"trainer_signing\.pem.*TLS"):
        run_trainer(DistSettings(connection=conn, trainer=ts), resume=False)
    assert not (tmp_path / "run").exists()


# -- end to end: a fleet with roles and signatures, and intruders with leaked passwords -------

PASSWORD = "trust-test-password-2718"


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.05)


def _register_processes(monkeypatch: pytest.MonkeyPatch, closing: Callable[[Any], Any]) -> None:
    """Every relay and link the roles make from settings is also stopped (and killed by PID)
    by the ``closing`` fixture, whatever happens to the threads running them."""
    for cls in (RelayServer, Link):
        made = cls.from_settings

        def register(_cls: Any, /, *args: Any, _made: Any = made, **kwargs: Any) -> Any:
            return closing(_made(*args, **kwargs))

        monkeypatch.setattr(cls, "from_settings", classmethod(register))


class _Roles:
    """run_server, run_trainer and run_worker in threads; the first error stops all three."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.results[name] = fn()
            except BaseException as e:  # reported by finish()
                self.results[name] = e
                self.stop.set()

        thread = threading.Thread(target=run, name=name)
        self.threads.append(thread)
        thread.start()

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a role did not stop"
        errors = {k: v for k, v in self.results.items() if isinstance(v, BaseException)}
        assert not errors, errors
        return self.results


@pytest.mark.slow  # a relay process, a trainer and a worker with their links
def test_a_fleet_with_roles_and_signatures_ignores_leaked_passwords(
    tmp_path: Path,
    honest: Weights,
    closing: Callable[[Any], Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tm_dist.roles import run_server
    from tm_dist.signing import generate_signing_key, sign_message

    files = make_cert(tmp_path / "keys")
    assert files.trainer_password is not None
    trainer_password = files.trainer_password.read_text().strip()
    _register_processes(monkeypatch, closing)
    roles = _Roles()
    ports: list[int] = []
    relay_stats: list[Any] = []
    relay_conn = ConnectionSettings(
        port=0,
        password=Secret(PASSWORD),
        trainer_password=Secret(trainer_password),
        tls=False,
        keys_dir=files.keys_dir,
        connect_timeout_s=8,
    )
    try:
        roles.start(
            "server",
            lambda: run_server(
                DistSettings(connection=relay_conn),
                listen_host="127.0.0.1",
                stop=roles.stop,
                every_s=0.2,
                on_listening=ports.append,
                on_stats=relay_stats.append,
            ),
        )
        _wait_for("the relay listening", lambda: bool(ports))
        conn = dataclasses.replace(relay_conn, port=ports[0])
        ts = TrainerSettings(run_dir=tmp_path / "run", overrides=TINY, broadcast_every=100)
        ws = WorkerSettings(name="signed-w", test_every=0, chunk_steps=20, max_steps_per_s=400.0)
        reports: list[WorkerReport] = []
        roles.start(
            "trainer",
            lambda: run_trainer(
                DistSettings(connection=conn, trainer=ts), stop=roles.stop, resume=False
            ),
        )
        roles.start(
            "worker",
            lambda: run_worker(
                DistSettings(connection=conn, worker=ws),
                stop=roles.stop,
                on_episode=reports.append,
            ),
        )
        _wait_for("the worker driving with the trainer's weights", lambda: len(reports) >= 1)

        hostile = dataclasses.replace(_brake_full_right(honest), version=10**6)
        # a worker's password cannot publish weights: the relay drops the connection
        worker_intruder = closing(Link(PASSWORD, port=conn.port, groups="workers", use_tls=False))
        worker_intruder.connect()
        worker_intruder.broadcast("workers", encode_message(hostile))
        # the trainer's password without the trainer's key: its broadcasts arrive, unverified
        trainer_intruder = closing(
            Link(trainer_password, port=conn.port, groups="trainers", use_tls=False)
        )
        trainer_intruder.connect()
        trainer_intruder.broadcast("workers", encode_message(hostile))
        forged = sign_message(hostile, generate_signing_key())
        trainer_intruder.broadcast("workers", encode_message(forged))
        _wait_for("the worker refusing both", lambda: reports[-1].refused_weights >= 2)
        _wait_for(
            "the relay refusing the worker's broadcast", lambda: relay_stats[-1].role_rejects >= 1
        )
        seen = len(reports)
        _wait_for(
            "the worker driving on with the trainer's newer weights",
            lambda: len(reports) > seen + 2 and 1 <= reports[-1].weights_version < 10**6,
        )
    finally:
        results = roles.finish()
    worker = results["worker"]
    assert isinstance(worker, WorkerReport)
    # the worker's password never reached the workers (a third refusal), the others were refused
    assert worker.refused_weights == 2 and 1 <= worker.weights_version < 10**6
    assert relay_stats[-1].role_rejects >= 1  # (the intruder's link retries after the drop)
    assert "refused weights version 1000000: unsigned Weights" in caplog.text
    assert "did not make" in caplog.text


def test_old_signed_messages_replayed_after_newer_ones_are_refused(
    driving: Rollout, honest: Weights, caplog: pytest.LogCaptureFixture
) -> None:
    """Signatures cover the signing time: whoever can broadcast to the workers can neither roll
    a worker back to an older signed policy nor stop it with an older signed Disconnect."""
    from tm_dist.signing import generate_signing_key, sign_message

    trainer = generate_signing_key()
    old_stop = sign_message(Disconnect(worker="w-trust", reason="an old ban"), trainer)
    v3 = sign_message(dataclasses.replace(honest, version=3), trainer)
    v5 = sign_message(dataclasses.replace(honest, version=5), trainer)
    report = WorkerReport()
    link = _FakeLink([encode_message(v5)])
    inbox = _WorkerInbox(link, driving, report, "w-trust", trainer.public_key())  # type: ignore[arg-type]
    inbox.poll(0.0)
    assert driving.prepare() and driving.version == 5
    with caplog.at_level(logging.WARNING, logger="tm_dist.roles"):
        link.items = [encode_message(v3), encode_message(old_stop), encode_message(v5)]
        inbox.poll(0.0)  # no DisconnectedError: the Disconnect predates the weights in use
    assert driving.prepare() and driving.version == 5
    assert report.refused_weights == 1 and report.refused_disconnects == 1
    assert "replayed" in caplog.text
    stop = sign_message(Disconnect(worker="w-trust", reason="a new ban"), trainer)
    link.items = [encode_message(stop)]
    with pytest.raises(DisconnectedError, match="a new ban"):
        inbox.poll(0.0)


def test_the_signature_covers_the_signing_time(honest: Weights) -> None:
    from tm_dist.signing import SignatureError, generate_signing_key, sign_message, verify_message

    key = generate_signing_key()
    signed = sign_message(honest, key)
    assert signed.issued_ns > 0
    verify_message(signed, key.public_key())
    moved = dataclasses.replace(signed, issued_ns=signed.issued_ns + 10**12)
    with pytest.raises(SignatureError):
        verify_message(moved, key.public_key())
