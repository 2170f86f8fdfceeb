"""The perception encoder (pixels → LIDAR): its data, training, files, wrapper and extractor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import tm_gym  # noqa: F401  (registers the environment ids)
from tm_algos.errors import InvalidValueError, TMAlgosError
from tm_algos.extractors import PerceptionExtractor, policy_kwargs_for
from tm_algos.perception import (
    EncoderConfig,
    EncoderFileError,
    PerceptionData,
    PerceptionEncoder,
    PixelLidarWrapper,
    collect_pairs,
    lidar_error,
    load_encoder,
    photometric_jitter,
    save_encoder,
    train_encoder,
)
from tm_algos.registry import EXTRACTORS
from tm_gym.core.geometry import LIDAR_BEAMS, LIDAR_RANGE

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> PerceptionData:
    """240 pairs from two tracks, random looks, noisy expert."""
    return collect_pairs(["default", "gen:3"], 60, n_envs=4, seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_encoder(
        PerceptionEncoder(EncoderConfig(width=4, hidden=16)), tmp_path_factory.mktemp("enc")
    )


# -- the network ----------------------------------------------------------------------------------


def test_encoder_outputs_have_the_lidar_shape_and_range() -> None:
    enc = PerceptionEncoder()
    frames = torch.randint(0, 256, (5, 1, 64, 64), dtype=torch.uint8)
    out = enc(frames)
    assert out.shape == (5, LIDAR_BEAMS)
    assert bool(((out >= 0) & (out <= LIDAR_RANGE)).all())
    pred = enc.predict(frames.numpy())
    assert pred.shape == (5, LIDAR_BEAMS) and pred.dtype == np.float32
    np.testing.assert_allclose(pred, out.detach().numpy(), rtol=1e-5, atol=1e-4)
    assert enc.predict(np.zeros((0, 1, 64, 64), np.uint8)).shape == (0, LIDAR_BEAMS)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"img_size": 16}, "at least 32"),
        ({"channels": 2}, r"1 \(grayscale\) or 3"),
        ({"width": 0}, "positive integer"),
        ({"hidden": True}, "positive integer"),
    ],
)
def test_encoder_config_rejects_bad_values(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidValueError, match=fragment):
        EncoderConfig(**kwargs)


def test_encoder_names_the_frame_shape_it_expects() -> None:
    with pytest.raises(InvalidValueError, match=r"expected \(B, 1, 64, 64\)"):
        PerceptionEncoder()(torch.zeros(2, 4, 64, 64))


# -- data -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_collected_frames_and_scans_describe_the_same_state() -> None:
    """A pair is (newest frame, exact scan) of one state: the images and lidar environments
    hand out exactly these on the next step when driven the same way."""
    steps, track = 25, "gen:7"
    data = collect_pairs([track], steps, noise=(0.0, 0.0), start_jitter=0.0, visuals=None)
    assert len(data) == steps and data.tracks == (track,)
    envs = {k: gym.make("TrackMania-Sim-v0", obs_type=k, track=track) for k in ("images", "lidar")}
    for env in envs.values():
        env.reset(seed=0)
    for t in range(steps):
        for kind, env in envs.items():
            obs, *_ = env.step(env.unwrapped.expert_action())  # type: ignore[attr-defined]
            if kind == "images":
                np.testing.assert_array_equal(obs["images"][-1], data.frames[t, 0], f"frame {t}")
            else:
                np.testing.assert_allclose(obs["lidar"][-1], data.lidar[t], err_msg=f"scan {t}")
    assert np.ptp(data.lidar, axis=0).max() > 1.0  # the scans do change along the drive


@pytest.mark.slow
def test_collect_pairs_covers_every_track(tiny: PerceptionData) -> None:
    assert tiny.frames.shape == (240, 1, 64, 64) and tiny.frames.dtype == np.uint8
    assert tiny.lidar.shape == (240, LIDAR_BEAMS)
    assert set(tiny.track.tolist()) == {0, 1}
    assert ((tiny.lidar >= 0) & (tiny.lidar <= LIDAR_RANGE)).all()


def test_collect_pairs_checks_its_arguments() -> None:
    with pytest.raises(InvalidValueError, match="noise"):
        collect_pairs(["default"], 2, noise=(0.5, 0.1))
    with pytest.raises(InvalidValueError, match="steps=0"):
        collect_pairs(["default"], 0)


def test_lidar_error_in_metres_and_percent() -> None:
    exact = np.full((2, LIDAR_BEAMS), 30.0, np.float32)
    pred = exact.copy()
    pred[:, 0] += 19.0  # one beam off by 19 m → 1 m on average
    e = lidar_error(pred, exact)
    assert e.mae_m == pytest.approx(1.0)
    assert e.mae_pct == pytest.approx(100.0 / LIDAR_RANGE)
    assert e.per_beam_m[0] == pytest.approx(19.0) and e.per_beam_m[1] == 0.0
    with pytest.raises(InvalidValueError, match="expected two equal"):
        lidar_error(pred[:, :5], exact[:, :5])


# -- training -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_improves_the_error_on_a_tiny_dataset(tiny: PerceptionData) -> None:
    torch.manual_seed(0)
    enc = PerceptionEncoder(EncoderConfig(width=8, hidden=64))
    before = lidar_error(enc.predict(tiny.frames), tiny.lidar).mae_m
    enc, hist = train_encoder(
        tiny, encoder=enc, epochs=25, batch_size=32, photometric=0.2, validation=tiny
    )
    after = lidar_error(enc.predict(tiny.frames), tiny.lidar).mae_m
    assert hist.epochs == 25 and hist.updates == 25 * (len(tiny) // 32)
    assert after < 0.5 * before, (before, after)
    # better than the best constant scan too (the per-beam median)
    constant = lidar_error(np.broadcast_to(np.median(tiny.lidar, 0), tiny.lidar.shape), tiny.lidar)
    assert after < constant.mae_m, (after, constant.mae_m)
    assert hist.val[-1].mae_m == pytest.approx(after, rel=1e-4)
    assert not enc.training


def test_photometric_jitter_varies_looks_within_pixel_range() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    assert photometric_jitter(x, 0.0, gen) is x
    y = photometric_jitter(x, 0.4, gen)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    means = y.mean(dim=(1, 2, 3)) / x.mean(dim=(1, 2, 3))
    assert float(means.max() - means.min()) > 0.1  # each sample gets its own look


def test_train_encoder_rejects_empty_data() -> None:
    empty = PerceptionData(
        np.zeros((0, 1, 64, 64), np.uint8),
        np.zeros((0, LIDAR_BEAMS), np.float32),
        np.zeros(0, np.int64),
    )
    with pytest.raises(InvalidValueError, match="empty"):
        train_encoder(empty)


# -- files ----------------------------------------------------------------------------------------


def test_save_and_load_give_the_same_predictions(saved: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 1, 64, 64), dtype=np.uint8)
    doc = json.loads((saved / "encoder.json").read_text())
    assert doc["config"] == {"img_size": 64, "channels": 1, "width": 4, "hidden": 16}
    a = load_encoder(saved)
    b = load_encoder(saved)
    assert not a.training
    np.testing.assert_array_equal(a.predict(frames), b.predict(frames))
    torch.manual_seed(1)
    other = PerceptionEncoder(EncoderConfig(width=4, hidden=16))
    assert not np.allclose(other.predict(frames), a.predict(frames))


def test_load_encoder_errors_say_what_is_wrong(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(EncoderFileError, match="does not exist"):
        load_encoder(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    doc = json.loads((saved / "encoder.json").read_text())
    doc["config"]["width"] = 8  # the weights are of width 4
    (bad / "encoder.json").write_text(json.dumps(doc))
    (bad / "encoder.safetensors").write_bytes((saved / "encoder.safetensors").read_bytes())
    with pytest.raises(EncoderFileError, match="does not match"):
        load_encoder(bad)
    doc["config"] = {"width": 4, "colour": True}
    (bad / "encoder.json").write_text(json.dumps(doc))
    with pytest.raises(EncoderFileError, match="unknown keys"):
        load_encoder(bad)
    assert issubclass(EncoderFileError, TMAlgosError)


# -- the wrapper ----------------------------------------------------------------------------------


def test_wrapper_gives_the_lidar_layout_from_pixels(saved: Path) -> None:
    lidar_env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    env = PixelLidarWrapper(gym.make("TrackMania-Sim-v0", obs_type="images"), saved)
    assert env.observation_space == lidar_env.observation_space
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    # the first observation's history repeats one frame, so one scan
    assert (obs["lidar"] == obs["lidar"][0]).all()
    for _ in range(3):
        obs, *_ = env.step(np.array([1.0, 0.0, 0.3], np.float32))
        assert env.observation_space.contains(obs)
    np.testing.assert_allclose(obs["actions"][-1], [1.0, 0.0, 0.3])
    lidar_env.close()
    env.close()


def test_wrapper_scans_are_the_encoders_reading_of_each_frame(saved: Path) -> None:
    enc = load_encoder(saved)
    inner = gym.make("TrackMania-Sim-v0", obs_type="images")
    env = PixelLidarWrapper(inner, enc)
    images, _ = inner.reset(seed=0)
    for _ in range(5):
        images, *_ = inner.step(np.array([1.0, 0.0, -0.5], np.float32))
    got = env.observation(images)
    np.testing.assert_array_equal(got["lidar"], enc.predict(images["images"][:, None]))
    np.testing.assert_array_equal(got["speed"], images["speed"])
    np.testing.assert_array_equal(got["actions"], images["actions"])
    env.close()


def test_wrapper_refuses_observations_it_cannot_read(saved: Path) -> None:
    with pytest.raises(InvalidValueError, match="obs_type='images'"):
        PixelLidarWrapper(gym.make("TrackMania-Sim-v0", obs_type="lidar"), saved)
    with pytest.raises(InvalidValueError, match="img_size=64"):
        PixelLidarWrapper(gym.make("TrackMania-Sim-v0", obs_type="images", img_size=48), saved)


# -- the extractor --------------------------------------------------------------------------------


def _images_space() -> gym.spaces.Dict:
    space = gym.make("TrackMania-Sim-v0", obs_type="images").observation_space
    assert isinstance(space, gym.spaces.Dict)
    return space


def _batch(space: gym.spaces.Dict, n: int = 3) -> dict[str, torch.Tensor]:
    space.seed(0)
    samples = [space.sample() for _ in range(n)]
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in space.spaces}


@pytest.mark.parametrize("features", ["lidar", "trunk"])
def test_extractor_frozen_keeps_the_encoder_and_trains_its_head(saved: Path, features: str) -> None:
    space = _images_space()
    ext = PerceptionExtractor(space, path=str(saved), features=features, hidden=(32,))
    assert ext.features_dim == 32
    before = {k: v.clone() for k, v in ext.encoder.state_dict().items()}
    opt = torch.optim.SGD([p for p in ext.parameters() if p.requires_grad], lr=0.1)
    ext.train()
    assert not ext.encoder.training  # frozen: kept in evaluation mode
    loss = ext(_batch(space)).pow(2).mean()
    loss.backward()
    opt.step()
    for k, v in ext.encoder.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert all(p.grad is not None for p in ext.mlp.parameters())


def test_extractor_fine_tuned_updates_the_encoder(saved: Path) -> None:
    space = _images_space()
    ext = PerceptionExtractor(space, path=str(saved), freeze=False, hidden=(16,))
    before = {k: v.clone() for k, v in ext.encoder.state_dict().items()}
    opt = torch.optim.SGD(ext.parameters(), lr=0.5)
    ext.train()
    assert ext.encoder.training
    ext(_batch(space)).pow(2).mean().backward()
    opt.step()
    changed = [k for k, v in ext.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert changed


def test_extractor_is_registered_for_presets_and_checks_its_arguments(saved: Path) -> None:
    assert EXTRACTORS["perception"] == ("images", "perception")
    kwargs = policy_kwargs_for("images", "perception", path=str(saved), freeze=True)
    assert kwargs["features_extractor_class"] is PerceptionExtractor
    space = _images_space()
    with pytest.raises(InvalidValueError, match="path="):
        PerceptionExtractor(space)
    with pytest.raises(InvalidValueError, match="features="):
        PerceptionExtractor(space, path=str(saved), features="pixels")
    with pytest.raises(EncoderFileError):
        PerceptionExtractor(space, path=str(saved / "missing"))
    # presets such as images-sac set features_dim: it is the output size
    assert PerceptionExtractor(space, path=str(saved), features_dim=24).features_dim == 24


@pytest.mark.slow
def test_sac_trains_with_the_perception_extractor(saved: Path) -> None:
    from stable_baselines3 import SAC

    env = gym.make("TrackMania-Sim-v0", obs_type="images", ep_max_length=20)
    model = SAC(
        "MultiInputPolicy",
        env,
        buffer_size=200,
        learning_starts=10,
        batch_size=8,
        policy_kwargs={
            **policy_kwargs_for("images", "perception", path=str(saved)),
            "net_arch": [16],
        },
        seed=0,
    )
    extractor = model.policy.actor.features_extractor
    assert isinstance(extractor, PerceptionExtractor)
    enc_before = {k: v.clone() for k, v in extractor.encoder.state_dict().items()}
    model.learn(40)
    after = extractor.encoder.state_dict()
    for k, v in after.items():
        torch.testing.assert_close(v, enc_before[k])
    env.close()


@pytest.mark.slow
def test_a_policy_with_the_perception_extractor_exports_and_loads(
    saved: Path, tmp_path: Path
) -> None:
    from stable_baselines3 import SAC

    from tm_algos.policy import FEATURE_EXTRACTORS, export_policy, load_policy

    assert FEATURE_EXTRACTORS["PerceptionExtractor"] is PerceptionExtractor  # allowed by name
    env = gym.make("TrackMania-Sim-v0", obs_type="images")
    kwargs = policy_kwargs_for("images", "perception", path=str(saved), hidden=(8,))
    model = SAC("MultiInputPolicy", env, buffer_size=10, policy_kwargs=kwargs, seed=0)
    export_policy(model, tmp_path / "policy")
    loaded = load_policy(tmp_path / "policy")
    obs, _ = env.reset(seed=0)
    want, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(loaded.act(obs), want, rtol=1e-5, atol=1e-5)
    env.close()
