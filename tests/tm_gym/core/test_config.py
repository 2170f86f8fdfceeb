"""The shared configuration toolkit: rules, validation, text layers, TOML and overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tm_gym.core.config import (
    ConfigError,
    Rule,
    check_table,
    describe,
    env_layer,
    parse_assignment,
    parse_value,
    read_toml,
    rules_of,
    set_dotted,
    setting,
    validate,
)
from tm_gym.error import TrackMasterError


@dataclass(frozen=True)
class Section:
    count: int = setting(10, Rule("int", low=0, high=100, hint="0 = never"), "how many")
    rate: float = setting(1, Rule("float", low=0.0, low_open=True))
    seed: int | None = setting(None, Rule("int", optional=True, low=0))
    coef: object = setting(
        "auto", Rule("float", low=0.0, low_open=True) | Rule("str", pattern=r"auto(_[0-9.]+)?")
    )
    arch: tuple[int, ...] = setting((64, 64), Rule("ints", low=1))
    folder: Path = setting(rule=Rule("path"), default_factory=lambda: Path("runs"))
    device: str = setting("cpu", Rule("str", choices=("cpu", "cuda")))
    names: tuple[str, ...] = setting((), Rule("strs", pattern=r"\w+"))
    flag: bool = setting(False, Rule("bool"))

    def __post_init__(self) -> None:
        validate(self)


class CustomError(ConfigError):
    pass


def test_validate_normalises_values() -> None:
    s = Section(rate=2, arch=[32], folder="~/x", seed="none", names=["a", "b"])  # type: ignore[arg-type]
    assert s.rate == 2.0 and isinstance(s.rate, float)
    assert s.arch == (32,)
    assert s.folder == Path("~/x").expanduser()
    assert s.seed is None
    assert s.names == ("a", "b")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 101}, "Section.count: got 101 (int), expected a whole number from 0 to 100"),
        ({"count": True}, "Section.count: got True (bool)"),
        ({"rate": 0.0}, "a number > 0"),
        ({"rate": float("nan")}, "Section.rate: got nan"),
        ({"coef": "manual"}, "Section.coef: got 'manual', expected a number > 0, or a string"),
        ({"arch": [64, 0]}, "a list of whole numbers >= 1 each"),
        ({"device": "tpu"}, "one of 'cpu', 'cuda'"),
        ({"names": ["ok", "not ok"]}, "Section.names"),
        ({"flag": "yes"}, "true or false"),
        ({"seed": -1}, 'or "none"/"auto" for the default'),
    ],
)
def test_validate_refuses_with_source_value_and_expectation(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Section(**kwargs)  # type: ignore[arg-type]


def test_alternatives_accept_either_kind() -> None:
    assert Section(coef=0.5).coef == 0.5
    assert Section(coef="auto_0.1").coef == "auto_0.1"


def test_parse_reads_text_like_environment_variables() -> None:
    rules = rules_of(Section)
    assert rules["count"].parse(" 7 ", "x") == 7
    assert rules["flag"].parse("on", "x") is True
    assert rules["flag"].parse("0", "x") is False
    assert rules["seed"].parse("auto", "x") is None
    assert rules["arch"].parse("[8, 16]", "x") == (8, 16)
    assert rules["arch"].parse("8, 16", "x") == (8, 16)
    assert rules["names"].parse("a, b", "x") == ("a", "b")
    assert rules["coef"].parse("0.25", "x") == 0.25
    assert rules["coef"].parse("auto", "x") == "auto"
    with pytest.raises(ConfigError, match=r"port \(from \$P\): got 'abc'"):
        Rule("int").parse("abc", "port (from $P)")


def test_errors_use_the_callers_class_and_share_one_root() -> None:
    with pytest.raises(CustomError):
        Rule("int").check("1", "x", CustomError)
    with pytest.raises(TrackMasterError):
        Rule("int").check("1", "x")
    assert issubclass(ConfigError, ValueError)


def test_check_table_refuses_unknown_keys_and_lists_known_ones() -> None:
    rules = {"gamma": Rule("float", low=0.0, high=1.0), "batch_size": Rule("int", low=2)}
    assert check_table({"gamma": 1}, rules, "[algo]") == {"gamma": 1.0}
    with pytest.raises(
        ConfigError, match=r"\[algo\]: unknown key 'gama'; known keys: batch_size, gamma"
    ):
        check_table({"gama": 0.9}, rules, "[algo]")
    with pytest.raises(ConfigError, match=r"\[algo\]\.batch_size: got 1 \(int\)"):
        check_table({"batch_size": 1}, rules, "[algo]")
    with pytest.raises(ConfigError, match="expected a table"):
        check_table([1], rules, "[algo]")


def test_env_layer_reads_known_variables_and_refuses_unknown_ones() -> None:
    sections = {"worker": rules_of(Section)}
    env = {"APP_WORKER_COUNT": "3", "APP_PASSWORD": "secret", "OTHER": "x"}
    assert env_layer(env, "APP_", sections, reserved=["APP_PASSWORD"]) == {"worker": {"count": 3}}
    with pytest.raises(ConfigError, match="unknown environment variable APP_WORKER_CONT"):
        env_layer({"APP_WORKER_CONT": "3"}, "APP_", sections)
    with pytest.raises(ConfigError, match=r"worker\.count \(from \$APP_WORKER_COUNT\)"):
        env_layer({"APP_WORKER_COUNT": "-3"}, "APP_", sections)


def test_assignments_and_values_use_toml_syntax() -> None:
    assert parse_assignment("a.b.c=1e-4", "--set") == (("a", "b", "c"), 1e-4)
    assert parse_assignment("net=[64, 64]", "--set") == (("net",), [64, 64])
    assert parse_value("cnn-small", "x") == "cnn-small"
    assert parse_value('"two words"', "x") == "two words"
    with pytest.raises(ConfigError, match=r"not 'dotted\.key=value'"):
        parse_assignment("no-equals", "--set")
    with pytest.raises(ConfigError, match="is not a TOML value"):
        parse_value("two words", "--set x")


def test_set_dotted_needs_existing_tables() -> None:
    data: dict[str, object] = {"algo": {"hyperparameters": {}}, "name": "x"}
    set_dotted(data, ("algo", "hyperparameters", "gamma"), 0.9, "--set")
    assert data["algo"] == {"hyperparameters": {"gamma": 0.9}}
    with pytest.raises(
        ConfigError, match=r"'name' is not a table here; tables: algo, algo\.hyperparameters"
    ):
        set_dotted(data, ("name", "x"), 1, "--set")


def test_read_toml_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[a]\nb = 1\n", encoding="utf-8")
    assert read_toml(good) == {"a": {"b": 1}}
    bad = tmp_path / "bad.toml"
    bad.write_text("[a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"config file {bad} is not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_toml(tmp_path / "missing.toml")


def test_describe_returns_rules_and_docs() -> None:
    info = describe(Section)
    assert info["count"][1] == "how many"
    assert info["count"][0].expected() == "a whole number from 0 to 100 (0 = never)"
