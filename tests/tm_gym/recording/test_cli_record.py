"""``tm-gym record`` end to end on the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def test_person_drivers_are_checked_against_the_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.tmrec")
    ref = ["--reward-trajectory", str(tmp_path / "reward.npz")]
    cases = [
        (["--backend", "sim", "--driver", "gamepad"], "is for the game or the emulator"),
        (["--backend", "sim", "--driver", "person"], "is for the game or the emulator"),
        (["--backend", "emulator", "--driver", "gamepad", *ref], "reads the keyboard only"),
        (["--backend", "game", "--driver", "expert", *ref], "needs --backend sim"),
        (["--backend", "game", "--driver", "gamepad"], "needs --reward-trajectory"),
    ]
    for argv, message in cases:
        assert main(["record", "--out", out, *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "x.tmrec").exists()


def test_the_driver_is_kept_in_the_notes(tmp_path: Path) -> None:
    out = tmp_path / "n.tmrec"
    argv = ["record", "--out", str(out), "--obs-type", "lidar", "--max-steps", "3"]
    assert main([*argv, "--driver", "random", "--notes", "lap 1"]) == 0
    assert load_recording(out).meta["notes"] == "driver: random; lap 1"
