"""Checkpoints never persist a diverged state, never lose the last good one, and refuse
metadata that is not what was written (issue 15: "poisoned values survive restarts", item 7).

Before: a model with NaN weights or optimizer state was saved as is, the resumed run picked
the newest (NaN) checkpoint, pruning deleted the clean one, and ``state.json`` counters such
as ``num_timesteps = "abc"`` or ``-5`` were accepted silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch as th
from safetensors.torch import load_file, save_file
from stable_baselines3 import SAC

import tm_gym  # noqa: F401  (registers the environments)
from tm_algos.checkpoint import (
    STATE_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from tm_algos.extractors import policy_kwargs_for


def make_sac() -> SAC:
    kwargs = policy_kwargs_for("lidar", hidden=(8,))
    kwargs["net_arch"] = [8]
    return SAC(
        "MultiInputPolicy",
        gym.make("TrackMania-Sim-v0", obs_type="lidar"),
        buffer_size=60,
        learning_starts=20,
        batch_size=8,
        seed=0,
        policy_kwargs=kwargs,
    )


@pytest.fixture(scope="module")
def trained() -> SAC:
    th.set_num_threads(1)
    model = make_sac()
    model.learn(40)  # some gradient steps: Adam has moments
    return model


def _poison_weights(path: Path) -> None:
    """What an older tm-algos wrote for a diverged model: NaN weights, consistent hashes."""
    tensors = load_file(str(path / WEIGHTS_NAME))
    name = next(k for k in tensors if k.startswith("policy/actor.") and k.endswith("weight"))
    tensors[name] = th.full_like(tensors[name], math.nan)
    save_file(tensors, str(path / WEIGHTS_NAME))
    state = json.loads((path / STATE_NAME).read_text())
    data = (path / WEIGHTS_NAME).read_bytes()
    state["files"][WEIGHTS_NAME] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / STATE_NAME).write_text(json.dumps(state))


def _steps(model: SAC, n: int) -> SAC:
    model.num_timesteps = n
    return model


def test_nan_weights_are_never_saved(trained: SAC, tmp_path: Path) -> None:
    good = save_checkpoint(_steps(trained, 40), tmp_path / "step-40")
    param = next(iter(trained.actor.parameters()))
    before = param.detach().clone()
    try:
        with th.no_grad():
            param[0] = math.nan
        with pytest.raises(CheckpointError, match=r"NaN or infinity.*policy/actor") as info:
            save_checkpoint(_steps(trained, 80), tmp_path / "step-80")
        assert type(info.value).__name__ == "NonFiniteStateError"
    finally:
        with th.no_grad():
            param.copy_(before)
        trained.num_timesteps = 40
    assert not (tmp_path / "step-80").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["step-40"]  # nothing half-written
    assert latest_checkpoint(tmp_path) == good


def test_nan_optimizer_state_is_never_saved(trained: SAC, tmp_path: Path) -> None:
    opt = trained.critic.optimizer
    state = next(iter(opt.state.values()))
    before = state["exp_avg_sq"].clone()
    try:
        state["exp_avg_sq"].fill_(math.inf)
        with pytest.raises(CheckpointError, match=r"critic\.optimizer"):
            save_checkpoint(trained, tmp_path / "ckpt")
    finally:
        state["exp_avg_sq"].copy_(before)
    assert not (tmp_path / "ckpt").exists()


def test_resume_and_pruning_keep_the_last_good_checkpoint(trained: SAC, tmp_path: Path) -> None:
    good = save_checkpoint(_steps(trained, 100), tmp_path / "step-100")
    for n in (200, 300):  # two newer checkpoints holding NaN (written by an older version)
        _poison_weights(save_checkpoint(_steps(trained, n), tmp_path / f"step-{n}"))
    trained.num_timesteps = 40
    assert latest_checkpoint(tmp_path) == good  # the resumed run starts from the good one
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-100", "step-300"]
    fresh = make_sac()
    load_checkpoint(fresh, latest_checkpoint(tmp_path))  # type: ignore[arg-type]
    assert fresh.num_timesteps == 100
    assert all(th.isfinite(p).all() for p in fresh.policy.parameters())


def test_is_good_checkpoint(trained: SAC, tmp_path: Path) -> None:
    from tm_algos.checkpoint import is_good_checkpoint

    good = save_checkpoint(_steps(trained, 100), tmp_path / "good")
    bad = save_checkpoint(_steps(trained, 100), tmp_path / "bad")
    trained.num_timesteps = 40
    _poison_weights(bad)
    assert is_good_checkpoint(good) and not is_good_checkpoint(bad)
    assert not is_good_checkpoint(tmp_path / "nothing")


def test_a_damaged_newest_checkpoint_is_skipped(trained: SAC, tmp_path: Path) -> None:
    good = save_checkpoint(_steps(trained, 100), tmp_path / "step-100")
    bad = save_checkpoint(_steps(trained, 200), tmp_path / "step-200")
    trained.num_timesteps = 40
    data = bytearray((bad / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF  # same size, other hash: "complete", but it would not load
    (bad / WEIGHTS_NAME).write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path) == good
    prune_checkpoints(tmp_path, keep=1)
    assert good.exists()


@pytest.fixture(scope="module")
def saved(trained: SAC, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(_steps(trained, 40), tmp_path_factory.mktemp("c") / "ckpt")


def _edit(saved: Path, tmp_path: Path, edit: Any) -> Path:
    path = Path(shutil.copytree(saved, tmp_path / "ckpt"))
    state = json.loads((path / STATE_NAME).read_text())
    edit(state)
    (path / STATE_NAME).write_text(json.dumps(state))
    return path


def _set(key: str, value: Any) -> Any:
    return lambda state: state["counters"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set("num_timesteps", "abc"), r"counters\['num_timesteps'\] = 'abc': expected an int"),
        (_set("num_timesteps", -5), r"counters\['num_timesteps'\] = -5: expected an int >= 0"),
        (_set("num_timesteps", 1.5), r"'num_timesteps'\] = 1.5"),
        (_set("_n_updates", True), r"'_n_updates'\] = True"),
        (_set("_episode_num", [3]), r"'_episode_num'\] = \[3\]"),
        (_set("_current_progress_remaining", None), r"'_current_progress_remaining'\] = None"),
        (lambda s: s["counters"].pop("num_timesteps"), "no 'num_timesteps'"),
        (lambda s: s.__setitem__("counters", [1]), "counters is"),
        (lambda s: s.__setitem__("meta", "abc"), "meta is 'abc'"),
    ],
    ids=["str", "negative", "float", "bool", "list", "null", "missing", "counters", "meta"],
)
def test_bad_metadata_is_refused_with_the_key_and_the_value(
    saved: Path, tmp_path: Path, edit: Any, match: str
) -> None:
    path = _edit(saved, tmp_path, edit)
    model = make_sac()
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(model, path)
    assert str(path / STATE_NAME) in str(info.value)
    assert "another checkpoint" in str(info.value)  # the fix
    assert model.num_timesteps == 0  # left untouched
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))


def test_a_checkpoint_with_a_bad_step_count_is_not_resumed_from(
    saved: Path, tmp_path: Path
) -> None:
    _edit(saved, tmp_path, _set("num_timesteps", "abc"))
    assert latest_checkpoint(tmp_path) is None
