"""The trainer's memory for half-received episodes is bounded (issue 15, item 6).

A worker (or anyone holding a worker's credential) that sends first chunks with fresh episode
ids and never the rest used to grow the trainer without bound: 1 MB of such messages took it
from 391 MiB to 1,755 MiB. Now at most ``max_pending_per_worker`` half-received episodes are
kept per worker and ``max_pending_episodes`` / ``max_pending_bytes`` in total; the oldest go
first, and every drop is counted and logged (rate-limited).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from tm_algos.presets import apply_overrides, load_preset
from tm_dist.errors import InvalidValueError
from tm_dist.learner import Learner, LearnerConfig
from tm_dist.rollout import Rollout
from tm_dist.wire import EpisodeChunk

TINY = [
    "env.n_envs=1",
    "env.kwargs.ep_max_length=30",
    "algo.hyperparameters.learning_starts=20",
    "algo.hyperparameters.batch_size=16",
    "algo.hyperparameters.buffer_size=2000",
    "policy.net_arch=[16, 16]",
]


@pytest.fixture(scope="module")
def episode() -> list[EpisodeChunk]:
    """One honest episode of 30 steps in chunks of 10 (the first is not final)."""
    torch.set_num_threads(1)
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    learner = Learner(preset, "unused", tensorboard=False, device="cpu", seed=0)
    rollout = Rollout("honest", test_every=10**6, chunk_steps=10, seed=0)
    try:
        rollout.offer(learner.weights())
        chunks = list(rollout.episode())
    finally:
        rollout.close()
    assert len(chunks) == 3 and not chunks[0].final and chunks[-1].final
    return chunks


def _learner(tmp_path: Path, **config: object) -> Learner:
    torch.set_num_threads(1)
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    cfg = LearnerConfig(**config)  # type: ignore[arg-type]
    return Learner(preset, tmp_path, config=cfg, tensorboard=False, device="cpu", seed=0)


def _first(episode: list[EpisodeChunk], worker: str, ep: int) -> EpisodeChunk:
    return dataclasses.replace(episode[0], worker=worker, episode=ep)


def test_fresh_first_chunks_from_one_worker_do_not_grow_the_trainer(
    tmp_path: Path, episode: list[EpisodeChunk]
) -> None:
    """The reproduction with the default caps: 200 first chunks, 8 kept."""
    learner = _learner(tmp_path)
    for ep in range(200):
        learner.ingest(_first(episode, "flood", 10_000 + ep))
    assert len(learner._pending) == 8  # before the fix: 200, and growing
    assert LearnerConfig().max_pending_per_worker == 8
    assert learner.stats.pending_dropped == 192


def test_per_worker_cap_drops_that_workers_oldest_first(
    tmp_path: Path, episode: list[EpisodeChunk], caplog: pytest.LogCaptureFixture
) -> None:
    learner = _learner(tmp_path, max_pending_per_worker=3)
    learner.ingest(_first(episode, "honest", 1))  # another worker's episode in flight
    with caplog.at_level(logging.WARNING, logger="tm_dist.learner"):
        for ep in range(50):
            learner.ingest(_first(episode, "flood", ep))
    s = learner.stats
    assert learner.pending_episodes == 4  # 3 of the flood + the honest one
    assert s.pending_dropped == 47 and s.dropped_episodes == 47
    # the flood's newest three are kept: its episode 49 can still finish, episode 0 cannot
    for chunk in episode[1:]:
        learner.ingest(dataclasses.replace(chunk, worker="flood", episode=0))
    assert s.episodes == 0
    for chunk in episode[1:]:
        learner.ingest(dataclasses.replace(chunk, worker="flood", episode=49))
    assert s.episodes == 1
    for chunk in episode[1:]:  # and the other worker lost nothing
        learner.ingest(dataclasses.replace(chunk, worker="honest", episode=1))
    assert s.episodes == 2 and s.episodes_by_worker == {"flood": 1, "honest": 1}
    lines = [r for r in caplog.records if "half-received" in r.getMessage()]
    assert len(lines) == 1  # rate-limited: one line for the burst, with the count
    assert "flood" in lines[0].getMessage() and "at most 3 per worker" in lines[0].getMessage()


def test_total_cap_over_many_workers(tmp_path: Path, episode: list[EpisodeChunk]) -> None:
    """A flood under fresh worker names is bounded by the total count."""
    learner = _learner(tmp_path, max_pending_episodes=5)
    for i in range(40):
        learner.ingest(_first(episode, f"w{i}", 1))
        assert learner.pending_episodes <= 5
    assert learner.stats.pending_dropped == 35
    for chunk in episode[1:]:  # the newest survives, the oldest is gone
        learner.ingest(dataclasses.replace(chunk, worker="w39", episode=1))
        learner.ingest(dataclasses.replace(chunk, worker="w0", episode=1))
    assert learner.stats.episodes_by_worker == {"w39": 1}


def test_total_bytes_cap(tmp_path: Path, episode: list[EpisodeChunk]) -> None:
    learner = _learner(tmp_path, max_pending_bytes=2**20)
    learner.ingest(_first(episode, "w-0", 0))
    one = learner.pending_bytes
    assert one > 0
    n = 3 * (2**20 // one)  # three times what fits
    for i in range(n):
        learner.ingest(_first(episode, f"w-{i}", i))
        assert learner.pending_bytes <= 2**20
    assert learner.pending_episodes == 2**20 // one
    assert learner.stats.pending_dropped == n - 2**20 // one


def test_accounting_returns_to_zero(tmp_path: Path, episode: list[EpisodeChunk]) -> None:
    learner = _learner(tmp_path, max_pending_per_worker=2)
    for ep in range(3):
        for chunk in episode[:2]:
            learner.ingest(dataclasses.replace(chunk, episode=ep))
    assert learner.pending_episodes == 2
    for ep in (1, 2):
        learner.ingest(dataclasses.replace(episode[2], episode=ep))
    assert learner.pending_episodes == 0 and learner.pending_bytes == 0
    assert learner.stats.episodes == 2 and learner.stats.pending_dropped == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"max_pending_per_worker": 0},
        {"max_pending_episodes": -1},
        {"max_pending_bytes": 1000},
        {"max_pending_per_worker": True},
    ],
)
def test_caps_are_validated(bad: dict[str, object]) -> None:
    key = next(iter(bad))
    with pytest.raises(InvalidValueError, match=key):
        LearnerConfig(**bad)  # type: ignore[arg-type]


def test_a_stop_signal_half_way_through_an_episode_waits_until_it_is_in(
    tmp_path: Path, episode: list[EpisodeChunk], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt wherever the trainer is; its final checkpoint
    must still have the buffer and the step count agree (they once differed by the part of an
    episode added before the signal)."""
    learner = _learner(tmp_path)
    buffer = learner.model.replay_buffer  # type: ignore[attr-defined]
    add = buffer.add
    calls = [0]

    def add_then_signal(*args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == 15:  # the signal arrives before the 15th transition is stored
            raise KeyboardInterrupt
        add(*args, **kwargs)

    monkeypatch.setattr(buffer, "add", add_then_signal)
    for chunk in episode[:-1]:
        learner.ingest(chunk)
    with pytest.raises(KeyboardInterrupt):
        learner.ingest(episode[-1])  # the interruption still reaches the trainer's loop
    assert buffer.pos == 30 and learner.stats.env_steps == 30
    assert learner.stats.episodes == 1
