"""The generalists (issue 11): the ``images-sac-general`` and ``lidar-general`` presets train
only on training tracks, the pixel one with looks drawn from its documented training range, and
the ``unseen`` suite drives held-out tracks with looks from outside that range (computed here
from the preset's ranges)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from tm_algos.factory import env_kwargs_of
from tm_algos.imitation.fleet import Fleet
from tm_algos.presets import Preset, list_presets, load_preset
from tm_algos.suite import HELD_OUT_TRACK_SEEDS, SuiteCase, load_suite, run_suite
from tm_gym.core.visuals import VisualRanges, Visuals, VisualsSpec

PRESET = "images-sac-general"
SUITE = "unseen"
# the pixel generalist's exams: held-out tracks, looks outside the training range
EXAMS = ("unseen", "unseen-b", "unseen-c", "unseen-d", "unseen-e", "unseen-f")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, the simulator's RGB -> gray weights
_COLOURS = ("sky", "sky_horizon", "grass", "road", "border_dark", "border_light")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _gen_seeds(tracks: list[str] | tuple[str, ...]) -> list[int]:
    return [int(m) for t in tracks for m in re.findall(r"^gen:(\d+)$", t)]


def _training_ranges(preset: Preset) -> VisualRanges:
    spec = VisualsSpec.parse(preset.env.kwargs.get("visuals"), f"{preset.name}: env.kwargs")
    assert spec.ranges is not None and spec.random, "the preset draws no looks"
    return spec.ranges


def _outside(key: str, value: Any, ranges: VisualRanges) -> bool:
    """Whether ``value`` of visuals key ``key`` lies outside its training range.

    Numbers: below the low end or above the high end. Colours: outside the box in at least
    one channel and with a gray value outside the gray values of the box (the policy sees
    grayscale frames). A key without a training range is never "outside": nothing was drawn.
    """
    span = getattr(ranges, key)
    if span is None:
        return False
    low, high = span
    if isinstance(value, (int, float)):
        return bool(value < low or value > high)
    colour = np.asarray(value, dtype=float)
    lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    off_box = bool(np.any((colour < lo) | (colour > hi)))
    gray = float(colour @ _LUMA)
    return off_box and (gray < float(lo @ _LUMA) or gray > float(hi @ _LUMA))


def _inside(look: Visuals, ranges: VisualRanges) -> bool:
    """Whether every drawn field of ``look`` lies within ``ranges`` (channel by channel)."""
    for key in ranges.keys:
        low, high = getattr(ranges, key)
        value = np.asarray(getattr(look, key), dtype=float)
        if np.any(value < np.asarray(low)) or np.any(value > np.asarray(high)):
            return False
    return True


def _zero(obs: Any) -> NDArray[np.float32]:
    return np.zeros(3, dtype=np.float32)


# -- the preset ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "obs_type"), [(PRESET, "images"), ("lidar-general", "lidar")])
def test_generalists_train_by_dagger_on_training_tracks_only(name: str, obs_type: str) -> None:
    preset = load_preset(name)
    assert preset.env.obs_type == obs_type
    imitation = preset.imitation
    assert imitation is not None and imitation.teacher == "expert"
    tracks = imitation.tracks
    assert len(set(tracks)) == len(tracks) >= 10
    assert {"default", "technical", "speedway"} <= set(tracks)
    seeds = _gen_seeds(tracks)
    assert len(seeds) >= 10  # mostly procedural tracks
    assert not [s for s in seeds if s in HELD_OUT_TRACK_SEEDS]
    assert imitation.n_envs >= len(tracks)  # at least one car per track (the Fleet's rule)
    assert "track" not in preset.env.kwargs


@pytest.mark.parametrize("name", list_presets())
def test_no_preset_imitates_on_held_out_tracks(name: str) -> None:
    imitation = load_preset(name).imitation
    tracks = () if imitation is None else imitation.tracks
    assert not [s for s in _gen_seeds(tracks) if s in HELD_OUT_TRACK_SEEDS], (name, tracks)


def test_training_range_holds_the_standard_look_and_is_narrower_than_random() -> None:
    ranges = _training_ranges(load_preset(PRESET))
    assert _inside(Visuals(), ranges)
    assert {"brightness", "camera_height_m", "camera_pitch_deg", "fov_deg", "grass"} <= set(
        ranges.keys
    )
    assert ranges.brightness is not None
    assert ranges.brightness[1] - ranges.brightness[0] < 0.55  # visuals="random": 0.75-1.3


def test_dagger_cars_are_drawn_looks_from_the_training_range() -> None:
    preset = load_preset(PRESET)
    ranges = _training_ranges(preset)
    fleet = Fleet(env_kwargs_of(preset), ["default", "gen:1"], 3, seed=0)
    try:
        looks = [v for env in fleet.envs for v in env.unwrapped.core.sim.visuals]  # type: ignore[attr-defined]
    finally:
        fleet.close()
    assert len(looks) == 3
    assert all(_inside(look, ranges) for look in looks)
    assert len({look.brightness for look in looks}) == 3  # drawn, not the standard look
    assert Visuals() not in looks


# -- the suite -----------------------------------------------------------------------------------


def test_outside_is_computed_per_key() -> None:
    ranges = VisualRanges(brightness=(0.8, 1.2), grass=((60, 125, 45), (100, 170, 85)))
    assert _outside("brightness", 0.65, ranges) and _outside("brightness", 1.4, ranges)
    assert not _outside("brightness", 1.0, ranges)
    assert not _outside("fov_deg", 120.0, ranges)  # no training range: nothing to be outside of
    assert _outside("grass", (45, 100, 35), ranges)  # darker in every channel and in gray
    assert not _outside("grass", (80, 150, 60), ranges)  # inside the box
    # off the box in red and blue but as gray as training grass: no new look in grayscale
    assert not _outside("grass", (110, 140, 30), ranges)


def _case_looks(name: str = SUITE) -> list[SuiteCase]:
    return list(load_suite(name).cases)


@pytest.mark.parametrize("name", EXAMS)
def test_unseen_suite_drives_held_out_tracks(name: str) -> None:
    cases = _case_looks(name)
    assert len(cases) >= 10
    tracks = [c.track for c in cases]
    assert len(set(tracks)) == len(tracks)
    seeds = _gen_seeds(tracks)
    assert len(seeds) == len(tracks) and all(s in HELD_OUT_TRACK_SEEDS for s in seeds)
    for other in EXAMS:
        if other != name:  # the exams share no track
            assert not set(tracks) & {c.track for c in _case_looks(other)}
    assert all(not c.car_scale and not c.car_params for c in cases)  # the standard car


@pytest.mark.parametrize("name", EXAMS)
def test_unseen_suite_looks_lie_outside_the_training_range(name: str) -> None:
    ranges = _training_ranges(load_preset(PRESET))
    inside: dict[str, list[str]] = {}
    for case in _case_looks(name):
        assert isinstance(case.visuals, Mapping) and case.visuals, f"{case.name}: no fixed look"
        Visuals.from_mapping(case.visuals)  # a valid look
        keys = [k for k, v in case.visuals.items() if not _outside(k, v, ranges)]
        if keys:
            inside[case.name] = keys
    assert not inside, f"values within the training range: {inside}"


@pytest.mark.parametrize("name", EXAMS)
def test_unseen_suite_covers_every_drawn_key_on_both_sides(name: str) -> None:
    ranges = _training_ranges(load_preset(PRESET))
    below: set[str] = set()
    above: set[str] = set()
    for case in _case_looks(name):
        assert isinstance(case.visuals, Mapping)
        for key, value in case.visuals.items():
            low, high = getattr(ranges, key)
            gray = float(np.asarray(value, dtype=float) @ _LUMA) if key in _COLOURS else value
            if key in _COLOURS:
                low, high = float(np.asarray(low) @ _LUMA), float(np.asarray(high) @ _LUMA)
            (below if gray < low else above).add(key)
    assert set(ranges.keys) <= below | above
    assert {"brightness", "camera_height_m", "camera_pitch_deg", "fov_deg"} <= below & above


def test_unseen_suite_runs_its_own_looks_over_the_training_ones() -> None:
    suite = load_suite(SUITE)
    tiny = dataclasses.replace(suite, cases=suite.cases[:2])
    kwargs = {**env_kwargs_of(load_preset(PRESET)), "img_size": 32, "img_hist_len": 1}
    report = run_suite(_zero, tiny, episodes=1, start_jitter=0.0, env_kwargs=kwargs)
    assert report.obs_type == "images"
    assert [c.status for c in report.cases] == ["ok", "ok"]
    for result, case in zip(report.cases, tiny.cases, strict=True):
        assert result.report is not None and result.expert is not None
        assert isinstance(case.visuals, Mapping)
        assert result.report.env_kwargs["visuals"] == dict(case.visuals)  # not the ranges
        assert result.report.env_kwargs["track"] == case.track
        assert result.expert.finished and result.expert.lap_time is not None
        assert result.report.finish_rate == 0.0  # a car that never accelerates
    summary = report.summary()
    assert summary["cases_run"] == 2 and summary["lap_ratio_cases"] == 0


# -- car physics randomisation in the DAgger fleet ------------------------------------------------


def test_the_fleet_drives_one_drawn_car_per_track_reproducibly() -> None:
    from tm_algos.imitation.fleet import Fleet, draw_cars
    from tm_gym import CarParams

    scales = {"grip": [0.7, 1.3], "yaw_lag": [0.5, 2.0]}
    cars = draw_cars(None, scales, 6, seed=3)
    assert cars == draw_cars(None, scales, 6, seed=3)  # reproducible by seed
    assert cars != draw_cars(None, scales, 6, seed=4)
    standard = CarParams()
    assert len({c.grip for c in cars}) == 6
    assert all(0.7 * standard.grip <= c.grip <= 1.3 * standard.grip for c in cars)
    assert all(0.5 * standard.yaw_lag <= c.yaw_lag <= 2.0 * standard.yaw_lag for c in cars)
    assert all(c.power == standard.power for c in cars)  # fields not named are left alone
    fleet = Fleet({"obs_type": "lidar"}, ["default", "gen:3"], 2, seed=3, car_scales=scales)
    try:
        got = [env.unwrapped.core.sim.params for env in fleet.envs]  # type: ignore[attr-defined]
    finally:
        fleet.close()
    assert got == draw_cars(None, scales, 2, seed=3)


def test_bad_car_scales_are_refused_naming_the_key() -> None:
    from tm_algos.imitation.config import ImitationConfig
    from tm_gym.core.config import ConfigError

    with pytest.raises(ConfigError, match="'gripp' is not a scalar field of CarParams"):
        ImitationConfig(car_scales={"gripp": [0.7, 1.3]})
    with pytest.raises(ConfigError, match=r"car_scales.grip = \[1.3, 0.7\]"):
        ImitationConfig(car_scales={"grip": [1.3, 0.7]})
    with pytest.raises(ConfigError, match="upshift_kmh"):
        ImitationConfig(car_scales={"upshift_kmh": [0.9, 1.1]})


def test_the_lidar_generalist_trains_on_drawn_cars_inside_the_suites_milder_cases() -> None:
    preset = load_preset("lidar-general")
    assert preset.imitation is not None
    scales = preset.imitation.car_scales
    assert set(scales) == {"grip", "power", "yaw_lag", "wall_friction"}
    for low, high in scales.values():  # the suite's x0.8 and x1.2 inside, x0.5 and x1.5 outside
        assert low <= 0.8 and high >= 1.2 and low > 0.5 and high < 1.5
