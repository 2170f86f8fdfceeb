"""TMRL migration: the restricted reward unpickler, the config translation and `tm-gym import-tmrl`.

The pickles here are made the way TMRL makes its reward.pkl (``pickle.dump`` of a float64 (N, 3)
array) and the way an attacker would (a ``__reduce__`` that calls ``os.system``); the config is
shaped like the one TMRL's reference guide documents.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tm_gym.cli.main import main
from tm_gym.error import TMGymError, TrackMasterError
from tm_gym.game.tmrl_import import (
    TmrlImportError,
    UnsafePickleError,
    convert_tmrl_reward,
    load_tmrl_reward,
    translate_tmrl_config,
)
from tm_gym.reward import ReferenceTrajectory

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def tmrl_positions(n: int = 400) -> np.ndarray:
    """A 40 m curve sampled every 0.1 m, as TMRL's record-reward writes (x, y up, z)."""
    t = np.arange(n) * 0.1
    return np.stack([t, 0.5 + 0.0 * t, 20.0 * np.sin(t / 20.0)], axis=1)


class RunsCommand:
    """A pickle that would create ``path`` through os.system if it were ever unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


class CallsEval:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("1 + 1",))


# --------------------------------------------------------------------------- reward.pkl


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_array_pickle_converts(tmp_path: Path, protocol: int) -> None:
    positions = tmrl_positions()
    pkl = tmp_path / "reward.pkl"
    pkl.write_bytes(pickle.dumps(positions, protocol=protocol))
    loaded = load_tmrl_reward(pkl)
    np.testing.assert_array_equal(loaded, positions)  # same axes, same order: no swap

    written, points = convert_tmrl_reward(pkl, tmp_path / "reward.npz")
    ref = ReferenceTrajectory.load(written)
    assert ref.points.shape == (points, 3)
    np.testing.assert_allclose(ref.points[0], positions[0])
    length = float(np.sum(np.linalg.norm(np.diff(positions, axis=0), axis=1)))
    assert ref.length == pytest.approx(length, abs=0.1)


def test_list_of_floats_converts(tmp_path: Path) -> None:
    pkl = tmp_path / "reward.pkl"
    pkl.write_bytes(pickle.dumps([[0.0, 1.0, 0.0], [3.0, 1.0, 4.0], [6.0, 1.0, 8.0]]))
    _, points = convert_tmrl_reward(pkl, tmp_path / "ref.npz")
    assert points == 101  # 10 m at 0.1 m
    # numpy scalars in a list are plain numbers too
    pkl.write_bytes(pickle.dumps([[np.float64(0.0)] * 3, [np.float64(1.0)] * 3]))
    assert load_tmrl_reward(pkl).shape == (2, 3)


def test_code_running_pickle_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pkl = tmp_path / "reward.pkl"
    pkl.write_bytes(pickle.dumps(RunsCommand(marker)))
    with pytest.raises(UnsafePickleError, match=r"refused the global (posix|nt|os)\.system"):
        load_tmrl_reward(pkl)
    assert not marker.exists()
    # the same inside a list next to a real array, and through the converter
    pkl.write_bytes(pickle.dumps([tmrl_positions(), RunsCommand(marker)]))
    with pytest.raises(UnsafePickleError, match="system"):
        convert_tmrl_reward(pkl, tmp_path / "ref.npz")
    assert not marker.exists() and not (tmp_path / "ref.npz").exists()


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (CallsEval(), "builtins.eval"),
        (np.load, "numpy.load"),  # a numpy global that is not on the list
        (np.array([1, "a", None], dtype=object), "dtype object"),
    ],
)
def test_other_globals_and_object_arrays_are_refused(
    tmp_path: Path, payload: object, refused: str
) -> None:
    pkl = tmp_path / "reward.pkl"
    pkl.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafePickleError) as info:
        load_tmrl_reward(pkl)
    assert refused in str(info.value)
    assert isinstance(info.value, TMGymError) and isinstance(info.value, TrackMasterError)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00garbage, not a pickle", "not a readable TMRL reward pickle"),
        (b"", "not a readable TMRL reward pickle"),
        (pickle.dumps({"x": 1.0}), "holds a dict"),
        (pickle.dumps(np.zeros((5, 2))), r"shape \(5, 2\)"),
        (pickle.dumps([[0.0, 0.0, float("nan")], [1.0, 1.0, 1.0]]), "NaN"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path: Path, content: bytes, match: str) -> None:
    pkl = tmp_path / "reward.pkl"
    pkl.write_bytes(content)
    with pytest.raises(TmrlImportError, match=match) as info:
        load_tmrl_reward(pkl)
    assert str(pkl) in str(info.value)


def test_missing_file_and_bad_out(tmp_path: Path) -> None:
    with pytest.raises(TmrlImportError, match="cannot read the TMRL reward file"):
        load_tmrl_reward(tmp_path / "nope.pkl")
    with pytest.raises(TmrlImportError, match=r"\.npz"):
        convert_tmrl_reward(tmp_path / "nope.pkl", tmp_path / "ref.pkl")


# --------------------------------------------------------------------------- config.json


def tmrl_config() -> dict[str, Any]:
    """The keys of TMRL 0.6's config.json (readme/reference_guide.md), LIDAR variant."""
    return {
        "RUN_NAME": "SAC_4_LIDAR",
        "RESET_TRAINING": False,
        "BUFFERS_MAXLEN": 500000,
        "RW_MAX_SAMPLES_PER_EPISODE": 1000,
        "CUDA_TRAINING": True,
        "CUDA_INFERENCE": False,
        "VIRTUAL_GAMEPAD": True,
        "LOCALHOST_WORKER": True,
        "LOCALHOST_TRAINER": True,
        "PUBLIC_IP_SERVER": "0.0.0.0",
        "PASSWORD": "hunter2-do-not-print",
        "TLS": False,
        "TLS_HOSTNAME": "default",
        "TLS_CREDENTIALS_DIRECTORY": "",
        "NB_WORKERS": -1,
        "WANDB_PROJECT": "tmrl",
        "WANDB_ENTITY": "tmrl",
        "WANDB_KEY": "secret-wandb-key",
        "PORT": 55555,
        "LOCAL_PORT_SERVER": 55556,
        "LOCAL_PORT_TRAINER": 55557,
        "LOCAL_PORT_WORKER": 55558,
        "BUFFER_SIZE": 536870912,
        "HEADER_SIZE": 12,
        "MAX_EPOCHS": 10000,
        "ROUNDS_PER_EPOCH": 100,
        "TRAINING_STEPS_PER_ROUND": 200,
        "MAX_TRAINING_STEPS_PER_ENVIRONMENT_STEP": 4.0,
        "ENVIRONMENT_STEPS_BEFORE_TRAINING": 1000,
        "UPDATE_MODEL_INTERVAL": 200,
        "UPDATE_BUFFER_INTERVAL": 200,
        "SAVE_MODEL_EVERY": 0,
        "MEMORY_SIZE": 1000000,
        "BATCH_SIZE": 256,
        "ALG": {
            "ALGORITHM": "SAC",
            "LEARN_ENTROPY_COEF": False,
            "LR_ACTOR": 0.00001,
            "LR_CRITIC": 0.00005,
            "LR_ENTROPY": 0.0003,
            "GAMMA": 0.995,
            "POLYAK": 0.995,
            "TARGET_ENTROPY": -0.5,
            "ALPHA": 0.01,
            "REDQ_N": 10,
            "REDQ_M": 2,
            "REDQ_Q_UPDATES_PER_POLICY_UPDATE": 20,
            "OPTIMIZER_ACTOR": "adam",
            "OPTIMIZER_CRITIC": "adam",
            "BETAS_ACTOR": [0.997, 0.997],
            "BETAS_CRITIC": [0.997, 0.997],
            "L2_ACTOR": 0.0,
            "L2_CRITIC": 0.0,
        },
        "ENV": {
            "RTGYM_INTERFACE": "TM20LIDAR",
            "WINDOW_WIDTH": 958,
            "WINDOW_HEIGHT": 488,
            "SLEEP_TIME_AT_RESET": 1.5,
            "IMG_HIST_LEN": 4,
            "RTGYM_CONFIG": {
                "time_step_duration": 0.05,
                "start_obs_capture": 0.04,
                "time_step_timeout_factor": 1.0,
                "act_buf_len": 2,
                "benchmark": False,
                "wait_on_done": True,
                "ep_max_length": 1000,
                "interface_kwargs": {"save_replays": False},
            },
            "REWARD_CONFIG": {
                "END_OF_TRACK": 100.0,
                "CONSTANT_PENALTY": 0.0,
                "CHECK_FORWARD": 500,
                "CHECK_BACKWARD": 10,
                "FAILURE_COUNTDOWN": 10,
                "MIN_STEPS": 70,
                "MAX_STRAY": 100.0,
            },
        },
        "__VERSION__": "0.6.0",
        "SOMETHING_NEW": 1,
    }


def test_config_translation_maps_env_reward_algo_and_dist() -> None:
    tr = translate_tmrl_config(tmrl_config())
    assert tr.env_kwargs == {
        "obs_type": "lidar",
        "time_step_duration": 0.05,
        "start_obs_capture": 0.04,
        "time_step_timeout_factor": 1.0,
        "act_buf_len": 2,
        "ep_max_length": 1000,
        "img_hist_len": 4,
        "respawn_wait": 1.5,
        "controller": "gamepad",
    }
    from tm_gym.reward import RewardConfig

    assert RewardConfig(**tr.reward_config) == RewardConfig()  # TMRL's defaults are ours
    assert tr.preset == "lidar-sac"
    sets = dict(o.split("=", 1) for o in tr.preset_overrides)
    assert sets["env.id"] == '"TrackMania-v0"' and sets["env.obs_type"] == '"lidar"'
    assert sets["algo.hyperparameters.learning_rate"] == "1e-05"
    assert sets["algo.hyperparameters.gamma"] == "0.995"
    assert float(sets["algo.hyperparameters.tau"]) == pytest.approx(0.005)
    assert sets["algo.hyperparameters.ent_coef"] == "0.01"
    assert sets["algo.hyperparameters.buffer_size"] == "1000000"
    assert sets["algo.hyperparameters.learning_starts"] == "1000"
    assert "policy.kwargs.n_critics" not in sets  # REDQ keys only for REDQSAC
    assert tr.dist["connection"] == {"host": "127.0.0.1", "port": 55555, "tls": False}
    assert tr.dist["trainer"]["device"] == "cuda" and tr.dist["worker"]["device"] == "cpu"
    assert tr.dist["trainer"]["run_dir"] == "runs/SAC_4_LIDAR"
    assert tr.dist["trainer"]["max_train_steps_per_env_step"] == 4.0
    for key in (
        "ENV.WINDOW_WIDTH",
        "ALG.LR_CRITIC",
        "ALG.BETAS_ACTOR",
        "ENV.RTGYM_CONFIG.wait_on_done",
        "PASSWORD",
        "LOCAL_PORT_WORKER",
        "SOMETHING_NEW",
    ):
        assert key in tr.unmapped, key
    assert "ALG.L2_ACTOR" not in tr.unmapped  # 0.0 is Adam's default
    assert "ENV.REWARD_CONFIG.CONSTANT_PENALTY" not in tr.unmapped  # 0 is what we do


def test_translation_never_contains_secrets_and_is_valid_toml_and_json() -> None:
    tr = translate_tmrl_config(tmrl_config())
    toml_text, json_text = tr.to_toml(), tr.to_json()
    for text in (toml_text, json_text):
        assert "hunter2" not in text and "secret-wandb-key" not in text
    doc = tomllib.loads(toml_text)
    assert doc["env"]["obs_type"] == "lidar"
    assert doc["tm_dist"]["connection"]["port"] == 55555
    assert doc["preset"]["name"] == "lidar-sac"
    assert "SOMETHING_NEW" in doc["unmapped"]
    assert json.loads(json_text)["reward_config"]["lookahead"] == 500


def test_redq_images_and_remote_server() -> None:
    cfg = tmrl_config()
    cfg["ALG"]["ALGORITHM"] = "REDQSAC"
    cfg["ENV"]["RTGYM_INTERFACE"] = "TM20FULL"
    cfg["ENV"].update(IMG_WIDTH=64, IMG_HEIGHT=64, IMG_GRAYSCALE=True)
    cfg.update(LOCALHOST_WORKER=False, PUBLIC_IP_SERVER="203.0.113.7", TLS=True)
    tr = translate_tmrl_config(cfg)
    assert tr.env_kwargs["obs_type"] == "images" and tr.env_kwargs["img_size"] == 64
    assert tr.preset == "images-sac" and "ALG.ALGORITHM" in tr.unmapped
    assert tr.dist["connection"]["host"] == "203.0.113.7" and tr.dist["connection"]["tls"]

    cfg["ENV"]["RTGYM_INTERFACE"] = "TM20LIDAR"
    tr = translate_tmrl_config(cfg)
    sets = dict(o.split("=", 1) for o in tr.preset_overrides)
    assert tr.preset == "lidar-redq" and sets["policy.kwargs.n_critics"] == "10"
    assert sets["algo.hyperparameters.subset_size"] == "2"


def test_config_errors(tmp_path: Path) -> None:
    from tm_gym.game.tmrl_import import read_tmrl_config

    bad = tmp_path / "config.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(TmrlImportError, match="not valid JSON"):
        read_tmrl_config(bad)
    with pytest.raises(TmrlImportError, match="cannot read the TMRL config"):
        read_tmrl_config(tmp_path / "missing.json")
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TmrlImportError, match="JSON object"):
        read_tmrl_config(bad)


# --------------------------------------------------------------------------- the CLI


def test_cli_converts_reward_and_prints_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkl = tmp_path / "reward.pkl"
    pkl.write_bytes(pickle.dumps(tmrl_positions()))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tmrl_config()), encoding="utf-8")
    out = tmp_path / "ref.npz"
    code = main(["import-tmrl", "--reward", str(pkl), "--out", str(out), "--config", str(cfg)])
    assert code == 0
    assert ReferenceTrajectory.load(out).points.shape[1] == 3
    captured = capsys.readouterr()
    assert tomllib.loads(captured.out)["env"]["controller"] == "gamepad"
    assert "hunter2" not in captured.out + captured.err
    assert "not carried over" in captured.err


def test_cli_refuses_a_code_running_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    pkl = tmp_path / "reward.pkl"
    pkl.write_bytes(pickle.dumps(RunsCommand(marker)))
    code = main(["import-tmrl", "--reward", str(pkl), "--out", str(tmp_path / "r.npz")])
    assert code == 2
    assert "refused the global" in capsys.readouterr().err
    assert not marker.exists()


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-tmrl"]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert main(["import-tmrl", "--reward", str(tmp_path / "r.pkl")]) == 2
    assert "--out" in capsys.readouterr().err
