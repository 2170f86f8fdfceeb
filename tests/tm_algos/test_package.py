"""The tm_algos package: its version, its public API (pinned), and a cheap ``import tm_algos``."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import tm_algos
from tm_algos.errors import TMAlgosError
from tm_gym.error import TrackMasterError

PUBLIC_API = [
    "ALGORITHMS",
    "DEFAULT_PRESET",
    "REDQ",
    "AlgorithmSpec",
    "BehaviourCloning",
    "CheckpointError",
    "DemoError",
    "DictCrossQ",
    "EncoderConfig",
    "EvalReport",
    "FastImageSAC",
    "FrameStackReplayBuffer",
    "ImitationConfig",
    "ImitationDataset",
    "InvalidTypeError",
    "InvalidValueError",
    "LoadedPolicy",
    "PerceptionEncoder",
    "PerceptionExtractor",
    "PixelLidarWrapper",
    "PolicyFileError",
    "Preset",
    "PresetError",
    "RunDirError",
    "SimVecEnv",
    "TMAlgosError",
    "TMCNNExtractor",
    "TMLidarExtractor",
    "TMViTExtractor",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "__version__",
    "algorithm",
    "apply_overrides",
    "evaluate",
    "export_policy",
    "latest_checkpoint",
    "list_presets",
    "load_checkpoint",
    "load_demonstrations",
    "load_encoder",
    "load_policy",
    "load_preset",
    "make_model",
    "make_vec_env",
    "policy_from_bytes",
    "policy_kwargs_for",
    "policy_to_bytes",
    "run_dagger",
    "save_checkpoint",
    "save_encoder",
    "train_encoder",
]


def test_version_matches_installed_metadata() -> None:
    assert tm_algos.__version__ == importlib.metadata.version("tm-algos")


def test_public_api_is_pinned() -> None:
    assert tm_algos.__all__ == PUBLIC_API


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(tm_algos, name) is not None
    assert name in dir(tm_algos)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tm_algos.nope


def test_every_error_derives_from_the_package_base() -> None:
    errors = [getattr(tm_algos, n) for n in PUBLIC_API if n.endswith("Error")]
    assert errors and all(issubclass(e, TMAlgosError) for e in errors)
    assert issubclass(TMAlgosError, TrackMasterError)
    assert all(issubclass(e, (ValueError, TypeError)) for e in errors if e is not TMAlgosError)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import tm_algos",
        "import tm_algos.registry, tm_algos.errors",
        "from tm_algos import load_preset, list_presets, ALGORITHMS",
    ],
)
def test_the_package_face_imports_no_torch(code: str) -> None:
    loaded = _modules_after(code)
    heavy = {"torch", "stable_baselines3", "sb3_contrib", "numba"} & loaded
    assert not heavy, f"{code!r} imported {sorted(heavy)}"
