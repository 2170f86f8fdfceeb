"""Evaluation: the expert finishes, standing still does not, and ``tm-eval`` writes its files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from stable_baselines3 import SAC

import tm_gym  # noqa: F401  (registers the environments)
from tm_algos.cli.eval import main, parse_env_kwargs, save_best_episode
from tm_algos.evaluation import EpisodeResult, EvalReport, evaluate, policy_env_settings
from tm_algos.policy import JSON_NAME, export_policy, load_policy

EXPERT_LAP_S = 39.934  # the expert's own lap on the default track (tm-gym tracks)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class ExpertPolicy:
    """The simulator's scripted expert as a callable obs -> action (it reads the env's state)."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.env = env

    def __call__(self, obs: Any) -> NDArray[np.float32]:
        action: NDArray[np.float32] = self.env.unwrapped.expert_action()  # type: ignore[attr-defined]
        return action


@pytest.fixture(scope="module")
def expert_report() -> EvalReport:
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar", render_mode="rgb_array")
    try:
        return evaluate(ExpertPolicy(env), env=env, n_episodes=2, seed=3)
    finally:
        env.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run directory holding an untrained (0 steps) SAC LIDAR policy in policy/."""
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    model = SAC(
        "MultiInputPolicy", env, buffer_size=100, policy_kwargs={"net_arch": [16, 16]}, seed=0
    )
    run = tmp_path_factory.mktemp("run")
    export_policy(model, run / "policy")
    env.close()
    return run


def _zero(obs: Any) -> NDArray[np.float32]:
    return np.zeros(3, dtype=np.float32)


# -- evaluate ----------------------------------------------------------------------------------


def test_expert_finishes_every_lap_near_its_reference_time(expert_report: EvalReport) -> None:
    r = expert_report
    assert r.n_episodes == 2
    assert r.finish_rate == 1.0
    assert r.lap_time_best is not None and r.lap_time_mean is not None
    assert abs(r.lap_time_best - EXPERT_LAP_S) < 0.5
    assert r.lap_time_std == pytest.approx(0.0, abs=1e-9)  # the simulator is deterministic
    assert r.crashes == 0
    assert [e.seed for e in r.episodes] == [3, 4]
    assert all(e.progress == 1.0 and not e.failed and not e.truncated for e in r.episodes)
    assert all(e.episode_return > 100 for e in r.episodes)  # progress plus the finish bonus


def test_expert_best_trace_has_one_sample_per_observation(expert_report: EvalReport) -> None:
    trace = expert_report.best
    assert trace is not None and trace.index == 0  # equal laps: the first one wins
    steps = expert_report.episodes[0].steps
    assert trace.positions.shape == (steps + 1, 2)
    assert trace.speeds_kmh.shape == trace.race_times.shape == (steps + 1,)
    assert trace.frames is not None and trace.frames.shape == (steps + 1, 128, 256, 3)
    assert trace.frames.dtype == np.uint8
    track = trace.track
    assert np.linalg.norm(trace.positions[0] - track.start_xy) < 5.0
    assert np.linalg.norm(trace.positions[-1] - track.finish_xy) < 10.0
    assert trace.speeds_kmh.max() > 150.0
    assert np.all(np.diff(trace.race_times) > 0)


@pytest.mark.slow  # renders the map
def test_save_best_episode_draws_the_map(expert_report: EvalReport, tmp_path: Path) -> None:
    files = save_best_episode(expert_report, tmp_path / "out", video=False)
    assert set(files) == {"map"}
    assert files["map"].read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "out").glob("best_lap.*"))


def test_standing_still_never_finishes() -> None:
    r = evaluate(_zero, env_kwargs={"obs_type": "lidar"}, n_episodes=2, keep_best=False)
    assert r.finish_rate == 0.0
    assert r.lap_time_mean is None and r.lap_time_std is None and r.lap_time_best is None
    assert r.best is None
    assert r.crashes == 0
    assert all(e.failed and e.lap_time is None and e.progress < 0.01 for e in r.episodes)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["lap_time_best"] is None and data["finish_rate"] == 0.0
    assert data["env_kwargs"] == {"obs_type": "lidar"}
    assert len(data["episodes"]) == 2


def test_driving_into_a_wall_counts_as_a_crash() -> None:
    def hard_right(obs: Any) -> NDArray[np.float32]:
        return np.array([1.0, 0.0, 1.0], dtype=np.float32)

    r = evaluate(hard_right, env_kwargs={"obs_type": "lidar"}, n_episodes=1, keep_best=False)
    (e,) = r.episodes
    assert e.crashed and e.wall_contacts > 0 and r.crashes == 1
    assert not e.finished


def _episode(index: int, lap: float | None, progress: float) -> EpisodeResult:
    return EpisodeResult(
        index=index,
        seed=index,
        episode_return=0.0,
        steps=10,
        finished=lap is not None,
        lap_time=lap,
        progress=1.0 if lap is not None else progress,
        crashed=False,
        wall_contacts=0,
        failed=lap is None,
        truncated=False,
        race_time=0.5,
    )


def test_report_statistics_and_best_episode() -> None:
    mixed = EvalReport(
        (_episode(0, None, 0.9), _episode(1, 42.0, 0), _episode(2, 40.0, 0)),
        env_id="x",
        env_kwargs={},
        deterministic=True,
    )
    assert mixed.finish_rate == pytest.approx(2 / 3)
    assert mixed.lap_time_best == 40.0
    assert mixed.lap_time_mean == pytest.approx(41.0)
    assert mixed.lap_time_std == pytest.approx(1.0)
    assert mixed.best_index == 2  # the fastest finish, not the furthest progress
    dnf = EvalReport(
        (_episode(0, None, 0.2), _episode(1, None, 0.7), _episode(2, None, 0.4)),
        env_id="x",
        env_kwargs={},
        deterministic=True,
    )
    assert dnf.best_index == 1


def test_loaded_policy_brings_its_env_settings(run_dir: Path) -> None:
    policy = load_policy(run_dir / "policy")
    assert policy_env_settings(policy)["obs_type"] == "lidar"
    # no env_kwargs: the default obs_type ("images") would not match this LIDAR policy
    r = evaluate(policy, n_episodes=1, keep_best=False)
    assert r.env_kwargs["obs_type"] == "lidar"
    assert r.episodes[0].steps > 0
    with pytest.raises(ValueError, match=r"obs_type.*img_size|policy expects observations"):
        evaluate(policy, env_kwargs={"obs_type": "images"}, n_episodes=1, keep_best=False)


def test_sb3_model_is_accepted() -> None:
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar", ep_max_length=30)
    model = SAC("MultiInputPolicy", env, buffer_size=50, policy_kwargs={"net_arch": [8]}, seed=0)
    r = evaluate(model, n_episodes=1, keep_best=False)
    assert r.env_kwargs["ep_max_length"] == 30  # taken from the model's environment
    assert r.episodes[0].steps <= 30
    env.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_episodes": 0}, ValueError, "n_episodes=0"),
        ({"seed": -1}, ValueError, "seed=-1"),
        ({"env_kwargs": {"bogus": 1}}, ValueError, "bogus"),
        ({"env_id": "NoSuchEnv-v9"}, ValueError, "NoSuchEnv-v9"),
    ],
)
def test_bad_arguments_are_explained(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        evaluate(_zero, **kwargs)


def test_a_policy_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        evaluate(42, n_episodes=1)  # type: ignore[arg-type]


# -- tm-eval -------------------------------------------------------------------------------------


@pytest.mark.slow  # writes a video and a map
def test_cli_writes_json_map_and_video(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    code = main([str(run_dir), "--json", "--out", str(out), "--episodes", "2", "--seed", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)  # stdout holds the JSON report and nothing else
    assert report["n_episodes"] == 2
    assert [e["seed"] for e in report["episodes"]] == [5, 6]
    assert report["finish_rate"] == 0.0 and report["lap_time_best"] is None
    assert report["policy"] == str((run_dir / "policy").resolve())
    assert json.loads((out / "eval.json").read_text()) == report
    assert (out / "trajectory.png").read_bytes()[:8] == PNG_MAGIC
    videos = list(out.glob("best_lap.*"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert report["outputs"]["video"] == str(videos[0].resolve())


def test_cli_default_output_is_next_to_the_run(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([str(run_dir), "--episodes", "1", "--no-video", "--env-kwarg", "ep_max_length=20"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "finish rate" in captured.out  # the table
    assert str(run_dir / "eval") in captured.err  # where it wrote
    saved = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert saved["env_kwargs"]["ep_max_length"] == 20
    assert saved["env_kwargs"]["start_jitter"] == 1.0  # tm-eval's default on the simulator
    assert saved["episodes"][0]["steps"] <= 20
    assert saved["outputs"]["video"] is None
    assert not list((run_dir / "eval").glob("best_lap.*"))


def test_cli_bad_policy_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and JSON_NAME in err


def test_cli_broken_policy_file_exits_2(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "policy"
    broken.mkdir()
    (broken / JSON_NAME).write_text("{not json", encoding="utf-8")
    assert main([str(broken)]) == 2
    err = capsys.readouterr().err
    assert JSON_NAME in err and "not valid JSON" in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--env-kwarg", "no_equals_sign"], "KEY=VALUE"),
        (["--env-kwarg", "bogus=1"], "bogus"),
        (["--episodes", "0"], "whole number"),
    ],
)
def test_cli_bad_arguments_exit_2(
    run_dir: Path, args: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(run_dir), "--no-video", *args]) == 2
    assert match in capsys.readouterr().err


def test_parse_env_kwargs_reads_json_then_text() -> None:
    parsed = parse_env_kwargs(["a=1", "b=true", "c=gen:7", "d=null", "e=0.5", "f="])
    assert parsed == {"a": 1, "b": True, "c": "gen:7", "d": None, "e": 0.5, "f": ""}
