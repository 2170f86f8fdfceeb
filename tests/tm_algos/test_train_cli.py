"""``tm-train`` end to end: run directory layout, resume, Ctrl-C, budgets, errors, --evaluate.

Each run trains lidar-sac with tiny networks and one car for a few hundred steps.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tm_algos.callbacks import EvalCallback, EvalRecord
from tm_algos.checkpoint import BUFFER_NAME, STATE_NAME, WEIGHTS_NAME, latest_checkpoint
from tm_algos.cli import train as train_cli
from tm_algos.policy import load_policy
from tm_algos.presets import list_presets
from tm_algos.training import RUN_FORMAT

HP = "algo.hyperparameters"
TINY = [
    *("--set", f"{HP}.learning_starts=50"),
    *("--set", f"{HP}.batch_size=32"),
    *("--set", f"{HP}.buffer_size=5000"),
    *("--set", "policy.net_arch=[32,32]"),
    *("--n-envs", "1"),
    *("--threads", "1"),
    *("--env-kwarg", "ep_max_length=200"),
]
"""Cheap lidar-sac: early updates on small batches, small networks, one car, short episodes."""
QUIET = ["--eval-every", "1000000", "--checkpoint-every", "1000000", "--no-tensorboard"]
"""No periodic evaluation, checkpoint or TensorBoard: only the final save."""


@pytest.fixture(scope="module", autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # --threads 1 changes it for the whole process


def tm_train(*args: str) -> int:
    try:
        return train_cli.main(["lidar-sac", *args])
    except KeyboardInterrupt:
        pytest.fail("tm-train let a KeyboardInterrupt escape instead of saving and exiting 130")


def one_line(text: str) -> str:
    """Rich wraps long messages; compare them as one line."""
    return " ".join(text.split())


def step_of(checkpoint: Path | None) -> int:
    assert checkpoint is not None, "no complete checkpoint"
    return int(checkpoint.name.removeprefix("step-"))


def assert_complete_checkpoint(path: Path) -> None:
    for name in (STATE_NAME, WEIGHTS_NAME, BUFFER_NAME):
        assert (path / name).is_file(), f"{path} lacks {name}"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 steps with evaluations and checkpoints every 200, then ``--evaluate 1``."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code = tm_train(
        "--run-dir",
        str(run_dir),
        *TINY,
        *("--env-kwarg", "track=technical"),
        *("--steps", "400", "--eval-every", "200", "--checkpoint-every", "200"),
        *("--evaluate", "1"),
    )
    assert code == 0
    return run_dir


@pytest.mark.slow  # the run fixture trains through tm-train
def test_run_json_records_the_resolved_preset(run: Path) -> None:
    info = json.loads((run / "run.json").read_text())
    assert info["format"] == RUN_FORMAT
    assert info["preset_name"] == "lidar-sac"
    preset = info["preset"]
    assert preset["algo"]["name"] == "sac"
    assert preset["algo"]["hyperparameters"]["batch_size"] == 32  # the --set overrides
    assert preset["policy"]["net_arch"] == [32, 32]
    assert info["n_envs"] == 1
    assert info["env_kwargs"] == {"ep_max_length": 200, "track": "technical"}
    assert info["seed"] == 0


@pytest.mark.slow  # the run fixture trains through tm-train
@pytest.mark.parametrize("folder", ["policy", "best"])
def test_policies_load_and_remember_the_track(run: Path, folder: str) -> None:
    assert (run / folder / "policy.json").is_file()
    assert (run / folder / "policy.safetensors").is_file()
    policy = load_policy(run / folder)
    settings = policy.config["env_settings"]
    assert settings["track"] == "technical"
    assert settings["obs_type"] == "lidar" and settings["ep_max_length"] == 200


@pytest.mark.slow  # the run fixture trains through tm-train
def test_checkpoints_evaluations_and_tensorboard(run: Path) -> None:
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-0000000200", "step-0000000400"]
    for c in checkpoints:
        assert_complete_checkpoint(c)
    assert latest_checkpoint(run / "checkpoints") == checkpoints[-1]
    evaluations = json.loads((run / "evaluations.json").read_text())
    assert [e["timesteps"] for e in evaluations] == [200, 400]
    best = json.loads((run / "best" / "evaluation.json").read_text())
    assert best["timesteps"] in (200, 400)
    assert list((run / "tb").rglob("events.out.tfevents.*")), "no TensorBoard events file"


@pytest.mark.slow  # the run fixture trains through tm-train
def test_evaluate_writes_the_report_and_the_map(run: Path) -> None:
    report = json.loads((run / "eval" / "eval.json").read_text())
    assert report["n_episodes"] == 1
    assert report["env_kwargs"]["track"] == "technical"
    assert report["policy"] == str((run / "best").resolve())
    assert (run / "eval" / "trajectory.png").stat().st_size > 0
    video = report["outputs"]["video"]  # optional: needs imageio-ffmpeg or pillow
    assert video is None or Path(video).is_file()


def test_list_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli.main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        assert name in out


@pytest.mark.slow  # the run fixture trains through tm-train
def test_a_second_run_in_the_same_directory_needs_resume(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (run / "run.json").read_text()
    assert tm_train("--run-dir", str(run), *TINY, "--steps", "100") == 2
    assert "pass --resume" in one_line(capsys.readouterr().err)
    assert (run / "run.json").read_text() == before


@pytest.mark.slow  # the run fixture trains through tm-train
def test_resume_continues_from_the_last_checkpoint(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    old = step_of(latest_checkpoint(copy / "checkpoints"))
    first_eval = (copy / "eval" / "eval.json").read_bytes()
    resumed = ("--run-dir", str(copy), "--resume", "--threads", "1", "--steps", "600")
    assert tm_train(*resumed, "--evaluate", "1") == 0
    # the second evaluation goes next to the first one, which stays as it was
    assert (copy / "eval" / "eval.json").read_bytes() == first_eval
    assert json.loads((copy / "eval-2" / "eval.json").read_text())["n_episodes"] == 1
    new = latest_checkpoint(copy / "checkpoints")
    assert step_of(new) == 600 > old
    assert new is not None
    assert_complete_checkpoint(new)
    state = json.loads((new / STATE_NAME).read_text())
    assert state["counters"]["num_timesteps"] == 600
    assert (copy / "run.json").read_text() == (run / "run.json").read_text()
    history = json.loads((copy / "evaluations.json").read_text())
    assert [e["timesteps"] for e in history][:2] == [200, 400]  # the earlier ones are kept
    assert load_policy(copy / "policy").config["env_settings"]["track"] == "technical"


def test_resume_of_an_empty_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tm_train("--run-dir", str(tmp_path / "nothing"), "--resume") == 2
    err = one_line(capsys.readouterr().err)
    assert "run.json" in err and "does not exist" in err


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (f"{HP}.gama=0.9", "'gama'"),
        ("policy.net_arch=big", "policy.net_arch"),
    ],
)
def test_a_bad_override_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, named: str
) -> None:
    run_dir = tmp_path / "bad"
    assert tm_train("--run-dir", str(run_dir), "--set", override) == 2
    assert named in one_line(capsys.readouterr().err)
    assert not (run_dir / "run.json").exists()


def test_ctrl_c_saves_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: train_cli.RichProgress) -> bool:
        if self.num_timesteps >= 100:
            raise KeyboardInterrupt  # as Ctrl-C during training
        return True

    monkeypatch.setattr(train_cli.RichProgress, "_on_step", interrupted)
    run_dir = tmp_path / "run"
    assert tm_train("--run-dir", str(run_dir), *TINY, *QUIET, "--steps", "5000") == 130
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert step_of(checkpoint) == 100
    assert checkpoint is not None
    assert_complete_checkpoint(checkpoint)
    assert load_policy(run_dir / "policy").config["algorithm"] == "SAC"


@pytest.mark.timeout(120)  # without the time budget the run would go on for ages
def test_minutes_stops_on_time(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    steps = 10_000_000
    code = tm_train(
        "--run-dir", str(run_dir), *TINY, *QUIET, "--steps", str(steps), "--minutes", "0.02"
    )
    assert code == 0
    stopped = step_of(latest_checkpoint(run_dir / "checkpoints"))
    assert 0 < stopped < steps // 100


def test_stop_at_lap_stops_after_a_fast_enough_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    laps: list[int] = []

    def fast_lap(self: EvalCallback, index: int) -> EvalRecord:
        laps.append(self.num_timesteps)
        return EvalRecord(
            timesteps=self.num_timesteps,
            wall_s=1.0,
            episode_return=150.0,
            progress=1.0,
            finished=True,
            lap_time=30.0,
            wall_contacts=0,
        )

    monkeypatch.setattr(EvalCallback, "run_episode", fast_lap)
    run_dir = tmp_path / "run"
    args: Sequence[str] = (*TINY, "--no-tensorboard", "--checkpoint-every", "1000000")
    code = tm_train(
        "--run-dir",
        str(run_dir),
        *args,
        "--steps",
        "100000",
        "--eval-every",
        "100",
        "--stop-at-lap",
        "40",
    )
    assert code == 0
    assert laps == [100]
    assert step_of(latest_checkpoint(run_dir / "checkpoints")) == 100
    best: dict[str, Any] = json.loads((run_dir / "best" / "evaluation.json").read_text())
    assert best["finished"] and best["lap_time"] == 30.0


class _Stats:
    """What RichProgress reads of the trainer's episode statistics."""

    def __init__(self, best_training_lap: float) -> None:
        self.stats = SimpleNamespace(
            episodes=3, last_return=1.5, last_progress=0.4, best_lap=best_training_lap
        )


def test_the_live_line_shows_the_evaluations_and_the_bar_follows_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console
    from rich.progress import Progress

    clock = [1000.0]
    monkeypatch.setattr(train_cli.time, "perf_counter", lambda: clock[0])
    console = Console(file=io.StringIO(), width=200)
    trainer = SimpleNamespace(evaluator=None)
    with Progress(console=console) as progress:
        bar = train_cli.RichProgress(progress, 1_000_000, _Stats(31.0), trainer, minutes=10.0)
        bar.refresh()
        assert "best eval" not in progress.tasks[0].fields["info"]  # no evaluation yet
        clock[0] += 150.0  # a quarter of the 10 minutes, few steps: the time budget leads
        bar.num_timesteps = 20_000
        best = EvalRecord(
            timesteps=20_000,
            wall_s=140.0,
            episode_return=50.0,
            progress=1.0,
            finished=True,
            lap_time=42.5,
            wall_contacts=0,
        )
        trainer.evaluator = SimpleNamespace(best=best)
        bar.refresh()
        info = progress.tasks[0].fields["info"]
        assert progress.tasks[0].completed == 250
        assert "best eval lap 42.500 s" in info and "31.000" not in info  # not a training lap
        assert "20,000/1,000,000 steps" in info
        bar.num_timesteps = 900_000  # now the steps lead
        bar.refresh()
        assert progress.tasks[0].completed == 900
