"""``tm-gym record`` end to end on the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tm_gym.cli.main import main
from tm_gym.recording import load_recording
from tm_gym.recording.replay import ReplayEnv


def test_record_expert_and_random(tmp_path: Path) -> None:
    out = tmp_path / "e.tmrec"
    code = main(
        ["record", "--out", str(out), "--obs-type", "lidar", "--max-steps", "20", "--episodes", "2"]
    )
    assert code == 0
    rec = load_recording(out)
    assert rec.num_episodes == 2 and rec.num_steps == 40
    assert rec.meta["backend"] == "sim" and rec.meta["track"] == "default"
    env = ReplayEnv(out)
    obs, _ = env.reset()
    assert env.observation_space.contains(obs)
    out2 = tmp_path / "r.tmrec"
    code = main(["record", "--out", str(out2), "--driver", "random", "--max-steps", "5"])
    assert code == 0
    assert load_recording(out2).frames.shape == (6, 1, 64, 64)
    assert np.all(np.abs(load_recording(out2).actions) <= 1)


def test_record_usage_errors(tmp_path: Path) -> None:
    assert main(["record", "--out", str(tmp_path / "x.npz")]) == 2
    assert main(["record", "--out", str(tmp_path / "x.tmrec"), "--backend", "game"]) == 2
    assert (
        main(["record", "--out", str(tmp_path / "x.tmrec"), "--realtime", "--backend", "game"]) == 2
    )
    assert not (tmp_path / "x.tmrec").exists()
