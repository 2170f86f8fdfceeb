"""Training presets: one TOML file per preset, loaded into frozen, validated dataclasses.

The presets shipped with tm-algos live in ``tm_algos/presets/*.toml``; each value there carries
a comment saying why it was chosen. A preset names its feature extractor by a short name
(``"lidar-mlp"``, ``"cnn-small"``, ...) that the training code resolves; this module imports
no network code.

Which algorithms exist, and which hyperparameters and policy arguments each takes with their
rules, is :mod:`tm_algos.registry`'s; the rules are :class:`tm_gym.core.config.Rule` s of the
configuration toolkit shared with tm-dist, which also reads ``--set`` overrides. Every error
names the file (or ``+ overrides``) and the key.

>>> from tm_algos.presets import apply_overrides, list_presets, load_preset
>>> "lidar-sac" in list_presets()
True
>>> preset = apply_overrides(load_preset("lidar-sac"), ["algo.hyperparameters.gamma=0.99"])
>>> preset.algo.hyperparameters["gamma"]
0.99
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tm_algos.errors import TMAlgosError
from tm_algos.imitation.config import ImitationConfig, imitation_from_table
from tm_algos.registry import ACTIVATIONS, ALGORITHMS, Check, algorithm
from tm_gym.core.config import (
    ConfigError,
    Rule,
    check_table,
    parse_assignment,
    rules_of,
    setting,
    validate,
)
from tm_gym.core.settings import OBS_TYPES

__all__ = [
    "DEFAULT_PRESET",
    "OBS_TYPES",
    "AlgoSpec",
    "DemosConfig",
    "EnvSpec",
    "PolicySpec",
    "Preset",
    "PresetError",
    "apply_overrides",
    "list_presets",
    "load_preset",
    "preset_from_dict",
]

DEFAULT_PRESET = "lidar-sac"


class PresetError(TMAlgosError, ConfigError):
    """A preset file or an override is malformed; the message names the file and the key."""


# -- the rules of the fixed keys --------------------------------------------------------------


def _layer_table(value: Any) -> bool:
    return bool(value) and all(_LAYERS.accepts(v)[0] for v in value.values())


_LAYERS = Check(Rule("ints", low=1), "a list of layer sizes")
_TABLE = Check(Rule("table"), "a table")
_POSITIVE = Check(Rule("int", low=1), "a positive integer")

_FIELDS: dict[str, dict[str, tuple[Check, bool]]] = {
    # section → key → (rule, required); tables are checked further by their own rules
    "": {
        "description": (Check(Rule("str"), "a string"), True),
        "env": (_TABLE, True),
        "algo": (_TABLE, True),
        "policy": (_TABLE, True),
        "imitation": (_TABLE, False),
        "demos": (_TABLE, False),
    },
    "env": {
        "id": (Check(Rule("str", check_fn=bool), "an env id"), True),
        "obs_type": (Check(Rule("str", choices=OBS_TYPES), f"one of {list(OBS_TYPES)}"), True),
        "n_envs": (_POSITIVE, False),
        "kwargs": (_TABLE, False),
    },
    "algo": {
        "name": (Check(Rule("str", choices=tuple(ALGORITHMS)), f"one of {list(ALGORITHMS)}"), True),
        "total_timesteps": (_POSITIVE, True),
        "hyperparameters": (_TABLE, False),
    },
    "policy": {
        "extractor": (
            Check(
                Rule("str", pattern=r"[a-z0-9][a-z0-9_-]*"),
                "an extractor name such as 'lidar-mlp' or 'cnn-small'",
            ),
            True,
        ),
        "net_arch": (
            Check(
                _LAYERS.rule | Rule("table", check_fn=_layer_table),
                "a list of layer sizes such as [256, 256], or a table of them such as "
                "{pi = [64, 64], vf = [64, 64]}",
            ),
            True,
        ),
        "activation": (
            Check(Rule("str", choices=tuple(ACTIVATIONS)), f"one of {list(ACTIVATIONS)}"),
            False,
        ),
        "extractor_kwargs": (_TABLE, False),
        "kwargs": (_TABLE, False),
    },
}


# -- the dataclasses -------------------------------------------------------------------------


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class EnvSpec:
    """``[env]``: which environment to make and how."""

    id: str
    obs_type: str
    n_envs: int = 1
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))


@dataclass(frozen=True)
class AlgoSpec:
    """``[algo]`` and ``[algo.hyperparameters]``."""

    name: str
    total_timesteps: int
    hyperparameters: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))


@dataclass(frozen=True)
class PolicySpec:
    """``[policy]``: the feature extractor (by name), the heads and extra policy arguments."""

    extractor: str
    net_arch: tuple[int, ...] | Mapping[str, tuple[int, ...]]
    activation: str = "relu"
    extractor_kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))


@dataclass(frozen=True)
class DemosConfig:
    """``[demos]``: how a run uses demonstrations (``tm-train --demos``) and, after DAgger, the
    teacher-labelled dataset; see :mod:`tm_algos.imitation.mix`.

    Every field is checked on construction; a bad value raises
    :class:`~tm_gym.core.config.ConfigError` naming the field, the value and what is expected.
    """

    pretrain: bool = setting(
        True,
        Rule("bool"),
        "behaviour cloning on the demonstrations before RL (and before DAgger)",
    )
    mix: float = setting(
        0.5,
        Rule("float", low=0.0, high=1.0),
        "share of every off-policy gradient batch drawn from the demonstration transitions "
        "(RLPD's symmetric sampling: 0.5); 0 puts them in the replay buffer once instead",
    )
    bc_weight: float = setting(
        0.0,
        Rule("float", low=0.0, high=1e6),
        "weight of the actor's behaviour-cloning term, bc_weight × ||pi(s) - a||² on "
        "demonstration (or, after DAgger, teacher-labelled) states (TD3+BC); 0 turns it off",
    )

    def __post_init__(self) -> None:
        validate(self, where="demos")

    def to_dict(self) -> dict[str, Any]:
        """The settings as TOML-shaped data."""
        return {name: getattr(self, name) for name in rules_of(self)}


@dataclass(frozen=True)
class Preset:
    """A complete training recipe, as read from one TOML file."""

    name: str
    description: str
    env: EnvSpec
    algo: AlgoSpec
    policy: PolicySpec
    source: str
    """The file it came from (with ``+ overrides`` once :func:`apply_overrides` changed it)."""
    imitation: ImitationConfig | None = None
    """``[imitation]``: pre-training by DAgger before RL (see :mod:`tm_algos.imitation`), or
    None for RL from scratch."""
    demos: DemosConfig = field(default_factory=DemosConfig)
    """``[demos]``: the demonstration replay mix and behaviour-cloning term (defaults when the
    file has no such table)."""

    def to_dict(self) -> dict[str, Any]:
        """The preset as plain TOML-shaped data (the inverse of the file's structure)."""
        arch = self.policy.net_arch
        out: dict[str, Any] = {
            "description": self.description,
            "env": {
                "id": self.env.id,
                "obs_type": self.env.obs_type,
                "n_envs": self.env.n_envs,
                "kwargs": dict(self.env.kwargs),
            },
            "algo": {
                "name": self.algo.name,
                "total_timesteps": self.algo.total_timesteps,
                "hyperparameters": dict(self.algo.hyperparameters),
            },
            "policy": {
                "extractor": self.policy.extractor,
                "net_arch": list(arch)
                if isinstance(arch, tuple)
                else {k: list(v) for k, v in arch.items()},
                "activation": self.policy.activation,
                "extractor_kwargs": dict(self.policy.extractor_kwargs),
                "kwargs": dict(self.policy.kwargs),
            },
        }
        if self.imitation is not None:
            out["imitation"] = self.imitation.to_dict()
        out["demos"] = self.demos.to_dict()
        return out


# -- parsing and validation ------------------------------------------------------------------


def _checked(check: Check, value: Any, key: str, source: str) -> Any:
    """``value`` normalised by ``check``'s rule, or a :class:`PresetError` naming the source."""
    ok, normalised = check.accepts(value)
    if not ok:
        raise PresetError(f"{source}: {key} = {value!r}: expected {check.expected}")
    return normalised


def _section(table: Any, section: str, source: str) -> dict[str, Any]:
    """The keys of ``[section]`` ("" for the top level), checked and normalised."""
    where = f"[{section}]" if section else "the top level"
    if not isinstance(table, Mapping):
        raise PresetError(f"{source}: {where} is {table!r}: expected a table")
    fields = _FIELDS[section]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise PresetError(
            f"{source}: unknown key {unknown[0]!r} in {where}; expected keys {sorted(fields)}"
        )
    missing = [key for key, (_, required) in fields.items() if required and key not in table]
    if missing:
        raise PresetError(f"{source}: {where} has no {sorted(missing)[0]!r}; add it")
    prefix = f"{section}." if section else ""
    return {
        key: _checked(check, table[key], prefix + key, source)
        for key, (check, _) in fields.items()
        if key in table
    }


def _free_table(
    table: Mapping[str, Any], rules: Mapping[str, Check], section: str, algo: str, source: str
) -> dict[str, Any]:
    """A table whose keys depend on the algorithm (hyperparameters, policy kwargs), checked."""
    out = {}
    for key, value in table.items():
        if key not in rules:
            raise PresetError(
                f"{source}: unknown key {key!r} in [{section}] for {algo}; "
                f"expected one of {sorted(rules)}"
            )
        out[key] = _checked(rules[key], value, f"{section}.{key}", source)
    return out


def _frozen_arch(arch: Any) -> tuple[int, ...] | Mapping[str, tuple[int, ...]]:
    if isinstance(arch, Mapping):
        return _frozen({k: tuple(v) for k, v in arch.items()})
    return tuple(arch)


def _env_spec(data: Any, source: str) -> EnvSpec:
    env = _section(data, "env", source)
    kwargs = dict(env.get("kwargs", {}))
    if "obs_type" in kwargs:
        raise PresetError(f"{source}: env.kwargs.obs_type duplicates env.obs_type; remove it")
    return EnvSpec(env["id"], env["obs_type"], env.get("n_envs", 1), _frozen(kwargs))


def _algo_spec(data: Any, source: str) -> AlgoSpec:
    algo = _section(data, "algo", source)
    name = algo["name"]
    hps = _free_table(
        algo.get("hyperparameters", {}),
        algorithm(name).hyperparameters,
        "algo.hyperparameters",
        name,
        source,
    )
    return AlgoSpec(name, algo["total_timesteps"], _frozen(hps))


def _policy_spec(data: Any, algo: str, source: str) -> PolicySpec:
    policy = _section(data, "policy", source)
    kwargs = _free_table(
        policy.get("kwargs", {}),
        algorithm(algo).policy_kwarg_rules(),
        "policy.kwargs",
        algo,
        source,
    )
    return PolicySpec(
        policy["extractor"],
        _frozen_arch(policy["net_arch"]),
        policy.get("activation", "relu"),
        _frozen(dict(policy.get("extractor_kwargs", {}))),
        _frozen(kwargs),
    )


def _validated(name: str, data: Any, source: str) -> Preset:
    top = _section(data, "", source)
    env = _env_spec(top["env"], source)
    algo = _algo_spec(top["algo"], source)
    imitation = None
    if "imitation" in top:
        imitation = imitation_from_table(top["imitation"], source, PresetError)
        if algorithm(algo.name).recurrent:
            raise PresetError(
                f"{source}: [imitation] needs a feed-forward policy; algo.name = "
                f"{algo.name!r} is recurrent: remove [imitation] or pick another algorithm"
            )
    return Preset(
        name=name,
        description=top["description"],
        env=env,
        algo=algo,
        policy=_policy_spec(top["policy"], algo.name, source),
        source=source,
        imitation=imitation,
        demos=_demos_config(top.get("demos", {}), source),
    )


def _demos_config(table: Mapping[str, Any], source: str) -> DemosConfig:
    values = check_table(table, rules_of(DemosConfig), f"{source}: demos", PresetError)
    try:
        return DemosConfig(**values)
    except ConfigError as exc:
        raise PresetError(f"{source}: {exc}") from exc


def _preset_dir() -> Any:
    return resources.files("tm_algos") / "presets"


def list_presets() -> list[str]:
    """Names of the presets shipped with tm-algos, sorted."""
    return sorted(
        p.name[: -len(".toml")] for p in _preset_dir().iterdir() if p.name.endswith(".toml")
    )


def load_preset(name_or_path: str | Path = DEFAULT_PRESET) -> Preset:
    """A shipped preset by name (see :func:`list_presets`), or a preset TOML file by path."""
    text: str
    if isinstance(name_or_path, str) and name_or_path in list_presets():
        name = name_or_path
        resource = _preset_dir() / f"{name}.toml"
        source = f"preset {name!r} ({name}.toml in tm_algos/presets)"
        text = resource.read_text(encoding="utf-8")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise PresetError(
                f"preset {str(name_or_path)!r} is neither a shipped preset {list_presets()} "
                "nor an existing .toml file"
            )
        name, source = path.stem, str(path)
        text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{source}: invalid TOML: {e}") from e
    return _validated(name, data, source)


# -- overrides -------------------------------------------------------------------------------

_FREE_TABLES = ("env.kwargs", "policy.extractor_kwargs")


def _known_leaf(data: Mapping[str, Any], table: Mapping[str, Any], parent: str, leaf: str) -> bool:
    """Whether an override may set ``leaf`` in the table ``parent`` of a preset's data."""
    if parent == "algo.hyperparameters":
        return leaf in algorithm(str(data["algo"]["name"])).hyperparameters
    if parent == "policy.kwargs":
        return leaf in algorithm(str(data["algo"]["name"])).policy_kwargs
    if parent == "imitation":
        return leaf in rules_of(ImitationConfig)
    if parent == "demos":
        return leaf in rules_of(DemosConfig)
    return leaf in table or parent in _FREE_TABLES


def apply_overrides(preset: Preset, overrides: Sequence[str]) -> Preset:
    """A copy of ``preset`` with ``"dotted.key=value"`` overrides applied and re-validated.

    Values use TOML syntax (``1e-4``, ``256``, ``true``, ``[64, 64]``, ``"text"``; a bare word
    is a string), read by :func:`tm_gym.core.config.parse_assignment`. Keys must exist in the
    preset's schema, e.g. ``algo.hyperparameters.learning_rate``, ``env.kwargs.track``,
    ``policy.net_arch``.
    """
    data = preset.to_dict()
    for item in overrides:
        parts, value = parse_assignment(item, "override", PresetError)
        key = ".".join(parts)
        table = data
        for i, part in enumerate(parts[:-1]):
            sub = table.get(part)
            if not isinstance(sub, dict):
                raise PresetError(
                    f"override {key!r}: {'.'.join(parts[: i + 1])!r} is not a table of "
                    f"the preset; tables: {_tables(data)}"
                )
            table = sub
        leaf, parent = parts[-1], ".".join(parts[:-1])
        if not _known_leaf(data, table, parent, leaf):
            raise PresetError(
                f"override {key!r}: the preset {preset.name!r} has no key {leaf!r} in "
                f"{parent or 'the top level'}; keys there: {sorted(table)}"
            )
        table[leaf] = value
    source = preset.source if "+ overrides" in preset.source else f"{preset.source} + overrides"
    return _validated(preset.name, data, source)


def _tables(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(prefix + k)
            out.extend(_tables(v, f"{prefix}{k}."))
    return out


def preset_from_dict(name: str, data: Mapping[str, Any], source: str) -> Preset:
    """A preset from TOML-shaped data (what :meth:`Preset.to_dict` returns), validated.

    ``source`` names where the data came from, for error messages (e.g. a run's preset.json).
    """
    return _validated(name, dict(data), source)
