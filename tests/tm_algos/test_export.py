"""Policy files: safetensors + JSON round trips, allow lists, tampered files, no unpickling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file
from sb3_contrib import TQC, RecurrentPPO
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

import tm_gym  # noqa: F401  (registers the environments)
from tm_algos.policy import (
    FEATURE_EXTRACTORS,
    JSON_NAME,
    WEIGHTS_NAME,
    PolicyFileError,
    allow_lists,
    describe_space,
    export_policy,
    load_policy,
    register_extractor,
    space_from_description,
)
from tm_algos.policy.spaces import SpaceFormatError

Obs = dict[str, NDArray[Any]]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env() -> gym.Env[Any, Any]:
    return gym.make("TrackMania-Sim-v0", obs_type="lidar")


@pytest.fixture(scope="module")
def observations(env: gym.Env[Any, Any]) -> list[Obs]:
    """20 observations from an episode driven with random actions."""
    out = []
    env.action_space.seed(1)
    obs, _ = env.reset(seed=1)
    for _ in range(20):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        out.append(obs)
        if term or trunc:
            obs, _ = env.reset()
    return out


def _train(kind: str, env: gym.Env[Any, Any]) -> BaseAlgorithm:
    small: dict[str, Any] = {"net_arch": [16, 16]}
    model: BaseAlgorithm
    if kind == "SAC":
        model = SAC(
            "MultiInputPolicy", env, learning_starts=50, batch_size=16, policy_kwargs=small, seed=0
        )
    elif kind == "TQC":
        model = TQC(
            "MultiInputPolicy",
            env,
            learning_starts=50,
            batch_size=16,
            policy_kwargs={**small, "n_quantiles": 5},
            seed=0,
        )
    elif kind == "PPO":
        model = PPO(
            "MultiInputPolicy",
            env,
            n_steps=64,
            batch_size=32,
            n_epochs=1,
            policy_kwargs=small,
            seed=0,
        )
    else:
        model = RecurrentPPO(
            "MultiInputLstmPolicy",
            env,
            n_steps=64,
            batch_size=32,
            n_epochs=1,
            policy_kwargs={**small, "lstm_hidden_size": 8},
            seed=0,
        )
    model.learn(100 if kind in ("SAC", "TQC") else 64)
    return model


@pytest.fixture(scope="module")
def sac(env: gym.Env[Any, Any]) -> BaseAlgorithm:
    return _train("SAC", env)


@pytest.fixture(scope="module")
def sac_dir(sac: BaseAlgorithm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_policy(sac, tmp_path_factory.mktemp("sac"))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (JSON_NAME, WEIGHTS_NAME):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _edit_json(d: Path, **changes: Any) -> None:
    config = json.loads((d / JSON_NAME).read_text())
    config.update(changes)
    (d / JSON_NAME).write_text(json.dumps(config))


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any use of pickle (or torch.load, which unpickles) during the test fails it."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["SAC", "TQC", "PPO"])
def test_round_trip_gives_the_same_deterministic_actions(
    kind: str,
    env: gym.Env[Any, Any],
    observations: list[Obs],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    model = request.getfixturevalue("sac") if kind == "SAC" else _train(kind, env)
    out = export_policy(model, tmp_path / "policy")
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS_NAME, JSON_NAME])
    request.getfixturevalue("no_pickle")
    loaded = load_policy(out)
    assert not loaded.policy.training
    assert loaded.config["algorithm"] == kind
    for obs in observations:
        expected, _ = model.predict(obs, deterministic=True)
        np.testing.assert_array_equal(loaded.act(obs), expected)
    batch = {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    expected, _ = model.predict(batch, deterministic=True)
    got = loaded.act(batch)
    assert got.shape == (20, 3)
    np.testing.assert_array_equal(got, expected)


def test_recurrent_ppo_keeps_its_state_between_calls(
    env: gym.Env[Any, Any], observations: list[Obs], tmp_path: Path, no_pickle: None
) -> None:
    model = _train("RecurrentPPO", env)
    loaded = load_policy(export_policy(model, tmp_path))
    for _ in range(2):  # a second episode after reset() starts from a fresh state again
        loaded.reset()
        state = None
        for i, obs in enumerate(observations):
            start = np.array([i == 0])
            expected, state = model.predict(obs, state, start, deterministic=True)
            np.testing.assert_array_equal(loaded.act(obs, episode_start=i == 0), expected)
    batch = {k: v[None] for k, v in observations[0].items()}
    with pytest.raises(PolicyFileError, match="call reset"):
        loaded.act({k: np.concatenate([v, v]) for k, v in batch.items()})


def test_json_describes_the_policy(sac_dir: Path) -> None:
    config = json.loads((sac_dir / JSON_NAME).read_text())
    assert config["format"] == "tm-algos-policy/1"
    assert config["policy_class"] == "MultiInputPolicy"
    assert config["features_extractor"] == "CombinedExtractor"
    assert config["activation"] == "ReLU"
    assert config["net_arch"] == [16, 16]
    assert config["env_settings"]["obs_type"] == "lidar"
    assert config["deterministic_action"]["squash_output"] is True
    lidar = config["observation_space"]["spaces"]["lidar"]
    assert lidar == {"kind": "Box", "shape": [4, 19], "dtype": "float32", "low": 0.0, "high": 150.0}
    tensors = load_file(str(sac_dir / WEIGHTS_NAME))
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in tensors.values())


class TinyExtractor(BaseFeaturesExtractor):
    """Flattens every key and applies one linear layer."""

    def __init__(self, observation_space: spaces.Dict, features_dim: int = 8) -> None:
        super().__init__(observation_space, features_dim)
        n = sum(int(np.prod(s.shape)) for s in observation_space.spaces.values())  # type: ignore[arg-type]
        self.linear = nn.Linear(n, features_dim)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([obs[k].flatten(1) for k in sorted(obs)], dim=1)
        return torch.relu(self.linear(flat))


class TakesAModule(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Dict, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(observation_space, 4)
        self.linear = nn.Linear(1, 4)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(obs["speed"])


def test_registered_extractor_round_trips(
    env: gym.Env[Any, Any], observations: list[Obs], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(FEATURE_EXTRACTORS, "tiny", TinyExtractor)
    kwargs = {
        "features_extractor_class": TinyExtractor,
        "features_extractor_kwargs": {"features_dim": 6},
    }
    model = PPO(
        "MultiInputPolicy", env, n_steps=32, batch_size=32, n_epochs=1, policy_kwargs=kwargs
    )
    loaded = load_policy(export_policy(model, tmp_path))
    assert loaded.config["features_extractor"] == "tiny"
    assert loaded.config["features_extractor_kwargs"] == {"features_dim": 6}
    for obs in observations[:5]:
        np.testing.assert_array_equal(loaded.act(obs), model.predict(obs, deterministic=True)[0])


def test_register_extractor_refuses_to_take_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allow_lists, "FEATURE_EXTRACTORS", dict(FEATURE_EXTRACTORS))
    with pytest.raises(PolicyFileError, match="already taken"):
        register_extractor("CombinedExtractor", TinyExtractor)
    with pytest.raises(TypeError, match="BaseFeaturesExtractor"):
        register_extractor("bad", nn.Linear)  # type: ignore[arg-type]


# -- export refuses what a file cannot hold ----------------------------------------------


def test_export_refuses_unregistered_extractor(env: gym.Env[Any, Any], tmp_path: Path) -> None:
    kwargs = {"features_extractor_class": TinyExtractor}
    model = PPO("MultiInputPolicy", env, n_steps=32, batch_size=32, policy_kwargs=kwargs)
    with pytest.raises(
        PolicyFileError, match=r"TinyExtractor is not in tm-algos' allow list.*register_extractor"
    ):
        export_policy(model, tmp_path)


def test_export_refuses_kwargs_json_cannot_hold(
    env: gym.Env[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(FEATURE_EXTRACTORS, "takes-a-module", TakesAModule)
    kwargs = {
        "features_extractor_class": TakesAModule,
        "features_extractor_kwargs": {"act": nn.Tanh},
    }
    model = PPO("MultiInputPolicy", env, n_steps=32, batch_size=32, policy_kwargs=kwargs)
    with pytest.raises(
        PolicyFileError, match=r"features_extractor_kwargs\['act'\].*cannot be written to JSON"
    ):
        export_policy(model, tmp_path)
    assert not (tmp_path / JSON_NAME).exists()


# -- tampered or broken files ------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("policy_class", "os.system", "SAC policy class 'os.system' is not allowed"),
        ("policy_class", "Evil", "SAC policy class 'Evil' is not allowed"),
        (
            "features_extractor",
            "subprocess.Popen",
            "feature extractor 'subprocess.Popen' is not allowed",
        ),
        ("activation", "builtins.eval", "activation 'builtins.eval' is not allowed"),
        ("algorithm", "DQN", "algorithm 'DQN' is not allowed"),
        ("format", "sb3-zip", "format='sb3-zip', expected 'tm-algos-policy/1'"),
    ],
)
def test_tampered_json_is_refused(
    sac_dir: Path, tmp_path: Path, no_pickle: None, field: str, value: str, message: str
) -> None:
    d = _copy(sac_dir, tmp_path)
    _edit_json(d, **{field: value})
    with pytest.raises(PolicyFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_policy(d)


def test_bad_constructor_arguments_are_refused(sac_dir: Path, tmp_path: Path) -> None:
    d = _copy(sac_dir, tmp_path)
    config = json.loads((d / JSON_NAME).read_text())
    _edit_json(d, policy_kwargs={**config["policy_kwargs"], "run": "rm -rf /"})
    with pytest.raises(PolicyFileError, match="could not build SAC MultiInputPolicy"):
        load_policy(d)


def test_wrong_tensor_names_and_shapes_are_refused(sac_dir: Path, tmp_path: Path) -> None:
    d = _copy(sac_dir, tmp_path)
    tensors = load_file(str(d / WEIGHTS_NAME))
    first = sorted(tensors)[0]
    tensors["evil.weight"] = tensors.pop(first)
    save_file(tensors, str(d / WEIGHTS_NAME))
    with pytest.raises(
        PolicyFileError,
        match=rf"missing tensors \['{first}'\].*unexpected tensors \['evil.weight'\]",
    ):
        load_policy(d)

    tensors = load_file(str(sac_dir / WEIGHTS_NAME))
    key = next(k for k, v in tensors.items() if v.ndim == 2)
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(d / WEIGHTS_NAME))
    with pytest.raises(PolicyFileError, match=rf"wrong shapes \[{key}: \(3, 3\) in the file"):
        load_policy(d)

    (d / WEIGHTS_NAME).write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(PolicyFileError, match="not a readable safetensors file"):
        load_policy(d)


def test_missing_or_invalid_files_are_explained(sac_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        PolicyFileError, match="does not exist: expected a directory written by export_policy"
    ):
        load_policy(tmp_path / "nowhere")
    d = _copy(sac_dir, tmp_path / "bad")
    (d / JSON_NAME).write_text("{not json")
    with pytest.raises(PolicyFileError, match="is not valid JSON"):
        load_policy(d)


# -- act() validates observations --------------------------------------------------------


def test_act_validates_observations(sac_dir: Path, observations: list[Obs]) -> None:
    loaded = load_policy(sac_dir)
    obs = observations[0]
    with pytest.raises(PolicyFileError, match=r"missing \['speed'\]"):
        loaded.act({k: v for k, v in obs.items() if k != "speed"})
    with pytest.raises(PolicyFileError, match=r"unexpected \['gear'\]"):
        loaded.act({**obs, "gear": np.zeros(1, np.float32)})
    with pytest.raises(PolicyFileError, match=r"'lidar' has shape \(19,\): expected \(4, 19\)"):
        loaded.act({**obs, "lidar": obs["lidar"][0]})
    with pytest.raises(PolicyFileError, match="mixes single and batched"):
        loaded.act({**obs, "speed": obs["speed"][None]})
    with pytest.raises(PolicyFileError, match="expected a dict"):
        loaded.act(obs["lidar"])
    as_float64 = {k: v.astype(np.float64) for k, v in obs.items()}
    np.testing.assert_array_equal(loaded.act(as_float64), loaded.act(obs))


def test_spaces_round_trip_with_infinite_and_uneven_bounds() -> None:
    box = spaces.Box(
        low=np.array([-np.inf, 0.0, -1.5], np.float32),
        high=np.array([np.inf, 1.0, 2.0], np.float32),
    )
    space = spaces.Dict({"a": box, "img": spaces.Box(0, 255, (2, 4, 4), np.uint8)})
    text = json.dumps(describe_space(space), allow_nan=False)
    back = space_from_description(json.loads(text))
    assert back == space
    with pytest.raises(SpaceFormatError, match=r"space.kind='Tuple'"):
        space_from_description({"kind": "Tuple"})
