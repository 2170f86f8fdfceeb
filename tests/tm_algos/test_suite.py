"""Evaluation suites: the shipped files, malformed files, expert references, skipped visuals cases,
``tm-eval --suite`` (its JSON matches its table) and tm-eval's run-directory defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from stable_baselines3 import SAC

import tm_gym  # noqa: F401  (registers the environments)
from tm_algos.cli.eval import find_policy, main, output_dir, suite_rows
from tm_algos.evaluation import EpisodeResult, EvalReport
from tm_algos.policy import JSON_NAME, export_policy, load_policy
from tm_algos.presets import list_presets, load_preset
from tm_algos.suite import (
    HELD_OUT_TRACK_SEEDS,
    CaseResult,
    ExpertReference,
    Suite,
    SuiteCase,
    SuiteError,
    expert_reference,
    list_suites,
    load_suite,
    run_suite,
    save_suite_plot,
)
from tm_gym import CarParams
from tm_gym.cli._common import CLIError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_EXPERT_LAP_S = 39.997  # the expert's lap on the default track and car, exact start


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _export(folder: Path, net_arch: list[int]) -> None:
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    model = SAC("MultiInputPolicy", env, buffer_size=100, policy_kwargs={"net_arch": net_arch})
    export_policy(model, folder)
    env.close()


@pytest.fixture(scope="module")
def lidar_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (0 steps) SAC LIDAR policy: it never finishes, which is all a suite needs."""
    folder = tmp_path_factory.mktemp("lidar") / "policy"
    _export(folder, [16, 16])
    return folder


def _run_dir(tmp_path: Path, source: Path, *, best: bool) -> Path:
    """A training run directory with ``policy/`` (and ``best/``, a different network)."""
    run = tmp_path / "run"
    (run / "policy").mkdir(parents=True)
    for name in (JSON_NAME, "policy.safetensors"):
        (run / "policy" / name).write_bytes((source / name).read_bytes())
    if best:
        _export(run / "best", [8])
    return run


def _zero(obs: Any) -> NDArray[np.float32]:
    return np.zeros(3, dtype=np.float32)


def _write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


TWO_CASES = """
description = "one default case and one pixels-only case"
episodes = 1

[[cases]]
name = "plain"
track = "default"

[[cases]]
name = "dim"
track = "default"
visuals = { brightness = 0.5 }
"""


# -- the shipped suites -------------------------------------------------------------------------


def test_shipped_suites_load() -> None:
    assert {"smoke", "generalisation", "visuals"} <= set(list_suites())
    smoke = load_suite("smoke")
    assert len(smoke.cases) == 2 and smoke.episodes == 1
    assert not any(c.pixels_only for c in smoke.cases)
    visuals = load_suite("visuals")
    assert visuals.cases and all(c.pixels_only for c in visuals.cases)


def test_generalisation_covers_tracks_cars_and_visuals() -> None:
    suite = load_suite("generalisation")
    tracks = {c.track for c in suite.cases}
    assert {"default", "speedway", "technical"} <= tracks
    held_out = [t for t in tracks if t.startswith("gen:")]
    assert len(held_out) >= 8
    assert all(int(t[4:]) in HELD_OUT_TRACK_SEEDS for t in held_out)
    scales: dict[str, set[float]] = {}
    for case in suite.cases:
        for field, factor in case.car_scale.items():
            scales.setdefault(field, set()).add(factor)
    for field in ("grip", "power", "yaw_lag", "wall_friction"):
        found = scales.get(field, set())
        assert {0.8, 1.2} <= found, field  # +-20 %
        assert any(abs(f - 1) >= 0.5 for f in found), field  # +-50 % or more
    assert any(c.pixels_only for c in suite.cases)
    names = [c.name for c in suite.cases]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("preset", list_presets())
def test_presets_do_not_train_on_held_out_tracks(preset: str) -> None:
    track = str(load_preset(preset).env.kwargs.get("track", "default"))
    seeds = [int(s) for s in re.findall(r"gen:(\d+)", track)]
    assert not any(s in HELD_OUT_TRACK_SEEDS for s in seeds), (preset, track)


def test_case_builds_the_car_from_scales_then_values() -> None:
    case = SuiteCase("c", car_scale={"grip": 0.5, "power": 2.0}, car_params={"power": 900.0})
    car = case.car()
    assert isinstance(car, CarParams)
    assert car.grip == pytest.approx(CarParams().grip * 0.5)
    assert car.power == 900.0  # the absolute value wins
    assert case.car_changes() == {"grip": pytest.approx(12.5), "power": 900.0}
    assert SuiteCase("d").car() is None
    kwargs = SuiteCase("v", track="gen:1001", visuals="random").case_kwargs()
    assert kwargs == {"track": "gen:1001", "visuals": "random"}


# -- malformed files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('episodes = 1\ncolour = "red"\n[[cases]]\nname = "a"', r"unknown key 'colour'"),
        ('[[cases]]\nname = "a"\ntrak = "default"', r"cases\[0\].*unknown key 'trak'.*track"),
        ('[[cases]]\nname = "a"\ncar_scale = { gripp = 0.8 }', r"car_scale.*'gripp'.*grip"),
        ('[[cases]]\nname = "a"\ncar_scale = { grip = -1 }', r"car_scale.grip.*-1"),
        ('[[cases]]\nname = "a"\nvisuals = { sky = [1, 2] }', r"visuals.sky.*RGB triple"),
        ('[[cases]]\nname = "a"\nvisuals = "sometimes"', r"visuals.*'sometimes'.*'random'"),
        ('[[cases]]\nname = "a"\nenv_kwargs = { track = "x" }', r"env_kwargs.*'track'.*own"),
        ('[[cases]]\ntrack = "default"', r"missing key \"name\""),
        ('[[cases]]\nname = "a"\n[[cases]]\nname = "a"', r"two cases are named 'a'"),
        ('episodes = 0\n[[cases]]\nname = "a"', r"episodes.*whole number from 1"),
        ('description = "nothing"', r"no cases.*\[\[cases\]\]"),
        ("[[cases]\nname = 1", r"invalid TOML"),
    ],
)
def test_malformed_suite_is_explained(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SuiteError, match=match) as info:
        load_suite(path)
    assert str(path) in str(info.value)  # the message names the file


def test_unknown_suite_lists_the_shipped_ones() -> None:
    with pytest.raises(SuiteError, match=r"nope.*smoke.*existing \.toml"):
        load_suite("nope")


def test_cli_malformed_suite_exits_2(
    lidar_policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, '[[cases]]\nname = "a"\nspeed = 3')
    assert main([str(lidar_policy_dir), "--suite", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "mine.toml" in err and "speed" in err
    assert not (tmp_path / "o").exists()


# -- running ------------------------------------------------------------------------------------


def test_expert_reference_is_computed_per_case(lidar_policy_dir: Path) -> None:
    policy = load_policy(lidar_policy_dir)
    cache: dict[str, ExpertReference] = {}
    report = run_suite(policy, load_suite("smoke"), start_jitter=0.0, expert_cache=cache)
    default, low_grip = report.cases
    assert default.expert is not None and low_grip.expert is not None
    assert default.expert.finished and low_grip.expert.finished
    assert default.expert.lap_time == pytest.approx(DEFAULT_EXPERT_LAP_S, abs=0.05)
    # less grip: the expert brakes earlier and its lap is slower, so the reference differs
    assert low_grip.expert.lap_time is not None and default.expert.lap_time is not None
    assert low_grip.expert.lap_time > default.expert.lap_time + 1.0
    direct = expert_reference({"track": "default", "car_params": CarParams(grip=20.0)})
    assert direct == low_grip.expert
    assert len(cache) == 2
    # the same physics under another name reuses the cached reference
    twin = Suite("twin", (SuiteCase("a"), SuiteCase("b", env_kwargs={})), episodes=1)
    run_suite(policy, twin, start_jitter=0.0, expert_cache=cache)
    assert len(cache) == 2


def test_a_case_the_expert_cannot_finish_has_no_ratio(lidar_policy_dir: Path) -> None:
    suite = Suite("short", (SuiteCase("short", env_kwargs={"ep_max_length": 100}),), episodes=1)
    report = run_suite(load_policy(lidar_policy_dir), suite, start_jitter=0.0)
    (case,) = report.cases
    assert case.expert is not None and not case.expert.finished
    assert case.status == "expert-dnf" and case.lap_ratio is None
    data = report.to_dict()
    assert data["cases"][0]["status"] == "expert-dnf"
    assert data["summary"]["cases_expert_dnf"] == 1
    assert "expert did not finish" in suite_rows(data)[0]


def test_lidar_policy_skips_visuals_cases(lidar_policy_dir: Path, tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path, TWO_CASES))
    report = run_suite(load_policy(lidar_policy_dir), suite, start_jitter=0.0)
    plain, dim = report.cases
    assert plain.status == "ok" and plain.report is not None
    assert dim.status == "skipped" and dim.report is None and dim.expert is None
    assert dim.skipped is not None and "lidar" in dim.skipped
    summary = report.summary()
    assert summary["cases_run"] == 1 and summary["cases_skipped"] == 1
    row = suite_rows(report.to_dict())[1]
    assert row[0] == "dim" and "skipped" in row


def test_image_policy_runs_visuals_cases(tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path, TWO_CASES))
    report = run_suite(
        _zero,
        suite,
        start_jitter=0.0,
        env_kwargs={"obs_type": "images", "img_size": 32, "img_hist_len": 1},
    )
    assert report.obs_type == "images"
    assert [c.status for c in report.cases] == ["ok", "ok"]
    dim = report.cases[1]
    assert dim.report is not None and dim.report.env_kwargs["visuals"] == {"brightness": 0.5}
    assert dim.expert == report.cases[0].expert  # visuals do not change the expert's lap


def _episode(index: int, lap: float | None, walls: int) -> EpisodeResult:
    return EpisodeResult(
        index=index,
        seed=index,
        episode_return=0.0,
        steps=10,
        finished=lap is not None,
        lap_time=lap,
        progress=1.0 if lap is not None else 0.5,
        crashed=walls > 0,
        wall_contacts=walls,
        failed=lap is None,
        truncated=False,
        race_time=1.0,
    )


def test_lap_ratio_and_wall_contacts() -> None:
    report = EvalReport(
        (_episode(0, 44.0, 3), _episode(1, 46.0, 0), _episode(2, None, 6)),
        env_id="x",
        env_kwargs={},
        deterministic=True,
    )
    expert = ExpertReference(True, 40.0, 1.0, 0, 800)
    result = CaseResult(SuiteCase("c"), report, expert)
    assert result.status == "ok"
    assert result.lap_ratio == pytest.approx(45.0 / 40.0)
    assert result.wall_contacts_mean == pytest.approx(3.0)
    data = result.to_dict()
    assert data["finish_rate"] == pytest.approx(2 / 3)
    assert data["expert_lap_time"] == 40.0 and data["lap_ratio"] == pytest.approx(1.125)
    nothing = CaseResult(SuiteCase("n"), report, ExpertReference(False, None, 0.9, 0, 1000))
    assert nothing.status == "expert-dnf" and nothing.lap_ratio is None


@pytest.mark.parametrize("bad", [{"episodes": 0}, {"start_jitter": -0.5}])
def test_run_suite_checks_its_arguments(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        run_suite(_zero, load_suite("smoke"), **bad)


# -- tm-eval --suite ----------------------------------------------------------------------------


def _cells(text: str) -> list[list[str]]:
    """The cells of a rich table's rows, stripped, one list per line."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if "│" in line]


@pytest.mark.slow
def test_cli_suite_json_matches_its_table(
    lidar_policy_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one line per row
    suite = _write(tmp_path, TWO_CASES.replace('track = "default"', 'track = "technical"', 1))
    out = tmp_path / "out"
    assert main([str(lidar_policy_dir), "--suite", str(suite), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    payload = json.loads((out / "suite.json").read_text())
    assert (out / "suite.png").read_bytes()[:8] == PNG_MAGIC
    assert payload["start_jitter"] == 1.0 and payload["episodes"] == 1
    assert payload["policy"] == str(lidar_policy_dir.resolve())
    # the same cases, in order, with the same numbers as the JSON
    rows = [r for r in _cells(captured.out) if len(r) == 9]
    assert [r[0] for r in rows] == ["plain", "dim", "summary"]
    plain, dim = payload["cases"]
    assert plain["track"] == "technical" and rows[0][1] == "technical"
    assert rows[0][3] == f"{plain['finish_rate']:.0%}"
    assert plain["expert_lap_time"] == pytest.approx(34.817, abs=0.05)
    assert rows[0][5] == f"0:{plain['expert_lap_time']:06.3f}"
    assert rows[0][7] == f"{plain['wall_contacts_mean']:.1f}"
    assert dim["status"] == "skipped" and rows[1][3] == "skipped"
    summary = payload["summary"]
    assert rows[2][3] == f"{summary['finish_rate']:.0%}"
    assert rows[2][1] == f"{summary['cases_run']}/{summary['cases']} run" == "1/2 run"
    assert "skipped: pixels only" in rows[1][8]
    assert "wrote" in captured.err and str(out) in captured.err
    # --json prints the same report, alone, on stdout
    code = main([str(lidar_policy_dir), "--suite", str(suite), "--out", str(out), "--json"])
    assert code == 2  # the folder holds an evaluation now: never overwritten silently
    assert "--overwrite" in capsys.readouterr().err
    args = [str(lidar_policy_dir), "--suite", str(suite), "--out", str(out), "--json"]
    assert main([*args, "--overwrite"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "suite.json").read_text())
    assert printed["cases"] == payload["cases"]  # deterministic: the same numbers again


def test_cli_suite_needs_the_simulator(
    lidar_policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(lidar_policy_dir), "--suite", "smoke", "--env-id", "TrackMania-v0"]) == 2
    assert "TrackMania-Sim-v0" in capsys.readouterr().err


def test_suite_plot_is_a_png(tmp_path: Path) -> None:
    case = SuiteCase("c").to_dict()
    rows = [
        {**case, "name": "ok", "status": "ok", "finish_rate": 1.0, "lap_ratio": 1.2},
        {**case, "name": "dnf", "status": "expert-dnf", "finish_rate": 0.0, "lap_ratio": None},
        {**case, "name": "skip", "status": "skipped", "finish_rate": None, "lap_ratio": None},
    ]
    payload = {
        "suite": "t",
        "episodes": 1,
        "start_jitter": 1.0,
        "cases": rows,
        "summary": {
            "finish_rate": 0.5,
            "lap_ratio_mean": 1.2,
            "lap_ratio_cases": 1,
            "cases_skipped": 1,
        },
    }
    path = save_suite_plot(payload, tmp_path / "p" / "suite.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


# -- tm-eval's defaults on a run directory ------------------------------------------------------


def test_run_dir_prefers_best(lidar_policy_dir: Path, tmp_path: Path) -> None:
    run = _run_dir(tmp_path, lidar_policy_dir, best=True)
    found, what = find_policy(run)
    assert found == run / "best" and "best" in what
    (run / "best" / JSON_NAME).unlink()
    found, what = find_policy(run)
    assert found == run / "policy" and "latest" in what
    assert find_policy(run / "policy")[0] == run / "policy"
    with pytest.raises(CLIError, match="best/ or policy/"):
        find_policy(tmp_path / "nowhere")


def test_output_dir_never_reuses_an_existing_folder(tmp_path: Path) -> None:
    base = tmp_path / "eval"
    assert output_dir(base, None, overwrite=False) == base
    base.mkdir()
    assert output_dir(base, None, overwrite=False) == tmp_path / "eval-2"
    (tmp_path / "eval-2").mkdir()
    assert output_dir(base, None, overwrite=False) == tmp_path / "eval-3"
    assert output_dir(base, None, overwrite=True) == base
    mine = tmp_path / "mine"
    assert output_dir(base, mine, overwrite=False) == mine  # free: used as given
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    assert output_dir(base, mine, overwrite=False) == mine  # holds no evaluation
    (mine / "eval.json").write_text("{}")
    with pytest.raises(CLIError, match=r"eval\.json.*--overwrite"):
        output_dir(base, mine, overwrite=False)
    assert output_dir(base, mine, overwrite=True) == mine


@pytest.mark.slow
def test_cli_on_a_run_dir_evaluates_best_and_never_overwrites(
    lidar_policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path, lidar_policy_dir, best=True)
    (run / "eval").mkdir()  # what tm-train --evaluate wrote
    (run / "eval" / "eval.json").write_text('{"from": "training"}\n')
    args = [str(run), "--episodes", "1", "--no-video", "--env-kwarg", "ep_max_length=20"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "best" in err and str(run / "eval-2") in err
    assert (run / "eval" / "eval.json").read_text() == '{"from": "training"}\n'
    report = json.loads((run / "eval-2" / "eval.json").read_text())
    assert report["policy"] == str((run / "best").resolve())
    assert report["env_kwargs"]["start_jitter"] == 1.0  # the default start perturbation
    assert main([*args, "--start-jitter", "0"]) == 0
    assert json.loads((run / "eval-3" / "eval.json").read_text())["env_kwargs"]["start_jitter"] == 0
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((run / "eval" / "eval.json").read_text())["policy"] == report["policy"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("eval")) == [
        "eval",
        "eval-2",
        "eval-3",
    ]


def test_cli_bad_start_jitter_exits_2(
    lidar_policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(lidar_policy_dir), "--start-jitter", "-1"]) == 2
    assert "start perturbation" in capsys.readouterr().err
