"""Presets: every shipped TOML loads and validates; overrides; clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tm_algos.presets import (
    DEFAULT_PRESET,
    OBS_TYPES,
    Preset,
    PresetError,
    apply_overrides,
    list_presets,
    load_preset,
)

SHIPPED = [
    "images-lstm-ppo",
    "images-ppo",
    "images-sac",
    "images-sac-general",
    "images-sac-rl",
    "images-vit-ppo",
    "lidar-crossq",
    "lidar-general",
    "lidar-redq",
    "lidar-sac",
    "lidar-tqc",
]

GOOD = """\
description = "a test preset"

[env]
id = "TrackMania-Sim-v0"
obs_type = "lidar"

[algo]
name = "sac"
total_timesteps = 1000

[algo.hyperparameters]
learning_rate = 3e-4

[policy]
extractor = "lidar-mlp"
net_arch = [32, 32]
"""


def test_shipped_presets_are_listed() -> None:
    assert list_presets() == SHIPPED
    assert DEFAULT_PRESET == "lidar-sac"
    assert load_preset().name == "lidar-sac"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_preset_loads_and_is_documented(name: str) -> None:
    preset = load_preset(name)
    assert isinstance(preset, Preset)
    assert preset.name == name
    assert preset.env.obs_type == name.split("-")[0]
    assert preset.algo.hyperparameters["learning_rate"] > 0
    assert name in preset.source
    text = (
        Path(__file__).parents[2] / "packages/tm-algos/src/tm_algos/presets" / f"{name}.toml"
    ).read_text()
    # honest about the hyperparameters: either measured or said to be untuned
    assert ("NOT yet been tuned" in text or "NOT been tuned" in text) != ("Tuned on" in text)
    section = ""
    for line in text.splitlines():  # every hyperparameter carries a comment saying why
        if line.startswith("["):
            section = line.split("]")[0] + "]"
        elif "=" in line and section in ("[algo.hyperparameters]", "[policy.kwargs]"):
            assert "#" in line, f"{name}.toml: undocumented value: {line}"


def test_presets_are_frozen() -> None:
    preset = load_preset("lidar-sac")
    with pytest.raises(AttributeError):
        preset.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        preset.algo.hyperparameters["gamma"] = 0.5  # type: ignore[index]


def test_obs_types_agree_with_tm_gym() -> None:
    from tm_gym.core.settings import OBS_TYPES as TM_GYM_OBS_TYPES

    assert OBS_TYPES == TM_GYM_OBS_TYPES


def test_load_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    preset = load_preset(path)
    assert preset.name == "mine"
    assert preset.policy.net_arch == (32, 32)
    assert preset.env.n_envs == 1
    assert preset.to_dict()["policy"]["net_arch"] == [32, 32]


def test_overrides_are_typed() -> None:
    preset = apply_overrides(
        load_preset("lidar-sac"),
        [
            "algo.hyperparameters.learning_rate=1e-4",
            "algo.hyperparameters.batch_size=64",
            "algo.hyperparameters.ent_coef=auto_0.1",
            'env.kwargs.track="gen:3"',
            "policy.net_arch=[64, 64]",
            "env.n_envs=4",
        ],
    )
    assert preset.algo.hyperparameters["learning_rate"] == 1e-4
    assert preset.algo.hyperparameters["batch_size"] == 64
    assert preset.algo.hyperparameters["ent_coef"] == "auto_0.1"
    assert preset.env.kwargs["track"] == "gen:3"
    assert preset.policy.net_arch == (64, 64)
    assert preset.env.n_envs == 4
    assert preset.source.endswith("+ overrides")
    ppo = apply_overrides(load_preset("images-ppo"), ["algo.hyperparameters.target_kl=0.02"])
    assert ppo.algo.hyperparameters["target_kl"] == 0.02
    assert load_preset("lidar-sac").algo.hyperparameters["learning_rate"] == 3e-4  # unchanged


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.hyperparameters.lr=1e-4", "no key 'lr' in algo.hyperparameters"),
        ("algo.hyperparameters.n_steps=128", "no key 'n_steps' in algo.hyperparameters"),
        (
            "algo.hyperparameters.learning_rate=-1",
            r"learning_rate = -1: expected a float in \(0, 1\]",
        ),
        ("algo.hyperparameters.batch_size=true", "batch_size = True: expected an integer >= 2"),
        ("algo.hyperparameters.gamma=[1, 2", "is not a TOML value"),
        (
            "algo.hyperparameters.ent_coef=automatic",
            "ent_coef = 'automatic': expected a positive float, 'auto'",
        ),
        ("env.obs_type=pixels", "env.obs_type = 'pixels': expected one of"),
        ("envs.id=x", "'envs' is not a table of the preset"),
        ("policy.kwargs.lstm_hidden_size=8", "no key 'lstm_hidden_size' in policy.kwargs"),
        ("no-equals-sign", "is not 'dotted.key=value'"),
    ],
)
def test_bad_overrides_are_explained(override: str, message: str) -> None:
    with pytest.raises(PresetError, match=message):
        apply_overrides(load_preset("lidar-sac"), [override])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("learning_rate = 3e-4", "learning_rat = 3e-4"),
            r"unknown key 'learning_rat' in \[algo.hyperparameters\] for sac",
        ),
        (("[env]", '[env]\ncolour = "red"'), r"unknown key 'colour' in \[env\]"),
        (
            ('description = "a test preset"', 'description = "x"\nauthor = "me"'),
            "unknown key 'author' in the top level",
        ),
        (('name = "sac"', 'name = "dqn"'), "algo.name = 'dqn': expected one of"),
        (
            ("net_arch = [32, 32]", "net_arch = [32, 0]"),
            r"policy.net_arch = \[32, 0\]: expected a list of layer sizes",
        ),
        (('extractor = "lidar-mlp"', 'extractor = "os.system"'), "policy.extractor = 'os.system'"),
        (("total_timesteps = 1000\n", ""), r"\[algo\] has no 'total_timesteps'"),
    ],
)
def test_bad_files_name_the_file_and_key(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = tmp_path / "bad.toml"
    assert edit[0] in GOOD
    path.write_text(GOOD.replace(edit[0], edit[1], 1))
    with pytest.raises(PresetError, match=message) as info:
        load_preset(path)
    assert str(path) in str(info.value)


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(GOOD.replace("learning_rate = 3e-4", "learning_rate = 3e-4 x"))
    with pytest.raises(PresetError, match=r"broken.toml: invalid TOML: .*line 12") as info:
        load_preset(path)
    assert str(path) in str(info.value)


def test_unknown_preset_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(
        PresetError, match=r"'lidar-ddpg' is neither a shipped preset \['images-lstm-ppo'"
    ):
        load_preset("lidar-ddpg")
    with pytest.raises(PresetError, match=r"nor an existing \.toml file"):
        load_preset(tmp_path / "missing.toml")
