"""What a worker accepts from the network: never code, never a path, never an unbounded shape.

A :class:`~tm_dist.wire.Weights` message tells a worker which environment to build and which
network to drive it with. Both come from the network, so a worker checks them before building
anything (:func:`check_weights_config`), and refuses, with the reason, a configuration that:

* names an environment id that is not one of :attr:`WorkerTrust.env_ids` (tm-gym's plain ids).
  ``gymnasium.make("module:Env-v0")`` imports ``module``, so no ``module:`` prefix is taken,
  except ``tm_gym:``, which names the package the worker imports anyway and is dropped;
* gives an environment keyword argument that is not on the allow-list below, or one that could
  name a file (a reward trajectory, a recording, a track file: only built-in tracks and
  ``gen:SEED`` are taken), or a value outside the list's range;
* describes a network wider than :attr:`WorkerTrust.max_width`, deeper than
  :attr:`WorkerTrust.max_layers`, with non-positive widths, observation or action spaces larger
  than :attr:`WorkerTrust.max_space_elements`, non-finite numbers, or extractor arguments that
  name files.

================================  ============================================================
Environment argument              Accepted values
================================  ============================================================
``obs_type``                      ``images``, ``lidar``, ``lidar_progress``
``track``                         a built-in track name, or ``gen:SEED`` (SEED 0 to 10^18)
``img_size``                      8 to 512
``img_hist_len``, ``act_buf_len`` 1 to 64
``grayscale``, ``realtime``       true or false
``time_step_duration``            0.001 to 10 s
``start_obs_capture``             0 to 10 s
``ep_max_length``                 1 to 10^7
``start_jitter``                  0 to 3
``visuals``                       none, ``"random"``, or a mapping of numbers (and ``random``)
``backend``                       ``sim`` or ``game`` (never ``replay``: it reads a file)
``controller``                    ``gamepad``, ``keyboard``, ``none``
``telemetry_port``                1 to 65535
``telemetry_timeout``             0.1 to 3600 s
``window_title``                  up to 128 printable characters
``respawn_wait``                  0 to 60 s
``time_step_timeout_factor``      0 to 100
``render_mode``                   none or ``rgb_array``
================================  ============================================================

``reward_trajectory``, ``recording``, ``mode``, ``reward_config``, ``car_params``, ``camera``
and ``telemetry_host`` are refused: they name files, objects or addresses that are the worker's
machine's business, not the trainer's. Every other name is refused as unknown.

Example:
    >>> check_env_id("TrackMania-Sim-v0", WorkerTrust())
    'TrackMania-Sim-v0'
    >>> check_env_id("os:TrackMania-Sim-v0", WorkerTrust())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tm_dist.trust.UntrustedConfigError: env id 'os:TrackMania-Sim-v0' names a module ...
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tm_dist.errors import InvalidValueError, TMDistError

__all__ = [
    "ENV_KWARGS",
    "REFUSED_ENV_KWARGS",
    "TM_GYM_ENV_IDS",
    "UntrustedConfigError",
    "WorkerTrust",
    "check_env_id",
    "check_env_kwargs",
    "check_policy_config",
    "check_weights_config",
]

TM_GYM_ENV_IDS: Final = frozenset({"TrackMania-Sim-v0", "TrackMania-v0"})
"""The environment ids tm-gym registers: what a worker builds by default."""

_TRUSTED_MODULE_PREFIX: Final = "tm_gym:"
_MAX_GEN_SEED: Final = 10**18
_GEN_TRACK: Final = re.compile(r"gen:[0-9]{1,18}")
_MAX_STRING: Final = 128
_MAX_ITEMS: Final = 64  # entries of a list or mapping inside extractor / policy arguments
_FILE_KEY: Final = re.compile(r"(?i)(path|file|dir|directory|filename)$|_(path|file|dir)s?$")
_SPACE_DEPTH: Final = 3  # a Dict of Boxes is depth 2


class UntrustedConfigError(TMDistError, ValueError):
    """A weights configuration from the network that the worker refuses to build; the message
    names the field, the value (or its type) and what is accepted."""


@dataclass(frozen=True)
class WorkerTrust:
    """The limits a worker applies to configurations from the network (see the module doc)."""

    env_ids: frozenset[str] = TM_GYM_ENV_IDS
    """Environment ids the worker builds (plain ids, no ``module:`` prefix)."""
    max_layers: int = 8
    """Most hidden layers in one ``net_arch`` list (or any list of widths)."""
    max_width: int = 4096
    """Widest layer (and largest other size argument, such as a feature dimension)."""
    max_space_elements: int = 1 << 24
    """Most numbers in one observation (all keys together) or action."""
    max_space_dims: int = 4
    """Most dimensions of one Box space."""
    max_count: int = 64
    """Largest count argument: critics (``n_critics``), attention heads, transformer blocks
    (``depth``), LSTM layers."""
    max_hidden_parameters: int = 1 << 26
    """Most weights in the hidden layers of all the policy's networks together (an estimate
    from ``net_arch``, the extractor's ``hidden`` widths and ``n_critics``): about 256 MB."""
    extra_env_kwargs: Mapping[str, Callable[[object, str], None]] = field(default_factory=dict)
    """More allowed environment arguments, name → check (raises :class:`UntrustedConfigError`);
    for an environment id of one's own in :attr:`env_ids`."""

    def __post_init__(self) -> None:
        for name in (
            "max_layers",
            "max_width",
            "max_space_elements",
            "max_space_dims",
            "max_count",
            "max_hidden_parameters",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValueError(f"WorkerTrust.{name}={value!r}: expected an int >= 1")
        ids: frozenset[object] = frozenset(self.env_ids)  # checked at run time
        bad = sorted(repr(i) for i in ids if not isinstance(i, str) or ":" in i or not i)
        if bad:
            raise InvalidValueError(
                f"WorkerTrust.env_ids holds {bad}: expected plain registered ids such as "
                "'TrackMania-Sim-v0' (a 'module:' prefix would import that module)"
            )


# -- small checks ----------------------------------------------------------------------------


def _shown(value: object) -> str:
    """A value from the network, shown short (long strings are cut)."""
    if isinstance(value, str) and len(value) > 64:
        return f"{value[:64]!r}... ({len(value)} characters)"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    return f"a {type(value).__name__}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_in(lo: int, hi: int) -> Callable[[object, str], None]:
    def check(value: object, where: str) -> None:
        if not _is_int(value) or not lo <= value <= hi:  # type: ignore[operator]
            raise UntrustedConfigError(
                f"{where}={_shown(value)}: expected a whole number from {lo} to {hi}"
            )

    return check


def _number_in(lo: float, hi: float) -> Callable[[object, str], None]:
    def check(value: object, where: str) -> None:
        if not _is_number(value) or not lo <= float(value) <= hi:  # type: ignore[arg-type]
            raise UntrustedConfigError(
                f"{where}={_shown(value)}: expected a number from {lo} to {hi}"
            )

    return check


def _one_of(*choices: object) -> Callable[[object, str], None]:
    def check(value: object, where: str) -> None:
        if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
            raise UntrustedConfigError(f"{where}={_shown(value)}: expected one of {list(choices)}")

    return check


def _bool(value: object, where: str) -> None:
    if not isinstance(value, bool):
        raise UntrustedConfigError(f"{where}={_shown(value)}: expected true or false")


def _title(value: object, where: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_STRING or not value.isprintable():
        raise UntrustedConfigError(
            f"{where}={_shown(value)}: expected up to {_MAX_STRING} printable characters"
        )


def _track(value: object, where: str) -> None:
    """A built-in track name or ``gen:SEED``: never a file."""
    from tm_gym.sim.tracks import builtin_track_names

    names = builtin_track_names()
    if isinstance(value, str) and (value in names or _GEN_TRACK.fullmatch(value)):
        return
    raise UntrustedConfigError(
        f"{where}={_shown(value)}: a worker takes a built-in track ({', '.join(names)}) or "
        f"gen:SEED (SEED from 0 to {_MAX_GEN_SEED}) from the network, never a track file; "
        "generate the track on the trainer as gen:SEED, or add it to tm-gym's built-in tracks"
    )


def _visuals(value: object, where: str) -> None:
    """None, "random", or a mapping of numbers and lists of numbers (plus a "random" entry)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "random"):
        return
    if not isinstance(value, dict):
        raise UntrustedConfigError(
            f"{where}={_shown(value)}: expected none, 'random' or a mapping of look settings"
        )
    stack: list[tuple[object, str, int]] = [(value, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        if depth > 4 or (isinstance(item, (list, dict)) and len(item) > _MAX_ITEMS):
            raise UntrustedConfigError(f"{at}: nested too deep or too long for a look setting")
        if isinstance(item, dict):
            stack.extend((v, f"{at}[{k!r}]", depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{at}[{i}]", depth + 1) for i, v in enumerate(item))
        elif isinstance(item, str):
            if item not in ("default", "random"):
                raise UntrustedConfigError(
                    f"{at}={_shown(item)}: look settings are numbers (or 'default' / 'random')"
                )
        elif not _is_number(item) or not math.isfinite(float(item)):  # type: ignore[arg-type]
            raise UntrustedConfigError(f"{at}={_shown(item)}: expected a finite number")


_NAMES_A_FILE = (
    "it names a file on the worker's machine; set it on the worker, not in the trainer's preset"
)
_OBJECT = "it is an object, not plain data"

REFUSED_ENV_KWARGS: Final[Mapping[str, str]] = {
    "reward_trajectory": _NAMES_A_FILE,
    "recording": _NAMES_A_FILE,
    "mode": "replays read a recording file on the worker's machine",
    "reward_config": _OBJECT,
    "car_params": _OBJECT,
    "camera": _OBJECT,
    "telemetry_host": "the game's address is the worker machine's own setting",
}
"""Environment arguments a worker never takes from the network, name → why."""

ENV_KWARGS: Final[Mapping[str, Callable[[object, str], None]]] = {
    "obs_type": _one_of("images", "lidar", "lidar_progress"),
    "track": _track,
    "img_size": _int_in(8, 512),
    "img_hist_len": _int_in(1, 64),
    "act_buf_len": _int_in(1, 64),
    "grayscale": _bool,
    "realtime": _bool,
    "time_step_duration": _number_in(0.001, 10.0),
    "start_obs_capture": _number_in(0.0, 10.0),
    "ep_max_length": _int_in(1, 10**7),
    "start_jitter": _number_in(0.0, 3.0),
    "visuals": _visuals,
    "backend": _one_of("sim", "game"),
    "controller": _one_of("gamepad", "keyboard", "none"),
    "telemetry_port": _int_in(1, 65535),
    "telemetry_timeout": _number_in(0.1, 3600.0),
    "window_title": _title,
    "respawn_wait": _number_in(0.0, 60.0),
    "time_step_timeout_factor": _number_in(0.0, 100.0),
    "render_mode": _one_of(None, "rgb_array"),
}
"""The environment arguments a worker takes from the network, name → check."""


# -- the environment -------------------------------------------------------------------------


def check_env_id(env_id: object, trust: WorkerTrust) -> str:
    """The id to build for ``env_id`` from the network (``tm_gym:`` dropped).

    Raises:
        UntrustedConfigError: not a string, names another module, or not in ``trust.env_ids``.
    """
    if not isinstance(env_id, str):
        raise UntrustedConfigError(f"env id is {_shown(env_id)}: expected a string")
    plain = env_id.removeprefix(_TRUSTED_MODULE_PREFIX)
    if ":" in plain:
        raise UntrustedConfigError(
            f"env id {_shown(env_id)} names a module to import (gymnasium imports what comes "
            f"before ':'); a worker builds only the plain ids {sorted(trust.env_ids)}"
        )
    if plain not in trust.env_ids:
        raise UntrustedConfigError(
            f"env id {_shown(env_id)} is not one this worker builds: expected one of "
            f"{sorted(trust.env_ids)}"
        )
    return plain


def check_env_kwargs(kwargs: object, trust: WorkerTrust) -> dict[str, Any]:
    """``kwargs`` (from the network) if every argument is allowed; else the first refusal.

    Raises:
        UntrustedConfigError: not a mapping, an unknown argument, one that names a file, or a
            value out of its range (see the module's table).
    """
    if not isinstance(kwargs, dict):
        raise UntrustedConfigError(f"env kwargs are {_shown(kwargs)}: expected a mapping")
    allowed = {**ENV_KWARGS, **trust.extra_env_kwargs}
    for name, value in kwargs.items():
        if name in REFUSED_ENV_KWARGS and name not in trust.extra_env_kwargs:
            raise UntrustedConfigError(
                f"env kwarg {name}: refused from the network: {REFUSED_ENV_KWARGS[name]}"
            )
        check = allowed.get(name)
        if check is None:
            raise UntrustedConfigError(
                f"env kwarg {_shown(name)} is not on the worker's allow-list {sorted(allowed)}"
            )
        check(value, f"env kwarg {name}")
    return dict(kwargs)


# -- the network -----------------------------------------------------------------------------


def _check_widths(value: object, where: str, trust: WorkerTrust) -> None:
    if not isinstance(value, list):
        raise UntrustedConfigError(f"{where}={_shown(value)}: expected a list of layer widths")
    if len(value) > trust.max_layers:
        raise UntrustedConfigError(
            f"{where}: {len(value)} layers, at most {trust.max_layers} accepted"
        )
    for i, width in enumerate(value):
        if not _is_int(width) or not 1 <= width <= trust.max_width:
            raise UntrustedConfigError(
                f"{where}[{i}]={_shown(width)}: expected a layer width from 1 to {trust.max_width}"
            )


def _check_net_arch(value: object, trust: WorkerTrust) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for key, widths in value.items():
            if key not in ("pi", "vf", "qf"):
                raise UntrustedConfigError(
                    f"net_arch key {_shown(key)}: expected 'pi', 'vf' or 'qf'"
                )
            _check_widths(widths, f"net_arch[{key!r}]", trust)
        return
    _check_widths(value, "net_arch", trust)


_SIZE_KEYS: Final = frozenset(
    {"features_dim", "dim", "patch", "hidden", "n_quantiles", "lstm_hidden_size"}
)
_COUNT_KEYS: Final = frozenset({"n_critics", "depth", "heads", "n_lstm_layers"})


def _check_arguments(value: object, where: str, trust: WorkerTrust) -> None:
    """Extractor or policy keyword arguments: plain, bounded, finite, naming no file."""
    if not isinstance(value, dict):
        raise UntrustedConfigError(f"{where}={_shown(value)}: expected a mapping")
    for key, item in value.items():
        at = f"{where}[{key!r}]"
        if _FILE_KEY.search(key):
            raise UntrustedConfigError(
                f"{at}: refused from the network: an argument named like a file or folder "
                "would make the worker read that file"
            )
        if key in _SIZE_KEYS:
            if isinstance(item, list):
                _check_widths(item, at, trust)
            elif item is not None and (not _is_int(item) or not 1 <= item <= trust.max_width):
                raise UntrustedConfigError(
                    f"{at}={_shown(item)}: expected a size from 1 to {trust.max_width}"
                )
        elif key in _COUNT_KEYS:
            if not _is_int(item) or not 1 <= item <= trust.max_count:
                raise UntrustedConfigError(
                    f"{at}={_shown(item)}: expected a count from 1 to {trust.max_count}"
                )
        else:
            _check_plain_value(item, at, trust)


def _check_plain_value(value: object, where: str, trust: WorkerTrust, depth: int = 0) -> None:
    if value is None or isinstance(value, bool):
        return
    if _is_int(value):
        if not -(2**31) <= value < 2**31:  # type: ignore[operator]
            raise UntrustedConfigError(
                f"{where}={_shown(value)}: expected a whole number from {-(2**31)} to {2**31 - 1}"
            )
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > 1e9:
            raise UntrustedConfigError(f"{where}={_shown(value)}: expected a finite number")
    elif isinstance(value, str):
        if len(value) > _MAX_STRING or not value.isprintable():
            raise UntrustedConfigError(
                f"{where}={_shown(value)}: expected up to {_MAX_STRING} printable characters"
            )
    elif isinstance(value, list) and depth < 2:
        if len(value) > _MAX_ITEMS:
            raise UntrustedConfigError(f"{where}: {len(value)} items, at most {_MAX_ITEMS}")
        for i, item in enumerate(value):
            _check_plain_value(item, f"{where}[{i}]", trust, depth + 1)
    else:
        raise UntrustedConfigError(
            f"{where}={_shown(value)}: expected a number, string, bool or short list"
        )


def _space_elements(desc: object, where: str, trust: WorkerTrust, depth: int = 0) -> int:
    """Numbers in the space ``desc`` describes (a Box or a Dict of them), bounded."""
    if not isinstance(desc, dict) or depth >= _SPACE_DEPTH:
        raise UntrustedConfigError(f"{where}: expected a Box or a Dict of Boxes description")
    if desc.get("kind") == "Dict":
        subs = desc.get("spaces")
        if not isinstance(subs, dict) or not 0 < len(subs) <= _MAX_ITEMS:
            raise UntrustedConfigError(f"{where}.spaces: expected 1 to {_MAX_ITEMS} sub-spaces")
        return sum(_space_elements(s, f"{where}.{k}", trust, depth + 1) for k, s in subs.items())
    shape = desc.get("shape")
    if not isinstance(shape, list) or not 0 < len(shape) <= trust.max_space_dims:
        raise UntrustedConfigError(
            f"{where}.shape={_shown(shape)}: expected 1 to {trust.max_space_dims} dimensions"
        )
    n = 1
    for i, size in enumerate(shape):
        if not _is_int(size) or not 1 <= size <= trust.max_space_elements:
            raise UntrustedConfigError(
                f"{where}.shape[{i}]={_shown(size)}: expected a size from 1 to "
                f"{trust.max_space_elements}"
            )
        n *= size
        if n > trust.max_space_elements:
            break
    return n


def check_policy_config(policy: object, trust: WorkerTrust) -> None:
    """Refuse a policy description (``policy.json`` content) with unbounded or unsafe parts.

    Checks ``net_arch``, the extractor's and policy's keyword arguments and the sizes of the
    observation and action spaces; the classes it names are checked later, against tm-algos'
    allow lists, when the worker builds the policy.

    Raises:
        UntrustedConfigError: naming the field, the value and the accepted range.
    """
    if not isinstance(policy, dict):
        raise UntrustedConfigError(f"policy is {_shown(policy)}: expected a mapping")
    _check_net_arch(policy.get("net_arch"), trust)
    _check_arguments(
        policy.get("features_extractor_kwargs", {}), "features_extractor_kwargs", trust
    )
    _check_arguments(policy.get("policy_kwargs", {}), "policy_kwargs", trust)
    for name in ("observation_space", "action_space"):
        n = _space_elements(policy.get(name), name, trust)
        if n > trust.max_space_elements:
            raise UntrustedConfigError(
                f"{name} holds more than {trust.max_space_elements} numbers: refused"
            )
    estimate = _hidden_parameters(policy)
    if estimate > trust.max_hidden_parameters:
        raise UntrustedConfigError(
            f"net_arch, hidden and n_critics give about {estimate:,} hidden-layer weights, at "
            f"most {trust.max_hidden_parameters:,} accepted: refused (a network that size would "
            "exhaust a worker's memory)"
        )


def _between(widths: list[int]) -> int:
    """Weights between consecutive hidden layers of ``widths`` (checked lists of ints)."""
    return sum(a * b for a, b in itertools.pairwise(widths))


def _hidden_parameters(policy: dict[str, Any]) -> int:
    """A lower estimate of the weights between hidden layers, over every network the policy
    builds (the actor, each critic, the value net), with the extractor's MLP in each."""
    kwargs = policy.get("policy_kwargs") or {}
    critics = kwargs.get("n_critics", 2)
    hidden = (policy.get("features_extractor_kwargs") or {}).get("hidden")
    extractor = _between(hidden) if isinstance(hidden, list) else 0
    arch = policy.get("net_arch")
    if isinstance(arch, dict):
        nets = [
            (_between(arch.get("pi", [])), 1),
            (_between(arch.get("vf", [])), 1),
            (_between(arch.get("qf", [])), critics),
        ]
    else:
        per_net = _between(arch) if isinstance(arch, list) else 0
        nets = [(per_net, 1 + critics)]
    return sum((n + extractor) * copies for n, copies in nets)


def check_weights_config(
    env_id: object, env_kwargs: object, policy: object, trust: WorkerTrust
) -> str:
    """Check all three parts of a weights configuration; the plain env id to build.

    Raises:
        UntrustedConfigError: the first refusal, with its reason.
    """
    plain = check_env_id(env_id, trust)
    check_env_kwargs(env_kwargs, trust)
    check_policy_config(policy, trust)
    return plain
