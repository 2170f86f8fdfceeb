"""tm-train --init-from: a new run starts from a saved policy's weights (sim → game fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tm_algos.cli import train as train_cli
from tm_algos.errors import InvalidValueError
from tm_algos.factory import make_model, make_vec_env
from tm_algos.policy import export_policy
from tm_algos.presets import apply_overrides, load_preset
from tm_algos.training import TrainConfig, Trainer

HP = "algo.hyperparameters"
TINY = (f"{HP}.learning_starts=50", f"{HP}.batch_size=32", f"{HP}.buffer_size=5000")
SMALL = ("policy.net_arch=[32, 32]",)


def saved_policy(tmp_path: Path, overrides: tuple[str, ...], preset: str = "lidar-sac") -> Path:
    """A policy of ``preset`` whose weights are not those of a fresh model (all 0.25)."""
    p = apply_overrides(load_preset(preset), [*TINY, *overrides])
    model = make_model(p, make_vec_env(p, n_envs=1), seed=5)
    with torch.no_grad():
        for param in model.policy.parameters():
            param.fill_(0.25)
    export_policy(model, tmp_path / "policy")
    return tmp_path / "policy"


def trainer(run_dir: Path, init_from: Path, overrides: tuple[str, ...], **kw: object) -> Trainer:
    cfg = TrainConfig(
        preset="lidar-sac",
        run_dir=run_dir,
        overrides=(*TINY, *overrides),
        n_envs=1,
        total_timesteps=100,
        eval_every=10**9,
        checkpoint_every=10**9,
        tensorboard=False,
        init_from=init_from,
        **kw,  # type: ignore[arg-type]
    )
    return Trainer(cfg)


def test_a_new_run_starts_from_the_policy_weights(tmp_path: Path) -> None:
    source = saved_policy(tmp_path, SMALL)
    t = trainer(tmp_path / "run", source, SMALL)
    try:
        model = t.build()
        for name, value in model.policy.state_dict().items():
            if value.is_floating_point():
                assert torch.all(value == 0.25), name
    finally:
        t.close()


def test_another_network_is_refused_with_the_reason(tmp_path: Path) -> None:
    source = saved_policy(tmp_path, ("policy.net_arch=[16, 16]",))
    t = trainer(tmp_path / "run", source, SMALL)
    try:
        with pytest.raises(InvalidValueError, match=r"network differs.*same preset"):
            t.build()
    finally:
        t.close()


def test_other_observations_are_refused_with_the_reason(tmp_path: Path) -> None:
    source = saved_policy(tmp_path, SMALL, preset="images-sac")
    t = trainer(tmp_path / "run", source, SMALL)
    try:
        with pytest.raises(InvalidValueError, match="observation space"):
            t.build()
    finally:
        t.close()


def test_resume_and_init_from_together_are_refused(tmp_path: Path) -> None:
    source = saved_policy(tmp_path, SMALL)
    t = trainer(tmp_path / "run", source, SMALL, resume=True)
    with pytest.raises(InvalidValueError, match="only one of them"):
        t.build()


def test_the_cli_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-policy-here"
    code = train_cli.main(
        ["lidar-sac", "--run-dir", str(tmp_path / "r"), "--init-from", str(missing)]
    )
    assert code == 2
    assert str(missing) in capsys.readouterr().err
