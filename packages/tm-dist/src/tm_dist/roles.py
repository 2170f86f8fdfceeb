"""The three networked roles of tm-dist: relay server, rollout worker and trainer.

Each ``run_*`` function connects, loops until ``stop`` is set (or its own end condition), and
returns a small report; the CLI (:mod:`tm_dist.cli`) adds settings, logging and progress. They
only exchange bytes made by :mod:`tm_dist.wire`: a message that does not decode is dropped,
counted and logged, and the loop goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tm_dist.codec import CodecError
from tm_dist.settings import DistSettings
from tm_dist.transport import Link, RelayServer, TransportError
from tm_dist.wire import (
    PROTOCOL_VERSION,
    EpisodeChunk,
    Hello,
    MessageError,
    Weights,
    decode_message,
    encode_message,
)

__all__ = [
    "TrainerReport",
    "WorkerReport",
    "run_server",
    "run_trainer",
    "run_worker",
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
) -> None:
    """Run the relay until ``stop`` is set (or Ctrl-C); ``on_stats`` gets its stats regularly."""
    stop = stop or threading.Event()
    with RelayServer.from_settings(settings.connection, listen_host=listen_host) as relay:
        _log.info("relay listening on %s:%d", listen_host, relay.port)
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
    pace = 1.0 / ws.max_steps_per_s if ws.max_steps_per_s else 0.0

    def poll(timeout: float) -> None:
        items = lk.receive_all()
        if not items and timeout > 0:
            try:
                items = [lk.receive(timeout=timeout)]
            except TimeoutError:
                return
        for raw in items:
            msg = _decode(raw, ws.name)
            if isinstance(msg, Weights):
                rollout.offer(msg)
            elif msg is None:
                report.dropped_messages += 1

    try:
        if own_link:
            lk.connect()
        hello = Hello(role="worker", name=ws.name, protocol=PROTOCOL_VERSION, info={})
        lk.send(TRAINERS, encode_message(hello))
        while not rollout.has_weights and not stop.is_set():
            poll(0.5)
        t_next = time.perf_counter()
        while not stop.is_set() and (max_episodes is None or report.episodes < max_episodes):
            poll(0.0)
            if not rollout.prepare():
                poll(0.5)
                continue
            for chunk in rollout.episode():
                data = encode_message(chunk)
                lk.send(TRAINERS, data)
                report.chunks += 1
                report.bytes_sent += len(data)
                report.steps += chunk.n_steps
                if pace:
                    t_next += pace * chunk.n_steps
                    delay = t_next - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        t_next = time.perf_counter()
                if chunk.final:
                    report.weights_version = chunk.weights_version
                    if chunk.test:
                        report.test_episodes += 1
                        report.last_test = dict(chunk.stats)
                    else:
                        report.episodes += 1
            if on_episode is not None:
                on_episode(report)
    finally:
        rollout.close()
        if own_link:
            lk.stop()
    return report


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
    import torch

    from tm_algos.presets import apply_overrides, load_preset
    from tm_dist.learner import Learner, LearnerConfig

    ts = settings.trainer
    stop = stop or threading.Event()
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
        ),
        device=ts.device,
        resume=resume,
    )
    malformed = 0
    own_link = link is None
    lk = link or Link.from_settings(settings.connection, groups=(TRAINERS,))
    t0 = time.perf_counter()
    deadline = None if minutes is None else t0 + minutes * 60.0
    last_progress = 0.0
    if own_link:
        lk.connect()  # a wrong password or no relay raises here, before any checkpoint
    wandb_run = _start_wandb(ts, preset) if ts.wandb else None
    try:
        lk.broadcast(WORKERS, encode_message(learner.weights()))
        while not stop.is_set() and not learner.done:
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if until_finish and learner.stats.best_test_lap is not None:
                break
            items = lk.receive_all()
            if not items:
                try:
                    items = [lk.receive(timeout=0.002 if learner.off_policy else 0.05)]
                except TimeoutError:
                    items = []
            for raw in items:
                msg = _decode(raw, "trainer")
                if msg is None:
                    malformed += 1
                elif isinstance(msg, EpisodeChunk):
                    try:
                        learner.ingest(msg)
                    except (CodecError, ValueError) as e:
                        malformed += 1
                        _log.warning("dropped a chunk from %s: %s", msg.worker, e)
                elif isinstance(msg, Hello):
                    _log.info("%s %s joined (protocol %d)", msg.role, msg.name, msg.protocol)
            learner.train(max_steps=8)
            if learner.should_broadcast():
                lk.broadcast(WORKERS, encode_message(learner.weights()))
            learner.maybe_checkpoint()
            now = time.perf_counter()
            if on_progress is not None and now - last_progress > 0.5:
                last_progress = now
                on_progress(dataclasses.replace(learner.stats))
    finally:
        ckpt = learner.checkpoint()
        if own_link:
            lk.stop()
        if wandb_run is not None:
            wandb_run.finish()
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
        wall_s=time.perf_counter() - t0,
        checkpoint=str(ckpt),
    )


def _start_wandb(ts: Any, preset: Any) -> Any:
    """A Weights & Biases run mirroring the trainer's TensorBoard logs (``trainer.wandb``)."""
    try:
        import wandb
    except ImportError as e:
        raise ValueError(
            "trainer.wandb = true needs the wandb package: pip install wandb (then wandb login)"
        ) from e
    return wandb.init(
        project="trackmaster",
        name=f"dist-{ts.run_dir.name}",
        config=preset.to_dict(),
        sync_tensorboard=True,
        dir=str(ts.run_dir),
    )
