"""The model's part of a checkpoint: its modules, optimizers, tensors, counters and statistics.

What is saved is what the algorithm lists in ``_get_torch_save_params()``: the state dicts of its
modules (for SAC/TQC the policy with actor, critics and target critics; for PPO/RecurrentPPO the
policy) and optimizers (``actor.optimizer``, ``critic.optimizer``, ``ent_coef_optimizer``,
``policy.optimizer``), and its other tensors (``log_ent_coef``); then SB3's counters
(``num_timesteps``, ``_n_updates``, ...; a subclass adds its own by naming them in a
``checkpoint_counters`` class attribute) and episode statistics. Tensors go to the weights
file under flat names; an optimizer's nested state becomes tagged JSON (:func:`encode`).

Loading first :func:`check` s everything against the model, then :func:`restore` s it: a
checkpoint that does not fit changes nothing.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import get_device
from torch import nn

from tm_algos.checkpoint.format import WEIGHTS_NAME, CheckpointError, plain
from tm_algos.errors import InvalidTypeError

__all__ = [
    "ModelState",
    "check",
    "check_counters",
    "check_module",
    "check_optimizer",
    "collect",
    "counters",
    "decode",
    "encode",
    "non_finite",
    "restore",
    "structure",
]

_COUNTERS = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_current_progress_remaining",
    "_n_calls",
)
_INFO_BUFFERS = ("ep_info_buffer", "ep_success_buffer")

logger = logging.getLogger(__name__)


def _attr(model: BaseAlgorithm, name: str) -> Any:
    obj: Any = model
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def counters(model: BaseAlgorithm) -> tuple[str, ...]:
    """SB3's counters plus those a subclass names in ``checkpoint_counters``."""
    extra = getattr(model, "checkpoint_counters", ())
    if isinstance(extra, str) or not all(isinstance(k, str) for k in extra):
        raise InvalidTypeError(
            f"{type(model).__name__}.checkpoint_counters is {extra!r}; expected a tuple of "
            "attribute names, e.g. ('critic_updates',)"
        )
    return _COUNTERS + tuple(extra)


def structure(model: BaseAlgorithm) -> dict[str, Any]:
    """Settings that decide the shapes of what a checkpoint holds."""
    out: dict[str, Any] = {
        "algorithm": type(model).__name__,
        "policy_class": type(model.policy).__name__,
        "n_envs": model.n_envs,
    }
    critic_kwargs = getattr(model.policy, "critic_kwargs", None)
    if isinstance(critic_kwargs, Mapping):
        for key in ("n_critics", "n_quantiles"):
            if key in critic_kwargs:
                out[key] = plain(critic_kwargs[key], key)
    return out


# -- JSON encoding of optimizer state ---------------------------------------------------------


def encode(value: Any, name: str, tensors: dict[str, th.Tensor]) -> Any:
    """``value`` (an optimizer's ``state_dict``) as JSON with its tensors moved to ``tensors``
    under names starting with ``name``. Tuples, dicts (any int or str keys) and tensors are
    tagged: ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}``, ``{"tensor": name}``."""
    if isinstance(value, th.Tensor):
        tensors[name] = value.detach().cpu().clone().contiguous()
        return {"tensor": name}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        pairs = []
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise InvalidTypeError(f"{name} has the key {k!r}; expected int or str keys")
            pairs.append([k, encode(v, f"{name}/{k}", tensors)])
        return {"dict": pairs}
    return plain(value, name)


def decode(value: Any, tensors: Mapping[str, th.Tensor], where: str) -> Any:
    """The inverse of :func:`encode`.

    :raises CheckpointError: naming ``where``, when the data is not what encode writes.
    """
    if isinstance(value, list):
        return [decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and isinstance(value.get("tensor"), str):
        if value["tensor"] not in tensors:
            raise CheckpointError(f"{where}: tensor {value['tensor']!r} is missing")
        return tensors[value["tensor"]]
    if len(value) == 1 and isinstance(value.get("tuple"), list):
        return tuple(decode(v, tensors, where) for v in value["tuple"])
    if len(value) == 1 and isinstance(value.get("dict"), list):
        out = {}
        for pair in value["dict"]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (int, str))):
                raise CheckpointError(f"{where}: malformed entry {pair!r:.60}; the file is corrupt")
            out[pair[0]] = decode(pair[1], tensors, where)
        return out
    raise CheckpointError(f"{where}: unexpected object {value!r:.60}; the file is corrupt")


# -- modules and optimizers -----------------------------------------------------------------


def check_module(path: Path, name: str, module: nn.Module, tensors: dict[str, th.Tensor]) -> None:
    """Check that the tensors named ``name/...`` in checkpoint ``path`` fit ``module``."""
    mine = module.state_dict()
    theirs = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}/")}
    missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    if missing or extra:
        raise CheckpointError(
            f"{path / WEIGHTS_NAME}: {name} does not fit the model: the model has "
            f"{len(missing)} tensors the checkpoint lacks {missing[:4]} and the checkpoint "
            f"{len(extra)} the model lacks {extra[:4]}; build the model with the same policy "
            "settings (net_arch, features extractor, ...)"
        )
    for key, t in mine.items():
        if theirs[key].shape != t.shape or theirs[key].dtype != t.dtype:
            raise CheckpointError(
                f"{path / WEIGHTS_NAME}: {name}/{key} is {theirs[key].dtype}"
                f"{list(theirs[key].shape)} in the checkpoint but {t.dtype}{list(t.shape)} in "
                "the model; build the model with the same policy settings (net_arch, ...)"
            )


def check_optimizer(where: str, opt: th.optim.Optimizer, saved: Any) -> None:
    """Check ``saved`` (decoded) against ``opt``'s parameter groups; turn the lists JSON gave
    back into tuples where ``opt`` has tuples (``betas``)."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{where}: the optimizer state is malformed; the file is corrupt")
    mine = [len(g["params"]) for g in opt.param_groups]
    theirs = [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups]
    if mine != theirs:
        raise CheckpointError(
            f"{where}: the model's optimizer has parameter groups of sizes {mine}, the "
            f"checkpoint's {theirs}; build the model with the same settings"
        )
    for group, current in zip(groups, opt.param_groups, strict=True):
        for key, value in current.items():  # JSON gives lists where torch had tuples
            if isinstance(value, tuple) and isinstance(group.get(key), list):
                group[key] = tuple(group[key])


# -- saving -----------------------------------------------------------------------------------


def non_finite(tensors: Mapping[str, th.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` that hold a NaN or an infinity."""
    bad = []
    with th.no_grad():
        for name, t in tensors.items():
            if (t.is_floating_point() or t.is_complex()) and not bool(th.isfinite(t).all()):
                bad.append(name)
    return bad


def _cpu(t: th.Tensor) -> th.Tensor:
    return t.detach().cpu().clone().contiguous()


def _info_buffers(model: BaseAlgorithm) -> dict[str, Any]:
    out = {}
    for name in _INFO_BUFFERS:
        try:
            out[name] = plain(list(getattr(model, name) or ()), name)
        except TypeError:
            logger.debug("%s holds values JSON cannot store; not saved", name)
    return out


def collect(model: BaseAlgorithm, tensors: dict[str, th.Tensor]) -> dict[str, Any]:
    """The model's entries of ``state.json`` (``structure``, ``counters``, ``info_buffers``,
    ``modules``, ``optimizers``, ``variables``); its tensors are added to ``tensors``."""
    modules: dict[str, list[str]] = {}
    optimizers: dict[str, Any] = {}
    state_dict_names, variable_names = model._get_torch_save_params()
    for name in state_dict_names:
        obj = _attr(model, name)
        if isinstance(obj, th.optim.Optimizer):
            optimizers[name] = encode(obj.state_dict(), name, tensors)
        elif isinstance(obj, nn.Module):
            sd = obj.state_dict()
            modules[name] = list(sd)
            tensors.update({f"{name}/{key}": _cpu(t) for key, t in sd.items()})
        else:
            raise InvalidTypeError(
                f"{type(model).__name__}._get_torch_save_params() lists {name!r}, a "
                f"{type(obj).__name__}; expected a torch Module or Optimizer"
            )
    for name in variable_names:
        value = _attr(model, name)
        if not isinstance(value, th.Tensor):
            raise InvalidTypeError(f"{name!r} is a {type(value).__name__}; expected a torch Tensor")
        tensors[f"variables/{name}"] = _cpu(value)
    return {
        "structure": structure(model),
        "counters": {k: plain(getattr(model, k), k) for k in counters(model) if hasattr(model, k)},
        "info_buffers": _info_buffers(model),
        "modules": modules,
        "optimizers": optimizers,
        "variables": list(variable_names),
    }


# -- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelState:
    """A checkpoint's model state, checked against the model it goes into."""

    modules: tuple[str, ...]
    """Names of the modules to load, each from the tensors named ``name/...``."""
    optimizers: tuple[tuple[th.optim.Optimizer, Any], ...]
    """Each optimizer of the model with its decoded saved state."""
    variables: Mapping[str, th.Tensor]
    """The other tensors, by attribute name."""
    counters: Mapping[str, Any]
    info_buffers: Mapping[str, Any]


def _check_structure(model: BaseAlgorithm, state: Mapping[str, Any], where: str) -> None:
    theirs, mine = state.get("structure", {}), structure(model)
    for key in mine:
        if theirs.get(key) != mine[key]:
            raise CheckpointError(
                f"{where}: the model was built with {key}={mine[key]!r} but the checkpoint "
                f"has {key}={theirs.get(key)!r}; build the model with {key}="
                f"{theirs.get(key)!r}, as when it was saved"
            )


def _check_optimizer_state(
    name: str, opt: th.optim.Optimizer, state: Mapping[str, Any], tensors: Any, where: str
) -> Any:
    if name not in state["optimizers"]:
        raise CheckpointError(
            f"{where} has no state for the optimizer {name!r} (it has "
            f"{sorted(state['optimizers'])}); build the model with the settings it "
            "was saved with (e.g. ent_coef='auto' or a fixed value)"
        )
    saved = decode(state["optimizers"][name], tensors, f"{where}: {name}")
    check_optimizer(f"{where}: {name}", opt, saved)
    return saved


def _check_variables(
    model: BaseAlgorithm,
    names: list[str],
    state: Mapping[str, Any],
    tensors: Mapping[str, th.Tensor],
    where: str,
) -> dict[str, th.Tensor]:
    variables = {}
    for name in names:
        value, mine = tensors.get(f"variables/{name}"), _attr(model, name)
        if value is None or value.shape != mine.shape:
            got = "no such tensor" if value is None else f"shape {list(value.shape)}"
            raise CheckpointError(
                f"{where}: the model needs the tensor {name!r} of shape "
                f"{list(mine.shape)}, the checkpoint has {got} (its tensors: "
                f"{state['variables']}); build the model with the settings it was saved "
                "with (e.g. ent_coef='auto' or a fixed value)"
            )
        variables[name] = value
    return variables


_INT_COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_n_calls")
_FIX = "the file was edited or is corrupt: load another checkpoint (delete this one and "
_FIX += "latest_checkpoint finds the one before it)"


def _table(state: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = state.get(key, {})
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: {key} is {value!r:.60}, expected an object; {_FIX}")
    return value


def _bad_counter(where: str, key: str, value: Any, expected: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: counters[{key!r}] = {value!r:.60}: expected {expected}; {_FIX}"
    )


def check_counters(model: BaseAlgorithm, state: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``state``'s ``counters``, each of the right type and range: SB3's step and update
    counts ints >= 0 (``num_timesteps`` required), the others finite numbers.

    Raises:
        CheckpointError: naming ``where``, the counter, its value and the fix.
    """
    table = _table(state, "counters", where)
    if "num_timesteps" not in table:
        raise CheckpointError(
            f"{where}: counters has no 'num_timesteps' (it has {sorted(table)}); {_FIX}"
        )
    known = counters(model)
    for key, value in table.items():
        if key not in known:
            continue  # another version's counter: ignored on restore
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in _INT_COUNTERS and not (number and isinstance(value, int) and value >= 0):
            raise _bad_counter(where, key, value, "an int >= 0")
        if not (number and math.isfinite(value)):
            raise _bad_counter(where, key, value, "a finite number")
    return table


def check(
    model: BaseAlgorithm,
    state: Mapping[str, Any],
    tensors: dict[str, th.Tensor],
    path: Path,
    where: str,
) -> ModelState:
    """Check checkpoint ``path``'s model state (``state``, its ``state.json``, and ``tensors``,
    its weights) against ``model``; errors name ``where``.

    Raises:
        CheckpointError: something does not fit the model.
        KeyError, TypeError, AttributeError: ``state.json`` is malformed.
    """
    _check_structure(model, state, where)
    state_dict_names, variable_names = model._get_torch_save_params()
    modules, optimizers = [], []
    for name in state_dict_names:
        obj = _attr(model, name)
        if isinstance(obj, th.optim.Optimizer):
            optimizers.append((obj, _check_optimizer_state(name, obj, state, tensors, where)))
        else:
            check_module(path, name, obj, tensors)
            modules.append(name)
    return ModelState(
        modules=tuple(modules),
        optimizers=tuple(optimizers),
        variables=_check_variables(model, variable_names, state, tensors, where),
        counters=check_counters(model, state, where),
        info_buffers=_table(state, "info_buffers", where),
    )


def restore(model: BaseAlgorithm, checked: ModelState, tensors: Mapping[str, th.Tensor]) -> None:
    """Load what :func:`check` accepted into ``model``."""
    for name in checked.modules:
        prefix = f"{name}/"
        _attr(model, name).load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
    for opt, saved in checked.optimizers:
        opt.load_state_dict(saved)
    device = get_device(model.device)
    with th.no_grad():
        for name, value in checked.variables.items():
            _attr(model, name).copy_(value.to(device))
    known = counters(model)
    for key, value in checked.counters.items():
        if key in known and isinstance(value, (int, float)):
            setattr(model, key, value)
    for name, items in checked.info_buffers.items():
        current = getattr(model, name, None)
        if name in _INFO_BUFFERS and isinstance(items, list):
            maxlen = current.maxlen if isinstance(current, deque) else model._stats_window_size
            setattr(model, name, deque(items, maxlen=maxlen))
