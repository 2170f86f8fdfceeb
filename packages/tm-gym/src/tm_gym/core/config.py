"""The configuration toolkit shared by tm-gym, tm-algos presets and tm-dist settings.

A configuration is a frozen dataclass whose fields carry their rule in the field's metadata,
validated when the object is built; files, environment variables and ``--set`` overrides are
layers of plain values checked by the same rules, so every error names where the value came from
and what was expected::

    @dataclass(frozen=True)
    class Worker:
        test_every: int = setting(10, Rule("int", low=0, high=10**6, hint="0 = never"))
        device: str = setting("cpu", Rule("str", choices=("cpu", "cuda")))

        def __post_init__(self) -> None:
            validate(self)

The pieces:

* :class:`Rule` — one value's kind (``bool``, ``int``, ``float``, ``str``, ``path``, ``strs``,
  ``ints``, ``table``, ``any``), range, pattern or choices, optional ``None``, and alternatives
  (``Rule("float", low=0, low_open=True) | Rule("str", pattern="auto")``).
  :meth:`Rule.check` checks a typed value (TOML, Python) and normalises it (int → float, text →
  ``Path``, list → tuple); :meth:`Rule.parse` reads text (environment variables, flags).
* :func:`setting`, :func:`rules_of`, :func:`validate`, :func:`describe` — rules as dataclass
  field metadata.
* :func:`check_table` — a free-form table (e.g. hyperparameters) against a mapping of rules.
* :func:`read_toml`, :func:`parse_value`, :func:`parse_assignment`, :func:`set_dotted` — TOML
  files and ``dotted.key=value`` overrides (values in TOML syntax; a bare word is a string).
* :func:`env_layer` — ``PREFIX_SECTION_KEY`` environment variables as a layer; the mapping is
  always passed in, never read from ``os.environ`` here.

Every function raises :class:`ConfigError` (or the subclass passed as ``error``), whose message
starts with the source: ``connection.port (in /home/me/tm-dist.toml): got 70000, expected a
whole number from 1 to 65535.``

>>> rule = Rule("int", low=1, high=65535)
>>> rule.parse("7714", "port (from $TM_DIST_CONNECTION_PORT)")
7714
>>> rule.check(70000, "port (in my.toml)")
Traceback (most recent call last):
...
tm_gym.core.config.ConfigError: port (in my.toml): got 70000 (int), expected a whole number from 1 to 65535.
>>> parse_assignment("algo.hyperparameters.ent_coef=auto", "--set")
(('algo', 'hyperparameters', 'ent_coef'), 'auto')
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tm_gym.error import TrackMasterError

__all__ = [
    "ConfigError",
    "Rule",
    "RuleKind",
    "check_table",
    "describe",
    "env_layer",
    "parse_assignment",
    "parse_value",
    "read_toml",
    "rules_of",
    "set_dotted",
    "setting",
    "validate",
]

RuleKind = Literal["bool", "int", "float", "str", "path", "strs", "ints", "table", "any"]

_SENTINELS = ("none", "auto")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_METADATA_KEY = "tm_rule"
_DOC_KEY = "tm_doc"


class ConfigError(TrackMasterError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message starts
    with where it came from (file and key, environment variable, flag) and says what is expected."""


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one configuration value may be.

    ``low``/``high`` bound numbers (and, for ``ints``, each item; ``low_open`` excludes ``low``);
    ``pattern`` must fully match a ``str`` (or each item of ``strs``); ``choices`` lists the
    allowed strings; ``optional`` also accepts ``None`` (written ``"none"`` or ``"auto"`` in text
    and TOML); ``check`` is an extra predicate on the normalised value; ``hint`` is shown in
    errors; ``alternatives`` are tried in order when this rule refuses the value (use ``|``).
    """

    kind: RuleKind
    optional: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    hint: str = ""
    check_fn: Callable[[Any], bool] | None = None
    alternatives: tuple[Rule, ...] = ()

    def __or__(self, other: Rule) -> Rule:
        return dataclasses.replace(self, alternatives=(*self.alternatives, other))

    # -- describing ------------------------------------------------------------------------

    def _expected_one(self) -> str:
        what = {
            "bool": "true or false",
            "int": "a whole number",
            "float": "a number",
            "str": "a string",
            "path": "a path",
            "strs": "a list of strings",
            "ints": "a list of whole numbers",
            "table": "a table",
            "any": "a value",
        }[self.kind]
        if self.choices:
            what = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.pattern is not None and not self.hint:
            what += f" matching {self.pattern!r}"
        if self.low is not None or self.high is not None:
            low = "-inf" if self.low is None else _number(self.low)
            high = "inf" if self.high is None else _number(self.high)
            if self.low is not None and self.high is None:
                what += f" {'>' if self.low_open else '>='} {low}"
            elif self.low is None:
                what += f" <= {high}"
            else:
                what += f" from {low}{' (excluded)' if self.low_open else ''} to {high}"
            if self.kind == "ints":
                what += " each"
        return what + (f" ({self.hint})" if self.hint else "")

    def expected(self) -> str:
        """What this rule accepts, in words (used in every error message)."""
        parts = [self._expected_one()] + [alt._expected_one() for alt in self.alternatives]
        text = ", or ".join(parts)
        return text + (', or "none"/"auto" for the default' if self.optional else "")

    # -- checking --------------------------------------------------------------------------

    def fail(self, where: str, value: Any, error: type[ConfigError] = ConfigError) -> NoReturn:
        """Raise ``error`` saying that ``value`` (from ``where``) is not what this rule wants."""
        raise error(f"{where}: got {_shown(value)}, expected {self.expected()}.")

    def _in_range(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def _accept(self, value: Any) -> tuple[bool, Any]:
        """(accepted, normalised value) for this rule alone, alternatives not tried."""
        kind = self.kind
        ok: bool
        if kind == "bool":
            ok = isinstance(value, bool)
        elif kind in ("int", "float"):
            number = isinstance(value, int) or (kind == "float" and isinstance(value, float))
            ok = number and not isinstance(value, bool) and self._in_range(value)
            value = float(value) if ok and kind == "float" else value
        elif kind == "path":
            ok = isinstance(value, str | os.PathLike) and bool(str(value).strip())
            value = Path(value).expanduser() if ok else value
        elif kind == "str":
            ok = isinstance(value, str) and self._text_ok(value)
        elif kind == "strs":
            ok = isinstance(value, list | tuple) and all(
                isinstance(v, str) and self._text_ok(v) for v in value
            )
            value = tuple(value) if ok else value
        elif kind == "ints":
            ok = isinstance(value, list | tuple) and all(
                isinstance(v, int) and not isinstance(v, bool) and self._in_range(v) for v in value
            )
            value = tuple(value) if ok else value
        elif kind == "table":
            ok = isinstance(value, Mapping)
        else:
            ok = True
        if ok and self.check_fn is not None:
            ok = bool(self.check_fn(value))
        return ok, value

    def _text_ok(self, text: str) -> bool:
        if self.choices and text not in self.choices:
            return False
        return self.pattern is None or re.fullmatch(self.pattern, text) is not None

    def check(self, value: Any, where: str, error: type[ConfigError] = ConfigError) -> Any:
        """Check a typed value (from TOML or Python) and return it normalised.

        Raises:
            ConfigError: (or ``error``) naming ``where``, the value and what was expected.
        """
        if self.optional and (
            value is None or (isinstance(value, str) and value.strip().lower() in _SENTINELS)
        ):
            return None
        for rule in (self, *self.alternatives):
            ok, normalised = rule._accept(value)
            if ok:
                return normalised
        self.fail(where, value, error)

    def parse(self, text: str, where: str, error: type[ConfigError] = ConfigError) -> Any:
        """Read a value given as text (an environment variable, a flag), then :meth:`check` it.

        Booleans accept 1/0, true/false, yes/no, on/off; numbers are parsed as numbers; lists
        are a TOML list (``[1, 2]``) or comma-separated items.
        """
        t = text.strip()
        if self.optional and t.lower() in _SENTINELS:
            return None
        for rule in (self, *self.alternatives):
            ok, normalised = rule._accept(rule._from_text(t, where, error))
            if ok:
                return normalised
        self.fail(where, text, error)

    def _from_text(self, t: str, where: str, error: type[ConfigError]) -> Any:
        if self.kind == "bool":
            low = t.lower()
            return True if low in _TRUE else False if low in _FALSE else t
        if self.kind in ("int", "float"):
            try:
                return int(t) if self.kind == "int" else float(t)
            except ValueError:
                return t
        if self.kind in ("strs", "ints"):
            if t.startswith("["):
                return parse_value(t, where, error)
            items = [part.strip() for part in t.split(",") if part.strip()]
            if self.kind == "ints":
                try:
                    return [int(item) for item in items]
                except ValueError:
                    return t
            return items
        if self.kind in ("table", "any"):
            return parse_value(t, where, error)
        return t


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


# -- rules as dataclass metadata ------------------------------------------------------------


def setting(
    default: Any = dataclasses.MISSING,
    rule: Rule | None = None,
    doc: str = "",
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field carrying its :class:`Rule` and a one-line description."""
    metadata = {_METADATA_KEY: rule, _DOC_KEY: doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def rules_of(cls_or_obj: Any) -> dict[str, Rule]:
    """The rules of a dataclass's fields that have one, by field name, in field order."""
    return {
        f.name: f.metadata[_METADATA_KEY]
        for f in dataclasses.fields(cls_or_obj)
        if f.metadata.get(_METADATA_KEY) is not None
    }


def describe(cls_or_obj: Any) -> dict[str, tuple[Rule, str]]:
    """(rule, description) of each field that has a rule, for help texts and example files."""
    return {
        f.name: (f.metadata[_METADATA_KEY], f.metadata.get(_DOC_KEY, ""))
        for f in dataclasses.fields(cls_or_obj)
        if f.metadata.get(_METADATA_KEY) is not None
    }


def validate(obj: Any, *, where: str | None = None, error: type[ConfigError] = ConfigError) -> None:
    """Check every ruled field of a (frozen) dataclass instance and store its normalised value.

    Call it from ``__post_init__``. ``where`` prefixes the field names in errors (default: the
    class name, e.g. ``WorkerSettings.test_every``).
    """
    prefix = type(obj).__name__ if where is None else where
    for name, rule in rules_of(obj).items():
        value = rule.check(getattr(obj, name), f"{prefix}.{name}", error)
        object.__setattr__(obj, name, value)


def check_table(
    data: Any,
    rules: Mapping[str, Rule],
    where: str,
    error: type[ConfigError] = ConfigError,
) -> dict[str, Any]:
    """Check a table of values against ``rules``: unknown keys are errors listing the known
    ones; returns the normalised values (only the keys present)."""
    if not isinstance(data, Mapping):
        raise error(f"{where}: got {_shown(data)}, expected a table.")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in rules:
            known = ", ".join(sorted(rules)) or "(none)"
            raise error(f"{where}: unknown key {key!r}; known keys: {known}.")
        out[key] = rules[key].check(value, f"{where}.{key}", error)
    return out


# -- files and overrides ---------------------------------------------------------------------


def read_toml(path: Path | str, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is an error naming it."""
    p = Path(path).expanduser()
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"config file {p} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read config file {p}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"config file {p} is not valid TOML: {exc}") from exc


def parse_value(text: str, where: str, error: type[ConfigError] = ConfigError) -> Any:
    """A value in TOML syntax (``1e-4``, ``256``, ``true``, ``[64, 64]``, ``"text"``,
    ``{pi = [64]}``); a bare word such as ``auto`` or ``cnn-small`` is a string."""
    t = text.strip()
    try:
        return tomllib.loads(f"v = {t}")["v"]
    except tomllib.TOMLDecodeError:
        if _BARE_WORD.fullmatch(t):
            return t
        raise error(
            f'{where}: {text!r} is not a TOML value (e.g. 1e-4, 256, true, "text", [64, 64]); '
            "quote strings that contain spaces or symbols."
        ) from None


def parse_assignment(
    item: str, where: str, error: type[ConfigError] = ConfigError
) -> tuple[tuple[str, ...], Any]:
    """``"a.b.c=value"`` → ``(("a", "b", "c"), value)``, the value read by :func:`parse_value`."""
    key, sep, text = item.partition("=")
    key = key.strip()
    parts = tuple(key.split("."))
    if not sep or not key or not all(parts):
        raise error(
            f"{where}: {item!r} is not 'dotted.key=value', e.g. "
            "'algo.hyperparameters.learning_rate=1e-4'."
        )
    return parts, parse_value(text, f"{where} {key}", error)


def set_dotted(
    data: dict[str, Any],
    keys: Sequence[str],
    value: Any,
    where: str,
    error: type[ConfigError] = ConfigError,
) -> None:
    """Set ``data[k0][k1]...[kn] = value`` where every table on the way must already exist."""
    table = data
    for i, part in enumerate(keys[:-1]):
        sub = table.get(part)
        if not isinstance(sub, dict):
            path = ".".join(keys[: i + 1])
            raise error(f"{where}: {path!r} is not a table here; tables: {_tables(data)}.")
        table = sub
    table[keys[-1]] = value


def _tables(data: Mapping[str, Any], prefix: str = "") -> str:
    names: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            names.append(prefix + key)
            nested = _tables(value, f"{prefix}{key}.")
            names.extend(n for n in nested.split(", ") if n)
    return ", ".join(names)


def env_layer(
    env: Mapping[str, str],
    prefix: str,
    sections: Mapping[str, Mapping[str, Rule]],
    *,
    reserved: Sequence[str] = (),
    error: type[ConfigError] = ConfigError,
) -> dict[str, dict[str, Any]]:
    """Values from ``PREFIX_SECTION_KEY`` variables of ``env``, by section and key, checked.

    Names in ``reserved`` (e.g. a password variable) are skipped; any other variable that starts
    with ``prefix`` but names no known setting is an error listing the known names.
    """
    out: dict[str, dict[str, Any]] = {section: {} for section in sections}
    known = {
        f"{prefix}{section}_{key}".upper(): (section, key)
        for section, rules in sections.items()
        for key in rules
    }
    for name in sorted(env):
        if not name.startswith(prefix) or name in reserved:
            continue
        if name not in known:
            names = ", ".join([*reserved, *known])
            raise error(
                f"unknown environment variable {name}; known: {names}. Unset it or fix its name."
            )
        section, key = known[name]
        out[section][key] = sections[section][key].parse(
            env[name], f"{section}.{key} (from ${name})", error
        )
    return out
