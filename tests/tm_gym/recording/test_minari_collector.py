"""Minari's own DataCollector records tm-gym episodes with their infos (record_infos=True)
and reads them back: every info value has a fixed type from the first step (lap_time is a
float, +inf until the finish)."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import tm_gym  # noqa: F401  (registers the ids)

minari = pytest.importorskip("minari")


@pytest.mark.filterwarnings("ignore::UserWarning:minari")  # advice about optional metadata
# Minari 0.5.4 replaces its TemporaryDirectory after moving the files out of it, without cleaning
# the old one up: Python then warns when that object is collected.
@pytest.mark.filterwarnings("ignore:Implicitly cleaning up:ResourceWarning")
def test_data_collector_records_infos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = minari.DataCollector(
        gym.make("TrackMania-Sim-v0", obs_type="lidar", ep_max_length=30), record_infos=True
    )
    try:
        for episode in range(2):
            env.reset(seed=episode)
            for _ in range(30):
                _, _, terminated, truncated, _ = env.step(np.array([1.0, 0.0, 0.0], np.float32))
                if terminated or truncated:
                    break
        dataset = env.create_dataset(
            "tmgym/collector-test-v0",
            algorithm_name="full gas",
            author="TrackMaster tests",
            author_email="tests@trackmaster.invalid",
            code_permalink="https://trackmaster.invalid/tests/tm_gym/recording",
            description="Full gas on the default track, recorded by Minari's DataCollector.",
        )
    finally:
        env.close()
    episodes = list(dataset.iterate_episodes())
    assert len(episodes) == 2
    infos = episodes[0].infos
    assert infos["lap_time"].dtype == np.float64 and np.all(infos["lap_time"] == math.inf)
    assert infos["race_time"].shape == (31,) and np.all(np.diff(infos["race_time"]) > 0)
    assert infos["position"].shape == (31, 3)
    recovered = dataset.recover_environment()
    try:
        obs, info = recovered.reset(seed=0)
        assert obs["lidar"].shape[-1] == 19 and info["lap_time"] == math.inf
    finally:
        recovered.close()
