"""Imitation: the frame-sharing dataset, behaviour cloning, DAgger with the simulator's teachers,
and the [imitation] table of presets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from numpy.typing import NDArray

import tm_gym  # noqa: F401  (registers the environment ids)
from tm_algos.factory import env_kwargs_of, make_model, make_vec_env
from tm_algos.imitation.bc import BehaviourCloning, effective_actions
from tm_algos.imitation.config import ImitationConfig
from tm_algos.imitation.dagger import ExpertTeacher, LidarPolicyTeacher, make_teacher, run_dagger
from tm_algos.imitation.dataset import ImitationDataset
from tm_algos.imitation.demos import load_demonstrations
from tm_algos.policy import export_policy, load_policy
from tm_algos.presets import Preset, PresetError, apply_overrides, load_preset
from tm_gym.core.config import ConfigError
from tm_gym.recording import builtin_recording

torch.set_num_threads(1)

SMALL_IMAGES = [
    "algo.hyperparameters.buffer_size=1000",
    "policy.net_arch=[32, 32]",
    "policy.extractor_kwargs.features_dim=16",
]


def images_model() -> tuple[Preset, Any]:
    preset = apply_overrides(load_preset("images-sac"), SMALL_IMAGES)
    return preset, make_model(preset, make_vec_env(preset, n_envs=1), seed=0)


# -- the dataset ---------------------------------------------------------------------------------


def _car_stream(steps: int, seed: int = 0) -> list[dict[str, NDArray[Any]]]:
    """Observations of one car driven by the expert, episodes ending early (short limit)."""
    env = gym.make("TrackMania-Sim-v0", obs_type="images", ep_max_length=7)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    while len(out) < steps:
        obs, _, term, trunc, _ = env.step(env.unwrapped.expert_action())  # type: ignore[attr-defined]
        if term or trunc:
            obs, _ = env.reset()
        out.append(obs)
    env.close()
    return out


def test_dataset_rebuilds_every_stack_exactly_storing_each_frame_once() -> None:
    stream = _car_stream(30)
    space = gym.make("TrackMania-Sim-v0", obs_type="images").observation_space
    data = ImitationDataset(space, capacity=100)
    for i, obs in enumerate(stream):
        data.add({k: v[None] for k, v in obs.items()}, np.full((1, 3), i, np.float32))
    assert len(data) == 30
    # 5 episodes of 7 steps (+ the reset) → each episode's first stack adds 1 frame, then 1 per step
    assert data._frames_written == 30
    got = data.observations(np.arange(30))
    for i, obs in enumerate(stream):
        for key, value in obs.items():
            np.testing.assert_array_equal(got[key][i], value, err_msg=f"{key} of sample {i}")
    assert data.labels[:30, 0].tolist() == list(range(30))


def test_dataset_is_bounded_and_drops_the_oldest() -> None:
    stream = _car_stream(40)
    space = gym.make("TrackMania-Sim-v0", obs_type="images").observation_space
    data = ImitationDataset(space, capacity=16)
    for i, obs in enumerate(stream):
        data.add({k: v[None] for k, v in obs.items()}, np.full((1, 3), i, np.float32))
    assert len(data) == 16 and data.added == 40
    valid = data.valid_indices()
    assert len(valid) >= 12
    got = data.observations(valid)
    for row, idx in enumerate(valid):
        i = int(data.labels[idx, 0])
        assert i >= 40 - 16  # only the newest 16 are kept
        np.testing.assert_array_equal(got["images"][row], stream[i]["images"])
    obs, labels = data.sample(64, np.random.default_rng(0))
    assert obs["images"].shape == (64, 4, 64, 64) and labels.shape == (64, 3)
    assert data.nbytes < 16 * 4 * 64 * 64  # less than the full stacks would take


def test_dataset_refuses_bad_input() -> None:
    space = gym.make("TrackMania-Sim-v0", obs_type="images").observation_space
    with pytest.raises(ValueError, match="capacity=0"):
        ImitationDataset(space, capacity=0)
    data = ImitationDataset(space, capacity=4)
    with pytest.raises(ValueError, match="empty"):
        data.sample(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"lacks \['actions', 'gear'"):
        data.add({"images": np.zeros((1, 4, 64, 64), np.uint8)}, np.zeros((1, 3)))


# -- behaviour cloning -----------------------------------------------------------------------


def test_effective_actions_release_the_pedals_below_zero() -> None:
    a = np.array([[-0.5, 0.2, -0.7], [0.3, -1.0, 0.1]], np.float32)
    np.testing.assert_allclose(effective_actions(a), [[0.0, 0.2, -0.7], [0.3, 0.0, 0.1]])


def test_behaviour_cloning_on_a_recorded_dataset_reduces_the_action_error() -> None:
    preset = apply_overrides(load_preset("lidar-sac"), ["policy.net_arch=[64, 64]"])
    model = make_model(preset, make_vec_env(preset, n_envs=1), seed=0)
    demos = load_demonstrations(
        [builtin_recording("sim-default-expert-lidar")],
        model.observation_space,
        env_kwargs_of(preset),
    )
    data = demos.dataset
    assert len(data) == demos.num_steps > 100
    every = data.observations(np.arange(len(data)))
    bc = BehaviourCloning(model.policy, learning_rate=1e-3)
    before = bc.action_error(every, data.labels[: len(data)])
    bc.train(data, gradient_steps=150, batch_size=64, rng=np.random.default_rng(0))
    after = bc.action_error(every, data.labels[: len(data)])
    assert after < 0.5 * before, (before, after)


def test_behaviour_cloning_refuses_recurrent_policies() -> None:
    preset = load_preset("images-lstm-ppo")
    model = make_model(preset, make_vec_env(preset, n_envs=1), seed=0)
    with pytest.raises(TypeError, match="recurrent"):
        BehaviourCloning(model.policy)


# -- DAgger ----------------------------------------------------------------------------------


class RecordingTeacher:
    """The expert, remembering what it was shown and what it answered."""

    def __init__(self) -> None:
        self.expert = ExpertTeacher()
        self.seen: list[NDArray[np.uint8]] = []
        self.answers: list[NDArray[np.float32]] = []
        self.matches_expert = True

    def labels(self, env: Any, obs: Any, first: NDArray[np.bool_]) -> NDArray[np.float32]:
        out = self.expert.labels(env, obs, first)
        # the label is the expert's action for the state behind this very observation
        self.matches_expert &= bool(np.array_equal(out, env.unwrapped.expert_actions()))
        self.seen.append(np.asarray(obs["images"]).copy())
        self.answers.append(out)
        return out


def test_dagger_aggregates_the_teachers_labels_for_every_visited_state() -> None:
    preset, model = images_model()
    config = ImitationConfig(
        iterations=3,
        steps_per_iteration=6,
        n_envs=3,
        tracks=("default", "speedway"),
        gradient_steps=2,
        batch_size=8,
        beta=0.5,
    )
    teacher = RecordingTeacher()
    sizes: list[int] = []
    result = run_dagger(
        model.policy,
        config,
        env_kwargs_of(preset),
        teacher=teacher,
        on_iteration=lambda it: sizes.append(it.dataset_size),
    )
    assert sizes == [18, 36, 54]  # the dataset grows by the steps driven (3 cars × 6 steps)
    assert result.env_steps == 54
    assert teacher.matches_expert
    data = result.dataset
    # teacher calls are per track: 2 cars on default, 1 on speedway, in car order
    labels = np.concatenate(
        [np.concatenate(teacher.answers[i : i + 2]) for i in range(0, len(teacher.answers), 2)]
    )
    images = np.concatenate(
        [np.concatenate(teacher.seen[i : i + 2]) for i in range(0, len(teacher.seen), 2)]
    )
    np.testing.assert_array_equal(data.labels[:54], labels)
    np.testing.assert_array_equal(data.observations(np.arange(54))["images"], images)
    assert [it.beta for it in result.iterations] == [0.5, 0.25, 0.125]


def test_dagger_warm_up_lets_the_teacher_drive_before_any_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tm_algos.imitation import dagger

    preset, model = images_model()
    driven: list[NDArray[np.float32]] = []
    trained_on: list[int] = []
    step, train = dagger.Fleet.step, BehaviourCloning.train

    def record_step(fleet: Any, actions: NDArray[np.float32]) -> None:
        driven.append(np.array(actions))
        step(fleet, actions)

    def record_train(bc: BehaviourCloning, data: ImitationDataset, *a: Any, **k: Any) -> float:
        trained_on.append(len(data))
        return train(bc, data, *a, **k)

    monkeypatch.setattr(dagger.Fleet, "step", record_step)
    monkeypatch.setattr(BehaviourCloning, "train", record_train)
    config = ImitationConfig(
        iterations=2,
        steps_per_iteration=3,
        n_envs=2,
        warmup_steps=4,
        beta=0.0,  # the student drives every iteration
        gradient_steps=1,
        batch_size=4,
    )
    teacher = RecordingTeacher()
    result = run_dagger(model.policy, config, env_kwargs_of(preset), teacher=teacher)
    assert trained_on == [2 * (4 + 3), 2 * (4 + 3 + 3)]  # first training after the warm-up
    assert result.env_steps == 2 * (4 + 3 + 3)
    for t in range(4):  # the warm-up drove the teacher's labels
        np.testing.assert_array_equal(driven[t], teacher.answers[t])
    assert [it.teacher_share for it in result.iterations] == [0.0, 0.0]


def test_dagger_stops_when_told_and_records_evaluations() -> None:
    preset, model = images_model()
    config = ImitationConfig(
        iterations=5, steps_per_iteration=2, n_envs=1, gradient_steps=1, batch_size=4
    )
    result = run_dagger(
        model.policy,
        config,
        env_kwargs_of(preset),
        evaluate=lambda steps: steps,
        should_stop=lambda steps: steps >= 4,
    )
    assert [it.evaluation for it in result.iterations] == [2, 4]
    assert result.stopped_early


def test_the_student_exports_loads_and_drives(tmp_path: Path) -> None:
    preset, model = images_model()
    config = ImitationConfig(
        iterations=1, steps_per_iteration=4, n_envs=2, gradient_steps=3, batch_size=8
    )
    run_dagger(model.policy, config, env_kwargs_of(preset))
    export_policy(model, tmp_path / "student")
    policy = load_policy(tmp_path / "student")
    assert policy.config["algorithm"] == "FastImageSAC"
    env = gym.make("TrackMania-Sim-v0", obs_type="images")
    obs, _ = env.reset(seed=0)
    want = model.policy.predict(obs, deterministic=True)[0]
    for _ in range(5):
        action = policy.act(obs)
        np.testing.assert_allclose(action, model.policy.predict(obs, deterministic=True)[0])
        obs, *_ = env.step(action)
    assert want.shape == (3,)


def test_a_lidar_policy_teaches_from_the_exact_lidar_of_the_same_car(tmp_path: Path) -> None:
    lidar = load_preset("lidar-sac")
    teacher_model = make_model(lidar, make_vec_env(lidar, n_envs=1), seed=1)
    export_policy(teacher_model, tmp_path / "teacher")
    teacher = make_teacher(str(tmp_path / "teacher"))
    assert isinstance(teacher, LidarPolicyTeacher)
    # the same car in a LIDAR env and an images vector env, driven by the same actions
    lidar_env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    images_env = gym.make_vec(
        "TrackMania-Sim-v0",
        num_envs=1,
        vectorization_mode="vector_entry_point",
        obs_type="images",
    )
    lobs, _ = lidar_env.reset(seed=0)
    iobs, _ = images_env.reset(seed=0)
    first = np.ones(1, dtype=bool)
    moving = 0
    for _ in range(90):  # past the first straight (side beams constant): timing then matters
        label = teacher.labels(images_env, iobs, first)
        want = teacher.policy.act({k: v[None] for k, v in lobs.items()})
        np.testing.assert_allclose(label, want, atol=1e-5)
        action = lidar_env.unwrapped.expert_action()  # type: ignore[attr-defined]
        before = lobs["lidar"][-1].copy()
        lobs, *_ = lidar_env.step(action)
        iobs, *_ = images_env.step(action[None])
        moving += int(np.abs(lobs["lidar"][-1] - before).max() > 0.05)
        first[:] = False
    assert moving > 20  # the scans changed from step to step: the car drove


def test_an_unknown_teacher_is_refused() -> None:
    with pytest.raises(ValueError, match="neither 'expert' nor a policy directory"):
        make_teacher("nobody")


# -- presets ---------------------------------------------------------------------------------


def test_images_sac_imitates_the_expert_by_default() -> None:
    preset = load_preset("images-sac")
    assert preset.imitation is not None and preset.imitation.teacher == "expert"
    assert preset.to_dict()["imitation"]["iterations"] == preset.imitation.iterations
    changed = apply_overrides(preset, ["imitation.beta_decay=0.7", "imitation.finetune=true"])
    assert changed.imitation is not None
    assert changed.imitation.beta_decay == 0.7 and changed.imitation.finetune


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("imitation.beta=1.5", r"imitation.beta: got 1.5 \(float\), expected a number from 0 to 1"),
        ("imitation.iterations=0", "imitation.iterations: got 0"),
        ("imitation.n_envs=two", "imitation.n_envs: got 'two'"),
        ("imitation.tracks=[1]", "imitation.tracks"),
        ("imitation.teacher=''", "imitation.teacher"),
        ("imitation.colour=1", "no key 'colour' in imitation"),
    ],
)
def test_bad_imitation_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(PresetError, match=message):
        apply_overrides(load_preset("images-sac"), [override])


def _shipped_text(name: str) -> str:
    from importlib import resources

    return (resources.files("tm_algos") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("learning_rate = 1e-3", "learning_rate = 0"), r"imitation.learning_rate: got 0"),
        (("n_envs = 8 ", "cars = 8 "), r"imitation: unknown key 'cars'"),
    ],
)
def test_imitation_tables_are_checked_in_files(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = _shipped_text("images-sac")
    assert edit[0] in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(PresetError, match=message) as info:
        load_preset(path)
    assert str(path) in str(info.value)


def test_imitation_needs_a_feed_forward_policy(tmp_path: Path) -> None:
    path = tmp_path / "lstm.toml"
    path.write_text(_shipped_text("images-lstm-ppo") + "\n[imitation]\niterations = 2\n")
    with pytest.raises(PresetError, match="recurrent: remove \\[imitation\\]"):
        load_preset(path)


def test_imitation_config_rules() -> None:
    with pytest.raises(ConfigError, match=r"imitation\.beta_decay"):
        ImitationConfig(beta_decay=2.0)
    assert ImitationConfig(beta=0.8, beta_decay=0.5).beta_at(2) == pytest.approx(0.2)


# -- tm-train ------------------------------------------------------------------------------


def test_tm_train_runs_dagger_evaluates_and_publishes_the_best_student(tmp_path: Path) -> None:
    from tm_algos.cli import train as train_cli

    run = tmp_path / "run"
    settings = [
        *SMALL_IMAGES,
        "imitation.iterations=2",
        "imitation.steps_per_iteration=5",
        "imitation.n_envs=2",
        "imitation.gradient_steps=2",
        "imitation.batch_size=8",
        "imitation.buffer_size=100",
    ]
    args = ["images-sac", "--run-dir", str(run), "--no-tensorboard", "--threads", "1"]
    assert train_cli.main([*args, *(f"--set={s}" for s in settings)]) == 0
    evaluations = json.loads((run / "evaluations.json").read_text())
    assert [e["timesteps"] for e in evaluations] == [10, 20]  # one per iteration, 2 cars × 5
    assert json.loads((run / "run.json").read_text())["preset"]["imitation"]["iterations"] == 2
    best = json.loads((run / "best" / "evaluation.json").read_text())
    assert best in evaluations
    # the published policy is the best evaluated one
    published = (run / "policy" / "policy.safetensors").read_bytes()
    assert published == (run / "best" / "policy.safetensors").read_bytes()
    assert load_policy(run / "policy").config["algorithm"] == "FastImageSAC"
