"""Training presets: one TOML file per preset, loaded into frozen, validated dataclasses.

The presets shipped with tm-algos live in ``tm_algos/presets/*.toml``; each value there carries
a comment saying why it was chosen. A preset names its feature extractor by a short name
(``"lidar-mlp"``, ``"cnn-small"``, ...) that the training code resolves; this module imports
no network code.

>>> from tm_algos.presets import apply_overrides, list_presets, load_preset
>>> "lidar-sac" in list_presets()
True
>>> preset = apply_overrides(load_preset("lidar-sac"), ["algo.hyperparameters.gamma=0.99"])
>>> preset.algo.hyperparameters["gamma"]
0.99
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ALGORITHMS",
    "DEFAULT_PRESET",
    "AlgoSpec",
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
ALGORITHMS = ("sac", "tqc", "redq", "fast_sac", "crossq", "ppo", "recurrent_ppo")
OBS_TYPES = ("images", "lidar", "lidar_progress")  # tm_gym.envs.settings.OBS_TYPES
OFF_POLICY = ("sac", "tqc", "redq", "fast_sac", "crossq")


class PresetError(ValueError):
    """A preset file or an override is malformed; the message names the file and the key."""


# -- value checks ----------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _int(lo: int, hi: int | None = None) -> Check:
    return lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
    )


def _float(lo: float, hi: float, *, lo_open: bool = False) -> Check:
    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and v <= hi

    return check


def _ent_coef(v: Any) -> bool:
    if isinstance(v, str):
        return re.fullmatch(r"auto(_\d+(\.\d*)?(e-?\d+)?)?", v) is not None
    return _float(0.0, math.inf, lo_open=True)(v)


_BOOL: Check = lambda v: isinstance(v, bool)  # noqa: E731

# name → (check, what is expected)
_COMMON: dict[str, tuple[Check, str]] = {
    "learning_rate": (_float(0.0, 1.0, lo_open=True), "a float in (0, 1]"),
    "batch_size": (_int(2), "an integer >= 2"),
    "gamma": (_float(0.0, 1.0, lo_open=True), "a float in (0, 1]"),
    "max_grad_norm": (_float(0.0, math.inf, lo_open=True), "a positive float"),
}
_OFF_POLICY_HP: dict[str, tuple[Check, str]] = {
    **_COMMON,
    "buffer_size": (_int(1), "a positive integer"),
    "tau": (_float(0.0, 1.0, lo_open=True), "a float in (0, 1]"),
    "train_freq": (_int(1), "a positive integer (environment steps)"),
    "gradient_steps": (lambda v: _int(1)(v) or v == -1, "a positive integer, or -1"),
    "learning_starts": (_int(0), "an integer >= 0"),
    "ent_coef": (_ent_coef, "a positive float, 'auto' or 'auto_<initial value>'"),
    "target_entropy": (
        lambda v: v == "auto" or _float(-math.inf, math.inf)(v),
        "'auto' or a float",
    ),
    "target_update_interval": (_int(1), "a positive integer"),
}
_HYPERPARAMETERS: dict[str, dict[str, tuple[Check, str]]] = {
    "sac": _OFF_POLICY_HP,
    "fast_sac": _OFF_POLICY_HP,
    "crossq": {  # no target networks, hence no tau
        **{k: v for k, v in _OFF_POLICY_HP.items() if k not in ("tau", "target_update_interval")},
        "policy_delay": (_int(1), "a positive integer (critic updates per actor update)"),
    },
    "tqc": {
        **_OFF_POLICY_HP,
        "top_quantiles_to_drop_per_net": (_int(0), "an integer >= 0"),
    },
    "redq": {
        **_OFF_POLICY_HP,
        "subset_size": (_int(1), "a positive integer (critics sampled for the target)"),
        "actor_update_interval": (_int(1), "a positive integer (critic updates per actor update)"),
    },
    "ppo": {
        **_COMMON,
        "n_steps": (_int(1), "a positive integer (steps per environment per update)"),
        "n_epochs": (_int(1), "a positive integer"),
        "gae_lambda": (_float(0.0, 1.0), "a float in [0, 1]"),
        "clip_range": (_float(0.0, 1.0, lo_open=True), "a float in (0, 1]"),
        "ent_coef": (_float(0.0, math.inf), "a float >= 0"),
        "vf_coef": (_float(0.0, math.inf), "a float >= 0"),
        "target_kl": (_float(0.0, math.inf, lo_open=True), "a positive float"),
        "normalize_advantage": (_BOOL, "true or false"),
    },
}
_HYPERPARAMETERS["recurrent_ppo"] = _HYPERPARAMETERS["ppo"]

_POLICY_KWARGS: dict[str, tuple[Check, str]] = {
    "n_critics": (_int(1), "a positive integer"),
    "n_quantiles": (_int(1), "a positive integer"),
    "share_features_extractor": (_BOOL, "true or false"),
    "log_std_init": (_float(-math.inf, math.inf), "a float"),
    "use_sde": (_BOOL, "true or false"),
    "augment_shift": (_int(0), "an integer >= 0 (pixels of random shift)"),
    "channels_last": (_BOOL, "true or false"),
    "ortho_init": (_BOOL, "true or false"),
    "lstm_hidden_size": (_int(1), "a positive integer"),
    "n_lstm_layers": (_int(1), "a positive integer"),
    "shared_lstm": (_BOOL, "true or false"),
    "enable_critic_lstm": (_BOOL, "true or false"),
}
_POLICY_KWARGS_OF: dict[str, tuple[str, ...]] = {
    "sac": ("n_critics", "share_features_extractor", "log_std_init", "use_sde"),
    "tqc": ("n_critics", "n_quantiles", "share_features_extractor", "log_std_init", "use_sde"),
    "redq": ("n_critics", "share_features_extractor", "log_std_init"),
    "crossq": ("n_critics", "log_std_init"),
    "fast_sac": (
        "n_critics",
        "share_features_extractor",
        "log_std_init",
        "augment_shift",
        "channels_last",
    ),
    "ppo": ("share_features_extractor", "log_std_init", "use_sde", "ortho_init"),
    "recurrent_ppo": (
        "share_features_extractor",
        "log_std_init",
        "ortho_init",
        "lstm_hidden_size",
        "n_lstm_layers",
        "shared_lstm",
        "enable_critic_lstm",
    ),
}
_ACTIVATIONS = ("relu", "tanh", "elu", "leaky_relu", "gelu", "silu")


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
class Preset:
    """A complete training recipe, as read from one TOML file."""

    name: str
    description: str
    env: EnvSpec
    algo: AlgoSpec
    policy: PolicySpec
    source: str
    """The file it came from (with ``+ overrides`` once :func:`apply_overrides` changed it)."""

    def to_dict(self) -> dict[str, Any]:
        """The preset as plain TOML-shaped data (the inverse of the file's structure)."""
        arch = self.policy.net_arch
        return {
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


# -- parsing and validation ------------------------------------------------------------------

_SECTIONS: dict[str, tuple[set[str], set[str]]] = {
    # section → (required keys, optional keys)
    "": ({"description", "env", "algo", "policy"}, set()),
    "env": ({"id", "obs_type"}, {"n_envs", "kwargs"}),
    "algo": ({"name", "total_timesteps"}, {"hyperparameters"}),
    "policy": ({"extractor", "net_arch"}, {"activation", "extractor_kwargs", "kwargs"}),
}


def _keys(table: Any, section: str, source: str) -> dict[str, Any]:
    where = f"[{section}]" if section else "the top level"
    if not isinstance(table, dict):
        raise PresetError(f"{source}: {section} is {table!r}: expected a table")
    required, optional = _SECTIONS[section]
    unknown = sorted(set(table) - required - optional)
    if unknown:
        raise PresetError(
            f"{source}: unknown key {unknown[0]!r} in {where}; "
            f"expected keys {sorted(required | optional)}"
        )
    missing = sorted(required - set(table))
    if missing:
        raise PresetError(f"{source}: {where} has no {missing[0]!r}; add it")
    return table


def _check(value: Any, ok: bool, key: str, expected: str, source: str) -> None:
    if not ok:
        raise PresetError(f"{source}: {key} = {value!r}: expected {expected}")


def _table(value: Any, key: str, source: str) -> dict[str, Any]:
    _check(value, isinstance(value, dict), key, "a table", source)
    return dict(value)


def _validated(name: str, data: Any, source: str) -> Preset:
    top = _keys(data, "", source)
    _check(
        top["description"], isinstance(top["description"], str), "description", "a string", source
    )

    env = _keys(top["env"], "env", source)
    _check(env["id"], isinstance(env["id"], str) and bool(env["id"]), "env.id", "an env id", source)
    obs_type = env["obs_type"]
    _check(obs_type, obs_type in OBS_TYPES, "env.obs_type", f"one of {list(OBS_TYPES)}", source)
    n_envs = env.get("n_envs", 1)
    _check(n_envs, _int(1)(n_envs), "env.n_envs", "a positive integer", source)
    env_kwargs = _table(env.get("kwargs", {}), "env.kwargs", source)
    if "obs_type" in env_kwargs:
        raise PresetError(f"{source}: env.kwargs.obs_type duplicates env.obs_type; remove it")

    algo = _keys(top["algo"], "algo", source)
    algo_name = algo["name"]
    _check(algo_name, algo_name in ALGORITHMS, "algo.name", f"one of {list(ALGORITHMS)}", source)
    steps = algo["total_timesteps"]
    _check(steps, _int(1)(steps), "algo.total_timesteps", "a positive integer", source)
    hps = _table(algo.get("hyperparameters", {}), "algo.hyperparameters", source)
    allowed = _HYPERPARAMETERS[algo_name]
    for key, value in hps.items():
        if key not in allowed:
            raise PresetError(
                f"{source}: unknown key {key!r} in [algo.hyperparameters] for {algo_name}; "
                f"expected one of {sorted(allowed)}"
            )
        check, expected = allowed[key]
        _check(value, check(value), f"algo.hyperparameters.{key}", expected, source)

    policy = _keys(top["policy"], "policy", source)
    extractor = policy["extractor"]
    _check(
        extractor,
        isinstance(extractor, str) and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", extractor) is not None,
        "policy.extractor",
        "an extractor name such as 'lidar-mlp' or 'cnn-small'",
        source,
    )
    arch = policy["net_arch"]
    layers = _int(1)
    if isinstance(arch, list) and all(layers(n) for n in arch):
        net_arch: tuple[int, ...] | Mapping[str, tuple[int, ...]] = tuple(arch)
    elif (
        isinstance(arch, dict)
        and arch
        and all(isinstance(v, list) and all(layers(n) for n in v) for v in arch.values())
    ):
        net_arch = _frozen({k: tuple(v) for k, v in arch.items()})
    else:
        raise PresetError(
            f"{source}: policy.net_arch = {arch!r}: expected a list of layer sizes such as "
            "[256, 256], or a table of them such as {pi = [64, 64], vf = [64, 64]}"
        )
    activation = policy.get("activation", "relu")
    _check(
        activation,
        activation in _ACTIVATIONS,
        "policy.activation",
        f"one of {list(_ACTIVATIONS)}",
        source,
    )
    extractor_kwargs = _table(policy.get("extractor_kwargs", {}), "policy.extractor_kwargs", source)
    policy_kwargs = _table(policy.get("kwargs", {}), "policy.kwargs", source)
    for key, value in policy_kwargs.items():
        if key not in _POLICY_KWARGS_OF[algo_name]:
            raise PresetError(
                f"{source}: unknown key {key!r} in [policy.kwargs] for {algo_name}; "
                f"expected one of {sorted(_POLICY_KWARGS_OF[algo_name])}"
            )
        check, expected = _POLICY_KWARGS[key]
        _check(value, check(value), f"policy.kwargs.{key}", expected, source)

    return Preset(
        name=name,
        description=top["description"],
        env=EnvSpec(env["id"], obs_type, n_envs, _frozen(env_kwargs)),
        algo=AlgoSpec(algo_name, steps, _frozen(hps)),
        policy=PolicySpec(
            extractor, net_arch, activation, _frozen(extractor_kwargs), _frozen(policy_kwargs)
        ),
        source=source,
    )


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
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _parse_value(text: str, key: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if _BARE_WORD.fullmatch(text):
            return text  # a bare word is a string: ent_coef=auto
        raise PresetError(
            f"override {key}={text!r}: the value is not TOML (e.g. 1e-4, 256, true, "
            '"text", [64, 64]); quote strings that contain spaces or symbols'
        ) from None


def apply_overrides(preset: Preset, overrides: Sequence[str]) -> Preset:
    """A copy of ``preset`` with ``"dotted.key=value"`` overrides applied and re-validated.

    Values use TOML syntax (``1e-4``, ``256``, ``true``, ``[64, 64]``, ``"text"``; a bare word
    is a string). Keys must exist in the preset's schema, e.g.
    ``algo.hyperparameters.learning_rate``, ``env.kwargs.track``, ``policy.net_arch``.
    """
    data = preset.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PresetError(
                f"override {item!r}: expected 'dotted.key=value', e.g. "
                "'algo.hyperparameters.learning_rate=1e-4'"
            )
        value = _parse_value(text.strip(), key)
        parts = key.split(".")
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
        known = leaf in table or parent in _FREE_TABLES
        if parent == "algo.hyperparameters":
            known = leaf in _HYPERPARAMETERS[str(data["algo"]["name"])]
        elif parent == "policy.kwargs":
            known = leaf in _POLICY_KWARGS_OF[str(data["algo"]["name"])]
        if not known:
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
