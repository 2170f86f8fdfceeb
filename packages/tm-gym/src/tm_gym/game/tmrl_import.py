"""Bring a TMRL setup to tm-gym without running any of TMRL's code: its reward file and its config.

**The reward file.** TMRL records its reference trajectory as ``reward.pkl``: a pickle of one
NumPy array of positions, shape (N, 3), float64, in the game's axes (x, y up, z — the plugin's
``Position.x/y/z``, the same axes as a tm-gym reference), resampled every 0.1 m.
:func:`load_tmrl_reward` reads it with :class:`RestrictedUnpickler`, and
:func:`convert_tmrl_reward` writes the ``.npz`` that
:meth:`tm_gym.reward.ReferenceTrajectory.load` reads.

*Why the word pickle appears here at all, and why this is safe.* Unpickling runs code: a pickle
names callables (``module.name`` globals) and the arguments to call them with, so loading an
untrusted ``reward.pkl`` with :func:`pickle.load` can run anything (``os.system`` …). This module
never does. :class:`RestrictedUnpickler` overrides :meth:`pickle.Unpickler.find_class`, the only
way a pickle can reach a global, and answers only for the handful NumPy needs to rebuild a plain
numeric array (:data:`ALLOWED_GLOBALS`, plus the latin-1 ``_codecs.encode`` that pickle
protocol 2 uses for bytes); every other global raises :class:`UnsafePickleError`
*before* anything is called, naming the global refused. The REDUCE, NEWOBJ and BUILD opcodes can
only call what is on the pickle stack, and the only callables that can get there come through
``find_class``. ``persistent_load`` is not defined, so persistent ids are refused too; dtypes
other than booleans and numbers (``object``, structured ``void``) are refused when built. The
result must then be a finite (N, 3) array of numbers or a list of [x, y, z] numbers.

**The config.** :func:`translate_tmrl_config` maps TMRL's ``config.json`` (the keys TMRL 0.6–0.7
reads in ``tmrl/config/config_constants.py`` and ``config_objects.py``) to what tm-gym, tm-algos
and tm-dist take: ``gymnasium.make("TrackMania-v0", ...)`` keyword arguments, the fields of a
:class:`~tm_gym.reward.RewardConfig`, a tm-algos preset with ``--set`` overrides, and tm-dist
settings. Every key it could not map is listed with the reason. Secrets (``PASSWORD``,
``WANDB_KEY``) are never copied into the output.

Nothing is read at import time; the functions take paths or mappings.
"""

from __future__ import annotations

import io
import json
import math
import pickle  # only through RestrictedUnpickler below: it never runs code from a file
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.error import TMGymError

__all__ = [
    "ALLOWED_GLOBALS",
    "RestrictedUnpickler",
    "TmrlImportError",
    "TmrlTranslation",
    "UnsafePickleError",
    "convert_tmrl_reward",
    "load_tmrl_reward",
    "read_tmrl_config",
    "translate_tmrl_config",
]


class TmrlImportError(TMGymError, ValueError):
    """A TMRL file cannot be converted; the message names the file and what is wrong."""


class UnsafePickleError(TmrlImportError):
    """A pickle asked for something other than a plain numeric NumPy array; nothing was run."""


# -- the reward file -------------------------------------------------------------------------


def _checked_dtype(*args: Any) -> np.dtype[Any]:
    """``numpy.dtype`` for booleans and numbers only (object and structured dtypes refused)."""
    dt = np.dtype(*args)
    if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
        raise UnsafePickleError(
            f"the pickle asks for a NumPy array of dtype {dt!s}; only arrays of numbers are "
            "accepted (a TMRL reward.pkl holds float64 positions)"
        )
    return dt


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r}): pickle protocol 2 "
            "only needs it to turn latin-1 text into bytes"
        )
    return text.encode("latin-1")


def _numpy_global(module: str, name: str) -> Any:
    if module == "_codecs":
        return _latin1_bytes
    if name == "dtype":
        return _checked_dtype
    if name == "ndarray":
        return np.ndarray
    return getattr(__import__(module, fromlist=[name]), name)


ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # ndarray.__reduce__ (pickle protocols 0-4): _reconstruct(ndarray, shape, typecode)
        ("numpy.core.multiarray", "_reconstruct"),  # NumPy 1.x
        ("numpy._core.multiarray", "_reconstruct"),  # NumPy 2.x
        # ndarray.__reduce_ex__(5): _frombuffer(buffer, dtype, shape, order)
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # NumPy scalars (a list of np.float64): scalar(dtype, bytes)
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # pickle protocol 2 spells bytes as _codecs.encode(text, "latin1") (checked)
        ("_codecs", "encode"),
    }
)
"""The only ``(module, name)`` globals a reward pickle may use: what NumPy needs to rebuild a
numeric array. Lists, tuples and floats need no global at all."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain numeric NumPy arrays and Python lists/floats, and refuses
    every other global with :class:`UnsafePickleError` before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refused the global {module}.{name}: a TMRL reward file holds only a NumPy "
                "array of positions, and this one asks for something else (nothing was run)"
            )
        try:
            return _numpy_global(module, name)
        except (ImportError, AttributeError):
            # numpy.core on NumPy 2 (or numpy._core on NumPy 1): the other spelling has it.
            other = module.replace("numpy._core", "numpy.core", 1)
            if other == module:
                other = module.replace("numpy.core", "numpy._core", 1)
            return _numpy_global(other, name)


def _positions(obj: object, source: str) -> NDArray[np.float64]:
    """The (N, 3) float64 positions in ``obj`` (an array or a list of [x, y, z])."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TmrlImportError(f"{source}: the array has dtype {obj.dtype}; expected numbers")
        arr = obj.astype(np.float64)
    elif isinstance(obj, list | tuple):
        try:
            arr = np.array(obj, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TmrlImportError(
                f"{source}: a list that is not [x, y, z] numbers ({exc}); expected TMRL's "
                "positions, a list of [x, y, z] or an (N, 3) array"
            ) from None
    else:
        raise TmrlImportError(
            f"{source}: holds a {type(obj).__name__}; expected TMRL's positions, an (N, 3) "
            "NumPy array or a list of [x, y, z] numbers"
        )
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 2:
        raise TmrlImportError(
            f"{source}: positions of shape {arr.shape}; expected (N, 3) with N >= 2 "
            "(x, y, z per point, as TMRL's `--record-reward` writes)"
        )
    if not np.all(np.isfinite(arr)):
        raise TmrlImportError(f"{source}: positions contain NaN or infinite values")
    return arr


def load_tmrl_reward(path: str | Path) -> NDArray[np.float64]:
    """TMRL's recorded positions from ``reward.pkl``, without running anything from the file.

    Returns:
        (N, 3) float64 positions, game axes x, y (up), z — the axes tm-gym uses too.

    Raises:
        UnsafePickleError: the file asks for a global outside :data:`ALLOWED_GLOBALS` (for
            example a ``__reduce__`` that would call ``os.system``); nothing was called.
        TmrlImportError: the file is missing, not a pickle, or not (N, 3) finite numbers.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TmrlImportError(
            f"cannot read the TMRL reward file {str(p)!r}: {exc.strerror or exc}; TMRL keeps it "
            "in TmrlData/reward/reward.pkl"
        ) from None
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{p}: {exc}") from None
    except TmrlImportError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        MemoryError,
    ) as exc:
        raise TmrlImportError(
            f"{p}: not a readable TMRL reward pickle ({type(exc).__name__}: {exc}); expected "
            "the reward.pkl that TMRL's `--record-reward` writes"
        ) from None
    return _positions(obj, str(p))


def convert_tmrl_reward(path: str | Path, out: str | Path) -> tuple[Path, int]:
    """Convert TMRL's ``reward.pkl`` at ``path`` into a tm-gym reference at ``out``.

    ``out`` ends in ``.npz`` (or ``.json``); it is what ``reward_trajectory=`` and
    :meth:`~tm_gym.reward.ReferenceTrajectory.load` take. The positions are resampled every
    0.1 m (TMRL's spacing too). Returns the path written and the number of reference points.

    Raises:
        UnsafePickleError, TmrlImportError: see :func:`load_tmrl_reward`; also a bad ``out``.
    """
    from tm_gym.error import TrajectoryFormatError
    from tm_gym.reward import ReferenceTrajectory

    target = Path(out)
    if target.suffix not in (".npz", ".json"):
        raise TmrlImportError(
            f"--out {str(target)!r}: expected a file name ending in .npz (or .json)"
        )
    positions = load_tmrl_reward(path)
    try:
        reference = ReferenceTrajectory.from_polyline(positions)
    except TrajectoryFormatError as exc:
        raise TmrlImportError(f"{path}: {exc}") from None
    try:
        written = reference.save(target)
    except OSError as exc:
        raise TmrlImportError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    return written, len(reference.points)


# -- the config ------------------------------------------------------------------------------

_INTERFACES = {"TM20FULL": "images", "TM20LIDAR": "lidar", "TM20LIDARPROGRESS": "lidar_progress"}
_PRESETS = {
    ("SAC", "images"): "images-sac",
    ("SAC", "lidar"): "lidar-sac",
    ("SAC", "lidar_progress"): "lidar-sac",
    ("REDQSAC", "lidar"): "lidar-redq",
    ("REDQSAC", "lidar_progress"): "lidar-redq",
    ("REDQSAC", "images"): "images-sac",
}
_RTGYM = {  # RTGYM_CONFIG key -> env kwarg
    "time_step_duration": "time_step_duration",
    "start_obs_capture": "start_obs_capture",
    "time_step_timeout_factor": "time_step_timeout_factor",
    "act_buf_len": "act_buf_len",
    "ep_max_length": "ep_max_length",
}
_REWARD = {  # REWARD_CONFIG key -> RewardConfig field
    "END_OF_TRACK": "finish_bonus",
    "CHECK_FORWARD": "lookahead",
    "CHECK_BACKWARD": "lookback",
    "FAILURE_COUNTDOWN": "max_no_progress",
    "MIN_STEPS": "min_steps",
    "MAX_STRAY": "max_stray",
}
_HYPER = {  # top-level key -> algo.hyperparameters key
    "MEMORY_SIZE": "buffer_size",
    "BATCH_SIZE": "batch_size",
    "ENVIRONMENT_STEPS_BEFORE_TRAINING": "learning_starts",
}
_NOT_NEEDED = {
    "LOCAL_PORT_SERVER": "tlspyo's local port; tm-dist has none to set",
    "LOCAL_PORT_TRAINER": "tlspyo's local port; tm-dist has none to set",
    "LOCAL_PORT_WORKER": "tlspyo's local port; tm-dist has none to set",
    "BUFFER_SIZE": "tlspyo's socket buffer; see tm-dist connection.max_message_bytes",
    "HEADER_SIZE": "tlspyo's header size; tm-dist frames its own messages",
    "NB_WORKERS": "tm-dist accepts any number of workers",
    "BUFFERS_MAXLEN": "TMRL's local buffers; tm-dist streams chunks (worker.chunk_steps)",
    "WANDB_PROJECT": "no tm-dist setting; trainer.wandb mirrors the logs (configure wandb itself)",
    "WANDB_ENTITY": "no tm-dist setting; configure wandb itself",
    "WANDB_KEY": "a secret: log in with `wandb login`, never in a config file",
    "PASSWORD": "a secret: never copied; set TM_DIST_PASSWORD or connection.password_file",
    "RESET_TRAINING": "start a new run_dir instead",
    "SAVE_MODEL_EVERY": "tm-dist keeps checkpoints (trainer.checkpoint_every, env steps)",
    "UPDATE_MODEL_INTERVAL": "counted in gradient steps; tm-dist trainer.broadcast_every counts "
    "env steps",
    "UPDATE_BUFFER_INTERVAL": "counted in gradient steps; workers send every worker.chunk_steps",
    "MAX_EPOCHS": "TMRL's epochs; the budget is algo.total_timesteps (env steps)",
    "ROUNDS_PER_EPOCH": "TMRL's epochs; the budget is algo.total_timesteps (env steps)",
    "TRAINING_STEPS_PER_ROUND": "TMRL's epochs; the budget is algo.total_timesteps (env steps)",
    "DEBUG_MODE": "use --debug on the command line",
    "__VERSION__": "TMRL's config version",
}


@dataclass
class TmrlTranslation:
    """What :func:`translate_tmrl_config` made of a TMRL ``config.json``."""

    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """``gymnasium.make("TrackMania-v0", **env_kwargs)`` (tm-gym's game backend)."""
    reward_config: dict[str, Any] = field(default_factory=dict)
    """Fields of :class:`tm_gym.reward.RewardConfig` (``reward_config=RewardConfig(**...)``)."""
    preset: str = "lidar-sac"
    """The tm-algos preset to start from (``tm-train --preset``)."""
    preset_overrides: list[str] = field(default_factory=list)
    """``--set KEY=VALUE`` overrides for that preset (TOML values)."""
    dist: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"connection": {}, "worker": {}, "trainer": {}}
    )
    """tm-dist settings by section, as in ``tm-dist config --example``."""
    unmapped: dict[str, str] = field(default_factory=dict)
    """TMRL key (dotted path) -> why it was not mapped."""

    def as_dict(self) -> dict[str, Any]:
        """Everything as one JSON-ready mapping (the layout of :meth:`to_toml`)."""
        return {
            "env": dict(self.env_kwargs),
            "reward_config": dict(self.reward_config),
            "preset": {"name": self.preset, "overrides": list(self.preset_overrides)},
            "tm_dist": {k: dict(v) for k, v in self.dist.items()},
            "unmapped": dict(self.unmapped),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False) + "\n"

    def to_toml(self, source: str = "config.json") -> str:
        """A commented TOML document: each section says where its values go."""
        lines = [
            f"# tm-gym / tm-algos / tm-dist settings translated from TMRL's {source}.",
            "# Secrets (PASSWORD, WANDB_KEY) are never copied: set TM_DIST_PASSWORD instead.",
            "",
            '# gymnasium.make("TrackMania-v0", **env)',
            "[env]",
            *_toml_items(self.env_kwargs),
            "",
            "# reward_config=tm_gym.reward.RewardConfig(**reward_config)",
            "[reward_config]",
            *_toml_items(self.reward_config),
            "",
            "# tm-train --preset NAME --set OVERRIDE ... (or [trainer] below for tm-dist)",
            "[preset]",
            *_toml_items({"name": self.preset, "overrides": self.preset_overrides}),
        ]
        for section, values in self.dist.items():
            lines += ["", f"# tm-dist: [{section}] of its config file", f"[tm_dist.{section}]"]
            lines += _toml_items(values)
        lines += ["", "# TMRL keys not carried over, and why", "[unmapped]"]
        lines += _toml_items(self.unmapped)
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def _toml_items(values: Mapping[str, Any]) -> list[str]:
    return [
        f"{json.dumps(k) if not k.isidentifier() else k} = {_toml_value(v)}"
        for k, v in values.items()
    ]


def read_tmrl_config(path: str | Path) -> dict[str, Any]:
    """TMRL's ``config.json`` as a dict (plain JSON, as TMRL itself reads it)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TmrlImportError(
            f"cannot read the TMRL config {str(p)!r}: {exc.strerror or exc}; TMRL keeps it in "
            "TmrlData/config/config.json"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TmrlImportError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TmrlImportError(f"{p}: expected a JSON object, got {type(data).__name__}")
    return data


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Translator:
    """Consumes a TMRL config key by key; whatever is left is unmapped."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.cfg = config
        self.out = TmrlTranslation()
        self.seen: set[str] = set()

    def get(self, *keys: str) -> Any:
        node: Any = self.cfg
        for k in keys:
            if not isinstance(node, Mapping) or k not in node:
                return None
            node = node[k]
        self.seen.add(".".join(keys))
        return node

    def skip(self, key: str, why: str) -> None:
        self.seen.add(key)
        self.out.unmapped[key] = why

    def put(self, target: dict[str, Any], name: str, value: Any, key: str) -> None:
        if value is None:
            return
        if not (_number(value) or isinstance(value, bool | str)):
            self.out.unmapped[key] = f"unexpected value {value!r}"
            return
        target[name] = value

    def override(self, path: str, value: Any) -> None:
        self.out.preset_overrides.append(f"{path}={_toml_value(value)}")


def _translate_env(t: _Translator) -> str:
    env = t.out.env_kwargs
    interface = t.get("ENV", "RTGYM_INTERFACE")
    obs_type = _INTERFACES.get(str(interface).upper(), "") if interface is not None else "lidar"
    if not obs_type:
        t.skip(
            "ENV.RTGYM_INTERFACE",
            f"{interface!r} is a custom TMRL interface; tm-gym knows "
            "TM20FULL (images), TM20LIDAR (lidar) and TM20LIDARPROGRESS (lidar_progress)",
        )
        obs_type = "lidar"
    env["obs_type"] = obs_type
    for key, name in _RTGYM.items():
        t.put(env, name, t.get("ENV", "RTGYM_CONFIG", key), f"ENV.RTGYM_CONFIG.{key}")
    t.put(env, "img_hist_len", t.get("ENV", "IMG_HIST_LEN"), "ENV.IMG_HIST_LEN")
    t.put(env, "grayscale", t.get("ENV", "IMG_GRAYSCALE"), "ENV.IMG_GRAYSCALE")
    t.put(env, "respawn_wait", t.get("ENV", "SLEEP_TIME_AT_RESET"), "ENV.SLEEP_TIME_AT_RESET")
    width, height = t.get("ENV", "IMG_WIDTH"), t.get("ENV", "IMG_HEIGHT")
    if width is not None and width == height:
        t.put(env, "img_size", width, "ENV.IMG_WIDTH")
    elif width is not None or height is not None:
        t.skip(
            "ENV.IMG_WIDTH",
            f"{width}×{height} is not square; tm-gym frames are img_size × img_size",
        )
    w, h = t.get("ENV", "WINDOW_WIDTH"), t.get("ENV", "WINDOW_HEIGHT")
    if w is not None or h is not None:
        t.skip(
            "ENV.WINDOW_WIDTH",
            f"resize the game window to {w}×{h} yourself; tm-gym "
            "captures the window as it is (`tm-gym check` times it)",
        )
        t.seen.add("ENV.WINDOW_HEIGHT")
    max_samples = t.get("RW_MAX_SAMPLES_PER_EPISODE")
    if _number(max_samples) and max_samples < env.get("ep_max_length", math.inf):
        env["ep_max_length"] = max_samples
    gamepad = t.get("VIRTUAL_GAMEPAD")
    if gamepad is not None:
        env["controller"] = "gamepad" if gamepad else "keyboard"
    return obs_type


def _translate_rtgym_rest(t: _Translator) -> None:
    rtgym = t.get("ENV", "RTGYM_CONFIG")
    if isinstance(rtgym, Mapping):
        for key in rtgym:
            if key not in _RTGYM:
                t.skip(f"ENV.RTGYM_CONFIG.{key}", _RTGYM_NOTES.get(key, "no tm-gym equivalent"))
    env_cfg = t.get("ENV")
    if isinstance(env_cfg, Mapping):
        for key in env_cfg:
            path = f"ENV.{key}"
            if path not in t.seen and key not in ("RTGYM_CONFIG", "REWARD_CONFIG"):
                t.skip(path, "no tm-gym equivalent")


_RTGYM_NOTES = {
    "wait_on_done": "tm-gym always holds the car at the end of an episode (the default action)",
    "benchmark": "use `tm-gym check` (time budget) and the real-time info instead",
    "interface_kwargs": "saving replays is not supported",
    "reset_act_buf": "tm-gym resets the action buffer at every reset",
}


def _translate_reward(t: _Translator) -> None:
    reward = t.out.reward_config
    for key, name in _REWARD.items():
        value = t.get("ENV", "REWARD_CONFIG", key)
        if name in ("lookahead", "lookback", "min_steps", "max_no_progress") and _number(value):
            value = int(value)
        t.put(reward, name, value, f"ENV.REWARD_CONFIG.{key}")
    penalty = t.get("ENV", "REWARD_CONFIG", "CONSTANT_PENALTY")
    if _number(penalty) and penalty != 0:
        t.skip(
            "ENV.REWARD_CONFIG.CONSTANT_PENALTY",
            f"{penalty}: tm-gym's reward has no constant term (0 is what it does)",
        )
    section = t.get("ENV", "REWARD_CONFIG")
    if isinstance(section, Mapping):
        for key in section:
            if key not in _REWARD and key != "CONSTANT_PENALTY":
                t.skip(f"ENV.REWARD_CONFIG.{key}", "no RewardConfig field")


def _translate_alg(t: _Translator, obs_type: str) -> None:
    alg = t.get("ALG") or {}
    name = str(alg.get("ALGORITHM", "SAC")).upper() if isinstance(alg, Mapping) else "SAC"
    t.get("ALG", "ALGORITHM")
    preset = _PRESETS.get((name, obs_type))
    if preset is None:
        t.skip("ALG.ALGORITHM", f"{name!r}: tm-algos presets cover SAC and REDQSAC")
        preset = "images-sac" if obs_type == "images" else "lidar-sac"
    elif name == "REDQSAC" and obs_type == "images":
        t.skip("ALG.ALGORITHM", "REDQSAC on images has no preset; images-sac is the nearest")
    t.out.preset = preset
    t.override("env.id", "TrackMania-v0")
    t.override("env.obs_type", obs_type)
    t.override("env.n_envs", 1)
    _translate_hyper(t, name == "REDQSAC" and preset == "lidar-redq")


def _translate_hyper(t: _Translator, redq: bool) -> None:
    hp = "algo.hyperparameters."
    lr = t.get("ALG", "LR_ACTOR")
    if _number(lr):
        t.override(hp + "learning_rate", lr)
        for other in ("LR_CRITIC", "LR_ENTROPY"):
            value = t.get("ALG", other)
            if _number(value) and value != lr:
                t.skip(
                    f"ALG.{other}", f"{value}: tm-algos uses one learning_rate (LR_ACTOR's {lr})"
                )
    gamma = t.get("ALG", "GAMMA")
    if _number(gamma):
        t.override(hp + "gamma", gamma)
    polyak = t.get("ALG", "POLYAK")
    if _number(polyak):
        t.override(hp + "tau", round(1.0 - polyak, 12))  # TMRL keeps POLYAK of the old target
    _translate_entropy(t)
    for key, name in _HYPER.items():
        value = t.get(key)
        if _number(value):
            t.override(hp + name, int(value))
    if redq:
        for key, path in (
            ("REDQ_N", "policy.kwargs.n_critics"),
            ("REDQ_M", hp + "subset_size"),
            ("REDQ_Q_UPDATES_PER_POLICY_UPDATE", hp + "actor_update_interval"),
        ):
            value = t.get("ALG", key)
            if _number(value):
                t.override(path, int(value))
    _translate_optimizers(t)


def _translate_entropy(t: _Translator) -> None:
    learn = t.get("ALG", "LEARN_ENTROPY_COEF")
    alpha = t.get("ALG", "ALPHA")
    target = t.get("ALG", "TARGET_ENTROPY")
    hp = "algo.hyperparameters."
    if learn:
        t.override(hp + "ent_coef", f"auto_{alpha}" if _number(alpha) else "auto")
        if _number(target):
            t.override(hp + "target_entropy", target)
    elif _number(alpha):
        t.override(hp + "ent_coef", alpha)


def _translate_optimizers(t: _Translator) -> None:
    for key in ("OPTIMIZER_ACTOR", "OPTIMIZER_CRITIC"):
        value = t.get("ALG", key)
        if value is not None and str(value).lower() != "adam":
            t.skip(f"ALG.{key}", f"{value!r}: tm-algos uses Adam")
    for key in ("BETAS_ACTOR", "BETAS_CRITIC", "L2_ACTOR", "L2_CRITIC"):
        value = t.get("ALG", key)
        if value is not None and value not in ([0.9, 0.999], 0, 0.0):
            t.skip(
                f"ALG.{key}",
                f"{value}: tm-algos uses Adam's defaults (betas 0.9/0.999, no weight decay)",
            )
    alg = t.get("ALG")
    if isinstance(alg, Mapping):
        for key in alg:
            if f"ALG.{key}" not in t.seen:
                t.skip(f"ALG.{key}", "not used by the chosen tm-algos preset")


def _translate_dist(t: _Translator) -> None:
    conn, worker, trainer = (t.out.dist[s] for s in ("connection", "worker", "trainer"))
    local_worker, local_trainer = t.get("LOCALHOST_WORKER"), t.get("LOCALHOST_TRAINER")
    public = t.get("PUBLIC_IP_SERVER")
    if local_worker is False or local_trainer is False:
        if public and public != "0.0.0.0":
            conn["host"] = public
        else:
            t.skip(
                "PUBLIC_IP_SERVER",
                f"{public!r} is not an address to connect to: set "
                "connection.host to the server's address",
            )
    elif local_worker is not None or local_trainer is not None:
        conn["host"] = "127.0.0.1"
    t.put(conn, "port", t.get("PORT"), "PORT")
    t.put(conn, "tls", t.get("TLS"), "TLS")
    keys_dir = t.get("TLS_CREDENTIALS_DIRECTORY")
    if keys_dir:
        conn["keys_dir"] = str(keys_dir)
    hostname = t.get("TLS_HOSTNAME")
    if hostname not in (None, "default"):
        t.skip(
            "TLS_HOSTNAME",
            f"{hostname!r}: tm-dist checks the certificate it made itself (`tm-dist certs`)",
        )
    for key, section in (("CUDA_TRAINING", trainer), ("CUDA_INFERENCE", worker)):
        value = t.get(key)
        if value is not None:
            section["device"] = "cuda" if value else "cpu"
    ratio = t.get("MAX_TRAINING_STEPS_PER_ENVIRONMENT_STEP")
    if _number(ratio):
        trainer["max_train_steps_per_env_step"] = ratio
    run = t.get("RUN_NAME")
    if run:
        trainer["run_dir"] = f"runs/{run}"
    trainer["preset"] = t.out.preset
    trainer["overrides"] = list(t.out.preset_overrides)
    if t.get("WANDB_KEY") not in (None, "", "YourWandbApiKey"):
        trainer["wandb"] = True


def translate_tmrl_config(config: Mapping[str, Any]) -> TmrlTranslation:
    """Map a TMRL ``config.json`` (already parsed) to tm-gym, tm-algos and tm-dist settings.

    Every key of ``config`` ends up either in the result or in
    :attr:`TmrlTranslation.unmapped` with the reason. Secrets are never copied.
    """
    if not isinstance(config, Mapping):
        raise TmrlImportError(f"a TMRL config is a JSON object, got {type(config).__name__}")
    t = _Translator(config)
    obs_type = _translate_env(t)
    _translate_rtgym_rest(t)
    _translate_reward(t)
    _translate_alg(t, obs_type)
    for name, value in t.out.env_kwargs.items():  # the preset makes the env with these too
        if name != "obs_type":
            t.override(f"env.kwargs.{name}", value)
    _translate_dist(t)
    for key, why in _NOT_NEEDED.items():
        if key in config:
            t.skip(key, why)
    for key in config:
        if key not in t.seen and key not in ("ENV", "ALG") and key not in t.out.unmapped:
            t.skip(key, "unknown to tm-gym's translator")
    return t.out
