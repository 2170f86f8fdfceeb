"""``[imitation]``: how a preset pre-trains its policy by imitation before (or instead of) RL.

Only the configuration lives here (no PyTorch), so that :mod:`tm_algos.presets` can validate a
preset's ``[imitation]`` table without loading any network code. The rules are
:class:`tm_gym.core.config.Rule` s, as everywhere else in presets.

>>> from tm_algos.imitation.config import ImitationConfig
>>> ImitationConfig(iterations=4).beta_at(1)
0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tm_gym.core.config import ConfigError, Rule, check_table, rules_of, setting, validate

__all__ = ["TEACHERS", "ImitationConfig", "imitation_from_table"]

TEACHERS = ("expert",)
"""Teachers named by a word; any other ``teacher`` value is a LIDAR policy directory."""

_TRACK = r"[A-Za-z0-9_.:/\\ -]+"


def _teacher_ok(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


@dataclass(frozen=True)
class ImitationConfig:
    """DAgger (and optional RL fine-tuning) settings; see :mod:`tm_algos.imitation.dagger`.

    Every field is checked on construction; a bad value raises
    :class:`~tm_gym.core.config.ConfigError` naming the field, the value and what is expected.
    """

    teacher: str = setting(
        "expert",
        Rule("str", check_fn=_teacher_ok, hint="'expert' or a LIDAR policy directory"),
        "who labels the visited states: the simulator's scripted expert, or a trained "
        "LIDAR policy (a policy directory) fed the exact LIDAR of the same car",
    )
    iterations: int = setting(
        30, Rule("int", low=1, high=100_000), "DAgger iterations (collect, then train)"
    )
    steps_per_iteration: int = setting(
        200, Rule("int", low=1, high=1_000_000), "steps each car drives per iteration"
    )
    warmup_steps: int = setting(
        0,
        Rule("int", low=0, high=1_000_000),
        "steps each car drives with the teacher, labelled, before the first iteration: the "
        "student's first training batch then holds more than the start line (short "
        "iterations over many tracks otherwise train it on near-constant labels first)",
    )
    n_envs: int = setting(8, Rule("int", low=1, high=1024), "cars collecting at once")
    tracks: tuple[str, ...] = setting(
        (),
        Rule("strs", pattern=_TRACK, hint="track names, gen:SEED or track files"),
        "tracks the cars are spread over (empty: the environment's own track)",
    )
    car_scales: dict[str, list[float]] = setting(
        rule=Rule("table"),
        doc="car physics randomisation: CarParams fields and [low, high] factors, one car "
        "drawn per track, e.g. { grip = [0.7, 1.3] } (empty: the environment's car everywhere)",
        default_factory=dict,
    )
    augment: dict[str, list[float]] = setting(
        rule=Rule("table"),
        doc="random warps and lighting changes of the student's training frames, keys zoom, "
        "stretch_y, shift_y_px, shift_x_px, brightness, contrast, gamma, each [low, high], "
        "e.g. "
        "{ zoom = [0.85, 1.15] } (empty: none); see tm_algos.imitation.augment",
        default_factory=dict,
    )
    history_dropout: float = setting(
        0.0,
        Rule("float", low=0.0, high=1.0),
        "share of each training batch whose past-action history is swapped with another "
        "sample's, so that the student reads the frames instead of repeating its last action",
    )
    beta: float = setting(
        1.0, Rule("float", low=0.0, high=1.0), "probability that the teacher drives, at first"
    )
    beta_decay: float = setting(
        0.5, Rule("float", low=0.0, high=1.0), "beta is multiplied by this every iteration"
    )
    gradient_steps: int = setting(
        300, Rule("int", low=0, high=10_000_000), "supervised gradient steps per iteration"
    )
    batch_size: int = setting(256, Rule("int", low=1, high=65_536), "samples per gradient step")
    learning_rate: float = setting(
        1e-3, Rule("float", low=0.0, low_open=True, high=1.0), "Adam's step size"
    )
    buffer_size: int = setting(
        100_000,
        Rule("int", low=1, high=100_000_000),
        "labelled states kept (the oldest are dropped); ≈ 5.2 KB each for 4 × 64×64 frames",
    )
    log_std: float = setting(
        -2.0,
        Rule("float", low=-20.0, high=2.0),
        "log standard deviation the actor's Gaussian is trained towards (SAC family)",
    )
    minutes: float | None = setting(
        None,
        Rule("float", optional=True, low=0.0, low_open=True),
        "wall-clock budget of the imitation phase (none: all iterations)",
    )
    eval_every: int = setting(
        1, Rule("int", low=1, high=100_000), "evaluate the student every this many iterations"
    )
    eval_tracks: tuple[str, ...] = setting(
        (),
        Rule("strs", pattern=_TRACK, hint="track names, gen:SEED or track files"),
        "validation tracks: each evaluation drives one deterministic lap on each, and best/ "
        "is the student with the highest score (per track: 1 + expert lap / lap when it "
        "finishes, else the progress); empty: the evaluation track, as for RL (not with "
        "finetune)",
    )
    stop_after_finishes: int = setting(
        0,
        Rule("int", low=0, high=1_000_000, hint="0 = never"),
        "end the imitation phase once this many evaluations in a row finish at most "
        "lap_tolerance × the teacher's lap",
    )
    lap_tolerance: float = setting(
        1.05, Rule("float", low=1.0, high=10.0), "see stop_after_finishes"
    )
    finetune: bool = setting(
        False,
        Rule("bool"),
        "continue with the preset's RL algorithm from the student's weights after DAgger",
    )

    def __post_init__(self) -> None:
        validate(self, where="imitation")
        if self.eval_tracks and self.finetune:
            raise ConfigError(
                f"imitation: eval_tracks={list(self.eval_tracks)} with finetune=true: the RL "
                "phase evaluates on one track and cannot be ranked against the validation "
                "score; set eval_tracks = [] to fine-tune, or finetune = false"
            )
        if self.augment:
            from tm_algos.imitation.augment import FrameAugment

            try:
                FrameAugment.from_table(self.augment)
            except Exception as exc:
                raise ConfigError(str(exc)) from None
        if self.car_scales:
            from tm_algos.imitation.fleet import draw_cars

            try:
                draw_cars(None, self.car_scales, 1, 0)  # checks the names and the ranges
            except Exception as exc:
                raise ConfigError(str(exc)) from None

    def beta_at(self, iteration: int) -> float:
        """The probability that the teacher drives during ``iteration`` (0-based)."""
        return self.beta * math.pow(self.beta_decay, iteration)

    def to_dict(self) -> dict[str, Any]:
        """The settings as TOML-shaped data (lists for tuples; None left out)."""
        out: dict[str, Any] = {}
        for name in rules_of(self):
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


def imitation_from_table(
    table: Mapping[str, Any], where: str, error: type[ConfigError] = ConfigError
) -> ImitationConfig:
    """An :class:`ImitationConfig` from a preset's ``[imitation]`` table; unknown keys and bad
    values raise ``error`` naming ``where`` (the preset file) and the key."""
    values = check_table(table, rules_of(ImitationConfig), f"{where}: imitation", error)
    try:
        return ImitationConfig(**values)
    except ConfigError as exc:
        raise error(f"{where}: {exc}") from exc
