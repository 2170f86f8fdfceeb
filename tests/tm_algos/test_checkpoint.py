"""Training checkpoints: exact round trips and resumption, corrupt and hostile files, atomicity."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from safetensors.torch import load_file, save_file
from sb3_contrib import TQC, RecurrentPPO
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm

import tm_algos
import tm_gym  # noqa: F401  (registers the environments)
from tm_algos.buffers import FrameStackReplayBuffer
from tm_algos.checkpoint import (
    BUFFER_NAME,
    FORMAT,
    STATE_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tm_algos.checkpoint.buffer_state import load_buffer
from tm_algos.extractors import policy_kwargs_for

CONTINUE_STEPS = 100
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_current_progress_remaining")


def lidar_kwargs() -> dict[str, Any]:
    kwargs = policy_kwargs_for("lidar", hidden=(16,))
    kwargs["net_arch"] = [16]
    return kwargs


def make_sac(**overrides: Any) -> SAC:
    kwargs: dict[str, Any] = {
        "buffer_size": 400,
        "learning_starts": 50,
        "batch_size": 8,
        "seed": 0,
        "policy_kwargs": lidar_kwargs(),
        "replay_buffer_class": FrameStackReplayBuffer,
        "replay_buffer_kwargs": {"frame_key": "lidar"},
    }
    kwargs.update(overrides)
    return SAC("MultiInputPolicy", gym.make("TrackMania-Sim-v0", obs_type="lidar"), **kwargs)


def make(cls: type[BaseAlgorithm], obs: str | None, **kwargs: Any) -> Callable[[], BaseAlgorithm]:
    """A factory of ``cls`` models on tm-gym's ``obs`` observations (None: Pendulum-v1)."""

    def factory() -> BaseAlgorithm:
        env = (
            gym.make("Pendulum-v1") if obs is None else gym.make("TrackMania-Sim-v0", obs_type=obs)
        )
        policy = "MlpPolicy" if obs is None else "MultiInputPolicy"
        if cls is RecurrentPPO:
            policy = "MultiInputLstmPolicy"
        return cls(policy, env, **copy.deepcopy(kwargs))

    return factory


IMAGES = {**policy_kwargs_for("images", "small", features_dim=16), "net_arch": [16]}
PPO_KWARGS = {"n_steps": 32, "batch_size": 16, "n_epochs": 2}
# name: (factory, training steps); Pendulum: SB3's plain ReplayBuffer, a fixed ent_coef
CASES: dict[str, tuple[Callable[[], BaseAlgorithm], int]] = {
    "sac-lidar-framestack": (make_sac, 300),
    "tqc-images-framestack": (
        make(
            TQC,
            "images",
            buffer_size=300,
            learning_starts=100,
            batch_size=4,
            top_quantiles_to_drop_per_net=1,
            seed=1,
            policy_kwargs={**IMAGES, "n_critics": 2, "n_quantiles": 5},
            replay_buffer_class=FrameStackReplayBuffer,
        ),
        200,
    ),
    "ppo-lidar": (make(PPO, "lidar", seed=2, policy_kwargs=lidar_kwargs(), **PPO_KWARGS), 96),
    "recurrent-ppo-lidar": (
        make(
            RecurrentPPO,
            "lidar",
            seed=3,
            policy_kwargs={**lidar_kwargs(), "lstm_hidden_size": 8},
            **PPO_KWARGS,
        ),
        96,
    ),
    "sac-pendulum-replaybuffer": (
        make(SAC, None, buffer_size=400, learning_starts=50, batch_size=8, ent_coef=0.1, seed=4),
        200,
    ),
}


def get(model: BaseAlgorithm, name: str) -> Any:
    obj: Any = model
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def snapshot(model: BaseAlgorithm) -> dict[str, Any]:
    """Copies of everything a checkpoint should restore."""
    out: dict[str, Any] = {}
    state_dicts, variables = model._get_torch_save_params()
    for name in state_dicts:
        out[name] = copy.deepcopy(get(model, name).state_dict())
    for name in variables:
        out[name] = get(model, name).detach().clone()
    out["counters"] = {k: getattr(model, k) for k in COUNTERS}
    buffer = getattr(model, "replay_buffer", None)
    if buffer is not None:
        out["buffer"] = {
            k: copy.deepcopy(v)
            for k, v in vars(buffer).items()
            if isinstance(v, (np.ndarray, dict, int, bool))
        }
    return out


def rng_snapshot() -> tuple[Any, ...]:
    return th.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002


def set_rng(snap: tuple[Any, ...]) -> None:
    th.set_rng_state(snap[0])
    np.random.set_state(snap[1])  # noqa: NPY002
    random.setstate(snap[2])


def assert_same(a: Any, b: Any, where: str = "") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, th.Tensor):
        assert a.dtype == b.dtype and th.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@dataclass
class Run:
    case: str
    checkpoint: Path
    meta: dict[str, Any]
    original: dict[str, Any]
    restored: dict[str, Any]
    rng_saved: tuple[Any, ...]
    rng_loaded: tuple[Any, ...]
    continued_original: dict[str, Any]
    continued_restored: dict[str, Any]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    th.set_num_threads(1)


@pytest.fixture(scope="module", params=list(CASES))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Train, save, build a fresh model and load; then train both 100 more steps from the same
    environment seed and random generator states."""
    factory, steps = CASES[request.param]
    original = factory()
    original.learn(steps)
    path = tmp_path_factory.mktemp(request.param) / "ckpt"
    assert save_checkpoint(original, path, meta={"case": request.param, "steps": steps}) == path
    rng_saved = rng_snapshot()
    restored = factory()  # seeds the global generators again
    meta = load_checkpoint(restored, path)
    rng_loaded = rng_snapshot()
    before_original, before_restored = snapshot(original), snapshot(restored)

    assert restored.env is not None and original.env is not None
    restored.env.seed(123)
    restored.learn(CONTINUE_STEPS, reset_num_timesteps=False)
    set_rng(rng_saved)
    original._last_obs = None  # the environment is reset, as load_checkpoint asks for
    original.env.seed(123)
    original.learn(CONTINUE_STEPS, reset_num_timesteps=False)
    return Run(
        request.param,
        path,
        meta,
        before_original,
        before_restored,
        rng_saved,
        rng_loaded,
        snapshot(original),
        snapshot(restored),
    )


@pytest.mark.slow  # the module-scoped run trains four models
def test_load_restores_parameters_optimizers_buffer_and_counters(run: Run) -> None:
    assert_same(run.original, run.restored)
    assert run.original["counters"]["num_timesteps"] > 0
    for i in range(3):
        assert_same(run.rng_loaded[i], run.rng_saved[i], f"rng[{i}]")
    assert run.meta == {"case": run.case, "steps": CASES[run.case][1]}


@pytest.mark.slow  # the module-scoped run trains four models
def test_training_continues_exactly_as_without_the_break(run: Run) -> None:
    assert_same(run.continued_original, run.continued_restored)
    moved = run.continued_original["counters"]["num_timesteps"]
    assert moved >= run.original["counters"]["num_timesteps"] + CONTINUE_STEPS
    assert not all(  # training did change the parameters
        th.equal(a, b)
        for a, b in zip(
            run.original["policy"].values(), run.continued_original["policy"].values(), strict=True
        )
    )


# -- files ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sac_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = make_sac()
    model.learn(120)
    return save_checkpoint(model, tmp_path_factory.mktemp("sac") / "ckpt", meta={"a": [1, 2]})


@pytest.fixture
def ckpt(sac_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy to damage."""
    return Path(shutil.copytree(sac_checkpoint, tmp_path / "ckpt"))


def rewrite_listing(path: Path, name: str) -> None:
    """Make state.json agree with the current content of ``name`` (a forger's move)."""
    state = json.loads((path / STATE_NAME).read_text())
    data = (path / name).read_bytes()
    state["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / STATE_NAME).write_text(json.dumps(state))


def test_layout_is_safetensors_json_and_npz(sac_checkpoint: Path) -> None:
    assert sorted(p.name for p in sac_checkpoint.iterdir()) == sorted(
        [WEIGHTS_NAME, STATE_NAME, BUFFER_NAME]
    )
    state = json.loads((sac_checkpoint / STATE_NAME).read_text())
    assert state["format"] == FORMAT and state["version"] == 1 and state["meta"] == {"a": [1, 2]}
    assert state["counters"]["num_timesteps"] == 120
    for name in (WEIGHTS_NAME, BUFFER_NAME):
        data = (sac_checkpoint / name).read_bytes()
        assert state["files"][name] == {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    weights = load_file(str(sac_checkpoint / WEIGHTS_NAME))
    assert "policy/critic_target.qf1.0.weight" in weights and "variables/log_ent_coef" in weights
    assert any(k.startswith("ent_coef_optimizer/state/0/") for k in weights)
    with np.load(sac_checkpoint / BUFFER_NAME, allow_pickle=False) as npz:
        assert {"frames", "_head", "_ended", "observations/speed"} <= set(npz.files)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_weights_are_refused(ckpt: Path, damage: str) -> None:
    file = ckpt / WEIGHTS_NAME
    data = bytearray(file.read_bytes())
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))
    else:
        file.unlink()
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME):
        load_checkpoint(make_sac(), ckpt)


def test_unreadable_weights_with_a_matching_hash_are_refused(ckpt: Path) -> None:
    (ckpt / WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    rewrite_listing(ckpt, WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(make_sac(), ckpt)


@pytest.mark.parametrize("content", ["", '{"format": "tm-algos-checkpoint"', "[1, 2]", "missing"])
def test_bad_state_json_is_refused(ckpt: Path, content: str) -> None:
    if content == "missing":
        (ckpt / STATE_NAME).unlink()
    else:
        (ckpt / STATE_NAME).write_text(content)
    with pytest.raises(CheckpointError, match=STATE_NAME):
        load_checkpoint(make_sac(), ckpt)
    assert latest_checkpoint(ckpt.parent) is None


def test_newer_format_version_is_refused(ckpt: Path) -> None:
    state = json.loads((ckpt / STATE_NAME).read_text())
    state["version"] = 99
    (ckpt / STATE_NAME).write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="upgrade tm-algos"):
        load_checkpoint(make_sac(), ckpt)


def test_missing_tensor_is_named(ckpt: Path) -> None:
    weights = load_file(str(ckpt / WEIGHTS_NAME))
    del weights["policy/actor.mu.weight"]
    save_file(weights, str(ckpt / WEIGHTS_NAME))
    rewrite_listing(ckpt, WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"actor\.mu\.weight"):
        load_checkpoint(make_sac(), ckpt)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"policy_kwargs": {**lidar_kwargs(), "n_critics": 3}},
            "n_critics=3 but the .* n_critics=2",
        ),
        ({"buffer_size": 800}, "buffer_size=800 but the checkpoint has buffer_size=400"),
        ({"policy_kwargs": {**lidar_kwargs(), "net_arch": [8]}}, r"\[8, 16\] in the model"),
        ({"replay_buffer_class": None, "replay_buffer_kwargs": None}, "DictReplayBuffer"),
        ({"ent_coef": 0.1}, "needs the tensor 'ent_coef_tensor' .* no such tensor"),
    ],
)
def test_mismatched_model_is_refused_and_left_untouched(
    sac_checkpoint: Path, overrides: dict[str, Any], match: str
) -> None:
    model = make_sac(**overrides)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(model, sac_checkpoint)
    assert_same(snapshot(model), before)


def test_wrong_algorithm_is_refused(sac_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"algorithm='PPO' but the checkpoint has .*'SAC'"):
        load_checkpoint(CASES["ppo-lidar"][0](), sac_checkpoint)


MARKS: list[str] = []


def _mark() -> str:
    MARKS.append("ran")
    return "ran"


class Payload:
    """Runs _mark() when deserialized by Python's object deserializer."""

    def __reduce__(self) -> tuple[Callable[[], str], tuple[()]]:
        return _mark, ()


def test_object_array_in_npz_is_refused_without_running_it(ckpt: Path) -> None:
    with np.load(ckpt / BUFFER_NAME, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["rewards"] = np.array([Payload()], dtype=object)
    with (ckpt / BUFFER_NAME).open("wb") as f:
        np.savez(f, **arrays)
    rewrite_listing(ckpt, BUFFER_NAME)
    with pytest.raises(CheckpointError, match="holds Python objects"):
        load_checkpoint(make_sac(), ckpt)
    assert MARKS == []
    buffer = make_sac().replay_buffer
    assert buffer is not None
    with pytest.raises(ValueError, match="allow_pickle"):  # NumPy refuses too: a second wall
        load_buffer(ckpt / BUFFER_NAME, buffer, arrays, {})
    assert MARKS == []


def test_without_replay_buffer(tmp_path: Path) -> None:
    model = make_sac()
    model.learn(60)
    path = save_checkpoint(model, tmp_path / "c", replay_buffer=False)
    assert not (path / BUFFER_NAME).exists()
    fresh = make_sac()
    load_checkpoint(fresh, path)
    assert fresh.replay_buffer is not None and fresh.replay_buffer.pos == 0
    assert fresh.num_timesteps == 60


class CountingSAC(SAC):
    """A SAC subclass with a counter of its own."""

    checkpoint_counters = ("my_updates",)
    my_updates = 0


def test_subclass_counters_are_restored(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"policy_kwargs": {"net_arch": [8]}, "buffer_size": 50, "seed": 0}
    model = CountingSAC("MlpPolicy", gym.make("Pendulum-v1"), **kwargs)
    model.my_updates, model.num_timesteps = 7, 11
    path = save_checkpoint(model, tmp_path / "c")
    fresh = CountingSAC("MlpPolicy", gym.make("Pendulum-v1"), **kwargs)
    load_checkpoint(fresh, path)
    assert (fresh.my_updates, fresh.num_timesteps) == (7, 11)


def test_meta_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"meta\['when'\] is a object"):
        save_checkpoint(make_sac(), tmp_path / "c", meta={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_no_code_running_deserializer_in_the_sources() -> None:
    src = Path(tm_algos.__file__).parent
    for name in sorted((src / "checkpoint").glob("*.py")):
        text = name.read_text().lower()
        assert "pickle" not in text and "torch.load" not in text


# -- atomic saves and latest_checkpoint --------------------------------------------------------


@pytest.fixture(scope="module")
def small_model() -> SAC:
    model = make_sac(buffer_size=60)
    model.learn(60)
    return model


def hidden(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_overwrite_replaces_and_cleans_up(small_model: SAC, tmp_path: Path) -> None:
    save_checkpoint(small_model, tmp_path / "latest", meta={"n": 1})
    save_checkpoint(small_model, tmp_path / "latest", meta={"n": 2})
    assert hidden(tmp_path) == []
    assert load_checkpoint(make_sac(buffer_size=60), tmp_path / "latest") == {"n": 2}


def test_interrupted_save_keeps_the_previous_checkpoint(
    small_model: SAC, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = save_checkpoint(small_model, tmp_path / "step_60", meta={"n": 1})
    listing = (first / STATE_NAME).read_bytes()

    def write_half_then_fail(file: Any, *args: Any, **kwargs: Any) -> None:
        file.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", write_half_then_fail)
    monkeypatch.setattr(small_model, "num_timesteps", 90)
    for target in (first, tmp_path / "step_90"):
        with pytest.raises(RuntimeError, match="disk full"):
            save_checkpoint(small_model, target, meta={"n": 2})
    monkeypatch.undo()
    assert (first / STATE_NAME).read_bytes() == listing
    assert not (tmp_path / "step_90").exists() and hidden(tmp_path) == []
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(make_sac(buffer_size=60), first) == {"n": 1}


def test_failed_rename_puts_the_old_checkpoint_back(
    small_model: SAC, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = save_checkpoint(small_model, tmp_path / "latest", meta={"n": 1})
    real_replace, calls = os.replace, []

    def replace(src: Any, dst: Any) -> None:
        calls.append(Path(dst).name)
        if len(calls) == 2:  # moving the new checkpoint into place
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(small_model, target, meta={"n": 2})
    monkeypatch.undo()
    assert hidden(tmp_path) == [] and latest_checkpoint(tmp_path) == target
    assert load_checkpoint(make_sac(buffer_size=60), target) == {"n": 1}


def test_latest_checkpoint_picks_most_timesteps_among_complete_ones(
    small_model: SAC, tmp_path: Path
) -> None:
    assert latest_checkpoint(tmp_path / "nothing-yet") is None
    assert latest_checkpoint(tmp_path) is None
    try:
        for name, steps in (("b", 200), ("a", 100), ("c", 200), ("d", 300), ("e", 400)):
            small_model.num_timesteps = steps
            save_checkpoint(small_model, tmp_path / name, replay_buffer=name != "c")
    finally:
        small_model.num_timesteps = 60
    (tmp_path / "e" / BUFFER_NAME).write_bytes(b"truncated")  # incomplete: size differs
    (tmp_path / "d" / WEIGHTS_NAME).unlink()  # incomplete: file missing
    shutil.copytree(tmp_path / "e", tmp_path / ".e.tmp-x")  # a crashed save's leftovers
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "empty").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "c"  # 200 steps, saved after "b"
    with pytest.raises(CheckpointError, match="is a file"):
        latest_checkpoint(tmp_path / "notes.txt")


@pytest.mark.gpu
def test_round_trip_on_cuda(tmp_path: Path) -> None:
    model = make_sac(device="cuda")
    model.learn(60)
    path = save_checkpoint(model, tmp_path / "c")
    fresh = make_sac(device="cuda")
    load_checkpoint(fresh, path)
    assert_same(snapshot(model), snapshot(fresh))
    assert fresh.log_ent_coef is not None and fresh.log_ent_coef.device.type == "cuda"
