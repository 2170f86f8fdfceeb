"""Evaluation suites: one policy against a fixed, documented set of cases, each scored against
the scripted expert on the same case.

A **suite** is a TOML file: the shipped ones live in ``tm_algos/suites/`` (:func:`list_suites`:
``smoke``, ``generalisation``, ``visuals``, and the pixel generalist's exams ``unseen``,
``unseen-b`` ... ``unseen-f``), and any path to a file of the same format works too. A
**case** is one track × one car (physics) × one look (visuals), driven on the synchronous
simulator (``TrackMania-Sim-v0``) for ``episodes`` episodes.

File format (every key but ``cases`` optional; unknown keys are errors)::

    description = "what the suite measures"
    episodes = 3                      # episodes per case, each reset with its own seed

    [[cases]]
    name = "grip-80"                  # unique; [A-Za-z0-9_.:+-]
    track = "default"                 # built-in name, gen:SEED or a .json path (default: default)
    description = "grip -20 %"
    car_scale = { grip = 0.8 }        # multipliers of tm_gym.CarParams' defaults
    car_params = { yaw_lag = 0.12 }   # or absolute CarParams values (applied after car_scale)
    visuals = { brightness = 0.6 }    # the env's visuals= argument (or "random"): pixels only
    env_kwargs = { ep_max_length = 2000 }  # any other env argument of the case

How a case is scored (:func:`run_suite`):

* The **policy** drives ``episodes`` episodes through :func:`tm_algos.evaluation.evaluate` (its
  own env settings, then the caller's ``env_kwargs``, then the case's arguments), with
  ``start_jitter`` (default 1.0, the env's documented start perturbation; 0 = exact start) and
  episode ``i`` reset with ``seed + i``.
* The **expert reference** is one episode of the simulator's scripted expert
  (``env.unwrapped.expert_action()``) on the same track, car and episode length, from the exact
  start (``start_jitter=0``); visuals do not matter to it. Cases with the same physics share one
  expert run. The expert's lap time is the reference of the case's **lap ratio** (the policy's
  mean lap time / the expert's, < 1 is faster than the expert). When the expert does not finish,
  the case says so and has no ratio.
* **Visuals cases** (those with ``visuals``) only make sense for policies that see pixels
  (``obs_type="images"``): the simulator's LIDAR is exact whatever the colours, so for LIDAR
  policies they are reported as skipped, with the reason.

Procedural tracks ``gen:1001`` … ``gen:1010`` are the held-out tracks of the ``generalisation``
suite: **training presets must not use seeds 1001–1010** (nor 1001–1099, kept for future
held-out tracks), or the suite measures memory instead of generalisation.

>>> from tm_algos.policy import load_policy
>>> from tm_algos.suite import load_suite, run_suite
>>> policy = load_policy("runs/lidar-sac/best")  # doctest: +SKIP
>>> report = run_suite(policy, load_suite("generalisation"))  # doctest: +SKIP
>>> report.summary()["lap_ratio_mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tm_algos.errors import InvalidValueError, TMAlgosError
from tm_algos.evaluation import EvalReport, PolicyLike, _jsonable, evaluate, policy_env_settings
from tm_gym import CarParams
from tm_gym.core.config import ConfigError, Rule, check_table
from tm_gym.core.visuals import VisualsSpec

__all__ = [
    "HELD_OUT_TRACK_SEEDS",
    "SIM_ENV_ID",
    "CaseResult",
    "ExpertReference",
    "Suite",
    "SuiteCase",
    "SuiteError",
    "SuiteReport",
    "expert_reference",
    "list_suites",
    "load_suite",
    "policy_obs_type",
    "run_suite",
    "save_suite_plot",
    "suite_from_dict",
]

logger = logging.getLogger(__name__)

SIM_ENV_ID = "TrackMania-Sim-v0"
"""Suites run on the synchronous simulator: it is fast, and the expert needs its state."""

HELD_OUT_TRACK_SEEDS = range(1001, 1100)
"""Procedural track seeds reserved for evaluation (``gen:1001`` …): never train on them."""

_CAR_FIELDS = tuple(f.name for f in dataclasses.fields(CarParams) if f.type in ("float", float))
_NAME = r"[A-Za-z0-9_.:+-]+"
_IMAGE_OBS = "images"
# env arguments that only shape what the policy sees: the expert ignores them
_OBSERVATION_ONLY = (
    "obs_type",
    "img_size",
    "img_hist_len",
    "grayscale",
    "act_buf_len",
    "render_mode",
    "visuals",
    "start_jitter",
    "start_obs_capture",
)


class SuiteError(TMAlgosError, ConfigError):
    """A suite file or name is malformed; the message names the file, the key and the fix."""


# -- the suite data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteCase:
    """One case of a suite: ``track`` × car physics (``car_scale`` multipliers of the
    :class:`~tm_gym.CarParams` defaults, then ``car_params`` absolute values) ×
    ``visuals`` (the env's ``visuals=`` argument; ``None`` = the default look), plus any other
    ``env_kwargs``. See the module docstring for the file format."""

    name: str
    track: str = "default"
    description: str = ""
    car_scale: Mapping[str, float] = field(default_factory=dict)
    car_params: Mapping[str, float] = field(default_factory=dict)
    visuals: Mapping[str, Any] | str | None = None
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pixels_only(self) -> bool:
        """Whether the case changes only what a camera sees (it has ``visuals``)."""
        return self.visuals is not None

    def car(self) -> CarParams | None:
        """The case's :class:`CarParams`, or None when it keeps the default car."""
        if not self.car_scale and not self.car_params:
            return None
        default = CarParams()
        values = {k: getattr(default, k) * v for k, v in self.car_scale.items()}
        values.update(self.car_params)
        try:
            return dataclasses.replace(default, **values)
        except ValueError as e:
            raise SuiteError(f"case {self.name!r}: {e}; fix car_scale / car_params") from e

    def car_changes(self) -> dict[str, float]:
        """The CarParams fields this case changes, with their values."""
        car = self.car()
        if car is None:
            return {}
        default = CarParams()
        return {k: getattr(car, k) for k in _CAR_FIELDS if getattr(car, k) != getattr(default, k)}

    def case_kwargs(self) -> dict[str, Any]:
        """The environment arguments this case sets (``track``, ``car_params``, ``visuals``
        and its ``env_kwargs``)."""
        kwargs: dict[str, Any] = {**self.env_kwargs, "track": self.track}
        car = self.car()
        if car is not None:
            kwargs["car_params"] = car
        if self.visuals is not None:
            kwargs["visuals"] = (
                self.visuals if isinstance(self.visuals, str) else dict(self.visuals)
            )
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """The case as plain JSON data (``car`` lists the CarParams values it changes)."""
        return {
            "name": self.name,
            "track": self.track,
            "description": self.description,
            "car": self.car_changes(),
            "visuals": _jsonable(self.visuals),
            "env_kwargs": _jsonable(dict(self.env_kwargs)),
        }


@dataclass(frozen=True)
class Suite:
    """A named set of cases and the number of episodes each case runs by default."""

    name: str
    cases: tuple[SuiteCase, ...]
    episodes: int = 3
    description: str = ""
    source: str = ""
    """Where the suite was read from (for messages)."""


_SCALE = Rule("float", low=0, hint="a multiplier of the default, e.g. 0.8 for -20 %")
_ABSOLUTE = Rule("float", low=0, hint="the CarParams value itself")
_CASE_RULES: dict[str, Rule] = {
    "name": Rule("str", pattern=_NAME, hint=f"a unique name made of {_NAME}"),
    "track": Rule("str", pattern=r".+", hint="a built-in track, gen:SEED or a .json path"),
    "description": Rule("str"),
    "car_scale": Rule("table"),
    "car_params": Rule("table"),
    "visuals": Rule("table", hint="see the env's visuals argument") | Rule("str"),
    "env_kwargs": Rule("table"),
}
_SUITE_RULES: dict[str, Rule] = {
    "name": Rule("str", pattern=_NAME),
    "description": Rule("str"),
    "episodes": Rule("int", low=1, high=1000),
    "cases": Rule("any"),
}
_RESERVED_ENV_KWARGS = ("track", "car_params", "visuals")


def _case_from_dict(data: Any, where: str) -> SuiteCase:
    values = check_table(data, _CASE_RULES, where, SuiteError)
    if "name" not in values:
        raise SuiteError(f'{where}: missing key "name"; give each case a unique name = "..."')
    where = f"{where} ({values['name']!r})"
    car_rules = {
        "car_scale": dict.fromkeys(_CAR_FIELDS, _SCALE),
        "car_params": dict.fromkeys(_CAR_FIELDS, _ABSOLUTE),
    }
    for key, rules in car_rules.items():
        if key in values:
            values[key] = check_table(values[key], rules, f"{where}.{key}", SuiteError)
    if "visuals" in values:
        try:  # the env's own rules: the file fails now rather than halfway through the suite
            VisualsSpec.parse(values["visuals"], f"{where}.visuals")
        except ConfigError as e:
            raise SuiteError(f"{e} Fix the case's visuals (see TrackMania-Sim-v0's docs).") from e
    bad = [k for k in values.get("env_kwargs", {}) if k in _RESERVED_ENV_KWARGS]
    if bad:
        raise SuiteError(
            f"{where}.env_kwargs: {bad[0]!r} has its own case key; write it as {bad[0]} = ... "
            "in the case itself"
        )
    case = SuiteCase(**values)
    case.car()  # a CarParams the simulator refuses is a file error, reported now
    return case


def suite_from_dict(data: Mapping[str, Any], name: str, source: str) -> Suite:
    """Build a :class:`Suite` from parsed TOML ``data``, read from ``source`` (for errors).

    Raises:
        SuiteError: an unknown or malformed key, no cases, or two cases with the same name; the
            message names ``source``, the key and what to write instead.
    """
    top = check_table(data, _SUITE_RULES, source, SuiteError)
    raw = top.get("cases")
    if not isinstance(raw, list) or not raw:
        raise SuiteError(
            f"{source}: no cases; add at least one [[cases]] table with name = ... and track = ..."
        )
    cases = tuple(_case_from_dict(c, f"{source}: cases[{i}]") for i, c in enumerate(raw))
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            raise SuiteError(f"{source}: two cases are named {case.name!r}; names must be unique")
        seen.add(case.name)
    return Suite(
        name=str(top.get("name", name)),
        cases=cases,
        episodes=int(top.get("episodes", 3)),
        description=str(top.get("description", "")),
        source=source,
    )


def _suite_dir() -> Any:
    return resources.files("tm_algos") / "suites"


def list_suites() -> list[str]:
    """Names of the suites shipped with tm-algos, sorted."""
    return sorted(
        p.name[: -len(".toml")] for p in _suite_dir().iterdir() if p.name.endswith(".toml")
    )


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (see :func:`list_suites`), or a suite TOML file by path.

    Raises:
        SuiteError: neither a shipped suite nor a file, invalid TOML, or a malformed suite.
    """
    if isinstance(name_or_path, str) and name_or_path in list_suites():
        name = name_or_path
        source = f"suite {name!r} (tm_algos/suites/{name}.toml)"
        text = (_suite_dir() / f"{name}.toml").read_text(encoding="utf-8")
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise SuiteError(
                f"suite {str(name_or_path)!r} is neither a shipped suite ({', '.join(list_suites())})"
                " nor an existing .toml file; check the name or the path"
            )
        name, source = path.stem, str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SuiteError(f"cannot read suite file {source}: {e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{source}: invalid TOML: {e}; fix the syntax at that line") from e
    return suite_from_dict(data, name, source)


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertReference:
    """The scripted expert's episode on a case's physics: whether it ``finished``, its
    ``lap_time`` (s, None if not), ``progress``, ``wall_contacts`` and ``steps``."""

    finished: bool
    lap_time: float | None
    progress: float
    wall_contacts: int
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class CaseResult:
    """How the policy did on ``case``: its evaluation ``report`` and the ``expert`` reference,
    or, when the case does not apply to the policy, ``skipped`` (the reason) and no report."""

    case: SuiteCase
    report: EvalReport | None
    expert: ExpertReference | None
    skipped: str | None = None

    @property
    def status(self) -> str:
        """``"skipped"``, ``"expert-dnf"`` (the expert did not finish: no ratio) or ``"ok"``."""
        if self.report is None:
            return "skipped"
        if self.expert is None or self.expert.lap_time is None:
            return "expert-dnf"
        return "ok"

    @property
    def lap_ratio(self) -> float | None:
        """The policy's mean lap time / the expert's; None when either did not finish."""
        if self.report is None or self.expert is None or self.expert.lap_time is None:
            return None
        mean = self.report.lap_time_mean
        return None if mean is None else mean / self.expert.lap_time

    @property
    def wall_contacts_mean(self) -> float | None:
        """Mean wall contacts per episode (physics substeps touching a wall)."""
        if self.report is None or not self.report.episodes:
            return None
        return float(np.mean([e.wall_contacts for e in self.report.episodes]))

    def to_dict(self) -> dict[str, Any]:
        """The case, its status and figures, the expert reference and the episodes, as JSON."""
        r = self.report
        return {
            **self.case.to_dict(),
            "status": self.status,
            "skip_reason": self.skipped,
            "n_episodes": 0 if r is None else r.n_episodes,
            "finish_rate": None if r is None else r.finish_rate,
            "lap_time_mean": None if r is None else r.lap_time_mean,
            "lap_time_std": None if r is None else r.lap_time_std,
            "lap_time_best": None if r is None else r.lap_time_best,
            "expert_lap_time": None if self.expert is None else self.expert.lap_time,
            "lap_ratio": self.lap_ratio,
            "wall_contacts_mean": self.wall_contacts_mean,
            "crashes": None if r is None else r.crashes,
            "mean_progress": None if r is None else r.mean_progress,
            "expert": None if self.expert is None else self.expert.to_dict(),
            "episodes": [] if r is None else [e.to_dict() for e in r.episodes],
        }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass(frozen=True, eq=False)
class SuiteReport:
    """Results of :func:`run_suite`: one :class:`CaseResult` per case, in the suite's order."""

    suite: Suite
    cases: tuple[CaseResult, ...]
    obs_type: str
    episodes: int
    seed: int
    start_jitter: float
    deterministic: bool
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """The arguments every case started from (the policy's settings and the caller's)."""

    def summary(self) -> dict[str, Any]:
        """Figures over the cases that ran: how many ran / were skipped / had no expert lap,
        the mean finish rate, the mean lap ratio (over the ``lap_ratio_cases`` that have one)
        and the mean wall contacts per episode."""
        ran = [c for c in self.cases if c.report is not None]
        ratios = [r for c in ran if (r := c.lap_ratio) is not None]
        walls = [w for c in ran if (w := c.wall_contacts_mean) is not None]
        return {
            "cases": len(self.cases),
            "cases_run": len(ran),
            "cases_skipped": len(self.cases) - len(ran),
            "cases_expert_dnf": sum(c.status == "expert-dnf" for c in ran),
            "cases_finished": sum(c.report is not None and c.report.finish_rate > 0 for c in ran),
            "finish_rate": _mean([c.report.finish_rate for c in ran if c.report is not None]),
            "lap_ratio_mean": _mean(ratios),
            "lap_ratio_cases": len(ratios),
            "wall_contacts_mean": _mean(walls),
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole report as plain JSON data."""
        return {
            "suite": self.suite.name,
            "suite_source": self.suite.source,
            "description": self.suite.description,
            "env_id": SIM_ENV_ID,
            "env_kwargs": _jsonable(dict(self.env_kwargs)),
            "obs_type": self.obs_type,
            "episodes": self.episodes,
            "seed": self.seed,
            "start_jitter": self.start_jitter,
            "deterministic": self.deterministic,
            "cases": [c.to_dict() for c in self.cases],
            "summary": self.summary(),
        }


# -- running -------------------------------------------------------------------------------------


class _Expert:
    """The simulator's scripted expert as a callable ``obs -> action`` (it reads the env)."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def __call__(self, obs: Any) -> NDArray[np.float32]:
        action: NDArray[np.float32] = self.env.unwrapped.expert_action()
        return action


def _physics_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of ``kwargs`` that matter to the expert, with the cheapest observations."""
    out = {k: v for k, v in kwargs.items() if k not in _OBSERVATION_ONLY}
    out.update(obs_type="lidar", start_jitter=0.0, render_mode=None)
    return out


def _physics_key(kwargs: Mapping[str, Any]) -> str:
    plain = {k: dataclasses.asdict(v) if isinstance(v, CarParams) else v for k, v in kwargs.items()}
    return json.dumps(_jsonable(plain), sort_keys=True)


def expert_reference(kwargs: Mapping[str, Any], seed: int = 0) -> ExpertReference:
    """One episode of the scripted expert on :data:`SIM_ENV_ID` made with ``kwargs`` (the
    observation settings are replaced by the cheapest ones, and the start is exact)."""
    import gymnasium as gym

    import tm_gym  # noqa: F401  (registers the environments)

    env = gym.make(SIM_ENV_ID, **_physics_kwargs(kwargs))
    try:
        report = evaluate(_Expert(env), env=env, n_episodes=1, seed=seed, keep_best=False)
    finally:
        env.close()
    (e,) = report.episodes
    return ExpertReference(e.finished, e.lap_time, e.progress, e.wall_contacts, e.steps)


def policy_obs_type(policy: PolicyLike, env_kwargs: Mapping[str, Any] | None = None) -> str:
    """The observation type ``policy`` is evaluated with: ``env_kwargs["obs_type"]``, else the
    one it was trained with, else the environment's default (``"images"``)."""
    merged = {**policy_env_settings(policy), **dict(env_kwargs or {})}
    return str(merged.get("obs_type", _IMAGE_OBS))


def run_suite(
    policy: PolicyLike,
    suite: Suite,
    *,
    episodes: int | None = None,
    seed: int = 0,
    start_jitter: float = 1.0,
    deterministic: bool = True,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[CaseResult], None] | None = None,
    expert_cache: MutableMapping[str, ExpertReference] | None = None,
) -> SuiteReport:
    """Drive ``policy`` through every case of ``suite`` and score it against the expert.

    Args:
        policy: a :class:`~tm_algos.policy.LoadedPolicy`, an SB3 model or a callable.
        suite: from :func:`load_suite`.
        episodes: episodes per case (default: the suite's); episode ``i`` of every case is reset
            with ``seed + i``.
        start_jitter: the env's start perturbation (1.0 = its documented default, 0 = exact).
        deterministic: act with the policy's deterministic action.
        env_kwargs: arguments for every case, under the case's own (``track``, ``car_params``,
            ``visuals`` and its ``env_kwargs``) and over the policy's env settings.
        progress: called with each :class:`CaseResult` as soon as its case is done.
        expert_cache: expert references by physics, read and filled in (pass the same dict to
            several calls to drive the expert once per physics).

    Raises:
        ValueError: ``episodes`` < 1, ``start_jitter`` < 0, or a case the env refuses (the
            message names the case).
    """
    n: object = suite.episodes if episodes is None else episodes  # callers may pass anything
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidValueError(f"episodes={episodes!r}: expected a whole number >= 1")
    jitter: object = start_jitter
    if (
        isinstance(jitter, bool)
        or not isinstance(jitter, (int, float))
        or not math.isfinite(jitter)
        or jitter < 0
    ):
        raise InvalidValueError(
            f"start_jitter={start_jitter!r}: expected a number >= 0 (1.0 = the env's default "
            "perturbation, 0 = exact start)"
        )
    base = {**policy_env_settings(policy), **dict(env_kwargs or {})}
    base["start_jitter"] = float(start_jitter)
    obs_type = policy_obs_type(policy, env_kwargs)
    cache: MutableMapping[str, ExpertReference] = {} if expert_cache is None else expert_cache
    results: list[CaseResult] = []
    for case in suite.cases:
        result = _run_case(policy, case, base, obs_type, n, seed, deterministic, cache)
        results.append(result)
        logger.debug("case %s: %s", case.name, result.status)
        if progress is not None:
            progress(result)
    return SuiteReport(
        suite=suite,
        cases=tuple(results),
        obs_type=obs_type,
        episodes=n,
        seed=seed,
        start_jitter=float(start_jitter),
        deterministic=deterministic,
        env_kwargs=base,
    )


def _run_case(
    policy: PolicyLike,
    case: SuiteCase,
    base: Mapping[str, Any],
    obs_type: str,
    episodes: int,
    seed: int,
    deterministic: bool,
    cache: MutableMapping[str, ExpertReference],
) -> CaseResult:
    if case.pixels_only and obs_type != _IMAGE_OBS:
        reason = (
            f"visuals change only camera images; this policy observes {obs_type!r}, "
            "which the simulator computes exactly whatever the look"
        )
        return CaseResult(case=case, report=None, expert=None, skipped=reason)
    kwargs = {**base, **case.case_kwargs()}
    key = _physics_key(_physics_kwargs(kwargs))
    try:
        if key not in cache:
            cache[key] = expert_reference(kwargs, seed)
        report = evaluate(
            policy,
            env_id=SIM_ENV_ID,
            env_kwargs=kwargs,
            n_episodes=episodes,
            seed=seed,
            deterministic=deterministic,
            keep_best=False,
        )
    except (ValueError, TypeError) as e:
        raise InvalidValueError(f"suite case {case.name!r} ({case.track}): {e}") from e
    return CaseResult(case=case, report=report, expert=cache[key])


# -- the picture ---------------------------------------------------------------------------------


def _case_note(case: Mapping[str, Any]) -> str:
    if case["status"] == "skipped":
        return "skipped (pixels only)"
    if case["status"] == "expert-dnf":
        return "expert did not finish: no ratio"
    if case["lap_ratio"] is None:
        return "no finish"
    return f"{case['lap_ratio']:.2f}×"


def save_suite_plot(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Draw a suite report (``SuiteReport.to_dict()``) as a PNG: per case, the finish rate and
    the lap ratio (policy / expert) as bars from the expert's line (dashed), skipped cases and
    cases without a ratio labelled as such. Returns the path written.

    Raises:
        tm_gym.error.DependencyNotInstalled: matplotlib is missing.
    """
    from tm_gym.error import DependencyNotInstalled

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency of tm-gym[viz]
        raise DependencyNotInstalled(
            "matplotlib is not installed, run pip install 'tm-gym[viz]'"
        ) from e
    cases = list(payload["cases"])
    names = [c["name"] for c in cases]
    ys = np.arange(len(cases))
    figure = Figure(figsize=(11, 1.6 + 0.32 * len(cases)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, sharey=True, width_ratios=(1, 1.4))
    finish = [c["finish_rate"] or 0.0 for c in cases]
    colours = ["#bbbbbb" if c["status"] == "skipped" else "#3a9a4a" for c in cases]
    left.barh(ys, finish, color=colours)
    left.set_xlim(0, 1.0)
    left.set_xlabel("finish rate")
    left.set_yticks(ys, names, fontsize=8)
    left.invert_yaxis()
    for y, c, f in zip(ys, cases, finish, strict=True):
        label = "skipped" if c["status"] == "skipped" else f"{f:.0%}"
        left.text(min(f, 0.82) + 0.02, y, label, va="center", fontsize=7)
    ratios = [c["lap_ratio"] for c in cases]
    known = [r for r in ratios if r is not None]
    low = min([*known, 0.9]) - 0.05
    high = max([*known, 1.2]) + 0.12
    deltas = [(r or 1.0) - 1.0 for r in ratios]  # bars grow from the expert's line
    right.barh(
        ys,
        deltas,
        left=1.0,
        color=["#3a9a4a" if d < 0 else "#3a6ea5" for d in deltas],
    )
    right.axvline(1.0, color="black", linestyle="--", linewidth=1)
    right.set_xlim(low, high)
    right.set_xlabel("lap time / expert lap time (dashed: the expert; left of it is faster)")
    for y, c, r in zip(ys, cases, ratios, strict=True):
        x = max(r or 1.0, 1.0) + (high - low) * 0.01
        right.text(x, y, _case_note(c), va="center", fontsize=7)
    for axes in (left, right):
        axes.grid(axis="x", alpha=0.3)
    s = payload["summary"]
    ratio = "n/a" if s["lap_ratio_mean"] is None else f"{s['lap_ratio_mean']:.2f}×"
    finish_rate = "n/a" if s["finish_rate"] is None else f"{s['finish_rate']:.0%}"
    figure.suptitle(
        f"suite {payload['suite']}: {payload['episodes']} episode(s) per case, "
        f"start jitter {payload['start_jitter']:g} — finish rate {finish_rate}, "
        f"lap ratio {ratio} over {s['lap_ratio_cases']} case(s), "
        f"{s['cases_skipped']} skipped",
        fontsize=10,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out
