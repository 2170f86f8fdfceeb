"""The backend registry: names, entry points, arguments checked per backend, your own backend."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import tm_gym  # noqa: F401  (registers the ids)
from tm_gym.backends import backend_names, backend_spec, make_env, register_backend
from tm_gym.backends import registry as registry_module
from tm_gym.backends.registry import BackendSpec
from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.error import BackendUnavailableError


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


def echo_backend(*, level: int = 1, **settings: Any) -> TrackManiaEnv:
    """A third-party backend: the simulator with the settings given, ``level`` kept for checks."""
    env = TrackManiaEnv("sim", **settings)
    env.level = level  # type: ignore[attr-defined]
    return env


def test_the_built_in_backends() -> None:
    assert backend_names()[:3] == ("sim", "game", "replay")
    assert backend_spec("sim").entry_point == "tm_gym.backends.sim:make_sim_env"


def test_an_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"backend='nope'.*'sim', 'game', 'replay'"):
        make_env("nope")


def test_an_argument_the_backend_does_not_take_lists_those_it_takes() -> None:
    with pytest.raises(TypeError, match=r"\['telemetry_port'\] for backend='replay'.*'obs_type'"):
        make_env("replay", recording="a.tmrec", telemetry_port=9000)
    with pytest.raises(TypeError, match=r"\['recording'\] for the game.*'obs_type'"):
        make_env("game", reward_trajectory="x.npz", recording="a.tmrec")
    with pytest.raises(TypeError, match=r"realtime=True"):
        make_env("sim", respawn_wait=0.5)


@pytest.mark.usefixtures("clean_registry")
def test_a_registered_backend_is_built_by_gymnasium_make() -> None:
    register_backend("echo", f"{__name__}:echo_backend", "a test backend")
    assert "echo" in backend_names()
    env = gym.make("TrackMania-v0", backend="echo", level=3, obs_type="lidar")
    try:
        assert env.unwrapped.level == 3  # type: ignore[attr-defined]
        obs, _ = env.reset(seed=0)
        assert obs["lidar"].shape[-1] == 19
        env.step(np.zeros(3, np.float32))
    finally:
        env.close()


@pytest.mark.usefixtures("clean_registry")
def test_names_are_not_taken_over_by_accident() -> None:
    with pytest.raises(ValueError, match=r"already registered.*replace=True"):
        register_backend("sim", f"{__name__}:echo_backend", "x")
    register_backend("sim", f"{__name__}:echo_backend", "x", replace=True)
    assert backend_spec("sim").entry_point.endswith(":echo_backend")


@pytest.mark.parametrize(
    ("name", "entry_point", "match"),
    [
        ("Bad Name", "m:f", "backend name"),
        ("ok", "no_colon", "entry_point"),
        ("ok", "m:f:g", "entry_point"),
    ],
)
def test_malformed_specs_are_refused(name: str, entry_point: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BackendSpec(name, entry_point, "x")


@pytest.mark.usefixtures("clean_registry")
def test_an_entry_point_that_does_not_load_says_so() -> None:
    register_backend("ghost", "tm_gym_no_such_module:make", "missing")
    with pytest.raises(BackendUnavailableError, match="cannot import tm_gym_no_such_module"):
        make_env("ghost")
    register_backend("hollow", "tm_gym.backends.registry:no_such_function", "missing")
    with pytest.raises(BackendUnavailableError, match="no function 'no_such_function'"):
        make_env("hollow")


def test_the_simulator_backend_is_the_synchronous_env_by_default() -> None:
    env = make_env("sim", obs_type="lidar")
    try:
        assert isinstance(env, TrackManiaEnv)
    finally:
        env.close()
