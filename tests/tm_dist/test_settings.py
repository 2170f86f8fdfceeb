"""tm_dist.settings and tm_dist.security: layering, validation, passwords, the TLS policy."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from tm_dist.security import (
    check_connection_security,
    read_password_file,
    reject_password_arguments,
)
from tm_dist.settings import (
    ConnectionSettings,
    DistSettings,
    InsecureConnectionError,
    PasswordError,
    Secret,
    SettingsError,
    TrainerSettings,
    WorkerSettings,
    default_keys_dir,
    example_config,
    is_loopback,
    load_settings,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
PASSWORD = "hunter2-correct-horse"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


# -- layering ---------------------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings(None, env={})
    assert s.connection.host == "127.0.0.1"
    assert s.connection.port == 7714
    assert s.connection.tls is None and s.connection.use_tls is False
    assert s.connection.max_message_bytes == 64 * 2**20
    assert s.connection.keys_dir == default_keys_dir({})
    assert s.worker.test_every == 10 and s.worker.chunk_steps == 100 and s.worker.seed is None
    assert str(os.getpid()) in s.worker.name
    assert s.trainer == TrainerSettings()
    assert s.trainer.run_dir == Path("runs/dist")
    assert s.connection.password.is_empty


def test_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[connection]\nport = 1000\n[trainer]\npreset = 'a'\n")
    env = {"TM_DIST_CONNECTION_PORT": "2000", "TM_DIST_TRAINER_PRESET": "b"}
    flags = {"connection.port": 3000}
    assert load_settings(None, env={}).connection.port == 7714
    assert load_settings(config, env={}).connection.port == 1000
    s = load_settings(config, env=env)
    assert (s.connection.port, s.trainer.preset) == (2000, "b")
    s = load_settings(config, env=env, overrides=flags)
    assert (s.connection.port, s.trainer.preset) == (3000, "b")
    # A flag left at None (not given) does not hide the lower layers.
    assert (
        load_settings(config, env=env, overrides={"connection.port": None}).connection.port == 2000
    )


def test_load_settings_does_not_read_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TM_DIST_CONNECTION_PORT", "1234")
    monkeypatch.setenv("TM_DIST_PASSWORD", PASSWORD)
    s = load_settings(None, env={})
    assert s.connection.port == 7714 and s.connection.password.is_empty


def test_paths_in_toml_are_relative_to_the_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.toml", "[connection]\nkeys_dir = 'keys'\n[trainer]\nrun_dir = 'r'\n"
    )
    s = load_settings(config, env={"TM_DIST_TRAINER_RUN_DIR": "from-env"})
    assert s.connection.keys_dir == tmp_path / "keys"
    assert s.trainer.run_dir == Path("from-env")


def test_example_config_holds_every_key_and_the_defaults(tmp_path: Path) -> None:
    text = example_config()
    for section in ("connection", "worker", "trainer"):
        for f in dataclasses.fields(getattr(DistSettings(), section)):
            if f.name not in ("password", "trainer_password"):
                assert f"{f.name} = " in text, f.name
    config = write(tmp_path / "example.toml", text)
    s = load_settings(config, env={})
    defaults = load_settings(None, env={})
    assert s.connection == defaults.connection
    assert s.worker == defaults.worker
    assert s.trainer == dataclasses.replace(defaults.trainer, run_dir=tmp_path / "runs" / "dist")
    assert 'tls = "auto"' in text


# -- parsing of text values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("1", True), ("true", True), ("YES", True), ("on", True)],
        *[("0", False), ("False", False), ("no", False), (" off ", False)],
    ],
)
def test_env_booleans(text: str, expected: bool) -> None:
    assert load_settings(None, env={"TM_DIST_TRAINER_WANDB": text}).trainer.wandb is expected


@pytest.mark.parametrize(
    ("name", "text", "attr", "expected"),
    [
        ("TM_DIST_CONNECTION_MAX_MESSAGE_BYTES", "1_048_576", "max_message_bytes", 2**20),
        ("TM_DIST_CONNECTION_CONNECT_TIMEOUT_S", "2.5", "connect_timeout_s", 2.5),
        ("TM_DIST_CONNECTION_CONNECT_TIMEOUT_S", "3", "connect_timeout_s", 3.0),
        ("TM_DIST_CONNECTION_TLS", "auto", "tls", None),
        ("TM_DIST_CONNECTION_TLS", "true", "tls", True),
    ],
)
def test_env_numbers_and_optionals(name: str, text: str, attr: str, expected: Any) -> None:
    value = getattr(load_settings(None, env={name: text}).connection, attr)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("algo.gamma=0.99", ("algo.gamma=0.99",)),
        (" a=1 , b.c=true ,", ("a=1", "b.c=true")),
        ('["net.arch=[256, 256]", "x=1"]', ("net.arch=[256, 256]", "x=1")),
    ],
)
def test_env_lists(text: str, expected: tuple[str, ...]) -> None:
    env = {"TM_DIST_TRAINER_OVERRIDES": text}
    assert load_settings(None, env=env).trainer.overrides == expected


def test_flags_accept_typed_values_and_text() -> None:
    flags: dict[str, Any] = {"worker.seed": "7", "worker.device": "cuda:1"}
    flags["trainer.overrides"] = ["a=1"]
    flags |= {"trainer.total_timesteps": 5000, "connection.insecure": True}
    s = load_settings(None, env={}, overrides=flags)
    assert (s.worker.seed, s.worker.device) == (7, "cuda:1")
    assert s.trainer.overrides == ("a=1",) and s.trainer.total_timesteps == 5000
    assert s.connection.insecure is True
    assert load_settings(None, env={}, overrides={"worker.seed": "none"}).worker.seed is None


# -- validation errors name their source ------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        (
            "[connection]\nprot = 1\n",
            r"connection\.prot \(in .*c\.toml\): unknown key 'prot'.*"
            r"known: host, port",
        ),
        (
            "[connection]\nport = 70000\n",
            r"connection\.port \(in .*c\.toml\): got 70000.*0 to 65535",
        ),
        ("[connection]\nport = '7714'\n", r"connection\.port \(in .*c\.toml\): got '7714'"),
        ("[connection]\nport = true\n", r"got True \(bool\), expected a whole number"),
        ("[worker]\ndebug_codec = 1\n", r"worker\.debug_codec .*expected true or false"),
        ("[worker]\ndevice = 'gpu'\n", r"worker\.device .*auto, cpu, mps, cuda or cuda:N"),
        ("[trainer]\noverrides = ['gamma']\n", r"trainer\.overrides .*dotted\.key=value"),
        ("[trainer]\nmax_train_steps_per_env_step = 0.0\n", r"from 0\.001 to 1000"),
        ("[learner]\nx = 1\n", r"\[learner\] \(in .*c\.toml\): unknown table"),
        ("port = 1\n", r"port \(in .*c\.toml\): top-level keys are not allowed"),
        ("[connection\n", r"c\.toml is not valid TOML"),
    ],
)
def test_toml_errors(tmp_path: Path, toml: str, match: str) -> None:
    config = write(tmp_path / "c.toml", toml)
    with pytest.raises(SettingsError, match=match):
        load_settings(config, env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nope\.toml does not exist.*config --example"):
        load_settings(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"TM_DIST_CONNECTION_PORT": "-1"}, r"\$TM_DIST_CONNECTION_PORT\): got '-1'.*0 to 65535"),
        ({"TM_DIST_CONNECTION_PORT": "77.5"}, r"\$TM_DIST_CONNECTION_PORT\): got '77\.5'"),
        ({"TM_DIST_WORKER_DEBUG_CODEC": "maybe"}, r"worker\.debug_codec .*'maybe'"),
        ({"TM_DIST_CONNECTION_HOST": "10.0.0.2:7714"}, r"without scheme or :port"),
        (
            {"TM_DIST_CONNECTION_PORTT": "1"},
            r"unknown environment variable TM_DIST_CONNECTION_PORTT",
        ),
        ({"TM_DIST_LEARNER_X": "1"}, r"TM_DIST_LEARNER_X.*known: TM_DIST_PASSWORD"),
        ({"TM_DIST_TRAINER_OVERRIDES": "[1, 2]"}, r"got '\[1, 2\]', expected a list of strings"),
    ],
)
def test_env_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(None, env=env)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"connection.prot": 1}, r"connection\.prot \(from the command line\): unknown key"),
        ({"network.port": 1}, r"unknown section 'network'"),
        ({"connection.port": True}, r"command line\): got True \(bool\)"),
        ({"connection.port": "http"}, r"command line\): got 'http'"),
        ({"worker.chunk_steps": 0}, r"worker\.chunk_steps .*from 1 to 1000\b"),
    ],
)
def test_flag_errors(flags: dict[str, Any], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(None, env={}, overrides=flags)


def test_constructors_validate_and_normalise() -> None:
    with pytest.raises(SettingsError, match=r"WorkerSettings\.chunk_steps: got 0"):
        WorkerSettings(chunk_steps=0)
    with pytest.raises(SettingsError, match=r"ConnectionSettings\.port"):
        ConnectionSettings(port=65536)
    with pytest.raises(TypeError, match=r"Secret\(text\)"):
        ConnectionSettings(password=PASSWORD)  # type: ignore[arg-type]
    c = ConnectionSettings(connect_timeout_s=5, keys_dir="k")  # type: ignore[arg-type]
    assert type(c.connect_timeout_s) is float and c.keys_dir == Path("k")
    assert TrainerSettings(overrides=["a=1"]).overrides == ("a=1",)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.port = 1  # type: ignore[misc]


# -- the password ------------------------------------------------------------------------------


def test_secret_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(None, env={"TM_DIST_PASSWORD": PASSWORD})
    assert s.connection.password.reveal() == PASSWORD
    shown = [repr(s), str(s), f"{s}", f"{s.connection.password:>20}", json.dumps(s.as_dict())]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("tm_dist.test").info("settings %s %r", s, s.connection)
    shown.append(caplog.text)
    for text in shown:
        assert PASSWORD not in text
        assert "********" in text
    assert copy.deepcopy(s) == s and copy.deepcopy(s.connection.password) is s.connection.password
    with pytest.raises(TypeError, match="cannot be serialized"):
        pickle.dumps(s)
    assert Secret("a") == Secret("a") != Secret("b")
    assert load_settings(None, env={}).as_dict()["connection"]["password"] == "(not set)"


def test_generated_secrets_are_long_and_distinct() -> None:
    a, b = Secret.generate(), Secret.generate()
    assert a != b and len(a.reveal()) >= 32


@posix_only
def test_password_file_sources(tmp_path: Path) -> None:
    pw = write(tmp_path / "pw", PASSWORD + "\n")
    config = write(tmp_path / "c.toml", "[connection]\npassword_file = 'pw'\n")
    s = load_settings(config, env={})
    assert s.connection.password.reveal() == PASSWORD and s.connection.password_file == pw
    s = load_settings(None, env={"TM_DIST_PASSWORD_FILE": str(pw)})
    assert s.connection.password.reveal() == PASSWORD
    s = load_settings(None, env={}, overrides={"connection.password_file": str(pw)})
    assert s.connection.password.reveal() == PASSWORD


@posix_only
def test_trainer_password_sources(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    env = {"TM_DIST_CONNECTION_KEYS_DIR": str(keys)}
    assert load_settings(None, env=env).connection.trainer_password.is_empty
    # the variable: not mistaken for a [trainer] key named "password"
    s = load_settings(None, env=env | {"TM_DIST_TRAINER_PASSWORD": "trainer-env"})
    assert s.connection.trainer_password.reveal() == "trainer-env"
    assert s.connection.password.is_empty  # the workers' password is another one
    # keys_dir/trainer_password (what `tm-dist make-cert` writes) when nothing else is given
    write(keys / "trainer_password", "trainer-default\n")
    s = load_settings(None, env=env)
    assert s.connection.trainer_password.reveal() == "trainer-default"
    # a file variable, a TOML key and a flag, each beating the default file
    other = write(tmp_path / "tpw", "trainer-file")
    s = load_settings(None, env=env | {"TM_DIST_TRAINER_PASSWORD_FILE": str(other)})
    assert s.connection.trainer_password.reveal() == "trainer-file"
    config = write(tmp_path / "c.toml", "[connection]\ntrainer_password_file = 'tpw'\n")
    s = load_settings(config, env=env)
    assert s.connection.trainer_password.reveal() == "trainer-file"
    assert s.connection.trainer_password_file == other
    s = load_settings(None, env=env, overrides={"connection.trainer_password_file": str(other)})
    assert s.connection.trainer_password.reveal() == "trainer-file"
    with pytest.raises(PasswordError, match="unset one"):
        load_settings(
            None,
            env=env
            | {"TM_DIST_TRAINER_PASSWORD": "x", "TM_DIST_TRAINER_PASSWORD_FILE": str(other)},
        )
    write(keys / "trainer_password", "trainer-default\n", mode=0o644)
    with pytest.raises(PasswordError, match="chmod 600"):
        load_settings(None, env=env)


@pytest.mark.parametrize(
    ("source", "kwargs"),
    [
        ("toml", {"text": "[connection]\ntrainer_password = 'secret-1234'\n"}),
        ("env", {"env": {"TM_DIST_CONNECTION_TRAINER_PASSWORD": "secret-1234"}}),
        ("flag", {"overrides": {"connection.trainer_password": "secret-1234"}}),
    ],
)
def test_trainer_password_is_refused_from_settings(
    tmp_path: Path, source: str, kwargs: dict[str, Any]
) -> None:
    config = write(tmp_path / "c.toml", kwargs.pop("text")) if source == "toml" else None
    with pytest.raises(PasswordError, match="no password setting") as info:
        load_settings(config, env=kwargs.pop("env", {}), **kwargs)
    assert "secret-1234" not in str(info.value)


def test_trainer_password_is_masked_and_documented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tm_dist.cli import main

    secret = "trainer-secret-never-shown"
    s = load_settings(
        None,
        env={"TM_DIST_TRAINER_PASSWORD": secret, "TM_DIST_CONNECTION_KEYS_DIR": str(tmp_path)},
    )
    assert s.as_dict()["connection"]["trainer_password"] == "********"
    assert secret not in repr(s) and secret not in json.dumps(s.as_dict())
    for name in [n for n in os.environ if n.startswith("TM_DIST_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TM_DIST_TRAINER_PASSWORD", secret)
    monkeypatch.setenv("TM_DIST_CONNECTION_KEYS_DIR", str(tmp_path))
    assert main(["config", "--show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["connection"]["trainer_password"] == "********"
    text = example_config()
    assert "TM_DIST_TRAINER_PASSWORD" in text and "trainer_password_file" in text


def test_fleet_credentials() -> None:
    from tm_dist.settings import fleet_credentials

    base = ConnectionSettings(password=Secret("workers-pw"))
    with pytest.raises(PasswordError, match=r"make-cert.*TM_DIST_TRAINER_PASSWORD"):
        fleet_credentials(base)
    same = dataclasses.replace(base, trainer_password=Secret("workers-pw"))
    with pytest.raises(PasswordError, match="its own"):
        fleet_credentials(same)
    worker, trainer = fleet_credentials(
        dataclasses.replace(base, trainer_password=Secret("trainer-pw"))
    )
    assert worker.role == "worker" and trainer.role == "trainer"
    assert worker.may_join == {"workers"} and worker.may_send == {"trainers"}
    assert not worker.may_broadcast
    assert trainer.may_join == {"trainers"} and trainer.may_broadcast == {"workers"}
    assert not trainer.may_send
    (anyone,) = fleet_credentials(dataclasses.replace(base, insecure=True))  # roles off
    assert anyone.may_broadcast == {"workers", "trainers", "server"}


@posix_only
def test_password_precedence_and_prompt(tmp_path: Path) -> None:
    pw = write(tmp_path / "pw", "from-file")
    config = write(tmp_path / "c.toml", f"[connection]\npassword_file = '{pw}'\n")
    env = {"TM_DIST_PASSWORD": "from-env"}
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    # env beats the TOML file, a flag beats env, and the prompt comes last.
    s = load_settings(config, env=env, prompt=prompt)
    assert s.connection.password.reveal() == "from-env" and s.connection.password_file is None
    s = load_settings(None, env=env, overrides={"connection.password_file": pw}, prompt=prompt)
    assert s.connection.password.reveal() == "from-file"
    assert asked == []
    assert load_settings(None, env={}, prompt=prompt).connection.password.reveal() == "typed"
    assert asked == ["tm-dist password: "]
    with pytest.raises(PasswordError, match="unset one"):
        load_settings(None, env=env | {"TM_DIST_PASSWORD_FILE": str(pw)})


@posix_only
def test_password_file_must_be_private(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pw = write(tmp_path / "pw", PASSWORD, mode=0o644)
    with pytest.raises(PasswordError, match=r"mode 644.*chmod 600") as info:
        load_settings(None, env={"TM_DIST_PASSWORD_FILE": str(pw)})
    assert PASSWORD not in str(info.value)
    pw.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="tm_dist.security"):
        assert read_password_file(pw).reveal() == PASSWORD
    assert "group" in caplog.text


def test_password_file_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(PasswordError, match=r"cannot read the password file .*missing"):
        read_password_file(tmp_path / "missing")
    with pytest.raises(PasswordError, match="is empty"):
        read_password_file(write(tmp_path / "empty", "\n"))
    with pytest.raises(PasswordError, match="not a regular file"):
        read_password_file(tmp_path)


@pytest.mark.parametrize(
    ("source", "kwargs"),
    [
        ("toml", {"text": f"[connection]\npassword = '{PASSWORD}'\n"}),
        ("toml", {"text": f"password = '{PASSWORD}'\n"}),
        ("env", {"env": {"TM_DIST_CONNECTION_PASSWORD": PASSWORD}}),
        ("flag", {"overrides": {"connection.password": PASSWORD}}),
    ],
)
def test_password_is_refused_from_settings(
    tmp_path: Path, source: str, kwargs: dict[str, Any]
) -> None:
    config = write(tmp_path / "c.toml", kwargs.pop("text")) if source == "toml" else None
    with pytest.raises(PasswordError, match="TM_DIST_PASSWORD") as info:
        load_settings(config, env=kwargs.pop("env", {}), **kwargs)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("argv", [["--password", PASSWORD], [f"--password={PASSWORD}"], ["--pw"]])
def test_password_flags_are_rejected_without_echoing_the_value(argv: list[str]) -> None:
    with pytest.raises(PasswordError, match=r"--p\w+ is not accepted.*TM_DIST_PASSWORD") as info:
        reject_password_arguments(["worker", *argv])
    assert PASSWORD not in str(info.value)


def test_password_file_flag_is_fine() -> None:
    reject_password_arguments(["worker", "--password-file", "pw.txt", "--insecure"])


# -- TLS policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        *[("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True)],
        *[("localhost", True), ("LocalHost.", True), ("::ffff:127.0.0.1", True)],
        *[("10.0.0.1", False), ("0.0.0.0", False), ("128.0.0.1", False), ("::", False)],
        *[("example.com", False), ("localhost.example.com", False)],
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("host", "tls", "insecure", "error"),
    [
        ("127.0.0.1", None, False, None),  # loopback: plaintext by default
        ("localhost", False, False, None),
        ("::1", True, False, None),
        ("10.0.0.5", None, False, None),  # remote: TLS by default
        ("trainer.lan", True, False, None),
        ("10.0.0.5", False, False, InsecureConnectionError),  # remote plaintext refused
        ("10.0.0.5", False, True, None),  # ... unless insecure
    ],
)
def test_security_matrix(
    host: str, tls: bool | None, insecure: bool, error: type[Exception] | None
) -> None:
    c = ConnectionSettings(host=host, tls=tls, insecure=insecure, password=Secret(PASSWORD))
    assert c.use_tls is (tls if tls is not None else not is_loopback(host))
    assert c.tlspyo_security == ("TLS" if c.use_tls else None)
    if error is None:
        c.check_security()
    else:
        with pytest.raises(error, match=r"tm-dist make-cert.*--insecure"):
            c.check_security()


def test_empty_password_needs_insecure(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(PasswordError, match=r"no password is set.*TM_DIST_PASSWORD"):
        ConnectionSettings().check_security()
    with caplog.at_level(logging.WARNING, logger="tm_dist.security"):
        ConnectionSettings(insecure=True).check_security()
    assert "empty password" in caplog.text


def test_check_connection_security_is_the_same_policy() -> None:
    with pytest.raises(InsecureConnectionError, match=r"10\.1\.1\.1:9"):
        check_connection_security(
            "10.1.1.1", 9, use_tls=False, insecure=False, password=Secret(PASSWORD)
        )
