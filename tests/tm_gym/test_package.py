"""The tm_gym package face: its public API (pinned), resolved lazily, and a cheap import."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import tm_gym
from tm_gym.error import TrackMasterError

PUBLIC_API = [
    "OBS_TYPES",
    "CameraSpec",
    "Capture",
    "CarParams",
    "EnvSettings",
    "RecordEpisodes",
    "Recording",
    "ReferenceTrajectory",
    "ReplayEnv",
    "RewardConfig",
    "TMGymError",
    "TelemetryRecord",
    "Track",
    "TrackManiaEnv",
    "TrackManiaRealtimeEnv",
    "TrackManiaVectorEnv",
    "TrackMasterError",
    "__version__",
    "action_space",
    "backend_names",
    "builtin_track_names",
    "generate_track",
    "load_recording",
    "load_track",
    "make_env",
    "observation_space",
    "register_backend",
    "save_recording",
]


def test_version_matches_installed_metadata() -> None:
    assert tm_gym.__version__ == importlib.metadata.version("tm-gym")


def test_public_api_is_pinned() -> None:
    assert tm_gym.__all__ == PUBLIC_API


@pytest.mark.parametrize("name", [n for n in PUBLIC_API if n != "__version__"])
def test_every_public_name_resolves_to_its_module_object(name: str) -> None:
    value = getattr(tm_gym, name)
    module = importlib.import_module(tm_gym._EXPORTS[name])
    assert value is getattr(module, name)
    assert name in dir(tm_gym)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tm_gym.nope  # type: ignore[attr-defined]


def test_the_errors_share_one_root() -> None:
    assert issubclass(tm_gym.TMGymError, TrackMasterError)
    assert tm_gym.TrackMasterError is TrackMasterError


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_face_loads_no_simulator_and_no_driver() -> None:
    loaded = _modules_after("import tm_gym")
    heavy = {"numba", "torch", "rtgym", "mss", "vgamepad", "tm_gym.sim", "tm_gym.game"} & loaded
    assert not heavy, f"import tm_gym loaded {sorted(heavy)}"
    assert "gymnasium" in loaded  # it registers the ids


def test_ids_are_registered_on_import() -> None:
    import gymnasium as gym

    spec = gym.spec("TrackMania-Sim-v0")
    assert spec.entry_point == "tm_gym.backends.factory:make_env"
    assert spec.kwargs == {"backend": "sim"}
    assert gym.spec("TrackMania-v0").kwargs == {"backend": "game"}
