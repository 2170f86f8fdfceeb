"""Settings of tm-dist (connection, worker, trainer): defaults < TOML < environment < flags.

Each setting is a field of a frozen dataclass carrying its rule and a one-line description
(:func:`tm_gym.core.config.setting`), so the checks, the ``TM_DIST_*`` variables, the flags and
the example file (:func:`example_config`) all read one table. Every value is checked (type,
range, known key) and errors name where the value came from, e.g.
``connection.port (in /home/me/tm-dist.toml): got 70000 (int), expected a whole number from 1
to 65535.``

The password comes only from ``TM_DIST_PASSWORD``, a password file or a prompt, and is held in a
:class:`Secret` that prints as ``********``; see :mod:`tm_dist.security` (whose ``Secret``,
``PasswordError``, ``InsecureConnectionError`` and ``is_loopback`` are re-exported here). The
trainer's own password (the relay and the trainer need it; workers never get it) comes from
``TM_DIST_TRAINER_PASSWORD``, a trainer password file, or ``KEYS_DIR/trainer_password`` (written
by ``tm-dist make-cert``); :func:`fleet_credentials` turns both into the relay's roles.

>>> s = load_settings(None, env={"TM_DIST_CONNECTION_PORT": "9000", "TM_DIST_PASSWORD": "pw"})
>>> s.connection.port, s.connection.use_tls, s.connection.password
(9000, False, Secret('********'))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tm_dist.errors import InvalidTypeError, InvalidValueError, TMDistError
from tm_dist.security import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    PASSWORD_HINT,
    TRAINER_PASSWORD_ENV,
    TRAINER_PASSWORD_FILE_ENV,
    TRAINER_PASSWORD_HINT,
    InsecureConnectionError,
    PasswordError,
    Secret,
    check_connection_security,
    is_loopback,
    normalize_host,
    read_password_file,
)
from tm_dist.transport.options import DEFAULT_GROUPS, TRAINER_PASSWORD_FILE, Credential
from tm_gym.core.config import ConfigError, Rule, describe, env_layer, read_toml, setting, validate

__all__ = [
    "DEFAULT_PORT",
    "ENV_PREFIX",
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
    "fleet_credentials",
    "is_loopback",
    "load_settings",
]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7714
ENV_PREFIX = "TM_DIST_"
_MIB = 1 << 20


class SettingsError(ConfigError, TMDistError):
    """A setting has an unknown name, a wrong type or a value out of range; the message starts
    with where the value came from."""


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


# -- settings classes -------------------------------------------------------------------------

_DEVICE = Rule("str", pattern=r"auto|cpu|mps|cuda(:\d+)?", hint="auto, cpu, mps, cuda or cuda:N")


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the relay (``tm-dist server``) is, and how to reach it safely."""

    host: str = setting(
        "127.0.0.1",
        Rule(
            "str",
            pattern=r"(?![^:]*:[^:]*$)(?!.*\]:)[^\s/]{1,253}",
            hint="a host name or IP address (IPv6: ::1 or [::1]), without scheme or :port",
        ),
        "relay (tm-dist server) address as seen from this machine",
    )
    port: int = setting(
        DEFAULT_PORT,
        Rule("int", low=0, high=65535, hint="0 = chosen by the OS, for the server only"),
        "the relay's TCP port (server: 0 lets the OS choose and prints it)",
    )
    tls: bool | None = setting(
        None,
        Rule("bool", optional=True, hint="auto = TLS unless the host is loopback"),
        'true / false / "auto" (TLS unless host is loopback)',
    )
    insecure: bool = setting(
        False, Rule("bool"), "allow plain TCP to a remote host and an empty password"
    )
    keys_dir: Path = setting(
        rule=Rule("path"),
        doc="certificate.pem (+ key.pem on the server)",
        default_factory=default_keys_dir,
    )
    password: Secret = field(default_factory=Secret)
    """From ``TM_DIST_PASSWORD``, the password file or a prompt; never a setting."""
    password_file: Path | None = setting(
        None,
        Rule("path", optional=True),
        "a password file only you can read (chmod 600)",
    )
    trainer_password: Secret = field(default_factory=Secret)
    """The trainer's password (relay and trainer only): from ``TM_DIST_TRAINER_PASSWORD``, the
    trainer password file or ``keys_dir/trainer_password``; never a setting."""
    trainer_password_file: Path | None = setting(
        None,
        Rule("path", optional=True),
        "relay and trainer only (default: keys_dir/trainer_password)",
    )
    max_message_bytes: int = setting(
        64 * _MIB, Rule("int", low=1024, high=2**31 - 1), "largest message (64 MiB)"
    )
    connect_timeout_s: float = setting(
        10.0, Rule("float", low=0.1, high=3600), "how long to wait for the relay's answer"
    )
    queue_max_messages: int = setting(
        100_000,
        Rule("int", low=1, high=10**9),
        "cap of each message queue (relay, link in/out boxes); past it the oldest are dropped",
    )
    queue_max_bytes: int = setting(
        256 * _MIB,
        Rule("int", low=1024, high=2**40),
        "cap in bytes of each message queue (256 MiB); past it the oldest are dropped",
    )

    def __post_init__(self) -> None:
        validate(self, error=SettingsError)
        for name in ("password", "trainer_password"):
            value = getattr(self, name)
            if not isinstance(value, Secret):
                raise InvalidTypeError(
                    f"ConnectionSettings.{name} must be a Secret, got {type(value).__name__}"
                    "; wrap the text: Secret(text)."
                )
        try:
            host = normalize_host(self.host)
        except InvalidValueError as exc:
            raise SettingsError(f"ConnectionSettings.host: {exc}") from None
        object.__setattr__(self, "host", host)  # "[::1]" -> "::1", what sockets take

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

    name: str = setting(
        rule=Rule("str", pattern=r"\w[\w.-]{0,63}", hint="up to 64 letters, digits, ._-"),
        doc="shown in the trainer's logs",
        default_factory=default_worker_name,
    )
    test_every: int = setting(
        10,
        Rule("int", low=0, high=10**6, hint="0 = never test"),
        "a deterministic test episode every N episodes (0: never)",
    )
    chunk_steps: int = setting(
        100,
        Rule("int", low=1, high=1000, hint="the trainer decodes <= 1000"),
        "steps per experience message",
    )
    max_steps_per_s: float | None = setting(
        None,
        Rule("float", optional=True, low=1.0, high=1e6, hint="none = no limit"),
        "pace a simulator worker so the trainer keeps up (default: none)",
    )
    debug_codec: bool = setting(
        False, Rule("bool"), "check every encoded chunk by decoding it (slow)"
    )
    device: str = setting("cpu", _DEVICE, "torch device of the worker's policy")
    seed: int | None = setting(
        None,
        Rule("int", optional=True, low=0, high=2**32 - 1),
        "an integer for reproducible rollouts",
    )

    def __post_init__(self) -> None:
        validate(self, error=SettingsError)


@dataclass(frozen=True)
class TrainerSettings:
    """The trainer: a tm-algos model fed by the workers, broadcasting its weights."""

    preset: str = setting(
        "lidar-sac",
        Rule("str", pattern=r"\S+", hint="a tm-algos preset name or .toml path"),
        "tm-algos preset name or path to a preset .toml",
    )
    overrides: tuple[str, ...] = setting(
        (),
        Rule("strs", pattern=r"[A-Za-z_][\w.-]*=.+", hint='items "dotted.key=value"'),
        'e.g. ["algo.hyperparameters.gamma=0.99"]',
    )
    run_dir: Path = setting(
        Path("runs/dist"),
        Rule("path"),
        "relative paths here are relative to this file",
    )
    broadcast_every: int = setting(
        1000,
        Rule("int", low=1, high=10**9, hint="env steps"),
        "env steps between weight broadcasts",
    )
    max_train_steps_per_env_step: float | None = setting(
        None,
        Rule("float", optional=True, low=0.001, high=1000, hint="none = the preset's ratio"),
        "none: the preset's ratio (gradient_steps / train_freq / n_envs)",
    )
    checkpoint_every: int = setting(
        20_000,
        Rule("int", low=0, high=10**12, hint="0 = never"),
        "env steps between checkpoints (0: never)",
    )
    total_timesteps: int | None = setting(
        None,
        Rule("int", optional=True, low=1, high=10**12),
        "stop after this many env steps (none: the preset's budget)",
    )
    device: str = setting("auto", _DEVICE, "torch device of the model")
    max_abs_reward: float = setting(
        1e4,
        Rule("float", low=1e-3, high=1e12),
        "refuse chunks with a step reward beyond this magnitude (tm-gym's largest: 100)",
    )
    min_lap_s: float | None = setting(
        None,
        Rule("float", optional=True, low=0.0, high=1e6, hint="none = half the expert's lap"),
        "refuse laps faster than this (none: half the expert's lap on a simulator track)",
    )
    ban_after: int = setting(
        10,
        Rule("int", low=1, high=100),
        "disconnect a worker with this many invalid chunks among its last 100",
    )
    wandb: bool = setting(False, Rule("bool"), "mirror the TensorBoard logs to Weights & Biases")

    def __post_init__(self) -> None:
        validate(self, error=SettingsError)


def fleet_credentials(settings: ConnectionSettings) -> list[Credential]:
    """The relay's roles for a tm-dist fleet (what :meth:`RelayServer.from_settings
    <tm_dist.transport.RelayServer.from_settings>` uses).

    * worker (``settings.password``): joins "workers", sends to "trainers", broadcasts nowhere;
    * trainer (``settings.trainer_password``): joins "trainers", sends nowhere, broadcasts to
      "workers".

    So a worker's credential can neither receive the episodes nor publish weights. In insecure
    mode without a trainer password, one credential may do everything (logged as a warning).

    Raises:
        PasswordError: the trainer password is empty (and not ``insecure``), or equals the
            workers' password.
    """
    if settings.trainer_password.is_empty:
        if not settings.insecure:
            raise PasswordError(f"no trainer password is set. {TRAINER_PASSWORD_HINT}")
        logger.warning(
            "no trainer password (insecure mode): roles are off, anyone with the password may "
            "act as the trainer"
        )
        every = frozenset(DEFAULT_GROUPS)
        return [Credential("any", settings.password, every, every, every)]
    if settings.trainer_password == settings.password:
        raise PasswordError(
            "the trainer password equals the workers' password, so a worker could act as the "
            f"trainer: give the trainer its own. {TRAINER_PASSWORD_HINT}"
        )
    return [
        Credential(
            "worker",
            settings.password,
            may_join=frozenset({"workers"}),
            may_send=frozenset({"trainers"}),
            may_broadcast=frozenset(),
        ),
        Credential(
            "trainer",
            settings.trainer_password,
            may_join=frozenset({"trainers"}),
            may_send=frozenset(),
            may_broadcast=frozenset({"workers"}),
        ),
    ]


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
        """Plain values by section, passwords masked (for ``tm-dist config --show``)."""
        return {
            section: {f.name: _plain(getattr(getattr(self, section), f.name)) for f in fields(obj)}
            for section, obj in (
                ("connection", self.connection),
                ("worker", self.worker),
                ("trainer", self.trainer),
            )
        }


_SECTIONS: dict[str, type[Any]] = {
    "connection": ConnectionSettings,
    "worker": WorkerSettings,
    "trainer": TrainerSettings,
}
"""The TOML tables (and ``TM_DIST_<SECTION>_*`` prefixes), in the order files list them."""

_RULES: dict[str, dict[str, Rule]] = {
    section: {name: rule for name, (rule, _doc) in describe(cls).items()}
    for section, cls in _SECTIONS.items()
}


# -- the layers -------------------------------------------------------------------------------

Layer = dict[str, dict[str, Any]]
"""Checked values of one source, by section and key."""


def _no_password_setting(where: str) -> PasswordError:
    return PasswordError(
        f"{where}: there is no password setting (config files, variables named after "
        "settings and flags leak too easily). " + PASSWORD_HINT
    )


def _rule(section: str, key: str, where: str) -> Rule:
    """The rule of ``section.key``; an unknown name or the password is an error naming ``where``."""
    if section not in _RULES:
        raise SettingsError(f"{where}: unknown section {section!r}; known: {', '.join(_RULES)}.")
    if key in ("password", "trainer_password"):
        raise _no_password_setting(where)
    rules = _RULES[section]
    if key not in rules:
        known = ", ".join(rules)
        raise SettingsError(f"{where}: unknown key {key!r} in [{section}]; known: {known}.")
    return rules[key]


def _toml_layer(path: Path) -> Layer:
    """The ``[connection]``, ``[worker]`` and ``[trainer]`` tables of ``path``, checked; relative
    paths are made relative to the file's folder."""
    if not path.exists():
        raise SettingsError(
            f"config file {path} does not exist; `tm-dist config --example > {path}` writes one."
        )
    data = read_toml(path, error=SettingsError)
    tables = ", ".join(f"[{s}]" for s in _RULES)
    layer: Layer = {section: {} for section in _RULES}
    for section, table in data.items():
        if section in ("password", "trainer_password"):
            raise _no_password_setting(f"{section} (in {path})")
        if not isinstance(table, dict):
            raise SettingsError(
                f"{section} (in {path}): top-level keys are not allowed; put it under one of "
                f"the tables {tables}."
            )
        if section not in _RULES:
            raise SettingsError(f"[{section}] (in {path}): unknown table; known: {tables}.")
        for key, raw in table.items():
            where = f"{section}.{key} (in {path})"
            value = _rule(section, key, where).check(raw, where, SettingsError)
            if isinstance(value, Path) and not value.is_absolute():
                value = path.parent / value
            layer[section][key] = value
    return layer


_RESERVED_ENV = (PASSWORD_ENV, PASSWORD_FILE_ENV, TRAINER_PASSWORD_ENV, TRAINER_PASSWORD_FILE_ENV)
"""Variables that are no ``TM_DIST_<SECTION>_<KEY>`` setting ("TRAINER_PASSWORD" would read as
a [trainer] key)."""

_FILE_ENV = {"password_file": PASSWORD_FILE_ENV, "trainer_password_file": TRAINER_PASSWORD_FILE_ENV}


def _env_layer(env: Mapping[str, str]) -> Layer:
    """``TM_DIST_<SECTION>_<KEY>`` and the password file variables; the password variables are
    read by :func:`_password`, a variable named like a password setting is refused."""
    for section in _RULES:
        for key in ("password", "trainer_password"):
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in env and name not in _RESERVED_ENV:
                raise _no_password_setting(f"{section}.{key} (from ${name})")
    layer = env_layer(env, ENV_PREFIX, _RULES, reserved=_RESERVED_ENV, error=SettingsError)
    for key, variable in _FILE_ENV.items():
        if variable in env:
            where = f"connection.{key} (from ${variable})"
            rule = _RULES["connection"][key]
            layer["connection"][key] = rule.parse(env[variable], where, SettingsError)
    return layer


def _flag_layer(overrides: Mapping[str, Any]) -> Layer:
    """Flag values by dotted key; None (a flag not given) is skipped, text is parsed."""
    layer: Layer = {section: {} for section in _RULES}
    for dotted, raw in overrides.items():
        if raw is None:
            continue
        section, _, key = dotted.partition(".")
        where = f"{dotted} (from the command line)"
        rule = _rule(section, key, where)
        if isinstance(raw, str) and rule.kind not in ("str", "path"):
            value = rule.parse(raw, where, SettingsError)
        else:
            value = rule.check(raw, where, SettingsError)
        layer[section][key] = value
    return layer


def _password(
    conn: dict[str, Any],
    file_source: str | None,
    env: Mapping[str, str],
    prompt: Callable[[str], str] | None,
    *,
    key: str = "password_file",
    variable: str = PASSWORD_ENV,
) -> Secret:
    """The password: ``TM_DIST_PASSWORD`` beats a password file from the TOML file, a file from
    a flag beats the variable, a variable and a file variable together are an error, and the
    prompt comes last. ``file_source`` names the layer that gave ``conn[key]``. The trainer's
    password goes the same way with ``key="trainer_password_file"`` and its variable."""
    env_password = env.get(variable) or None
    if env_password is not None and file_source == "env":
        raise PasswordError(
            f"both {variable} and a password file variable are set; unset one of them."
        )
    if env_password is not None and file_source != "flags":
        conn[key] = None
        return Secret(env_password)
    if conn.get(key) is not None:
        return read_password_file(conn[key])
    if prompt is not None:
        return Secret(prompt("tm-dist password: "))
    return Secret()


def _trainer_password(
    conn: dict[str, Any], file_source: str | None, env: Mapping[str, str]
) -> Secret:
    """Like :func:`_password` for the trainer (no prompt), then ``keys_dir/trainer_password``
    when that file exists (``tm-dist make-cert`` writes it on the server)."""
    key = "trainer_password_file"
    secret = _password(conn, file_source, env, None, key=key, variable=TRAINER_PASSWORD_ENV)
    if secret.is_empty and conn.get(key) is None:
        default = Path(conn["keys_dir"]) / TRAINER_PASSWORD_FILE
        if default.is_file():
            secret = read_password_file(default)
    return secret


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
    "none"/"auto", lists comma-separated or a TOML list), plus ``TM_DIST_PASSWORD``,
    ``TM_DIST_PASSWORD_FILE``, ``TM_DIST_TRAINER_PASSWORD`` and ``TM_DIST_TRAINER_PASSWORD_FILE``
    (else ``keys_dir/trainer_password`` when it exists); other ``TM_DIST_*`` names are errors. ``overrides``: flag values by
    dotted key (``{"connection.port": 7714}``), None = flag not given, strings parsed like
    variables. ``prompt`` (see ``tm_dist.security.tty_prompt``) asks for the password when no
    other source gives one. Raises SettingsError or PasswordError naming the source.
    """
    layers: list[tuple[str, Layer]] = []
    if config_path is not None:
        layers.append(("toml", _toml_layer(Path(config_path).expanduser())))
    layers.append(("env", _env_layer(env)))
    layers.append(("flags", _flag_layer(overrides or {})))

    values: Layer = {section: {} for section in _RULES}
    file_source: dict[str, str] = {}
    for source, layer in layers:
        for section, items in layer.items():
            values[section].update(items)
        for key in _FILE_ENV:
            if key in layer["connection"]:
                file_source[key] = source
    conn = values["connection"]
    password = _password(conn, file_source.get("password_file"), env, prompt)
    conn.setdefault("keys_dir", default_keys_dir(env))
    trainer = _trainer_password(conn, file_source.get("trainer_password_file"), env)
    return DistSettings(
        connection=ConnectionSettings(**conn, password=password, trainer_password=trainer),
        worker=WorkerSettings(**values["worker"]),
        trainer=TrainerSettings(**values["trainer"]),
    )


# -- the example file -------------------------------------------------------------------------

_EXAMPLE_VALUES: dict[str, tuple[str, bool]] = {
    # "section.key" → (value written, commented out) where the default is not a plain value
    "connection.tls": ('"auto"', False),
    "connection.keys_dir": ('"~/.config/tm-dist/keys"', True),
    "connection.password_file": ('"~/.config/tm-dist/password"', True),
    "connection.trainer_password_file": ('"~/.config/tm-dist/keys/trainer_password"', True),
    "worker.name": ('"<hostname>-<pid>"', True),
    "worker.max_steps_per_s": ("250", True),
}


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _example_line(section: str, f: dataclasses.Field[Any], doc: str) -> str:
    shown = _EXAMPLE_VALUES.get(f"{section}.{f.name}")
    if shown is not None:
        value, commented = shown
    else:
        value, commented = _toml_value(f.default), False
    line = f"{'# ' if commented else ''}{f.name} = {value}"
    return f"{line:<29} # {doc}" if doc else line


def example_config() -> str:
    """A commented TOML file with every key at its default (``tm-dist config --example``),
    written from the settings' own fields and descriptions."""
    lines = [
        "# tm-dist settings. Precedence: defaults < this file < TM_DIST_<SECTION>_<KEY> env vars "
        "< flags.",
        f"# The password is never written here: set {PASSWORD_ENV}, or point password_file at a "
        "file",
        "# only you can read (chmod 600), or type it when asked.",
        "# The relay and the trainer also need the trainer's password (workers never get it);",
        "# `tm-dist make-cert` writes KEYS_DIR/trainer_password, read from there by default.",
        f"# Or set {TRAINER_PASSWORD_ENV}, or point trainer_password_file at it. The workers'",
        "# password cannot join the trainers nor broadcast weights.",
    ]
    for section, cls in _SECTIONS.items():
        summary = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "")
        lines += ["", f"# {summary}", f"[{section}]"]
        docs = describe(cls)
        lines += [_example_line(section, f, docs[f.name][1]) for f in fields(cls) if f.name in docs]
    return "\n".join(lines) + "\n"
