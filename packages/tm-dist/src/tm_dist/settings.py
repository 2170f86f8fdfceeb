"""Settings of tm-dist (connection, worker, trainer): defaults < TOML < environment < flags.

Every value is checked (type, range, known key) and errors name where the value came from, e.g.
``connection.port (in /home/me/tm-dist.toml): got 70000, expected a whole number from 1 to 65535``.
The password comes only from ``TM_DIST_PASSWORD``, a password file or a prompt, and is held in a
:class:`Secret` that prints as ``********``; see :mod:`tm_dist.security` (whose ``Secret``,
``PasswordError``, ``InsecureConnectionError`` and ``is_loopback`` are re-exported here).

>>> s = load_settings(None, env={"TM_DIST_CONNECTION_PORT": "9000", "TM_DIST_PASSWORD": "pw"})
>>> s.connection.port, s.connection.use_tls, s.connection.password
(9000, False, Secret('********'))
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tm_dist.security import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    PASSWORD_HINT,
    InsecureConnectionError,
    PasswordError,
    Secret,
    check_connection_security,
    is_loopback,
    read_password_file,
)

__all__ = [
    "DEFAULT_PORT",
    "ConnectionSettings",
    "DistSettings",
    "InsecureConnectionError",
    "PasswordError",
    "Secret",
    "SettingsError",
    "TrainerSettings",
    "WorkerSettings",
    "default_keys_dir",
    "default_worker_name",
    "example_config",
    "is_loopback",
    "load_settings",
]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7714
ENV_PREFIX = "TM_DIST_"
_MIB = 1 << 20


class SettingsError(ValueError):
    """A setting has an unknown name, a wrong type or a value out of range."""


def default_keys_dir(env: Mapping[str, str] | None = None) -> Path:
    """Per-user folder for TLS files: ``%APPDATA%/tm-dist/keys`` on Windows, else
    ``$XDG_CONFIG_HOME/tm-dist/keys`` (``~/.config/tm-dist/keys``). Computed when called."""
    env = os.environ if env is None else env
    if os.name == "nt" and env.get("APPDATA"):
        return Path(env["APPDATA"]) / "tm-dist" / "keys"
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "tm-dist" / "keys"


def default_worker_name() -> str:
    """``<hostname>-<pid>``, unique among the workers of one machine."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "worker"
    return f"{host[:48]}-{os.getpid()}"


# -- field rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    kind: str  # "bool" | "int" | "float" | "str" | "path" | "strs"
    optional: bool = False
    low: float | None = None
    high: float | None = None
    pattern: str | None = None  # full match, for "str" and each item of "strs"
    hint: str = ""

    def expected(self) -> str:
        what = {"bool": "true or false", "int": "a whole number", "float": "a number"}.get(
            self.kind, {"path": "a path", "strs": "a list of strings"}.get(self.kind, "a string")
        )
        if self.low is not None:
            what += f" from {self.low} to {self.high}"
        what += f" ({self.hint})" if self.hint else ""
        return what + (', or "none"/"auto" for the default' if self.optional else "")


_DEVICE = _Rule("str", pattern=r"auto|cpu|mps|cuda(:\d+)?", hint="auto, cpu, mps, cuda or cuda:N")
_RULES: dict[str, dict[str, _Rule]] = {
    "connection": {
        "host": _Rule(
            "str",
            pattern=r"(?![^:]*:[^:]*$)[^\s/]{1,253}",
            hint="a host name or IP address, without scheme or :port",
        ),
        "port": _Rule("int", low=1, high=65535),
        "tls": _Rule("bool", optional=True, hint="auto = TLS unless the host is loopback"),
        "insecure": _Rule("bool"),
        "keys_dir": _Rule("path"),
        "password_file": _Rule("path", optional=True),
        "max_message_bytes": _Rule("int", low=1024, high=2**31 - 1),
        "connect_timeout_s": _Rule("float", low=0.1, high=3600),
    },
    "worker": {
        "name": _Rule("str", pattern=r"\w[\w.-]{0,63}", hint="up to 64 letters, digits, ._-"),
        "test_every": _Rule("int", low=0, high=10**6, hint="0 = never test"),
        "chunk_steps": _Rule("int", low=1, high=1000, hint="the trainer decodes <= 1000"),
        "max_steps_per_s": _Rule("float", optional=True, low=1.0, high=1e6, hint="none = no limit"),
        "debug_codec": _Rule("bool"),
        "device": _DEVICE,
        "seed": _Rule("int", optional=True, low=0, high=2**32 - 1),
    },
    "trainer": {
        "preset": _Rule("str", pattern=r"\S+", hint="a tm-algos preset name or .toml path"),
        "overrides": _Rule("strs", pattern=r"[A-Za-z_][\w.-]*=.+", hint='items "dotted.key=value"'),
        "run_dir": _Rule("path"),
        "broadcast_every": _Rule("int", low=1, high=10**9, hint="env steps"),
        "max_train_steps_per_env_step": _Rule("float", optional=True, low=0.001, high=1000),
        "checkpoint_every": _Rule("int", low=0, high=10**12, hint="0 = never"),
        "total_timesteps": _Rule("int", optional=True, low=1, high=10**12),
        "device": _DEVICE,
        "wandb": _Rule("bool"),
    },
}
_SENTINELS = ("none", "auto")


def _fail(where: str, value: Any, rule: _Rule) -> NoReturn:
    shown = f"{value!r} ({type(value).__name__})" if not isinstance(value, str) else repr(value)
    raise SettingsError(f"{where}: got {shown}, expected {rule.expected()}.")


def _convert(value: Any, rule: _Rule, where: str) -> Any:
    """Check a typed value (TOML, flags, constructor) and normalise it (int→float, str→Path)."""
    if rule.optional and (
        value is None or (isinstance(value, str) and value.strip().lower() in _SENTINELS)
    ):
        return None
    kind = rule.kind
    if kind == "bool":
        if not isinstance(value, bool):
            _fail(where, value, rule)
        return value
    if kind in ("int", "float"):
        ok_types = (int,) if kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_types):
            _fail(where, value, rule)
        low = -math.inf if rule.low is None else rule.low
        high = math.inf if rule.high is None else rule.high
        if not (math.isfinite(value) and low <= value <= high):
            _fail(where, value, rule)
        return float(value) if kind == "float" else value
    if kind == "path":
        if not isinstance(value, str | os.PathLike) or not str(value).strip():
            _fail(where, value, rule)
        return Path(value).expanduser()
    items = value if kind == "strs" and isinstance(value, list | tuple) else [value]
    for item in items:
        if not isinstance(item, str) or (
            rule.pattern is not None and re.fullmatch(rule.pattern, item) is None
        ):
            _fail(where, item, rule)
    return tuple(items) if kind == "strs" else value


def _parse_text(text: str, rule: _Rule, where: str) -> Any:
    """Parse an environment variable or a flag given as text, then check it."""
    t = text.strip()
    if rule.optional and t.lower() in _SENTINELS:
        return None
    value: Any = t
    if rule.kind == "bool":
        words = {"1": True, "true": True, "yes": True, "on": True}
        words |= {"0": False, "false": False, "no": False, "off": False}
        value = words.get(t.lower(), text)
    elif rule.kind in ("int", "float"):
        try:
            value = int(t) if rule.kind == "int" else float(t)
        except ValueError:
            value = text
    elif rule.kind == "strs":
        if t.startswith("["):
            try:
                value = tomllib.loads(f"v = {t}")["v"]
            except tomllib.TOMLDecodeError as e:
                raise SettingsError(
                    f"{where}: {text!r} is not a TOML list of strings ({e})."
                ) from e
        else:
            value = [part.strip() for part in t.split(",") if part.strip()]
    return _convert(value, rule, where)


def _rule(section: str, key: str, where: str) -> _Rule:
    if section not in _RULES:
        raise SettingsError(f"{where}: unknown section {section!r}; known: {', '.join(_RULES)}.")
    if key == "password":
        raise PasswordError(
            f"{where}: there is no password setting (config files, variables named after "
            "settings and flags leak too easily). " + PASSWORD_HINT
        )
    try:
        return _RULES[section][key]
    except KeyError:
        known = ", ".join(_RULES[section])
        raise SettingsError(
            f"{where}: unknown key {key!r} in [{section}]; known: {known}."
        ) from None


def _validate(obj: Any, section: str) -> None:
    for name, rule in _RULES[section].items():
        value = _convert(getattr(obj, name), rule, f"{type(obj).__name__}.{name}")
        object.__setattr__(obj, name, value)


# -- settings classes -------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the relay (``tm-dist server``) is, and how to reach it safely."""

    host: str = "127.0.0.1"  # relay address as seen from this machine
    port: int = DEFAULT_PORT
    tls: bool | None = None  # None = auto: TLS unless host is loopback
    insecure: bool = False  # allow plain TCP to a remote host and an empty password
    keys_dir: Path = field(default_factory=default_keys_dir)  # see tm_dist.certs
    password: Secret = field(default_factory=Secret)
    password_file: Path | None = None  # where the password was read from, if a file
    max_message_bytes: int = 64 * _MIB
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _validate(self, "connection")
        if not isinstance(self.password, Secret):
            raise TypeError(
                f"ConnectionSettings.password must be a Secret, got {type(self.password).__name__}"
                "; wrap the text: Secret(text)."
            )

    @property
    def use_tls(self) -> bool:
        return self.tls if self.tls is not None else not is_loopback(self.host)

    @property
    def tlspyo_security(self) -> str | None:
        """The ``security`` argument of tlspyo's Relay and Endpoint."""
        return "TLS" if self.use_tls else None

    def check_security(self) -> None:
        """Refuse plain TCP off loopback and an empty password, unless ``insecure`` is set.

        Raises:
            InsecureConnectionError: TLS is off, the host is remote and insecure is False.
            PasswordError: the password is empty and insecure is False.
        """
        check_connection_security(
            self.host,
            self.port,
            use_tls=self.use_tls,
            insecure=self.insecure,
            password=self.password,
            keys_dir=self.keys_dir,
        )


@dataclass(frozen=True)
class WorkerSettings:
    """A rollout worker: drives one environment with the latest policy."""

    name: str = field(default_factory=default_worker_name)
    test_every: int = 10  # a deterministic test episode every N episodes (0: never)
    chunk_steps: int = 100  # steps per experience message
    max_steps_per_s: float | None = None  # pace a simulator worker (None: as fast as it runs)
    debug_codec: bool = False
    device: str = "cpu"
    seed: int | None = None

    def __post_init__(self) -> None:
        _validate(self, "worker")


@dataclass(frozen=True)
class TrainerSettings:
    """The trainer: a tm-algos model fed by the workers, broadcasting its weights."""

    preset: str = "lidar-sac"
    overrides: tuple[str, ...] = ()  # "dotted.key=value", value in TOML syntax
    run_dir: Path = Path("runs/dist")
    broadcast_every: int = 1000  # environment steps received between weight broadcasts
    max_train_steps_per_env_step: float | None = None  # None: the preset's update-to-data ratio
    checkpoint_every: int = 20_000
    total_timesteps: int | None = None
    device: str = "auto"
    wandb: bool = False

    def __post_init__(self) -> None:
        _validate(self, "trainer")


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return "(not set)" if value.is_empty else str(value)
    if isinstance(value, Path):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class DistSettings:
    """All settings of one tm-dist process."""

    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Plain values by section, password masked (for ``tm-dist config --show``)."""
        return {
            section: {f.name: _plain(getattr(getattr(self, section), f.name)) for f in fields(obj)}
            for section, obj in (
                ("connection", self.connection),
                ("worker", self.worker),
                ("trainer", self.trainer),
            )
        }


# -- loading ----------------------------------------------------------------------------------


def load_settings(
    config_path: Path | str | None,
    *,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> DistSettings:
    """Merge defaults < TOML file < ``TM_DIST_*`` variables < flags into checked settings.

    ``config_path``: ``[connection]``, ``[worker]``, ``[trainer]`` tables; relative paths in it are
    relative to its folder. ``env`` (usually ``os.environ``, never read implicitly):
    ``TM_DIST_<SECTION>_<KEY>`` (booleans 1/0/true/false/yes/no/on/off, optional values
    "none"/"auto", lists comma-separated or a TOML list), plus ``TM_DIST_PASSWORD`` and
    ``TM_DIST_PASSWORD_FILE``; other ``TM_DIST_*`` names are errors. ``overrides``: flag values by
    dotted key (``{"connection.port": 7714}``), None = flag not given, strings parsed like
    variables. ``prompt`` (see ``tm_dist.security.tty_prompt``) asks for the password when no
    other source gives one. Raises SettingsError or PasswordError naming the source.
    """
    values: dict[str, dict[str, Any]] = {section: {} for section in _RULES}
    file_layer = 0  # which layer gave connection.password_file: 1 TOML, 2 env, 3 flags
    if config_path is not None:
        path = Path(config_path).expanduser()
        for section, key, raw in _read_toml(path):
            where = f"{section}.{key} (in {path})"
            value = _convert(raw, _rule(section, key, where), where)
            if isinstance(value, Path) and not value.is_absolute():
                value = path.parent / value
            values[section][key] = value
            file_layer = 1 if key == "password_file" else file_layer

    env_password = env.get(PASSWORD_ENV) or None
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == PASSWORD_ENV:
            continue
        if name == PASSWORD_FILE_ENV:
            section, key = "connection", "password_file"
        else:
            section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        where = f"{section}.{key} (from ${name})"
        if section not in _RULES or (key not in _RULES[section] and key != "password"):
            known = [f"{ENV_PREFIX}{s}_{k}".upper() for s in _RULES for k in _RULES[s]]
            raise SettingsError(
                f"unknown environment variable {name}; known: {PASSWORD_ENV}, "
                f"{PASSWORD_FILE_ENV}, {', '.join(known)}. Unset it or fix its name."
            )
        values[section][key] = _parse_text(env[name], _rule(section, key, where), where)
        file_layer = 2 if key == "password_file" else file_layer

    for dotted, raw in (overrides or {}).items():
        if raw is None:
            continue
        section, _, key = dotted.partition(".")
        where = f"{dotted} (from the command line)"
        rule = _rule(section, key, where)
        if isinstance(raw, str) and rule.kind not in ("str", "path"):
            values[section][key] = _parse_text(raw, rule, where)
        else:
            values[section][key] = _convert(raw, rule, where)
        file_layer = 3 if key == "password_file" else file_layer

    conn = values["connection"]
    if env_password is not None and file_layer == 2:
        raise PasswordError(
            f"both {PASSWORD_ENV} and a password file variable are set; unset one of them."
        )
    if env_password is not None and file_layer < 2:
        conn["password_file"] = None
        password = Secret(env_password)
    elif conn.get("password_file") is not None:
        password = read_password_file(conn["password_file"])
    elif prompt is not None:
        password = Secret(prompt("tm-dist password: "))
    else:
        password = Secret()
    conn.setdefault("keys_dir", default_keys_dir(env))
    return DistSettings(
        connection=ConnectionSettings(**conn, password=password),
        worker=WorkerSettings(**values["worker"]),
        trainer=TrainerSettings(**values["trainer"]),
    )


def _read_toml(path: Path) -> list[tuple[str, str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(
            f"config file {path} does not exist; `tm-dist config --example > {path}` writes one."
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"cannot read config file {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"config file {path} is not valid TOML: {e}") from e
    items = []
    for section, table in data.items():
        tables = ", ".join(f"[{s}]" for s in _RULES)
        if section == "password":
            _rule("connection", section, f"{section} (in {path})")  # raises PasswordError
        if not isinstance(table, dict):
            raise SettingsError(
                f"{section} (in {path}): top-level keys are not allowed; put it under one of "
                f"the tables {tables}."
            )
        if section not in _RULES:
            raise SettingsError(f"[{section}] (in {path}): unknown table; known: {tables}.")
        items += [(section, key, raw) for key, raw in table.items()]
    return items


def example_config() -> str:
    """A commented TOML file with every key at its default (``tm-dist config --example``)."""
    return f"""\
# tm-dist settings. Precedence: defaults < this file < TM_DIST_<SECTION>_<KEY> env vars < flags.
# The password is never written here: set {PASSWORD_ENV}, or point password_file at a file
# only you can read (chmod 600), or type it when asked.

[connection]
host = "127.0.0.1"            # relay (tm-dist server) address as seen from this machine
port = {DEFAULT_PORT}
tls = "auto"                  # true / false / "auto" (TLS unless host is loopback)
insecure = false              # allow plain TCP to a remote host and an empty password
# keys_dir = "~/.config/tm-dist/keys"   # certificate.pem (+ key.pem on the server)
# password_file = "~/.config/tm-dist/password"
max_message_bytes = {64 * _MIB}    # 64 MiB
connect_timeout_s = 10.0

[worker]
# name = "<hostname>-<pid>"   # shown in the trainer's logs
test_every = 10               # a deterministic test episode every N episodes (0: never)
chunk_steps = 100             # steps per experience message
# max_steps_per_s = 250       # pace a simulator worker so the trainer keeps up (default: none)
debug_codec = false           # check every encoded chunk by decoding it (slow)
device = "cpu"                # auto, cpu, mps, cuda, cuda:N
seed = "none"                 # an integer for reproducible rollouts

[trainer]
preset = "lidar-sac"          # tm-algos preset name or path to a preset .toml
overrides = []                # e.g. ["algo.hyperparameters.gamma=0.99"]
run_dir = "runs/dist"         # relative paths here are relative to this file
broadcast_every = 1000        # env steps between weight broadcasts
max_train_steps_per_env_step = "none"  # none: the preset's ratio (gradient_steps / train_freq / n_envs)
checkpoint_every = 20000      # env steps between checkpoints (0: never)
total_timesteps = "none"      # stop after this many env steps
device = "auto"
wandb = false
"""
