"""Tests for the ``tm-gym`` command line (tm_gym.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tm_gym import human
from tm_gym.cli import play
from tm_gym.cli._common import CLIError
from tm_gym.cli.main import build_parser, main
from tm_gym.sim.tracks import builtin_track_names

# --------------------------------------------------------------------------- parsing


def test_drive_defaults() -> None:
    args = build_parser().parse_args(["drive", "--expert", "--out", "somewhere"])
    assert args.command == "drive"
    assert args.expert is True
    assert args.track == "default"
    assert args.out == Path("somewhere")
    assert args.fps == 20
    assert args.scale == 3
    assert not args.json
    assert not args.no_video
    assert not hasattr(args, "debug")


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "drive", "--expert", "--out", "x"],
        ["drive", "--expert", "--out", "x", "--debug"],
    ],
)
def test_debug_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).debug is True


def test_play_and_tracks_options() -> None:
    parser = build_parser()
    play_args = parser.parse_args(["play", "--track", "gen:7", "--scale", "2", "--fps", "30"])
    assert (play_args.track, play_args.scale, play_args.fps) == ("gen:7", 2, 30)
    tracks_args = parser.parse_args(["tracks", "--json", "--no-expert"])
    assert tracks_args.json and tracks_args.no_expert


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["drive", "--out", "x"], "--expert"),
        (["drive", "--expert"], "--out"),
        (["drive", "--expert", "--out", "x", "--fps", "0"], "expected a whole number >= 1"),
        (["drive", "--expert", "--out", "x", "--max-time", "-3"], "expected a finite number > 0"),
        ([], "COMMAND"),
        (["fly"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert needle in captured.err
    assert captured.out == ""


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drive", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--expert" in text
    assert "required" in text


# --------------------------------------------------------------------------- drive


@pytest.mark.slow  # drives a lap and encodes its video
def test_drive_expert_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"
    code = main(["drive", "--expert", "--track", "default", "--out", str(out_dir), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("\n") == 1, "--json must print exactly one line on stdout"
    summary = json.loads(captured.out)
    assert summary["track"] == "default"
    assert summary["finished"] is True
    assert isinstance(summary["lap_time"], float) and summary["lap_time"] > 0
    assert summary["steps"] > 0
    assert summary["max_speed_kmh"] >= summary["mean_speed_kmh"] > 0
    for key, name in (("video", "lap.mp4"), ("map", "trajectory.png"), ("json", "lap.json")):
        path = Path(summary[key])
        assert path == (out_dir / name).resolve()
        assert path.stat().st_size > 0
    assert json.loads((out_dir / "lap.json").read_text(encoding="utf-8")) == summary


def test_drive_expert_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["drive", "--expert", "--out", str(tmp_path), "--no-video"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "FINISHED" in captured.out
    assert not (tmp_path / "lap.mp4").exists()
    summary = json.loads((tmp_path / "lap.json").read_text(encoding="utf-8"))
    assert summary["video"] is None
    assert summary["lap_time_text"] in captured.out
    assert (tmp_path / "trajectory.png").exists()


def test_unknown_track_exits_2_and_lists_tracks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["drive", "--expert", "--track", "no-such-track", "--out", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "no-such-track" in captured.err
    names = builtin_track_names()
    assert names, "the simulator ships built-in tracks"
    for name in names:
        assert name in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err


def test_missing_track_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.json"
    code = main(["drive", "--expert", "--track", str(missing), "--out", str(tmp_path)])
    assert code == 2
    assert "missing.json" in capsys.readouterr().err


def test_debug_reraises(tmp_path: Path) -> None:
    with pytest.raises(CLIError, match="no-such-track"):
        main(["--debug", "drive", "--expert", "--track", "no-such-track", "--out", str(tmp_path)])


# --------------------------------------------------------------------------- tracks


def test_tracks_json_without_expert(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tracks", "--json", "--no-expert"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [record["name"] for record in listing["tracks"]] == list(builtin_track_names())
    for record in listing["tracks"]:
        assert record["length_m"] > 0
        assert record["checkpoints"] >= 0
        assert isinstance(record["description"], str)
        assert "expert_lap_time" not in record


class _FakeLap:
    def __init__(self, track_name: str, finished: bool) -> None:
        self.track_name = track_name
        self.finished = finished
        self.lap_time = 38.42 if finished else None


def test_tracks_table_with_expert(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The expert's times land in the table; a lap it did not finish shows DNF."""
    names = list(builtin_track_names())
    calls: list[str] = []

    def fake_run_expert(
        track: Any, *, record_frames: bool = True, max_time: float = 300.0
    ) -> _FakeLap:
        assert record_frames is False
        calls.append(track.name)
        return _FakeLap(track.name, finished=len(calls) == 1)

    monkeypatch.setattr("tm_gym.sim.expert.run_expert", fake_run_expert)
    assert main(["tracks"]) == 0
    text = capsys.readouterr().out
    assert len(calls) == len(names)
    assert "0:38.420" in text
    if len(names) > 1:
        assert "DNF" in text
    for name in names:
        assert name in text


# --------------------------------------------------------------------------- play


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (set(), [0.0, 0.0, 0.0]),
        ({"up"}, [1.0, 0.0, 0.0]),
        ({"w", "d"}, [1.0, 0.0, 1.0]),
        ({"down", "left"}, [0.0, 1.0, -1.0]),
        ({"s", "a", "up"}, [1.0, 1.0, -1.0]),
        ({"left", "right"}, [0.0, 0.0, 0.0]),
        ({"RIGHT"}, [0.0, 0.0, 1.0]),
        ({"backspace", "space", "x"}, [0.0, 0.0, 0.0]),
    ],
)
def test_action_from_keys(keys: set[str], expected: list[float]) -> None:
    action = human.action_from_keys(keys)
    assert action.dtype == np.float32
    assert action.tolist() == expected


class _CountingEnv:
    """Finishes after ``finish_at`` steps; records actions and resets."""

    def __init__(self, finish_at: int = 3) -> None:
        self.finish_at = finish_at
        self.t = 0
        self.resets = 0
        self.actions: list[list[float]] = []

    def _info(self) -> dict[str, Any]:
        return {
            "speed_kmh": 12.0 * self.t,
            "gear": 1,
            "race_time": 0.05 * self.t,
            "checkpoint": self.t // 2,
            "progress": self.t / self.finish_at,
            "finished": self.t >= self.finish_at,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[None, dict[str, Any]]:
        self.t = 0
        self.resets += 1
        return None, self._info()

    def step(self, action: np.ndarray) -> tuple[None, float, bool, bool, dict[str, Any]]:
        self.t += 1
        self.actions.append(action.tolist())
        return None, 0.0, self.t >= self.finish_at, False, self._info()

    def render(self) -> np.ndarray:
        return np.full((128, 256, 3), self.t, dtype=np.uint8)


def test_play_session_steps_respawns_and_finishes() -> None:
    env = _CountingEnv(finish_at=3)
    session = human.PlaySession(env, checkpoints_total=2)
    with pytest.raises(RuntimeError, match="reset"):
        session.tick()
    session.reset()
    assert session.handle_keys({"up", "d"}).tolist() == [1.0, 0.0, 1.0]
    frame = session.tick()
    assert frame.shape == (128, 256, 3)
    assert env.actions == [[1.0, 0.0, 1.0]]
    assert session.hud_lines() == [
        "  12 km/h   gear 1",
        "time 0:00.050",
        "checkpoint 0/2",
        "progress  33.3 %",
    ]
    assert session.banner() == []

    session.handle_keys(set())
    session.tick()
    session.tick()
    assert session.finished and session.episode_over
    assert session.banner()[0] == "FINISHED 0:00.150"
    session.tick()  # over: no more steps
    assert len(env.actions) == 3

    # Holding Backspace respawns once, not on every frame.
    session.handle_keys({"backspace"})
    session.handle_keys({"backspace"})
    assert env.resets == 2
    assert not session.episode_over
    session.handle_keys(set())
    session.handle_keys({"delete"})
    assert env.resets == 3

    session.handle_keys({"escape"})
    assert session.quit_requested


def test_play_window_headless(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few frames of the real simulator through the pygame window with no screen."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    import gymnasium

    import tm_gym  # noqa: F401  (registers the env)

    env = gymnasium.make(play.ENV_ID, track="default", obs_type="lidar", render_mode="rgb_array")
    try:
        session = human.PlaySession(env, checkpoints_total=3)
        with human.PlayWindow(scale=2, fps=1000) as window:
            assert human.run_loop(session, window, max_frames=3) == 3
            session.handle_keys({"up"})
            for _ in range(40):
                window.show(session.tick(), session.hud_lines(), session.banner())
            assert session.steps == 43
            assert float(session.info["speed_kmh"]) > 0.0
    finally:
        env.close()


def test_play_command_headless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    assert main(["play", "--track", "default", "--max-frames", "3", "--fps", "1000"]) == 0


def test_play_unknown_track_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["play", "--track", "no-such-track"]) == 2
    assert "no-such-track" in capsys.readouterr().err
