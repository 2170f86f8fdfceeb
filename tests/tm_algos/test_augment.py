"""Frame augmentation for behaviour cloning, and validation tracks for a DAgger run's best/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tm_algos.callbacks import EvalRecord
from tm_algos.errors import InvalidValueError
from tm_algos.imitation.augment import FrameAugment
from tm_algos.imitation.bc import BehaviourCloning
from tm_algos.imitation.config import ImitationConfig
from tm_algos.presets import PresetError, apply_overrides, load_preset
from tm_algos.training import validation_score
from tm_gym.core.config import ConfigError

torch.set_num_threads(1)


def _bands(rows: tuple[int, ...] = (), cols: tuple[int, ...] = (), n: int = 2) -> torch.Tensor:
    """(n, 4, 64, 64) uint8 stacks, black with white rows and columns."""
    x = torch.zeros((n, 4, 64, 64), dtype=torch.uint8)
    for r in rows:
        x[:, :, r, :] = 255
    for c in cols:
        x[:, :, :, c] = 255
    return x


def _lit_rows(frame: torch.Tensor) -> list[int]:
    """Rows of a (64, 64) frame whose pixel in column 60 is brighter than half."""
    return [int(i) for i in (frame[:, 60] > 127).nonzero().flatten()]


def _lit_cols(frame: torch.Tensor) -> list[int]:
    """Columns of a (64, 64) frame whose pixel in row 60 is brighter than half."""
    return [int(j) for j in (frame[60, :] > 127).nonzero().flatten()]


def test_a_vertical_shift_moves_every_frame_of_the_stack_down() -> None:
    out = FrameAugment.from_table({"shift_y_px": [3, 3]})(_bands(rows=(20, 45)))
    for c in range(4):  # the whole history moves together
        assert _lit_rows(out[0, c]) == [23, 48]
    up = FrameAugment.from_table({"shift_y_px": [-5, -5]})(_bands(rows=(20,)))
    assert _lit_rows(up[1, 0]) == [15]


def test_zoom_scales_about_the_centre_and_stretch_only_vertically() -> None:
    # pixel centres: row 40 lies 8.5 px below the centre (32); zoom 2 puts it 17 px below → 49
    zoomed = FrameAugment.from_table({"zoom": [2, 2]})(_bands(rows=(40,), cols=(16,)))
    assert 49 in _lit_rows(zoomed[0, 0])
    assert 32 not in _lit_rows(zoomed[0, 0])
    assert 1 in _lit_cols(zoomed[0, 0])  # column 16 (15.5 left of centre) → ≈ 0.5
    stretched = FrameAugment.from_table({"stretch_y": [2, 2]})(_bands(rows=(40,), cols=(16,)))
    assert 49 in _lit_rows(stretched[0, 0])
    assert _lit_cols(stretched[0, 0]) == [16]  # columns are left alone
    wide = FrameAugment.from_table({"zoom": [0.5, 0.5]})(_bands(rows=(48,)))
    assert _lit_rows(wide[0, 0]) == [40]  # 16.5 below the centre → 8.25 below


def test_lighting_changes_scale_the_pixels() -> None:
    x = torch.full((3, 4, 64, 64), 100, dtype=torch.uint8)
    x[:, :, :32] = 200
    darker = FrameAugment.from_table({"brightness": [0.5, 0.5]})(x)
    assert set(darker.unique().tolist()) == {50, 100}
    flat = FrameAugment.from_table({"contrast": [0.0, 0.0]})(x)
    assert set(flat.unique().tolist()) == {150}  # every pixel at the stack's mean
    strong = FrameAugment.from_table({"contrast": [2.0, 2.0]})(x)
    assert set(strong.unique().tolist()) == {50, 250}
    clipped = FrameAugment.from_table({"brightness": [3.0, 3.0]})(x)
    assert set(clipped.unique().tolist()) == {255}
    x[:, :, 32:] = 64
    lifted = FrameAugment.from_table({"gamma": [0.5, 0.5]})(x)  # 255 (v / 255) ** 0.5
    assert set(lifted.unique().tolist()) == {128, 226}
    darkened = FrameAugment.from_table({"gamma": [2.0, 2.0]})(x)
    assert set(darkened.unique().tolist()) == {16, 157}


def test_draws_are_per_sample_and_reproducible_by_seed() -> None:
    aug = FrameAugment.from_table(
        {"zoom": [0.8, 1.2], "shift_y_px": [-3, 3], "contrast": [0.7, 1.3]}
    )
    x = torch.randint(0, 256, (16, 4, 64, 64), dtype=torch.uint8)
    a = aug(x, np.random.default_rng(1))
    b = aug(x, np.random.default_rng(1))
    c = aug(x, np.random.default_rng(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # each sample its own distortion
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(x, x.clone())  # the input is left as it was


def test_a_neutral_table_changes_nothing() -> None:
    aug = FrameAugment.from_table({"zoom": [1, 1], "brightness": [1.0, 1.0]})
    assert not aug.active and aug.to_table() == {}
    x = torch.randint(0, 256, (2, 4, 64, 64), dtype=torch.uint8)
    assert torch.equal(aug(x), x)
    assert FrameAugment.from_table({"zoom": [0.9, 1.1]}).to_table() == {"zoom": [0.9, 1.1]}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"zom": [0.9, 1.1]}, "unknown key 'zom'"),
        ({"zoom": [1.2, 0.8]}, r"imitation.augment.zoom = \[1.2, 0.8\]"),
        ({"zoom": [0.1, 1.0]}, "0.25 <= low"),
        ({"shift_y_px": 3}, "expected \\[low, high\\]"),
        ({"brightness": [float("nan"), 1.0]}, "brightness"),
        ({"contrast": [True, 1.0]}, "contrast"),
        ({"gamma": [0.0, 1.0]}, "0.1 <= low"),
    ],
)
def test_bad_augmentation_tables_are_refused(table: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        FrameAugment.from_table(table)
    with pytest.raises(ConfigError, match=message):
        ImitationConfig(augment=table)  # type: ignore[arg-type]


def test_frames_of_the_wrong_kind_are_refused() -> None:
    aug = FrameAugment.from_table({"zoom": [0.9, 1.1]})
    with pytest.raises(InvalidValueError, match="uint8 frame stacks"):
        aug(torch.zeros((4, 64, 64), dtype=torch.uint8))
    with pytest.raises(InvalidValueError, match="float32"):
        aug(torch.zeros((1, 4, 64, 64)))


def test_a_preset_with_a_bad_augment_table_is_refused() -> None:
    with pytest.raises(PresetError, match="zom"):
        apply_overrides(load_preset("images-sac"), ["imitation.augment={zom=[0.9, 1.1]}"])


def test_behaviour_cloning_trains_on_augmented_frames_and_acts_on_real_ones() -> None:
    from tm_algos.factory import make_model, make_vec_env

    preset = apply_overrides(
        load_preset("images-sac"),
        ["policy.net_arch=[32, 32]", "policy.extractor_kwargs.features_dim=16"],
    )
    model = make_model(preset, make_vec_env(preset, n_envs=1), seed=0)
    aug = FrameAugment.from_table({"zoom": [1.5, 1.5], "brightness": [0.3, 0.3]})
    bc = BehaviourCloning(model.policy, augment=aug)
    rng = np.random.default_rng(0)
    space = model.observation_space
    obs = {k: np.stack([s.sample() for _ in range(8)]) for k, s in space.spaces.items()}  # type: ignore[attr-defined]
    labels = np.zeros((8, 3), np.float32)
    plain = float(bc.loss(obs, labels).item())
    augmented = float(bc.loss(obs, labels, augment=True).item())
    assert plain != pytest.approx(augmented)  # the training batch is what the student sees
    before = bc.predict(obs)
    np.testing.assert_array_equal(before, bc.predict(obs))  # acting never augments
    # and what the student acts on is the frame as it is: the policy's own deterministic action
    act, _ = model.policy.predict(obs, deterministic=True)
    np.testing.assert_allclose(model.policy.scale_action(act), before, atol=1e-5)
    bc.step(obs, labels, rng)
    assert bc.steps == 1


# -- validation tracks ---------------------------------------------------------------------------


def _rec(finished: bool, lap: float | None, progress: float) -> EvalRecord:
    return EvalRecord(0, 0.0, 0.0, progress, finished, lap, 0)


def test_validation_score_puts_finishing_first_then_speed() -> None:
    assert validation_score(_rec(False, None, 0.6), 30.0) == pytest.approx(0.6)
    assert validation_score(_rec(True, 30.0, 1.0), 30.0) == pytest.approx(2.0)
    assert validation_score(_rec(True, 60.0, 1.0), 30.0) == pytest.approx(1.5)
    assert validation_score(_rec(True, 40.0, 1.0), None) == pytest.approx(1.5)
    slow_finish = validation_score(_rec(True, 300.0, 1.0), 30.0)
    assert slow_finish > validation_score(_rec(False, None, 0.99), 30.0)


def test_validation_tracks_do_not_mix_with_rl_fine_tuning() -> None:
    with pytest.raises(ConfigError, match="eval_tracks=\\['gen:901'\\] with finetune=true"):
        ImitationConfig(eval_tracks=("gen:901",), finetune=True)
    assert ImitationConfig(eval_tracks=("gen:901",)).to_dict()["eval_tracks"] == ["gen:901"]


def test_dagger_picks_best_by_validation_tracks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tm_algos import training
    from tm_algos.cli import train as train_cli

    validation_envs: list[Any] = []
    closed: list[Any] = []
    make = training.gym.make

    def spy_make(*args: Any, **kwargs: Any) -> Any:
        env = make(*args, **kwargs)
        if str(kwargs.get("track", "")).startswith("gen:90"):
            validation_envs.append(env)
            close = env.close
            env.close = lambda: (closed.append(env), close())[1]  # type: ignore[method-assign]
        return env

    monkeypatch.setattr(training.gym, "make", spy_make)

    run = tmp_path / "run"
    settings = [
        "algo.hyperparameters.buffer_size=1000",
        "policy.net_arch=[32, 32]",
        "policy.extractor_kwargs.features_dim=16",
        "imitation.iterations=2",
        "imitation.steps_per_iteration=5",
        "imitation.n_envs=2",
        "imitation.gradient_steps=2",
        "imitation.batch_size=8",
        "imitation.buffer_size=100",
        'imitation.eval_tracks=["gen:901", "gen:902"]',
        "imitation.augment={zoom=[0.9, 1.1], brightness=[0.8, 1.2]}",
    ]
    args = ["images-sac", "--run-dir", str(run), "--no-tensorboard", "--threads", "1"]
    args += ["--env-kwarg", "ep_max_length=40"]
    assert train_cli.main([*args, *(f"--set={s}" for s in settings)]) == 0
    evaluations = json.loads((run / "evaluations.json").read_text())
    tracks = [e.get("track") for e in evaluations]
    # per iteration: one lap on each validation track, then one record for the set
    assert tracks[:2] == ["gen:901", "gen:902"] and tracks[3:5] == ["gen:901", "gen:902"]
    assert tracks[2].startswith("2 validation tracks") and len(evaluations) == 6
    assert evaluations[2]["lap_time"] is None  # two tracks' laps are not one lap
    best = json.loads((run / "best" / "evaluation.json").read_text())
    assert [e["track"] for e in best["episodes"]] == ["gen:901", "gen:902"]
    sets = [evaluations[2], evaluations[5]]
    scores = [float(s["track"].rsplit("score ", 1)[1]) for s in sets]
    assert best["score"] == pytest.approx(max(scores), abs=1e-3)
    # no lap can finish in 40 steps: the score is the summed progress of the chosen set
    assert best["score"] == pytest.approx(sum(e["progress"] for e in best["episodes"]), abs=1e-3)
    published = (run / "policy" / "policy.safetensors").read_bytes()
    assert published == (run / "best" / "policy.safetensors").read_bytes()
    summary = " ".join(capsys.readouterr().out.split())
    assert "on 2 validation tracks, score" in summary  # not a sum of laps shown as one lap
    assert len(validation_envs) == 2 and closed == validation_envs  # closed at the run's end


# -- action-history dropout ----------------------------------------------------------------------


def _copycat_batch(
    rng: np.random.Generator, n: int, history_sign: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """LIDAR observations whose left/right beams say which way to steer, with a past-action
    history equal to the label (``history_sign`` 1: a teacher's smooth driving) or its opposite
    (-1: a student that has just steered the wrong way)."""
    steer = rng.choice([-0.8, 0.8], size=n).astype(np.float32)
    lidar = np.full((n, 4, 19), 60.0, np.float32) + rng.normal(0, 3, (n, 4, 19)).astype(np.float32)
    lidar[:, :, :9] += 30.0 * steer[:, None, None]
    lidar[:, :, 10:] -= 30.0 * steer[:, None, None]
    labels = np.stack([np.full(n, 0.5, np.float32), np.zeros(n, np.float32), steer], axis=1)
    history = np.repeat((labels * [1.0, 1.0, history_sign])[:, None, :], 2, axis=1)
    obs = {
        "lidar": lidar,
        "speed": np.full((n, 1), 100.0, np.float32),
        "actions": history.astype(np.float32),
    }
    return obs, labels


def _steer_error(history_dropout: float) -> float:
    import gymnasium as gym
    from stable_baselines3 import SAC

    import tm_gym  # noqa: F401
    from tm_algos.extractors import policy_kwargs_for

    env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    torch.manual_seed(0)
    model = SAC(
        "MultiInputPolicy",
        env,
        policy_kwargs={**policy_kwargs_for("lidar", hidden=(32,)), "net_arch": [32]},
        buffer_size=1,
        seed=0,
    )
    env.close()
    bc = BehaviourCloning(model.policy, learning_rate=3e-3, history_dropout=history_dropout)
    rng = np.random.default_rng(0)
    obs, labels = _copycat_batch(rng, 512, history_sign=1.0)
    for _ in range(400):
        idx = rng.integers(0, 512, 64)
        bc.step({k: v[idx] for k, v in obs.items()}, labels[idx], rng)
    test_obs, test_labels = _copycat_batch(np.random.default_rng(1), 256, history_sign=-1.0)
    return float(np.abs(bc.predict(test_obs)[:, 2] - test_labels[:, 2]).mean())


def test_history_dropout_makes_the_student_read_the_observation_not_its_last_action() -> None:
    # the training data is teacher-driven: the last action always equals the label. Without
    # dropout the student leans on it and steers the wrong way once its own history is wrong;
    # with half the histories swapped it steers from what it sees.
    copycat = _steer_error(0.0)
    reader = _steer_error(0.5)
    assert reader < 0.05  # steer is ±0.8: both errors are in units of the steering range
    assert copycat > 0.15


def test_bad_history_dropout_is_refused() -> None:
    from tm_algos.presets import PresetError

    with pytest.raises(PresetError, match="history_dropout"):
        apply_overrides(load_preset("images-sac"), ["imitation.history_dropout=1.5"])
    with pytest.raises(ConfigError, match="history_dropout"):
        ImitationConfig(history_dropout=-0.1)
