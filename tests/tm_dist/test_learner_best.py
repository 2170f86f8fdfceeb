"""The trainer keeps the weights that drove its best test lap (RUN/best, loadable policy).

The laps reported here are believable (:mod:`tm_dist.validation`): consistent with the steps
the episodes took, with the physical minimum lowered to fit these 20-step episodes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from tm_algos.policy import load_policy
from tm_algos.presets import apply_overrides, load_preset
from tm_dist.learner import Learner, LearnerConfig
from tm_dist.rollout import Rollout
from tm_dist.wire import EpisodeChunk

TINY = [
    "env.n_envs=1",
    "env.kwargs.ep_max_length=20",
    "algo.hyperparameters.learning_starts=20",
    "algo.hyperparameters.batch_size=16",
    "algo.hyperparameters.buffer_size=2000",
    "policy.net_arch=[16, 16]",
]


def _as_test_lap(chunks: list[EpisodeChunk], lap: float) -> list[EpisodeChunk]:
    """The same episode, reported as a deterministic test that finished in ``lap`` s."""
    out = [dataclasses.replace(c, test=True) for c in chunks]
    stats = {**out[-1].stats, "finished": True, "lap_time": lap, "progress": 1.0}
    out[-1] = dataclasses.replace(out[-1], stats=stats)
    return out


def test_best_test_lap_saves_the_weights_that_drove_it(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    config = LearnerConfig(min_lap_s=0.1)
    learner = Learner(preset, tmp_path, config=config, tensorboard=False, device="cpu", seed=0)
    rollout = Rollout("w", test_every=10**6, chunk_steps=10, seed=0)
    try:
        rollout.offer(learner.weights())
        v0_episode = list(rollout.episode())  # driven by version 0
        while learner.stats.env_steps < 60:
            for chunk in rollout.episode():
                learner.ingest(chunk)
        assert learner.train(max_steps=8) > 0
        newer = learner.weights()  # version 1: different weights
        assert newer.version == 1
        rollout.offer(newer)
        v1_episode = list(rollout.episode())
        v1_again = list(rollout.episode())  # another episode with the same weights
    finally:
        rollout.close()

    steps = min(sum(c.n_steps for c in ep) for ep in (v0_episode, v1_episode, v1_again))
    assert steps >= 10
    base = round(steps * 0.05, 3)  # a lap the steps could take
    best_lap, slower, faster = base - 0.02, base - 0.01, base - 0.03
    for chunk in _as_test_lap(v0_episode, best_lap):
        learner.ingest(chunk)
    best = load_policy(tmp_path / "best")
    assert json.loads((tmp_path / "best" / "evaluation.json").read_text())["weights_version"] == 0
    obs = {k: v[0] for k, v in learner.decoder.decode(v0_episode[0].payload).obs.items()}
    a_best = best.act(obs)

    for chunk in _as_test_lap(v1_episode, slower):  # slower: best/ stays
        learner.ingest(chunk)
    assert json.loads((tmp_path / "best" / "evaluation.json").read_text())["lap_time"] == best_lap
    np.testing.assert_allclose(load_policy(tmp_path / "best").act(obs), a_best)

    for chunk in _as_test_lap(v1_again, faster):  # faster: version 1's weights replace it
        learner.ingest(chunk)
    saved = json.loads((tmp_path / "best" / "evaluation.json").read_text())
    assert (saved["weights_version"], saved["lap_time"]) == (1, faster)
    now = learner.model.predict(obs, deterministic=True)[0]
    np.testing.assert_allclose(load_policy(tmp_path / "best").act(obs), now, atol=1e-6)
    assert not np.allclose(a_best, now)
    assert learner.stats.best_test_lap == faster


def test_resent_chunks_are_counted_once(tmp_path: Path) -> None:
    """After a reconnection a link resends what the relay never acknowledged: no double data."""
    torch.set_num_threads(1)
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    learner = Learner(preset, tmp_path, tensorboard=False, device="cpu", seed=0)
    rollout = Rollout("w", test_every=10**6, chunk_steps=5, seed=1)
    try:
        rollout.offer(learner.weights())
        first = list(rollout.episode())
        second = list(rollout.episode())
    finally:
        rollout.close()
    assert len(first) >= 3 and first[0].episode != second[0].episode
    n_first = sum(c.n_steps for c in first)
    # a chunk resent mid-episode, then the whole episode resent after it was complete
    stream = [first[0], first[1], first[1], *first[2:], *first]
    added = sum(learner.ingest(c) for c in stream)
    assert added == n_first == learner.stats.env_steps
    assert learner.stats.episodes == 1
    assert learner.stats.duplicate_chunks == 1 + len(first)
    assert learner.stats.dropped_episodes == 0
    assert sum(learner.ingest(c) for c in second) == sum(c.n_steps for c in second)
    assert learner.stats.episodes == 2
