"""A worker can neither stop nor corrupt training, nor fake results (issue 14, item 1).

The learner is fed well-formed chunks whose content is poisoned (``tm_dist.testing``): NaN,
infinite and huge rewards, non-finite actions, observations outside their bounds, fake test
laps. Each must be refused, counted against its worker and logged with its name, without
touching the replay buffer or ``RUN/best``; a worker that keeps sending them is disconnected;
a gradient step that goes non-finite is undone instead of killing the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tm_algos.presets import apply_overrides, load_preset
from tm_dist.learner import BAN_WINDOW, Learner, LearnerConfig
from tm_dist.rollout import Rollout
from tm_dist.testing import POISON_KINDS, poison_chunk
from tm_dist.validation import (
    InvalidChunkError,
    LapRules,
    check_episode,
    expert_lap_floor,
)
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
def episodes() -> list[list[EpisodeChunk]]:
    """Six honest episodes (chunks of 10 steps) driven with untrained weights."""
    torch.set_num_threads(1)
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    learner = Learner(preset, "unused", tensorboard=False, device="cpu", seed=0)
    rollout = Rollout("honest", test_every=10**6, chunk_steps=10, seed=0)
    try:
        rollout.offer(learner.weights())
        return [list(rollout.episode()) for _ in range(6)]
    finally:
        rollout.close()


def _learner(tmp_path: Path, **config: object) -> Learner:
    torch.set_num_threads(1)
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    cfg = LearnerConfig(**config)  # type: ignore[arg-type]
    return Learner(preset, tmp_path, config=cfg, tensorboard=False, device="cpu", seed=0)


def _as(chunks: list[EpisodeChunk], worker: str) -> list[EpisodeChunk]:
    return [dataclasses.replace(c, worker=worker) for c in chunks]


@pytest.mark.parametrize("kind", [k for k in POISON_KINDS if not k.startswith("fake_lap")])
def test_poisoned_transitions_never_reach_the_buffer(
    tmp_path: Path,
    episodes: list[list[EpisodeChunk]],
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    learner = _learner(tmp_path)
    honest = episodes[0]
    for chunk in honest:
        learner.ingest(chunk)
    size = learner.model.replay_buffer.size()  # type: ignore[attr-defined]
    assert size == sum(c.n_steps for c in honest)
    evil = _as(episodes[1], "evil-7")
    bad = poison_chunk(evil[1], kind, learner.observation_space, learner.action_space)
    assert learner.decoder.decode(bad.payload).n_steps == bad.n_steps  # well-formed on the wire
    learner.ingest(evil[0])
    with (
        caplog.at_level(logging.WARNING, logger="tm_dist.learner"),
        pytest.raises(InvalidChunkError, match="evil-7"),
    ):
        learner.ingest(bad)
    for chunk in evil[2:]:  # the rest of the poisoned episode is dropped quietly
        assert learner.ingest(chunk) == 0
    assert learner.model.replay_buffer.size() == size  # type: ignore[attr-defined]
    s = learner.stats
    assert s.invalid_chunks == 1 and s.invalid_by_worker == {"evil-7": 1}
    assert s.episodes == 1 and s.dropped_episodes == 1
    assert "evil-7" in caplog.text
    assert s.banned_workers == []
    for chunk in episodes[2]:  # an honest episode still counts
        learner.ingest(chunk)
    assert s.episodes == 2


@pytest.mark.parametrize("kind", ["fake_lap_negative", "fake_lap_instant"])
def test_fake_test_laps_change_neither_best_nor_the_first_finish(
    tmp_path: Path, episodes: list[list[EpisodeChunk]], kind: str
) -> None:
    learner = _learner(tmp_path)
    learner.weights()  # version 0 kept, as when a real trainer broadcast it
    fake = poison_chunk(
        _as(episodes[3], "liar")[0], kind, learner.observation_space, learner.action_space
    )
    with pytest.raises(InvalidChunkError, match="lap time"):
        learner.ingest(fake)
    s = learner.stats
    assert s.best_test_lap is None and s.first_finish_s is None and s.test_episodes == 0
    assert not (tmp_path / "best").exists()
    assert s.invalid_by_worker == {"liar": 1}


def test_a_plausible_lap_is_still_believed(
    tmp_path: Path, episodes: list[list[EpisodeChunk]]
) -> None:
    """The rules do not refuse a real finish: a lap of the expert's time over its own steps."""
    learner = _learner(tmp_path, min_lap_s=1.0)
    learner.weights()
    chunks = [dataclasses.replace(c, test=True) for c in episodes[4]]
    n = sum(c.n_steps for c in chunks)
    lap = round((n - 0.5) * 0.05, 3)
    stats = {**chunks[-1].stats, "finished": True, "lap_time": lap, "progress": 1.0}
    chunks[-1] = dataclasses.replace(chunks[-1], stats=stats)
    for chunk in chunks:
        learner.ingest(chunk)
    assert learner.stats.best_test_lap == lap
    assert learner.stats.first_finish_s is not None
    assert (tmp_path / "best" / "evaluation.json").is_file()


def test_lap_rules() -> None:
    laps = LapRules(min_lap_s=20.0, time_step_s=0.05)
    ok = {"finished": True, "lap_time": 40.0, "return": 1.0}
    assert check_episode(ok, n_steps=800, reward_sum=1.0, laps=laps) == 40.0
    assert check_episode({"finished": False}, n_steps=3, reward_sum=0.0, laps=laps) is None
    bad: list[tuple[dict[str, object], int, str]] = [
        ({**ok, "lap_time": 19.9}, 398, "physical minimum"),
        ({**ok, "lap_time": 40.0}, 100, "does not match"),  # 100 steps cannot take 40 s
        ({**ok, "lap_time": 40.0}, 2000, "does not match"),  # 2000 steps cannot take 40 s
        ({**ok, "lap_time": None}, 800, "expected seconds"),
        ({**ok, "return": float("nan")}, 800, "finite"),
        ({**ok, "return": 5.0}, 800, "sum of the episode's rewards"),
        ({**ok, "wall_contacts": -1}, 800, "wall_contacts"),
    ]
    for stats, n, match in bad:
        with pytest.raises(InvalidChunkError, match=match):
            check_episode(stats, n_steps=n, reward_sum=1.0, laps=laps)


def test_the_physical_minimum_is_half_the_experts_lap() -> None:
    floor = expert_lap_floor("TrackMania-Sim-v0", {"track": "default"})
    assert floor is not None and 15.0 < floor < 25.0  # the expert: 39.934 s on default
    assert expert_lap_floor("TrackMania-v0", {}) is None  # the live game: track unknown


def test_a_worker_that_keeps_sending_invalid_chunks_is_disconnected(
    tmp_path: Path, episodes: list[list[EpisodeChunk]]
) -> None:
    learner = _learner(tmp_path, ban_after=3)
    space, act = learner.observation_space, learner.action_space
    evil = [_as(ep, "broken") for ep in episodes]
    for i in range(3):
        with pytest.raises(InvalidChunkError):
            learner.ingest(poison_chunk(evil[i][0], "reward_nan", space, act))
        assert learner.take_new_bans() == ([] if i < 2 else ["broken"])
    assert learner.stats.banned_workers == ["broken"]
    for chunk in evil[4]:  # dropped unread from now on
        assert learner.ingest(chunk) == 0
    assert learner.stats.banned_chunks == len(evil[4])
    assert learner.take_new_bans() == []
    for chunk in episodes[5]:  # other workers are unaffected
        learner.ingest(chunk)
    assert learner.stats.episodes == 1


def test_one_bad_chunk_in_a_hundred_is_not_a_ban(
    tmp_path: Path, episodes: list[list[EpisodeChunk]]
) -> None:
    learner = _learner(tmp_path, ban_after=2)
    space, act = learner.observation_space, learner.action_space
    worker = "mostly-fine"
    honest = [c for ep in episodes for c in _as(ep, worker)]
    for round_ in range(2):
        bad = poison_chunk(_as(episodes[round_], worker)[0], "reward_inf", space, act)
        bad = dataclasses.replace(bad, episode=10**6 + round_)
        with pytest.raises(InvalidChunkError):
            learner.ingest(bad)
        for i in range(BAN_WINDOW):
            c = honest[i % len(honest)]
            learner.ingest(dataclasses.replace(c, episode=c.episode + 1000 * (round_ * 1000 + i)))
    assert learner.stats.invalid_by_worker == {worker: 2}
    assert learner.stats.banned_workers == []


def test_a_non_finite_update_is_undone_and_training_goes_on(
    tmp_path: Path, episodes: list[list[EpisodeChunk]], caplog: pytest.LogCaptureFixture
) -> None:
    learner = _learner(tmp_path)
    for ep in episodes[:3]:
        for chunk in ep:
            learner.ingest(chunk)
    assert learner.train(max_steps=4) > 0
    before = {k: v.clone() for k, v in learner.model.policy.state_dict().items()}
    buffer = learner.model.replay_buffer  # type: ignore[attr-defined]
    buffer.rewards[: buffer.size()] = np.nan  # what validation keeps out, forced in anyway
    with caplog.at_level(logging.ERROR, logger="tm_dist.learner"):
        assert learner.train(max_steps=4) == 0  # raised or went NaN: undone, no exception
    assert learner.stats.skipped_updates == 1
    assert "restoring the last good weights" in caplog.text
    after = learner.model.policy.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    for k, v in before.items():
        if v.is_floating_point():
            assert torch.isfinite(after[k]).all(), k
    ckpt = learner.checkpoint()  # never a non-finite checkpoint
    assert ckpt.exists()
    buffer.rewards[: buffer.size()] = 0.0
    learner.stats.env_steps += 64  # more budget: training resumes
    assert learner.train(max_steps=4) > 0


def test_the_experts_real_lap_is_believed() -> None:
    """The rules accept what the simulator really reports for a finished lap."""
    import gymnasium as gym

    import tm_gym  # noqa: F401  (registers the ids)

    env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    try:
        env.reset(seed=0)
        n, total = 0, 0.0
        info: dict[str, Any] = {}
        while True:
            action = env.unwrapped.expert_action()  # type: ignore[attr-defined]
            _, r, term, trunc, info = env.step(action)
            n, total = n + 1, total + float(r)
            if term or trunc:
                break
    finally:
        env.close()
    assert info["finished"]
    floor = expert_lap_floor("TrackMania-Sim-v0", {})
    stats = {"return": round(total, 4), "finished": True, "lap_time": info["lap_time"]}
    laps = LapRules(min_lap_s=floor, time_step_s=0.05)
    assert check_episode(stats, n_steps=n, reward_sum=total, laps=laps) == info["lap_time"]


class _FakeLink:
    """What the worker's inbox reads: queued raw messages."""

    def __init__(self, items: list[bytes]) -> None:
        self.items = items

    def receive_all(self) -> list[bytes]:
        items, self.items = self.items, []
        return items

    def receive(self, timeout: float | None = None) -> bytes:
        raise TimeoutError


def test_a_disconnected_worker_stops_with_a_clear_error() -> None:
    from tm_dist.roles import WorkerReport, _WorkerInbox
    from tm_dist.transport import DisconnectedError
    from tm_dist.wire import Disconnect, encode_message

    rollout = Rollout("w-3", test_every=10**6)
    other = encode_message(Disconnect(worker="w-4", reason="12 of its chunks were invalid"))
    mine = encode_message(Disconnect(worker="w-3", reason="12 of its chunks were invalid"))
    inbox = _WorkerInbox(_FakeLink([other]), rollout, WorkerReport(), "w-3")  # type: ignore[arg-type]
    inbox.poll(0.0)  # another worker's: ignored
    inbox = _WorkerInbox(_FakeLink([mine]), rollout, WorkerReport(), "w-3")  # type: ignore[arg-type]
    with pytest.raises(DisconnectedError, match=r"w-3.*12 of its chunks"):
        inbox.poll(0.0)


def test_honest_unfinished_episodes_report_no_lap(episodes: list[list[EpisodeChunk]]) -> None:
    """tm-gym reports lap_time = +inf until the finish: a worker sends None, not infinity."""
    finals = [ep[-1].stats for ep in episodes]
    assert all(not s["finished"] and s["lap_time"] is None for s in finals)


# -- issue 15: poisoned values never persist --------------------------------------------------


def _resumed(tmp_path: Path) -> Learner:
    torch.set_num_threads(1)
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    return Learner(preset, tmp_path, tensorboard=False, device="cpu", seed=1, resume=True)


def _optimizer_tensors(learner: Learner) -> list[torch.Tensor]:
    model = learner.model
    opts = [model.actor.optimizer, model.critic.optimizer]  # type: ignore[attr-defined]
    return [t for o in opts for s in o.state.values() for t in s.values() if t.is_floating_point()]


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def test_non_finite_episode_stats_never_break_a_checkpoint(
    tmp_path: Path, episodes: list[list[EpisodeChunk]], caplog: pytest.LogCaptureFixture
) -> None:
    """A test episode whose stats hold infinity (tm-gym's "no lap yet", as workers of earlier
    versions send it) used to make every later checkpoint fail, so that SIGTERM ended the
    trainer with no checkpoint; a NaN return is refused at ingestion."""
    learner = _learner(tmp_path)
    learner.weights()
    chunks = [dataclasses.replace(c, test=True) for c in episodes[0]]
    with_nan = [*chunks[:-1], dataclasses.replace(chunks[-1], stats={"return": float("nan")})]
    with pytest.raises(InvalidChunkError, match="finite"):
        for chunk in with_nan:
            learner.ingest(chunk)
    stats = {**chunks[-1].stats, "lap_time": float("inf"), "finished": False}
    chunks = [dataclasses.replace(c, episode=c.episode + 1) for c in chunks]
    chunks[-1] = dataclasses.replace(chunks[-1], stats=stats)
    with caplog.at_level(logging.WARNING, logger="tm_dist.learner"):
        for chunk in chunks:
            learner.ingest(chunk)
    ckpt = learner.checkpoint()  # before the fix: InvalidTypeError (inf in the metadata)
    assert ckpt.is_dir()
    assert learner.stats.test_episodes == 1 and learner.stats.non_finite_stats == 1
    assert learner.stats.last_test is not None and learner.stats.last_test["lap_time"] is None
    assert "lap_time=inf" in caplog.text
    assert _resumed(tmp_path).stats.test_episodes == 1


def test_non_finite_optimizer_state_is_never_checkpointed(
    tmp_path: Path, episodes: list[list[EpisodeChunk]]
) -> None:
    """Finite weights with an infinite Adam moment (the weight never moves again) count as
    a diverged state: the last good one is restored before the checkpoint."""
    learner = _learner(tmp_path)
    for ep in episodes[:3]:
        for chunk in ep:
            learner.ingest(chunk)
    assert learner.train(max_steps=4) > 0
    learner._guard.snapshot()  # as after snapshot_every good updates: Adam has moments
    for t in _optimizer_tensors(learner):
        t.fill_(float("inf"))
    assert learner.checkpoint().is_dir()
    resumed = _resumed(tmp_path)
    assert resumed.stats.env_steps == learner.stats.env_steps
    assert _optimizer_tensors(resumed) and _all_finite(_optimizer_tensors(resumed))


def test_a_state_that_stays_non_finite_is_not_checkpointed(
    tmp_path: Path, episodes: list[list[EpisodeChunk]], caplog: pytest.LogCaptureFixture
) -> None:
    """When even the last good state in memory is not finite, nothing is written: the last
    good checkpoint stays, and a resumed trainer starts from it."""
    learner = _learner(tmp_path)
    for chunk in episodes[0]:
        learner.ingest(chunk)
    good = learner.checkpoint()
    for ep in episodes[1:3]:
        for chunk in ep:
            learner.ingest(chunk)
    with torch.no_grad():
        for p in learner.model.policy.parameters():
            p.fill_(float("nan"))
    learner._guard.snapshot()  # the copy in memory is poisoned too
    with caplog.at_level(logging.ERROR, logger="tm_dist.learner"):
        assert learner.checkpoint() == good
    assert learner.stats.refused_checkpoints == 1
    assert "no checkpoint written" in caplog.text
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [good.name]
    resumed = _resumed(tmp_path)
    assert resumed.stats.env_steps == sum(c.n_steps for c in episodes[0])
    assert _all_finite(list(resumed.model.policy.parameters()))


def test_no_good_checkpoint_to_fall_back_on_is_an_error(
    tmp_path: Path, episodes: list[list[EpisodeChunk]]
) -> None:
    from tm_algos.checkpoint import NonFiniteStateError

    learner = _learner(tmp_path)
    with torch.no_grad():
        for p in learner.model.policy.parameters():
            p.fill_(float("nan"))
    learner._guard.snapshot()
    with pytest.raises(NonFiniteStateError, match="NaN or infinity"):
        learner.checkpoint()
    assert not list((tmp_path / "checkpoints").glob("step-*"))


def _edit_meta(ckpt: Path, edit: Any) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    edit(state["meta"])
    (ckpt / "state.json").write_text(json.dumps(state))


def _set_stat(key: str, value: Any) -> Any:
    return lambda meta: meta["learner"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set_stat("env_steps", "abc"), r"\['env_steps'\] = 'abc': expected an int >= 0"),
        (_set_stat("env_steps", -3), r"\['env_steps'\] = -3"),
        (_set_stat("train_steps", 2.5), r"\['train_steps'\] = 2.5"),
        (_set_stat("best_lap", "fast"), r"\['best_lap'\] = 'fast'"),
        (_set_stat("episodes_by_worker", {"w": -1}), r"\['episodes_by_worker'\]"),
        (_set_stat("banned_workers", "w-1"), r"\['banned_workers'\] = 'w-1'"),
        (lambda meta: meta["learner"].pop("env_steps"), r"has no \['env_steps'\]"),
        (lambda meta: meta.pop("learner"), r"meta\['learner'\] = None"),
        (lambda meta: meta.__setitem__("version", "v2"), r"meta\['version'\] = 'v2'"),
    ],
    ids=["str", "negative", "float", "lap", "by-worker", "banned", "missing", "none", "version"],
)
def test_resume_validates_the_checkpoints_metadata(
    tmp_path: Path, episodes: list[list[EpisodeChunk]], edit: Any, match: str
) -> None:
    from tm_algos.checkpoint import CheckpointError

    learner = _learner(tmp_path)
    for chunk in episodes[0]:
        learner.ingest(chunk)
    ckpt = learner.checkpoint()
    _edit_meta(ckpt, edit)
    with pytest.raises(CheckpointError, match=match) as info:
        _resumed(tmp_path)
    assert str(ckpt / "state.json") in str(info.value)
    assert "delete its checkpoint directory" in str(info.value)  # the fix


def test_every_learner_statistic_is_validated_on_resume() -> None:
    from tm_dist.learner import _META_RULES, LearnerStats

    assert {str(f.type) for f in dataclasses.fields(LearnerStats)} <= set(_META_RULES)
