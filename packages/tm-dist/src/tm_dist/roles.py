"""The three networked roles of tm-dist: relay server, rollout worker and trainer.

Each ``run_*`` function connects, loops until ``stop`` is set (or its own end condition), and
returns a small report; the CLI (:mod:`tm_dist.cli`) adds settings, logging and progress. They
only exchange bytes made by :mod:`tm_dist.wire`: a message that does not decode is dropped,
counted and logged, and the loop goes on.

Roles cannot be impersonated:

* the relay knows two credentials (:func:`tm_dist.settings.fleet_credentials`): the workers'
  password may join ``workers`` and send to ``trainers`` only; the trainer's password
  (``KEYS_DIR/trainer_password``) may join ``trainers`` and broadcast to ``workers`` only;
* the trainer signs every :class:`~tm_dist.wire.Weights` and :class:`~tm_dist.wire.Disconnect`
  with its Ed25519 key (``KEYS_DIR/trainer_signing.pem``, :mod:`tm_dist.signing`), and a worker
  acts only on messages that verify against ``KEYS_DIR/trainer_signing.pub``. Both files are
  required with TLS; in plaintext mode (loopback, or ``insecure``) a trainer without the key
  sends unsigned messages and a worker without the public key accepts them, each saying so once
  in the log;
* a worker checks what signed weights ask for before building anything (:mod:`tm_dist.trust`)
  and refuses, with a log line, anything unusable, driving on with the policy it had.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tm_dist.codec import CodecError
from tm_dist.settings import (
    ConnectionSettings,
    DistSettings,
    SettingsError,
    TrainerSettings,
    fleet_credentials,
)
from tm_dist.signing import (
    SIGNING_KEY_FILE,
    VERIFY_KEY_FILE,
    SignatureError,
    SigningKeyMissingError,
    load_signing_key,
    load_verify_key,
    sign_message,
    verify_message,
)
from tm_dist.transport import Link, RelayServer, TransportError
from tm_dist.transport.errors import DisconnectedError
from tm_dist.validation import InvalidChunkError
from tm_dist.wire import (
    PROTOCOL_VERSION,
    Disconnect,
    EpisodeChunk,
    Hello,
    MessageError,
    Weights,
    decode_message,
    encode_message,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from tm_algos.presets import Preset
    from tm_dist.learner import Learner
    from tm_dist.rollout import Rollout

__all__ = [
    "TrainerReport",
    "WorkerReport",
    "run_server",
    "run_trainer",
    "run_worker",
    "trainer_signing_key",
    "worker_verify_key",
]

_log = logging.getLogger(__name__)

WORKERS, TRAINERS = "workers", "trainers"


def _decode(raw: Any, who: str) -> Any | None:
    if not isinstance(raw, bytes):
        _log.warning("%s: dropped a %s message (expected bytes)", who, type(raw).__name__)
        return None
    try:
        return decode_message(raw)
    except MessageError as e:
        _log.warning("%s: dropped a malformed message of %d bytes: %s", who, len(raw), e)
        return None


# -- server ----------------------------------------------------------------------------------


def run_server(
    settings: DistSettings,
    *,
    listen_host: str = "0.0.0.0",
    stop: threading.Event | None = None,
    on_stats: Callable[[Any], None] | None = None,
    every_s: float = 5.0,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Run the relay until ``stop`` is set (or Ctrl-C); ``on_stats`` gets its stats regularly.

    The relay knows the fleet's two roles (:func:`~tm_dist.settings.fleet_credentials`): the
    workers' password joins "workers" and sends to "trainers"; the trainer's password joins
    "trainers" and broadcasts to "workers". ``on_listening`` gets the port once the relay
    listens (the OS-chosen one for port 0).

    Raises:
        PasswordError: no trainer password (``KEYS_DIR/trainer_password`` or
            ``TM_DIST_TRAINER_PASSWORD``) and not ``insecure``, or the same as the workers'.
    """
    stop = stop or threading.Event()
    credentials = fleet_credentials(settings.connection)
    with RelayServer.from_settings(
        settings.connection, listen_host=listen_host, credentials=credentials
    ) as relay:
        _log.info(
            "relay listening on %s:%d (roles: %s)",
            listen_host,
            relay.port,
            ", ".join(c.role for c in credentials),
        )
        if on_listening is not None:
            on_listening(relay.port)
        while not stop.wait(every_s):
            if not relay.running:
                raise TransportError("the relay process stopped unexpectedly; see the log above")
            if on_stats is not None:
                on_stats(relay.stats())


# -- worker ----------------------------------------------------------------------------------


@dataclass
class WorkerReport:
    """What a worker did."""

    episodes: int = 0
    test_episodes: int = 0
    steps: int = 0
    chunks: int = 0
    bytes_sent: int = 0
    weights_version: int = -1
    dropped_messages: int = 0
    last_test: dict[str, Any] | None = None
    refused_weights: int = 0
    """Weights refused: unsigned or not signed by the trainer's key, a configuration the worker
    does not trust (:mod:`tm_dist.trust`), or a policy or environment that would not build. The
    worker drove on with the policy it had each time."""
    refused_disconnects: int = 0
    """Disconnect messages naming this worker that were unsigned or not signed by the trainer's
    key (ignored)."""


def worker_verify_key(conn: ConnectionSettings) -> Ed25519PublicKey | None:
    """The trainer's public key a worker checks signatures with: ``KEYS_DIR/trainer_signing.pub``.

    Required with TLS. In plaintext mode a missing file gives None: the worker then accepts
    unsigned weights, and says so once in the log.

    Raises:
        SigningKeyMissingError: TLS is on and the file is missing (the message says where the
            file comes from).
        SigningKeyError: the file is not the trainer's Ed25519 public key.
    """
    path = conn.keys_dir / VERIFY_KEY_FILE
    if path.is_file():
        return load_verify_key(path)
    if conn.use_tls:
        try:
            return load_verify_key(path)
        except SigningKeyMissingError as e:
            raise SigningKeyMissingError(
                f"{e} With TLS a worker needs it to check that weights come from the trainer."
            ) from None
    _log.warning(
        "%s not found: plaintext mode, so this worker accepts UNSIGNED weights; anyone who can "
        "broadcast to the workers can steer it (copy the trainer's %s here to check them)",
        path,
        VERIFY_KEY_FILE,
    )
    return None


def run_worker(
    settings: DistSettings,
    *,
    stop: threading.Event | None = None,
    max_episodes: int | None = None,
    on_episode: Callable[[WorkerReport], None] | None = None,
    link: Link | None = None,
) -> WorkerReport:
    """Drive episodes with the trainer's newest weights and send them, until ``stop``."""
    import torch

    from tm_dist.rollout import Rollout

    torch.set_num_threads(1)  # one car's policy: one thread is fastest and shares the machine
    ws = settings.worker
    verify_key = worker_verify_key(settings.connection)  # before connecting: a missing key is fatal
    stop = stop or threading.Event()
    report = WorkerReport()
    rollout = Rollout(
        ws.name,
        test_every=ws.test_every or 10**12,
        chunk_steps=ws.chunk_steps,
        debug_codec=ws.debug_codec,
        seed=ws.seed,
        device=ws.device,
    )
    own_link = link is None
    lk = link or Link.from_settings(settings.connection, groups=(WORKERS,))
    inbox = _WorkerInbox(lk, rollout, report, ws.name, verify_key)
    pacer = _Pacer(ws.max_steps_per_s)
    try:
        if own_link:
            lk.connect()
        hello = Hello(role="worker", name=ws.name, protocol=PROTOCOL_VERSION, info={})
        lk.send(TRAINERS, encode_message(hello))
        while not rollout.has_weights and not stop.is_set():
            inbox.poll(0.5)
        pacer.restart()
        while not stop.is_set() and (max_episodes is None or report.episodes < max_episodes):
            inbox.poll(0.0)
            if not rollout.prepare():
                inbox.poll(0.5)
                continue
            for chunk in rollout.episode():
                _send_chunk(lk, chunk, report)
                pacer.wait(chunk.n_steps)
            inbox.sync()
            if on_episode is not None:
                on_episode(report)
    finally:
        rollout.close()
        if own_link:
            lk.stop()
    inbox.sync()
    return report


class _WorkerInbox:
    """What the trainer sends a worker: its weights, offered to the rollout as they come.

    With ``verify_key``, Weights and Disconnect messages count only when the trainer's key
    signed them; others are refused, logged and counted in the report. Without it (plaintext
    mode and no public key) they are taken as they come.

    Replays: a signed message carries the time the trainer signed it (``issued_ns``). Weights
    older than the newest signed weights this worker accepted are refused (the same message
    again, e.g. re-broadcast after a ban, is skipped quietly), and so is a Disconnect not newer
    than them: whoever can broadcast to the workers cannot roll a worker back to an old policy
    nor stop it again with an old Disconnect. The trainer's clock must not go back between two
    of its runs (a restarted trainer's first weights are refused until its clock passes the
    newest ``issued_ns`` the worker saw; a logged refusal says so).
    """

    def __init__(
        self,
        link: Link,
        rollout: Rollout,
        report: WorkerReport,
        name: str,
        verify_key: Ed25519PublicKey | None = None,
    ) -> None:
        self._link, self._rollout, self._report, self._name = link, rollout, report, name
        self._key = verify_key
        self._unsigned_weights = 0
        self._newest_ns = 0  # issued_ns of the newest signed weights accepted

    def poll(self, timeout: float) -> None:
        """Take every message waiting; with none, wait up to ``timeout`` s for one."""
        items = self._link.receive_all()
        if not items and timeout > 0:
            try:
                items = [self._link.receive(timeout=timeout)]
            except TimeoutError:
                return
        for raw in items:
            msg = _decode(raw, self._name)
            if isinstance(msg, Weights):
                self._take_weights(msg)
            elif isinstance(msg, Disconnect) and msg.worker == self._name:
                if not self._signed(msg) or not self._fresh(msg):
                    self._report.refused_disconnects += 1
                    continue
                raise DisconnectedError(
                    f"the trainer disconnected worker {self._name!r}: {msg.reason}. Check this "
                    "worker's environment (NaN or out-of-range observations, rewards or "
                    "actions), fix it, then start the worker again"
                )
            elif msg is None:
                self._report.dropped_messages += 1
        self.sync()

    def _take_weights(self, msg: Weights) -> None:
        if not self._signed(msg):
            self._unsigned_weights += 1
            return
        if self._key is not None:
            if msg.issued_ns == self._newest_ns:
                return  # the weights this worker has already (re-broadcast after a ban)
            if not self._fresh(msg):
                self._unsigned_weights += 1
                return
            self._newest_ns = msg.issued_ns
        self._rollout.offer(msg)

    def _fresh(self, msg: Weights | Disconnect) -> bool:
        """Whether a signed ``msg`` is newer than the newest signed weights accepted."""
        if self._key is None or msg.issued_ns > self._newest_ns:
            return True
        what = f"weights version {msg.version}" if isinstance(msg, Weights) else "a Disconnect"
        _log.warning(
            "%s: refused %s signed at %d ns, older than the newest weights accepted (%d ns): "
            "an old message replayed, or the trainer's clock went back",
            self._name,
            what,
            msg.issued_ns,
            self._newest_ns,
        )
        return False

    def _signed(self, msg: Weights | Disconnect) -> bool:
        """Whether to act on ``msg``: signed by the trainer, or no key to check with."""
        if self._key is None:
            return True
        try:
            verify_message(msg, self._key)
        except SignatureError as e:
            what = f"weights version {msg.version}" if isinstance(msg, Weights) else "a Disconnect"
            _log.warning("%s: refused %s: %s", self._name, what, e)
            return False
        return True

    def sync(self) -> None:
        """Copy the refusal counts (signatures here, content in the rollout) into the report."""
        self._report.refused_weights = self._unsigned_weights + self._rollout.rejected_weights


class _Pacer:
    """Holds a worker to ``steps_per_s`` (None: as fast as it runs), catching up after a late
    chunk rather than sleeping it off."""

    def __init__(self, steps_per_s: float | None) -> None:
        self._period = 1.0 / steps_per_s if steps_per_s else 0.0
        self._next = time.perf_counter()

    def restart(self) -> None:
        self._next = time.perf_counter()

    def wait(self, steps: int) -> None:
        """Sleep until ``steps`` more steps are due."""
        if not self._period:
            return
        self._next += self._period * steps
        delay = self._next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.perf_counter()


def _send_chunk(link: Link, chunk: EpisodeChunk, report: WorkerReport) -> None:
    """Send one chunk to the trainers and count it (and its episode, when it is the last)."""
    data = encode_message(chunk)
    link.send(TRAINERS, data)
    report.chunks += 1
    report.bytes_sent += len(data)
    report.steps += chunk.n_steps
    if chunk.final:
        report.weights_version = chunk.weights_version
        if chunk.test:
            report.test_episodes += 1
            report.last_test = dict(chunk.stats)
        else:
            report.episodes += 1


# -- trainer ---------------------------------------------------------------------------------


@dataclass
class TrainerReport:
    """How a trainer run ended."""

    env_steps: int
    train_steps: int
    episodes: int
    test_episodes: int
    best_test_lap: float | None
    first_finish_s: float | None
    malformed_messages: int
    dropped_episodes: int
    stale_episodes: int
    wall_s: float
    checkpoint: str | None
    invalid_chunks: int = 0
    """Chunks refused by the trainer's validation (counted in ``malformed_messages`` too)."""
    invalid_by_worker: dict[str, int] = dataclasses.field(default_factory=dict)
    banned_workers: list[str] = dataclasses.field(default_factory=list)
    skipped_updates: int = 0


def run_trainer(
    settings: DistSettings,
    *,
    stop: threading.Event | None = None,
    minutes: float | None = None,
    until_finish: bool = False,
    resume: bool = True,
    on_progress: Callable[[Any], None] | None = None,
    link: Link | None = None,
) -> TrainerReport:
    """Learn from the workers' episodes and broadcast weights, until a stop condition.

    Stops on ``stop``, after ``minutes``, at the preset's (or settings') step budget, or with
    ``until_finish`` at the first test episode that finishes the track. Always checkpoints at
    the end. ``resume``: continue from the run directory's last checkpoint when there is one.
    """
    ts = settings.trainer
    signer = _Signer(trainer_signing_key(settings.connection))  # a missing key fails first
    stop = stop or threading.Event()
    learner, preset = _make_learner(ts, resume)
    own_link = link is None
    lk = link or Link.from_settings(settings.connection, groups=(TRAINERS,), role="trainer")
    t0 = time.perf_counter()
    deadline = None if minutes is None else t0 + minutes * 60.0
    progress = _Throttle(on_progress, every_s=0.5)
    malformed = 0
    if own_link:
        lk.connect()  # a wrong password or no relay raises here, before any checkpoint
    wandb_run = _start_wandb(ts, preset) if ts.wandb else None
    try:
        weights = signer.encode(learner.weights())
        lk.broadcast(WORKERS, weights)
        while not _trainer_should_stop(learner, stop, deadline, until_finish):
            malformed += _ingest_messages(learner, _receive_some(lk, learner.off_policy))
            _disconnect_banned(lk, learner, weights, signer)
            learner.train(max_steps=8)
            if learner.should_broadcast():
                weights = signer.encode(learner.weights())
                lk.broadcast(WORKERS, weights)
            learner.maybe_checkpoint()
            progress(learner.stats)
    finally:
        ckpt = learner.checkpoint()
        if own_link:
            lk.stop()
        if wandb_run is not None:
            wandb_run.finish()
    return _trainer_report(learner, malformed, time.perf_counter() - t0, ckpt)


def trainer_signing_key(conn: ConnectionSettings) -> Ed25519PrivateKey | None:
    """The key the trainer signs its weights with: ``KEYS_DIR/trainer_signing.pem``.

    Required with TLS. In plaintext mode a missing file gives None: the trainer then sends
    unsigned messages (workers holding ``trainer_signing.pub`` refuse them), and says so once.

    Raises:
        SigningKeyMissingError: TLS is on and the file is missing (the message says how to
            make it).
        SigningKeyError: the file is not an Ed25519 private key.
    """
    path = conn.keys_dir / SIGNING_KEY_FILE
    if path.is_file():
        return load_signing_key(path)
    if conn.use_tls:
        try:
            return load_signing_key(path)
        except SigningKeyMissingError as e:
            raise SigningKeyMissingError(
                f"{e} With TLS the trainer signs every weights broadcast with it, and workers "
                "refuse unsigned ones."
            ) from None
    _log.warning(
        "%s not found: plaintext mode, so the trainer sends UNSIGNED weights (workers that hold "
        "%s will refuse them; `tm-dist make-cert` writes the pair)",
        path,
        VERIFY_KEY_FILE,
    )
    return None


class _Signer:
    """Encodes the trainer's Weights and Disconnect messages, signed when it has a key."""

    def __init__(self, key: Ed25519PrivateKey | None) -> None:
        self._key = key

    def encode(self, msg: Weights | Disconnect) -> bytes:
        if self._key is not None:
            msg = sign_message(msg, self._key)
        return encode_message(msg)


def _disconnect_banned(link: Link, learner: Learner, weights: bytes, signer: _Signer) -> None:
    """Tell each newly banned worker to stop, then broadcast the weights again (the relay keeps
    only the latest broadcast for workers that join later: it must be the weights)."""
    bans = learner.take_new_bans()
    for worker in bans:
        reason = f"{learner.stats.invalid_by_worker.get(worker, 0)} of its chunks were invalid"
        link.broadcast(WORKERS, signer.encode(Disconnect(worker=worker, reason=reason)))
    if bans:
        link.broadcast(WORKERS, weights)


def _make_learner(ts: TrainerSettings, resume: bool) -> tuple[Learner, Preset]:
    """The learner of ``ts.preset`` (with its overrides) and the preset."""
    import torch

    from tm_algos.presets import apply_overrides, load_preset
    from tm_dist.learner import Learner, LearnerConfig

    preset = apply_overrides(load_preset(ts.preset), ts.overrides)
    if preset.env.obs_type != "images" and ts.device in ("auto", "cpu"):
        torch.set_num_threads(1)
    learner = Learner(
        preset,
        ts.run_dir,
        config=LearnerConfig(
            max_train_steps_per_env_step=ts.max_train_steps_per_env_step,
            broadcast_every=ts.broadcast_every,
            checkpoint_every=ts.checkpoint_every,
            total_timesteps=ts.total_timesteps,
            max_abs_reward=ts.max_abs_reward,
            min_lap_s=ts.min_lap_s,
            ban_after=ts.ban_after,
        ),
        device=ts.device,
        resume=resume,
    )
    return learner, preset


def _trainer_should_stop(
    learner: Learner, stop: threading.Event, deadline: float | None, until_finish: bool
) -> bool:
    if stop.is_set() or learner.done:
        return True
    if deadline is not None and time.perf_counter() >= deadline:
        return True
    return until_finish and learner.stats.best_test_lap is not None


def _receive_some(link: Link, off_policy: bool) -> list[Any]:
    """Every message waiting, or the next one within a short wait (shorter for off-policy
    learners, which have gradient steps to take meanwhile)."""
    items = link.receive_all()
    if items:
        return items
    try:
        return [link.receive(timeout=0.002 if off_policy else 0.05)]
    except TimeoutError:
        return []


def _ingest_messages(learner: Learner, items: list[Any]) -> int:
    """Hand the episode chunks to the learner, log the greetings; the number dropped."""
    malformed = 0
    for raw in items:
        msg = _decode(raw, "trainer")
        if msg is None:
            malformed += 1
        elif isinstance(msg, EpisodeChunk):
            try:
                learner.ingest(msg)
            except InvalidChunkError:
                malformed += 1  # the learner logged it with the worker's name
            except (CodecError, ValueError) as e:
                malformed += 1
                _log.warning("dropped a chunk from %s: %s", msg.worker, e)
        elif isinstance(msg, Hello):
            _log.info("%s %s joined (protocol %d)", msg.role, msg.name, msg.protocol)
    return malformed


class _Throttle:
    """Calls ``callback`` with a copy of the learner's stats at most every ``every_s`` s."""

    def __init__(self, callback: Callable[[Any], None] | None, every_s: float) -> None:
        self._callback, self._every_s, self._last = callback, every_s, 0.0

    def __call__(self, stats: Any) -> None:
        now = time.perf_counter()
        if self._callback is not None and now - self._last > self._every_s:
            self._last = now
            self._callback(dataclasses.replace(stats))


def _trainer_report(learner: Learner, malformed: int, wall_s: float, ckpt: Any) -> TrainerReport:
    s = learner.stats
    return TrainerReport(
        env_steps=s.env_steps,
        train_steps=s.train_steps,
        episodes=s.episodes,
        test_episodes=s.test_episodes,
        best_test_lap=s.best_test_lap,
        first_finish_s=s.first_finish_s,
        malformed_messages=malformed,
        dropped_episodes=s.dropped_episodes,
        stale_episodes=s.stale_episodes,
        wall_s=wall_s,
        checkpoint=str(ckpt),
        invalid_chunks=s.invalid_chunks,
        invalid_by_worker=dict(s.invalid_by_worker),
        banned_workers=list(s.banned_workers),
        skipped_updates=s.skipped_updates,
    )


def _start_wandb(ts: Any, preset: Any) -> Any:
    """A Weights & Biases run mirroring the trainer's TensorBoard logs (``trainer.wandb``)."""
    try:
        import wandb
    except ImportError as e:
        raise SettingsError(
            "trainer.wandb = true needs the wandb package: pip install wandb (then wandb login)"
        ) from e
    return wandb.init(
        project="trackmaster",
        name=f"dist-{ts.run_dir.name}",
        config=preset.to_dict(),
        sync_tensorboard=True,
        dir=str(ts.run_dir),
    )
