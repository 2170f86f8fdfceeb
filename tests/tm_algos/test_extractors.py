"""Feature extractors on tm-gym's real observation spaces, and short training runs with SB3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

import tm_gym  # noqa: F401  (registers the environments)
from tm_algos.extractors import (
    TELEMETRY_SCALES,
    TelemetryNorm,
    TMCNNExtractor,
    TMLidarExtractor,
    TMViTExtractor,
    policy_kwargs_for,
    random_shift,
)
from tm_gym.core.geometry import LIDAR_RANGE
from tm_gym.core.settings import MAX_GEAR, MAX_RPM, MAX_SPEED_KMH

BATCH = 6


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def obs_spaces() -> dict[str, spaces.Dict]:
    out: dict[str, spaces.Dict] = {}
    for t in ("images", "lidar", "lidar_progress"):
        env = gym.make("TrackMania-Sim-v0", obs_type=t)
        assert isinstance(env.observation_space, spaces.Dict)
        out[t] = env.observation_space
        env.close()
    return out


def batch_of(space: spaces.Dict, n: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    space.seed(seed)
    samples = [space.sample() for _ in range(n)]
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in space.spaces}


CASES: list[tuple[str, type[BaseFeaturesExtractor], dict[str, Any]]] = [
    ("images", TMCNNExtractor, {"arch": "tmrl"}),
    ("images", TMCNNExtractor, {"arch": "small", "features_dim": 64}),
    ("images", TMCNNExtractor, {"arch": "small", "augment_shift": 4}),
    ("images", TMViTExtractor, {"dim": 32, "depth": 1, "heads": 2}),
    ("lidar", TMLidarExtractor, {}),
    ("lidar_progress", TMLidarExtractor, {"hidden": (32,)}),
]
IDS = [f"{c.__name__}-{t}-{k}" for t, c, k in CASES]


@pytest.mark.parametrize(("obs_type", "cls", "kwargs"), CASES, ids=IDS)
def test_forward_shape_and_finite(
    obs_spaces: dict[str, spaces.Dict],
    obs_type: str,
    cls: type[BaseFeaturesExtractor],
    kwargs: dict[str, Any],
) -> None:
    space = obs_spaces[obs_type]
    ext = cls(space, **kwargs)
    for mode in (True, False):
        ext.train(mode)
        feats = ext(batch_of(space))
        assert feats.shape == (BATCH, ext.features_dim)
        assert feats.dtype == torch.float32
        assert torch.isfinite(feats).all()


@pytest.mark.parametrize(("obs_type", "cls", "kwargs"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(
    obs_spaces: dict[str, spaces.Dict],
    obs_type: str,
    cls: type[BaseFeaturesExtractor],
    kwargs: dict[str, Any],
) -> None:
    torch.manual_seed(0)
    space = obs_spaces[obs_type]
    ext = cls(space, **kwargs)
    ext(batch_of(space)).pow(2).sum().backward()
    for name, p in ext.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_real_observation_goes_through(obs_spaces: dict[str, spaces.Dict]) -> None:
    env = gym.make("TrackMania-Sim-v0", obs_type="images")
    obs, _ = env.reset(seed=1)
    env.close()
    ext = TMCNNExtractor(obs_spaces["images"], arch="small").eval()
    batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
    assert torch.isfinite(ext(batch)).all()


def test_uint8_frames_are_scaled_like_sb3_does(obs_spaces: dict[str, spaces.Dict]) -> None:
    # SB3 hands the extractor floats in [0, 1]; raw uint8 tensors must give the same features
    ext = TMCNNExtractor(obs_spaces["images"], arch="small").eval()
    raw = batch_of(obs_spaces["images"])
    scaled = dict(raw, images=raw["images"].float() / 255.0)
    torch.testing.assert_close(ext(raw), ext(scaled))


def test_augmentation_only_in_training_mode(obs_spaces: dict[str, spaces.Dict]) -> None:
    space = obs_spaces["images"]
    obs = batch_of(space)
    ext = TMCNNExtractor(space, arch="small", augment_shift=4)
    ext.eval()
    torch.testing.assert_close(ext(obs), ext(obs))
    ext.train()
    torch.manual_seed(0)
    assert not torch.allclose(ext(obs), ext(obs))
    plain = TMCNNExtractor(space, arch="small", augment_shift=0).train()
    torch.testing.assert_close(plain(obs), plain(obs))


@pytest.mark.parametrize("cls", [TMCNNExtractor, TMViTExtractor])
def test_ignored_telemetry_keys_do_not_reach_the_features(
    obs_spaces: dict[str, spaces.Dict], cls: type[BaseFeaturesExtractor]
) -> None:
    space = obs_spaces["images"]
    obs = batch_of(space)
    other_actions = dict(obs, actions=-obs["actions"])
    faster = dict(obs, speed=obs["speed"] + 100.0)
    torch.manual_seed(0)
    blind = cls(space, ignore_keys=["actions"]).eval()
    assert "actions" not in blind.telemetry.keys  # type: ignore[union-attr]
    torch.testing.assert_close(blind(obs), blind(other_actions))
    assert not torch.allclose(blind(obs), blind(faster))  # speed is still read
    seeing = cls(space).eval()
    assert not torch.allclose(seeing(obs), seeing(other_actions))


def test_random_shift_is_a_crop_of_the_padded_image() -> None:
    torch.manual_seed(0)
    x = torch.rand(5, 2, 16, 16)
    pad = 3
    y = random_shift(x, pad)
    assert y.shape == x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    for i in range(5):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(xp[i, :, dy : dy + 16, dx : dx + 16], y[i])
        ]
        assert hits, f"sample {i} is not a crop of its padded image"
    assert random_shift(x, 0) is x


def test_telemetry_norm_scales(obs_spaces: dict[str, spaces.Dict]) -> None:
    space = obs_spaces["images"]
    norm = TelemetryNorm(space)
    assert norm.keys == ("speed", "gear", "rpm", "actions")
    assert norm.out_dim == 3 + 2 * 3
    obs = {
        "speed": torch.tensor([[500.0]]),
        "gear": torch.tensor([[5.0]]),
        "rpm": torch.tensor([[12000.0]]),
        "actions": torch.tensor([[[1.0, 0.0, -0.5], [0.0, 1.0, 0.25]]]),
        "images": torch.zeros(1, 4, 64, 64, dtype=torch.uint8),
    }
    expected = torch.tensor([[0.5, 1.0, 1.0, 1.0, 0.0, -0.5, 0.0, 1.0, 0.25]])
    torch.testing.assert_close(norm(obs), expected)

    lidar = TelemetryNorm(obs_spaces["lidar_progress"])
    assert lidar.keys == ("speed", "progress", "actions", "lidar")
    assert lidar.out_dim == 1 + 1 + 6 + 4 * 19
    batch = batch_of(obs_spaces["lidar_progress"])
    assert lidar(batch).abs().max() <= 1.0


def test_scales_match_the_env_bounds(obs_spaces: dict[str, spaces.Dict]) -> None:
    assert TELEMETRY_SCALES["speed"] == MAX_SPEED_KMH
    assert TELEMETRY_SCALES["gear"] == MAX_GEAR
    assert TELEMETRY_SCALES["rpm"] == MAX_RPM
    assert TELEMETRY_SCALES["lidar"] == LIDAR_RANGE
    for space in obs_spaces.values():
        for key, box in space.spaces.items():
            if key != "images":
                assert isinstance(box, spaces.Box)
                assert float(np.abs(box.high).max()) == TELEMETRY_SCALES[key], key


def test_wrong_space_names_the_key_and_the_right_extractor(
    obs_spaces: dict[str, spaces.Dict],
) -> None:
    with pytest.raises(ValueError, match=r"'images'.*TMLidarExtractor"):
        TMCNNExtractor(obs_spaces["lidar"])
    with pytest.raises(ValueError, match=r"'images'.*TMLidarExtractor"):
        TMViTExtractor(obs_spaces["lidar_progress"])
    with pytest.raises(ValueError, match=r"'lidar'.*TMCNNExtractor"):
        TMLidarExtractor(obs_spaces["images"])
    with pytest.raises(ValueError, match="MultiInputPolicy"):
        TMLidarExtractor(spaces.Box(0, 1, (10,)))
    odd = spaces.Dict(dict(obs_spaces["lidar"].spaces, fuel=spaces.Box(0, 1, (1,))))
    with pytest.raises(ValueError, match="'fuel'"):
        TMLidarExtractor(odd)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (TMCNNExtractor, {"arch": "resnet"}, "arch='resnet'"),
        (TMCNNExtractor, {"augment_shift": -1}, "augment_shift=-1"),
        (TMCNNExtractor, {"features_dim": 0}, "features_dim=0"),
        (TMViTExtractor, {"patch": 7}, "patch=7"),
        (TMViTExtractor, {"dim": 30, "heads": 4}, "dim=30"),
        (TMCNNExtractor, {"ignore_keys": ["action"]}, r"ignore_keys=\['action'\]"),
        (TMViTExtractor, {"ignore_keys": "actions"}, "ignore_keys='actions'"),
    ],
)
def test_bad_arguments_are_rejected(
    obs_spaces: dict[str, spaces.Dict],
    cls: type[BaseFeaturesExtractor],
    kwargs: dict[str, Any],
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        cls(obs_spaces["images"], **kwargs)
    with pytest.raises(ValueError, match="hidden="):
        TMLidarExtractor(obs_spaces["lidar"], hidden=(0,))


@pytest.mark.parametrize(("arch", "smallest"), [("tmrl", 50), ("small", 36)])
def test_frames_too_small_for_the_conv_stack(arch: str, smallest: int) -> None:
    def space(size: int) -> spaces.Dict:
        return spaces.Dict({"images": spaces.Box(0, 255, (4, size, size), np.uint8)})

    assert TMCNNExtractor(space(smallest), arch=arch).features_dim == 256
    with pytest.raises(ValueError, match=f"too small for arch='{arch}'"):
        TMCNNExtractor(space(smallest - 1), arch=arch)


def test_policy_kwargs_for() -> None:
    assert policy_kwargs_for("images") == {
        "features_extractor_class": TMCNNExtractor,
        "features_extractor_kwargs": {"arch": "small"},
    }
    kw = policy_kwargs_for("images", "tmrl", augment_shift=4)
    assert kw["features_extractor_kwargs"] == {"arch": "tmrl", "augment_shift": 4}
    assert policy_kwargs_for("images", "vit")["features_extractor_class"] is TMViTExtractor
    assert policy_kwargs_for("lidar_progress")["features_extractor_class"] is TMLidarExtractor
    with pytest.raises(ValueError, match="arch='mlp' does not fit obs_type='images'"):
        policy_kwargs_for("images", "mlp")
    with pytest.raises(ValueError, match="obs_type='pixels'"):
        policy_kwargs_for("pixels")


# -- short training runs: each algorithm learns a few hundred steps, saves, loads, predicts ----


def _sac(env: gym.Env[Any, Any], pk: dict[str, Any]) -> Any:
    return SAC("MultiInputPolicy", env, policy_kwargs=pk, **OFF_POLICY)


def _tqc(env: gym.Env[Any, Any], pk: dict[str, Any]) -> Any:
    from sb3_contrib import TQC

    pk = dict(pk, n_critics=2, n_quantiles=5)
    return TQC("MultiInputPolicy", env, policy_kwargs=pk, **OFF_POLICY)


def _crossq(env: gym.Env[Any, Any], pk: dict[str, Any]) -> Any:
    crossq = pytest.importorskip("sb3_contrib.crossq")
    from sb3_contrib.crossq.policies import CrossQPolicy

    from tm_algos.crossq import DictCrossQ

    # CrossQ ships only "MlpPolicy", and SB3 refuses that name for Dict spaces: pass the class
    pk = dict(pk, net_arch=[32, 32])
    with pytest.raises(TypeError):  # sb3-contrib's own CrossQ cannot join Dict observations
        plain = crossq.CrossQ(CrossQPolicy, env, policy_kwargs=pk, **OFF_POLICY)
        plain.learn(OFF_POLICY["learning_starts"] + 4)
    return DictCrossQ(CrossQPolicy, env, policy_kwargs=pk, **OFF_POLICY)


def _ppo(env: gym.Env[Any, Any], pk: dict[str, Any]) -> Any:
    return PPO("MultiInputPolicy", env, policy_kwargs=pk, **ON_POLICY)


def _recurrent_ppo(env: gym.Env[Any, Any], pk: dict[str, Any]) -> Any:
    from sb3_contrib import RecurrentPPO

    pk = dict(pk, lstm_hidden_size=32)
    return RecurrentPPO("MultiInputLstmPolicy", env, policy_kwargs=pk, **ON_POLICY)


OFF_POLICY: dict[str, Any] = {
    "buffer_size": 200,
    "learning_starts": 40,
    "batch_size": 16,
    "seed": 0,
    "device": "cpu",
}
ON_POLICY: dict[str, Any] = {
    "n_steps": 64,
    "batch_size": 32,
    "n_epochs": 1,
    "seed": 0,
    "device": "cpu",
}
ALGOS = {
    "SAC": _sac,
    "TQC": _tqc,
    "CrossQ": _crossq,
    "PPO": _ppo,
    "RecurrentPPO": _recurrent_ppo,
}


def _run(algo: str, obs_type: str, arch: str, kwargs: dict[str, Any], *marks: Any) -> Any:
    return pytest.param(algo, obs_type, arch, kwargs, marks=marks, id=f"{algo}-{obs_type}-{arch}")


EXTRACTOR_CASES = [  # (obs_type, arch, kwargs): every extractor, kept tiny
    ("lidar", "mlp", {"hidden": (64,)}),
    ("images", "small", {"features_dim": 32}),
    ("images", "tmrl", {"features_dim": 32}),
    ("images", "vit", {"dim": 32, "depth": 1, "heads": 2}),
]
RUNS = [  # each extractor with each algorithm, plus two variants
    _run(algo, obs_type, arch, kwargs)
    for algo in ALGOS
    for obs_type, arch, kwargs in EXTRACTOR_CASES
] + [
    _run("SAC", "images", "small", {"features_dim": 32, "augment_shift": 4}),
    _run("TQC", "lidar_progress", "mlp", {"hidden": (64,)}),
]


@pytest.mark.slow  # trains each algorithm for 128 steps
@pytest.mark.parametrize(("algo", "obs_type", "arch", "kwargs"), RUNS)
def test_training_smoke(
    tmp_path: Path, algo: str, obs_type: str, arch: str, kwargs: dict[str, Any]
) -> None:
    env = gym.make("TrackMania-Sim-v0", obs_type=obs_type)
    model = ALGOS[algo](env, policy_kwargs_for(obs_type, arch, **kwargs))
    owner = model.policy if algo in ("PPO", "RecurrentPPO") else model.policy.actor
    expected_cls = policy_kwargs_for(obs_type, arch)["features_extractor_class"]
    assert type(owner.features_extractor) is expected_cls
    before = [p.detach().clone() for p in owner.features_extractor.parameters()]
    model.learn(total_timesteps=128)
    after = list(owner.features_extractor.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)), "not trained"
    path = tmp_path / "model.zip"
    model.save(path)
    loaded = type(model).load(path, device="cpu")
    obs, _ = env.reset(seed=3)
    action, _ = loaded.predict(obs, deterministic=True)
    expected, _ = model.predict(obs, deterministic=True)
    env.close()
    assert action.shape == (3,)
    assert np.all(np.abs(action) <= 1.0)
    np.testing.assert_allclose(action, expected, atol=1e-5)
