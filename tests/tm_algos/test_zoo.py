"""The RL Baselines3 Zoo trains on TrackMania-Sim-v0 with tm-algos' tables (tm_algos.zoo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tm_algos.factory import policy_kwargs_of
from tm_algos.presets import load_preset
from tm_algos.zoo import ENV_IDS, zoo_hyperparams

pytest.importorskip("rl_zoo3")


@pytest.mark.parametrize(
    ("algo", "preset"), [("sac", "lidar-sac"), ("tqc", "lidar-tqc"), ("ppo", "images-ppo")]
)
def test_tables_come_from_the_presets(algo: str, preset: str) -> None:
    import importlib

    table = importlib.import_module(f"tm_algos.zoo.{algo}").hyperparams
    assert set(table) == set(ENV_IDS)
    entry = table["TrackMania-Sim-v0"]
    p = load_preset(preset)
    assert entry["policy"] == "MultiInputPolicy"  # the Zoo's default MlpPolicy cannot read Dicts
    assert entry["env_kwargs"]["obs_type"] == p.env.obs_type
    assert entry["n_envs"] == p.env.n_envs
    for key, value in p.algo.hyperparameters.items():
        assert entry[key] == value
    assert entry["policy_kwargs"] == policy_kwargs_of(p)
    assert zoo_hyperparams(preset) == table


def zoo_train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rl_zoo3.train",
            *("--algo", "sac", "--env", "TrackMania-Sim-v0", "--gym-packages", "tm_gym"),
            *("-n", "200", "--seed", "0", "--eval-freq", "-1", "--log-folder", str(tmp_path)),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow  # a Zoo run in its own interpreter
def test_the_zoo_trains_sac_with_the_table(tmp_path: Path) -> None:
    done = zoo_train(
        tmp_path,
        *("--conf-file", "tm_algos.zoo.sac"),
        *("--hyperparams", "learning_starts:50", "n_envs:1", "batch_size:32"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "sac" / "TrackMania-Sim-v0_1" / "TrackMania-Sim-v0.zip").is_file()
