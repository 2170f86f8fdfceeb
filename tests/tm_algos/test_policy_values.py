"""Bad values in ``policy.json`` give a PolicyFileError naming the key and the value, never a
raw error from torch or NumPy nor gigabytes allocated (issue 15, item 7).

Before: ``net_arch=[-1]`` raised a raw RuntimeError (and killed every tm-dist worker that
received it), a huge observation shape a raw MemoryError, and NaN numbers were accepted.
Every size is now bounded before anything is built.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from stable_baselines3 import PPO, SAC

import tm_gym  # noqa: F401  (registers the environments)
from tm_algos.extractors import policy_kwargs_for
from tm_algos.policy import (
    JSON_NAME,
    PolicyFileError,
    export_policy,
    load_policy,
    policy_from_bytes,
    policy_to_bytes,
)

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    kwargs = policy_kwargs_for("lidar", hidden=(8,))
    kwargs["net_arch"] = [8]
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    model = SAC("MultiInputPolicy", env, buffer_size=10, policy_kwargs=kwargs, seed=0)
    return export_policy(model, tmp_path_factory.mktemp("p") / "policy")


def _set(*path: str, value: Any) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        obj = config
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return edit


CASES: dict[str, tuple[Edit, str]] = {
    "negative width": (_set("net_arch", value=[-1]), r"net_arch=\[-1\]"),
    "huge width": (_set("net_arch", value=[2**62]), r"net_arch=\[4611686018427387904\]"),
    "too many weights": (_set("net_arch", value=[8192] * 3), r"net_arch=\[8192, 8192, 8192\]"),
    "width not an int": (_set("net_arch", value=[1.5]), r"net_arch=\[1.5\]"),
    "net_arch a string": (_set("net_arch", value="abc"), r"net_arch='abc'"),
    "bad net_arch key": (_set("net_arch", value={"pj": [8]}), r"the key 'pj'"),
    "huge hidden": (
        _set("features_extractor_kwargs", "hidden", value=[2**40]),
        r"features_extractor_kwargs\['hidden'\]=\[1099511627776\]",
    ),
    "no critics": (_set("policy_kwargs", "n_critics", value=0), r"'n_critics'\]=0"),
    "a million critics": (
        _set("policy_kwargs", "n_critics", value=10**6),
        r"'n_critics'\]=1000000: expected an int in \[1, 16\]",
    ),
    "huge observation": (
        _set("observation_space", "spaces", "lidar", "shape", value=[10**6, 10**6]),
        r"observation_space\.lidar\.shape=\[1000000, 1000000\]",
    ),
    "huge action": (
        _set("action_space", "shape", value=[10**12]),
        r"action_space\.shape=\[1000000000000\]",
    ),
    "NaN number": (
        _set("policy_kwargs", "clip_mean", value=float("nan")),
        r"\['clip_mean'\]=nan: expected a finite number",
    ),
    "policy_kwargs a list": (_set("policy_kwargs", value=[1]), r"policy_kwargs=\[1\]"),
}


def _write(exported: Path, tmp_path: Path, edit: Edit) -> Path:
    target = Path(shutil.copytree(exported, tmp_path / "policy"))
    config = json.loads((target / JSON_NAME).read_text())
    edit(config)
    (target / JSON_NAME).write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("case", list(CASES))
def test_bad_values_are_a_policy_file_error(exported: Path, tmp_path: Path, case: str) -> None:
    edit, match = CASES[case]
    target = _write(exported, tmp_path, edit)
    with pytest.raises(PolicyFileError, match=match) as info:
        load_policy(target)
    assert str(target / JSON_NAME) in str(info.value)


@pytest.mark.parametrize("case", ["negative width", "huge observation", "a million critics"])
def test_bad_values_from_the_network_too(exported: Path, case: str) -> None:
    """What a tm-dist worker receives: the same bounds, before anything is built."""
    edit, match = CASES[case]
    config = json.loads((exported / JSON_NAME).read_text())
    edit(config)
    with pytest.raises(PolicyFileError, match=match):
        policy_from_bytes(b"", json.dumps(config))


def test_deep_nesting_is_a_policy_file_error(exported: Path, tmp_path: Path) -> None:
    target = Path(shutil.copytree(exported, tmp_path / "policy"))
    deep = '{"a": ' * 100_000 + "1" + "}" * 100_000
    (target / JSON_NAME).write_text(deep)
    with pytest.raises(PolicyFileError, match="not valid JSON"):
        load_policy(target)
    with pytest.raises(PolicyFileError, match="not valid JSON"):
        policy_from_bytes(b"", deep)


def test_real_policies_are_within_the_bounds(exported: Path) -> None:
    """The bounds refuse nothing tm-algos exports: an SAC, and a PPO with pi/vf lists."""
    assert load_policy(exported).policy is not None
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    kwargs = policy_kwargs_for("lidar", hidden=(8,))
    kwargs["net_arch"] = {"pi": [8, 8], "vf": [16]}
    ppo = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, policy_kwargs=kwargs, seed=0)
    weights, config_json = policy_to_bytes(ppo)
    assert json.loads(config_json)["net_arch"] == {"pi": [8, 8], "vf": [16]}
    loaded = policy_from_bytes(weights, config_json)
    assert loaded.act(env.observation_space.sample()).shape == (3,)
