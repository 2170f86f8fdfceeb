"""Clear errors on a machine without the game: TrackMania-v0 points to the simulator and gives one
instruction for a missing reward file."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import tm_gym  # noqa: F401  (registers the environments)
from tm_gym.backends.game import NO_GAME_HINT, REWARD_FIX
from tm_gym.error import (
    BackendUnavailableError,
    CaptureError,
    TelemetryError,
    TrajectoryFormatError,
)
from tm_gym.reward import ReferenceTrajectory


def test_no_reward_trajectory_names_the_simulator_and_the_recording() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        gym.make("TrackMania-v0")
    text = str(info.value)
    assert "TrackMania-Sim-v0" in text and "tm-gym install-plugin" in text
    assert REWARD_FIX in text


def test_missing_reward_file_gives_the_same_instruction(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError) as info:
        gym.make("TrackMania-v0", reward_trajectory=str(tmp_path / "none.npz"))
    assert REWARD_FIX in str(info.value) and "none.npz" in str(info.value)


def test_tmrl_pickle_is_not_loaded_but_explained(tmp_path: Path) -> None:
    pkl = tmp_path / "reward.pkl"
    pkl.write_bytes(pickle.dumps(np.zeros((3, 3))))
    with pytest.raises(TrajectoryFormatError, match="tm-gym import-tmrl --reward"):
        gym.make("TrackMania-v0", reward_trajectory=str(pkl))


def test_reset_without_game_says_where_the_simulator_is(tmp_path: Path) -> None:
    ref = ReferenceTrajectory.from_polyline(np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]))
    path = ref.save(tmp_path / "ref.npz")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = gym.make(
        "TrackMania-v0",
        reward_trajectory=str(path),
        telemetry_port=port,
        telemetry_timeout=0.3,
        controller="none",
        obs_type="lidar",
    )
    try:
        with pytest.raises((CaptureError, TelemetryError)) as info:  # no window or no plugin
            env.reset()
        assert NO_GAME_HINT in str(info.value)
    finally:
        env.close()
