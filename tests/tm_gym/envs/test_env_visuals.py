"""The environments' ``visuals`` argument: fixed looks, seeded random looks, per-car looks in the
vector environment, the rgb_array window, and clear errors."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import tm_gym  # noqa: F401  (registers the environments)
from tm_gym.core.config import ConfigError
from tm_gym.core.visuals import DEFAULT_VISUAL_RANGES, VisualRanges, Visuals


def _episode(
    steps: int = 12, seed: int = 0, **kwargs: Any
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The image observations and rgb_array windows of the expert's first ``steps`` steps."""
    env = gym.make("TrackMania-Sim-v0", render_mode="rgb_array", **kwargs)
    obs, _ = env.reset(seed=seed)
    frames: list[np.ndarray] = [obs["images"]]
    windows: list[np.ndarray] = [np.asarray(env.render())]
    for _ in range(steps):
        obs, *_ = env.step(env.unwrapped.expert_action())  # type: ignore[attr-defined]
        frames.append(obs["images"])
        windows.append(np.asarray(env.render()))
    return frames, windows


@pytest.mark.parametrize(
    "visuals",
    [{}, Visuals(), {"brightness": 1.0, "sky": (70, 130, 210), "fov_deg": 90}],
    ids=["empty", "Visuals()", "explicit-defaults"],
)
@pytest.mark.parametrize("grayscale", [True, False])
def test_standard_look_is_bit_identical_to_no_visuals(visuals: object, grayscale: bool) -> None:
    plain = _episode(grayscale=grayscale)
    same = _episode(grayscale=grayscale, visuals=visuals)
    for a, b in zip(plain[0] + plain[1], same[0] + same[1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_fixed_look_reaches_observations_and_window() -> None:
    plain = _episode(steps=2)
    dark = _episode(steps=2, visuals={"brightness": 0.5, "sky": (250, 20, 20)})
    assert dark[0][0].mean() < 0.7 * plain[0][0].mean()
    top = dark[1][0][0].astype(int)  # the window's top row shows the (darkened) red sky
    assert np.abs(top - [125, 10, 10]).max() <= 2


def test_random_looks_follow_the_seed() -> None:
    env = gym.make("TrackMania-Sim-v0", visuals="random", render_mode="rgb_array")

    def look(seed: int | None) -> tuple[Visuals, np.ndarray]:
        obs, _ = env.reset(seed=seed)
        return env.unwrapped.visuals, obs["images"]  # type: ignore[attr-defined]

    (v1, f1), (v2, f2), (v1_again, f1_again) = look(1), look(2), look(1)
    assert v1 == v1_again and v1 != v2
    np.testing.assert_array_equal(f1, f1_again)
    assert not np.array_equal(f1, f2)
    assert look(None)[0] != v1  # every reset draws a new look
    for v in (v1, v2):
        assert DEFAULT_VISUAL_RANGES.brightness is not None
        low, high = DEFAULT_VISUAL_RANGES.brightness
        assert low <= v.brightness <= high


def test_own_ranges_draw_only_their_keys() -> None:
    env = gym.make(
        "TrackMania-Sim-v0",
        visuals={"sky": [40, 60, 200], "random": {"brightness": [0.6, 1.4]}},
    )
    seen = set()
    for seed in range(5):
        env.reset(seed=seed)
        v: Visuals = env.unwrapped.visuals  # type: ignore[attr-defined]
        assert v.sky == (40, 60, 200) and 0.6 <= v.brightness <= 1.4
        assert v.grass == Visuals().grass and v.fov_deg == Visuals().fov_deg
        seen.add(v.brightness)
    assert len(seen) == 5
    ranges = gym.make("TrackMania-Sim-v0", visuals=VisualRanges(fov_deg=(60.0, 70.0)))
    ranges.reset(seed=0)
    assert 60.0 <= ranges.unwrapped.visuals.fov_deg <= 70.0  # type: ignore[attr-defined]


def test_vector_env_draws_a_look_per_car_and_per_reset() -> None:
    def run(seed: int) -> tuple[tuple[Visuals, ...], tuple[Visuals, ...], np.ndarray]:
        env = gym.make_vec(
            "TrackMania-Sim-v0",
            num_envs=3,
            vectorization_mode="vector_entry_point",
            visuals="random",
        )
        obs, _ = env.reset(seed=seed)
        first = env.unwrapped.visuals  # type: ignore[attr-defined]
        env.reset(options={"reset_mask": np.array([True, False, False])})
        return first, env.unwrapped.visuals, obs["images"]  # type: ignore[attr-defined]

    first, after, frames = run(0)
    assert len(set(first)) == 3  # each car its own look
    assert after[0] != first[0] and after[1:] == first[1:]  # only the reset car redraws
    again = run(0)
    assert again[0] == first and again[1] == after
    np.testing.assert_array_equal(again[2], frames)
    assert run(1)[0] != first


def test_vector_env_with_a_fixed_look_matches_the_single_env() -> None:
    look = {"grass": (150, 60, 60), "camera_pitch_deg": 14.0}
    vec = gym.make_vec(
        "TrackMania-Sim-v0", num_envs=2, vectorization_mode="vector_entry_point", visuals=look
    )
    single = gym.make("TrackMania-Sim-v0", visuals=look)
    v_obs, _ = vec.reset(seed=0)
    s_obs, _ = single.reset(seed=0)
    np.testing.assert_array_equal(v_obs["images"][1], s_obs["images"])
    assert vec.unwrapped.visuals == (Visuals(**look),) * 2  # type: ignore[attr-defined,arg-type]


@pytest.mark.parametrize(
    ("visuals", "match"),
    [
        ({"skye": (1, 2, 3)}, r"unknown key 'skye'"),
        ({"sky": (256, 0, 0)}, r"visuals\.sky: got \(256, 0, 0\).*0 to 255"),
        ({"brightness": 0}, r"visuals\.brightness: got 0 .*0 \(excluded\)"),
        ({"fov_deg": 175.0}, r"fov_deg: got 175.0"),
        ("sunny", r"visuals: got 'sunny'"),
        ({"random": {"brightness": [1.5, 0.5]}}, r"low <= high"),
    ],
)
def test_bad_visuals_are_refused_by_both_environments(visuals: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        gym.make("TrackMania-Sim-v0", visuals=visuals)
    with pytest.raises(ConfigError, match=match):
        gym.make_vec(
            "TrackMania-Sim-v0",
            num_envs=2,
            vectorization_mode="vector_entry_point",
            visuals=visuals,
        )
