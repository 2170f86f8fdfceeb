"""Demonstrations: .tmrec recordings as behaviour-cloning data and replay transitions, and
`tm-train --demos` with clear errors for files that cannot be used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from tm_algos.cli import train as train_cli
from tm_algos.factory import env_kwargs_of, make_model, make_vec_env
from tm_algos.imitation.demos import DemoError, load_demonstrations
from tm_algos.presets import Preset, apply_overrides, load_preset
from tm_gym.recording import builtin_recording, load_recording

torch.set_num_threads(1)

LIDAR_DEMO = builtin_recording("sim-default-expert-lidar")
TINY = [
    "policy.net_arch=[16, 16]",
    "algo.hyperparameters.learning_starts=50",
    "algo.hyperparameters.buffer_size=5000",
]


def lidar_model() -> tuple[Preset, BaseAlgorithm]:
    preset = apply_overrides(load_preset("lidar-sac"), TINY)
    return preset, make_model(preset, make_vec_env(preset, n_envs=1), seed=0)


def test_a_recording_becomes_labelled_observations_and_transitions() -> None:
    preset, model = lidar_model()
    rec = load_recording(LIDAR_DEMO)
    demos = load_demonstrations([LIDAR_DEMO], model.observation_space, env_kwargs_of(preset))
    assert demos.num_steps == rec.num_steps == len(demos.dataset)
    # each observation is labelled with the action the recorded driver took next
    np.testing.assert_array_equal(demos.dataset.labels[: rec.num_steps], rec.actions)
    ep = demos.episodes[0]
    np.testing.assert_array_equal(ep.observations[1]["actions"][-1], rec.actions[0])
    added = demos.fill_replay_buffer(model)
    buffer = getattr(model, "replay_buffer", None)
    assert added == rec.num_steps and buffer is not None and buffer.size() == added


def test_a_corrupt_file_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tmrec"
    bad.write_bytes(b"not a zip at all")
    _, model = lidar_model()
    with pytest.raises(DemoError, match=r"broken\.tmrec.*cannot be replayed"):
        load_demonstrations([bad], model.observation_space, {"obs_type": "lidar"})
    with pytest.raises(DemoError, match=r"missing\.tmrec' does not exist"):
        load_demonstrations([tmp_path / "missing.tmrec"], model.observation_space, {})


def test_a_recording_that_cannot_give_the_observations_is_refused() -> None:
    preset = apply_overrides(load_preset("images-sac"), ["algo.hyperparameters.buffer_size=1000"])
    model = make_model(preset, make_vec_env(preset, n_envs=1), seed=0)
    # a LIDAR recording without frames cannot give image observations
    with pytest.raises(DemoError, match=r"sim-default-expert-lidar\.tmrec.*cannot be replayed"):
        load_demonstrations([LIDAR_DEMO], model.observation_space, env_kwargs_of(preset))


def test_tm_train_demos_with_a_bad_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "corrupt.tmrec"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code = train_cli.main(
        [
            "lidar-sac",
            "--run-dir",
            str(tmp_path / "run"),
            "--steps",
            "10",
            "--no-tensorboard",
            "--threads",
            "1",
            "--demos",
            str(bad),
            *[f"--set={o}" for o in TINY],
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "corrupt.tmrec" in err


def test_tm_train_demos_pretrains_then_trains(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = train_cli.main(
        [
            "lidar-sac",
            "--run-dir",
            str(run),
            "--steps",
            "200",
            "--eval-every",
            "100",
            "--no-tensorboard",
            "--threads",
            "1",
            "--demos",
            str(LIDAR_DEMO),
            *[f"--set={o}" for o in TINY],
        ]
    )
    assert code == 0
    assert (run / "policy" / "policy.json").is_file()
