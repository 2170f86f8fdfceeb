"""``tm-eval``: evaluate a trained policy and write its best lap as a video and a map, or run an
evaluation suite.

``tm-eval POLICY`` loads a policy directory (``policy.safetensors`` + ``policy.json``, written by
:func:`tm_algos.policy.export_policy`) or a training run directory, where it takes what the run
publishes as its result: ``best/`` (the best evaluated policy) when it exists, else ``policy/``
(the latest), and says which. It drives ``--episodes`` episodes on the simulator with the env
settings the policy was trained with (``--env-kwarg KEY=VALUE`` overrides them), each from a
perturbed start (``--start-jitter``, default 1.0 on ``TrackMania-Sim-v0``; 0 = exact start), and
writes into a new output folder:

- ``best_lap.mp4`` (``.gif`` when imageio-ffmpeg is missing): the driver's view of the best
  episode, the fastest finish or else the one that got furthest (skipped with ``--no-video``);
- ``trajectory.png``: the track from above, the best episode's line coloured by speed;
- ``eval.json``: the report (also printed on stdout, alone, with ``--json``).

``tm-eval POLICY --suite NAME`` (a shipped suite: ``smoke``, ``generalisation``, ``visuals``; or a
suite TOML file, see :mod:`tm_algos.suite`) drives every case of the suite instead and writes
``suite.json`` (the per-case figures and expert references) and ``suite.png`` (finish rate and
lap ratio per case); the table has one row per case and a summary row.

Output folder: ``--out DIR``, else ``POLICY/eval`` (``POLICY/suite-NAME`` for a suite), else,
when that exists, the first free ``-2``, ``-3``, ... beside it: an earlier evaluation, such as the
``eval/`` that ``tm-train --evaluate`` writes, is never overwritten. ``--overwrite`` writes into
the folder itself (and is needed for an ``--out`` that already holds an evaluation). The folder
is reported on stderr and in the table.

The policy runs on ``--threads`` PyTorch CPU threads (default 1: it sees one observation at a
time, where more threads only add overhead). A table is printed on stdout and a progress bar on
stderr. Exit codes: 0 success (whether or not
the policy finished), 2 bad arguments or files, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tm_algos.evaluation import EpisodeResult, EvalReport
from tm_algos.suite import SIM_ENV_ID
from tm_gym.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    CLIError,
    parse_args,
    positive_int,
    run_cli,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "OUTPUT_FILES",
    "build_parser",
    "find_policy",
    "main",
    "output_dir",
    "parse_env_kwargs",
    "resolve_policy_dir",
    "save_best_episode",
    "suite_rows",
]

logger = logging.getLogger(__name__)


def _seed(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _jitter(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0.0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(
            f"expected a number >= 0 (1.0 = the env's default start perturbation, 0 = exact "
            f"start), got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tm-eval",
        description=(
            "Evaluate a policy: drive N episodes, print lap times, finish rate and crashes, and "
            "write best_lap.mp4, trajectory.png and eval.json into a new output folder; or, "
            "with --suite, drive a suite of cases and write suite.json and suite.png."
        ),
    )
    parser.add_argument(
        "policy",
        type=Path,
        metavar="POLICY",
        help="policy directory (policy.safetensors + policy.json) or a training run directory: "
        "its best/ when it exists, else its policy/",
    )
    parser.add_argument(
        "--suite",
        default=None,
        metavar="NAME",
        help="run an evaluation suite: smoke, generalisation, visuals, unseen, unseen-b, "
        "unseen-c, unseen-d, or a suite .toml file",
    )
    parser.add_argument(
        "--env-id", default="TrackMania-Sim-v0", help="Gymnasium id (default: %(default)s)"
    )
    parser.add_argument(
        "--env-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment argument, repeatable; VALUE is read as JSON when it can be (200, "
        "true, null) and as text otherwise (track=gen:7). Overrides the policy's env settings",
    )
    parser.add_argument(
        "--episodes",
        type=positive_int,
        default=None,
        metavar="N",
        help="episodes (per case with --suite; default: 5, or the suite's)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="S",
        help="episode i is reset with seed S+i (default: %(default)s)",
    )
    parser.add_argument(
        "--start-jitter",
        type=_jitter,
        default=None,
        metavar="X",
        help="start perturbation of each episode: 1.0 = the env's documented default, 0 = the "
        f"exact start (default: 1.0 on {SIM_ENV_ID}, not passed to other envs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: POLICY/eval or POLICY/suite-NAME, or the first free "
        "-2, -3, ... beside it)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into the output folder even if it holds an earlier evaluation",
    )
    parser.add_argument("--no-video", action="store_true", help="do not render best_lap.mp4")
    parser.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of the deterministic one"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON report on stdout")
    parser.add_argument(
        "--device", default="cpu", help="PyTorch device for the policy (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="PyTorch CPU threads (default: %(default)s: the policy sees one observation at a "
        "time, and more threads only add overhead)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    return parser


def find_policy(path: Path) -> tuple[Path, str]:
    """The policy directory for ``path`` and what it is, in words.

    ``path`` itself when it holds a policy; in a training run directory, ``best/`` (the best
    evaluated policy, what the run publishes as its result) when it exists, else ``policy/``
    (the latest one).

    Raises:
        CLIError: none of them holds a policy.
    """
    from tm_algos.policy.format import JSON_NAME, WEIGHTS_NAME

    candidates = (
        (path, "the policy directory given"),
        (path / "best", "the run's best evaluated policy (best/)"),
        (path / "policy", "the run's latest policy (policy/; the run has no best/ yet)"),
    )
    for candidate, what in candidates:
        if (candidate / JSON_NAME).is_file():
            return candidate, what
    what = "does not exist" if not path.exists() else f"holds no {JSON_NAME} (nor best/, policy/)"
    raise CLIError(
        f"POLICY {str(path)!r} {what}: expected a directory with {JSON_NAME} and {WEIGHTS_NAME} "
        "(written by tm_algos.policy.export_policy) or a training run directory containing "
        "best/ or policy/; check the path"
    )


def resolve_policy_dir(path: Path) -> Path:
    """The policy directory for ``path`` (see :func:`find_policy`)."""
    return find_policy(path)[0]


OUTPUT_FILES = (
    "best_lap.mp4",
    "best_lap.gif",
    "trajectory.png",
    "eval.json",
    "suite.json",
    "suite.png",
)
"""What tm-eval writes into its output folder (``--overwrite`` replaces exactly these)."""


def output_dir(base: Path, out: Path | None, *, overwrite: bool) -> Path:
    """The folder to write into: ``out`` when given, else ``base`` or the first free ``base-2``,
    ``base-3``, ...; with ``overwrite``, ``base`` (or ``out``) even if it exists.

    Raises:
        CLIError: ``out`` already holds an evaluation's files and ``overwrite`` is not set.
    """
    if out is not None:
        held = [name for name in OUTPUT_FILES if (out / name).exists()]
        if held and not overwrite:
            raise CLIError(
                f"--out {str(out)!r} already holds an evaluation ({', '.join(held)}); pass "
                "--overwrite to replace it, or choose another --out"
            )
        return out
    if overwrite or not base.exists():
        return base
    n = 2
    while (candidate := base.with_name(f"{base.name}-{n}")).exists():
        n += 1
    return candidate


def parse_env_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` as a dict; each VALUE read as JSON when it can be, else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CLIError(
                f"--env-kwarg {item!r}: expected KEY=VALUE with KEY an argument name, "
                "e.g. --env-kwarg track=gen:7 --env-kwarg ep_max_length=500"
            )
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _map_title(track: Any, episode: EpisodeResult) -> str:
    from tm_gym.viz import format_race_time

    name = getattr(track, "name", "track")
    if episode.lap_time is not None:
        return f"{name}  —  {format_race_time(episode.lap_time)} (episode {episode.index})"
    return f"{name}  —  did not finish, {episode.progress:.0%} (episode {episode.index})"


def save_best_episode(
    report: EvalReport, out_dir: str | Path, *, video: bool = True, fps: float = 20, scale: int = 3
) -> dict[str, Path]:
    """Write the best episode's ``best_lap.mp4`` (``.gif`` when imageio-ffmpeg is missing) and
    ``trajectory.png`` (the driven line coloured by speed) into ``out_dir`` (created).

    Returns the files written by kind (``"video"``, ``"map"``); a file is left out, with a
    warning logged, when the report has nothing to draw it from (no trace, no frames, no
    track) or its dependency is missing.
    """
    from tm_gym import viz
    from tm_gym.error import DependencyNotInstalled

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    trace = report.best
    if trace is None:
        logger.warning("the report keeps no best episode (keep_best=False): nothing to draw")
        return written
    frames = trace.frames
    if video and (frames is None or len(frames) == 0):
        logger.warning("the best episode has no frames (render_mode is not 'rgb_array')")
    elif video and frames is not None:
        for suffix in (".mp4", ".gif"):  # the GIF needs pillow only, not imageio-ffmpeg
            try:
                written["video"] = viz.save_video(
                    frames, out / f"best_lap{suffix}", fps=fps, scale=scale
                )
                break
            except DependencyNotInstalled as e:
                logger.warning("best_lap%s not written: %s", suffix, e)
    if trace.track is None or len(trace.positions) == 0:
        logger.warning("the environment gives no track or positions: trajectory.png not drawn")
        return written
    try:
        written["map"] = viz.save_trajectory_map(
            trace.track,
            trace.positions,
            trace.speeds_kmh,
            out / "trajectory.png",
            title=_map_title(trace.track, report.episodes[trace.index]),
        )
    except DependencyNotInstalled as e:
        logger.warning("trajectory.png not drawn: %s", e)
    return written


def _load(policy_dir: Path, device: str, threads: int) -> Any:
    import torch

    from tm_algos.policy.load import load_policy

    torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {device!r}: PyTorch sees no CUDA device here; use --device cpu")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise CLIError(f"--device {device!r} is not a PyTorch device ({e}); use e.g. cpu") from e
    return load_policy(policy_dir, device=device)


def _lap_text(seconds: float | None) -> str:
    from tm_gym.viz import format_race_time

    return "—" if seconds is None else format_race_time(seconds)


def _print_table(out: Console, report: EvalReport, title: str, files: dict[str, Path]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("#", "seed", "result", "lap time", "progress", "steps", "return", "walls"):
        table.add_column(name, justify="left" if name == "result" else "right")
    best = report.best_index
    for e in report.episodes:
        if e.finished:
            result = "[green]finished[/]"
        else:
            result = "[red]failed[/]" if e.failed else "[yellow]time out[/]"
        walls = f"[red]{e.wall_contacts}[/]" if e.crashed else "0"
        mark = " *" if e.index == best else ""
        table.add_row(
            f"{e.index}{mark}",
            str(e.seed),
            result,
            _lap_text(e.lap_time),
            f"{e.progress:.1%}",
            str(e.steps),
            f"{e.episode_return:.1f}",
            walls,
        )
    out.print(table)
    summary = Table(show_header=False, box=None, padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("finish rate", f"{report.finish_rate:.0%} of {report.n_episodes}")
    if report.lap_time_mean is not None:
        summary.add_row(
            "lap time",
            f"{_lap_text(report.lap_time_best)} best, {report.lap_time_mean:.3f} s "
            f"± {report.lap_time_std:.3f} s mean",
        )
    summary.add_row("crashes", f"{report.crashes} episode(s) touched a wall")
    summary.add_row("mean return", f"{report.mean_return:.1f}")
    summary.add_row("mean progress", f"{report.mean_progress:.1%}")
    for kind, path in files.items():
        summary.add_row(kind, str(path))
    out.print(summary)


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}×"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _walls_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _case_variation(case: Mapping[str, Any]) -> str:
    """What the case changes: car values, other env arguments, visuals."""
    parts = [f"{k}={v:g}" for k, v in case["car"].items()]
    parts += [f"{k}={v}" for k, v in case["env_kwargs"].items()]
    visuals = case["visuals"]
    if isinstance(visuals, str):
        parts.append(f"visuals={visuals}")
    elif visuals is not None:
        parts += [f"{k}={v}" for k, v in visuals.items()] or ["default look"]
    return ", ".join(parts) or "—"


def suite_rows(payload: Mapping[str, Any]) -> list[list[str]]:
    """The rows of the suite table, from the suite's JSON report (``SuiteReport.to_dict()``), so
    that the table and ``suite.json`` show the same cases and numbers: case, track, what the case
    changes, finish rate, mean lap time, expert lap time, lap ratio, mean wall contacts per
    episode, note; the last row is the summary (means over the cases that ran; the lap ratio
    over the cases that have one)."""
    rows: list[list[str]] = []
    for case in payload["cases"]:
        skipped = case["status"] == "skipped"
        if skipped:
            note = "skipped: pixels only"
        elif case["status"] == "expert-dnf":
            note = "expert did not finish"
        else:
            note = ""
        rows.append(
            [
                case["name"],
                case["track"],
                _case_variation(case),
                "skipped" if skipped else _percent(case["finish_rate"]),
                _lap_text(case["lap_time_mean"]),
                _lap_text(case["expert_lap_time"]),
                _ratio_text(case["lap_ratio"]),
                _walls_text(case["wall_contacts_mean"]),
                note,
            ]
        )
    s = payload["summary"]
    rows.append(
        [
            "summary",
            f"{s['cases_run']}/{s['cases']} run",
            f"{s['cases_skipped']} skipped, {s['cases_expert_dnf']} without expert lap",
            _percent(s["finish_rate"]),
            "",
            "",
            _ratio_text(s["lap_ratio_mean"]),
            _walls_text(s["wall_contacts_mean"]),
            f"ratio: mean of {s['lap_ratio_cases']}",
        ]
    )
    return rows


SUITE_COLUMNS = (
    "case",
    "track",
    "variation",
    "finish",
    "lap (mean)",
    "expert lap",
    "lap/expert",
    "walls",
    "note",
)


def _print_suite_table(out: Console, payload: Mapping[str, Any], files: dict[str, Path]) -> None:
    from rich.markup import escape
    from rich.table import Table

    title = (
        f"suite {payload['suite']}: {payload['policy']} ({payload['obs_type']}), "
        f"{payload['episodes']} episode(s) per case, start jitter {payload['start_jitter']:g}"
    )
    caption = (
        "lap/expert: mean lap time / the scripted expert's lap on the same track and car "
        "(< 1 is faster); walls: wall-contact substeps per episode"
    )
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for name in SUITE_COLUMNS:
        left = name in ("case", "track", "variation", "note")
        table.add_column(name, justify="left" if left else "right", overflow="fold")
    rows = suite_rows(payload)
    for row, case in zip(rows, payload["cases"], strict=False):
        style = "dim" if case["status"] == "skipped" else None
        table.add_row(*(escape(cell) for cell in row), style=style)
    table.add_section()
    table.add_row(*(escape(cell) for cell in rows[-1]), style="bold")
    out.print(table)
    for kind, path in files.items():
        out.print(f"[bold]{kind}[/]  {escape(str(path))}")


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    env_kwargs = parse_env_kwargs(args.env_kwarg)
    jitter = args.start_jitter
    if jitter is None and args.env_id == SIM_ENV_ID:
        jitter = 1.0
    if jitter is not None:
        env_kwargs.setdefault("start_jitter", jitter)
    return env_kwargs


def _prepare(args: argparse.Namespace, err: Console, default_name: str) -> tuple[Path, Any, Path]:
    """The policy directory, the loaded policy and the output folder (not created yet: a
    failed evaluation leaves no folder behind), announced on ``err``."""
    policy_dir, what = find_policy(args.policy)
    out_dir = output_dir(args.policy / default_name, args.out, overwrite=args.overwrite)
    policy = _load(policy_dir, args.device, args.threads)
    err.print(f"evaluating [bold]{policy_dir}[/]: {what}")
    return policy_dir, policy, out_dir


def _open_output(folder: Path) -> Path:
    """Create ``folder`` and remove what an earlier evaluation wrote there (``--overwrite``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        (folder / name).unlink(missing_ok=True)
    return folder


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _print_json(out: Console, payload: Mapping[str, Any]) -> None:
    out.file.write(json.dumps(payload) + "\n")  # plain: rich would wrap or colour it
    out.file.flush()


def _run_suite(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tm_algos.suite import CaseResult, load_suite, run_suite, save_suite_plot

    if args.env_id != SIM_ENV_ID:
        raise CLIError(
            f"--env-id {args.env_id!r} with --suite: suites run on the simulator ({SIM_ENV_ID}), "
            "whose scripted expert gives each case its reference; leave --env-id out"
        )
    suite = load_suite(args.suite)
    env_kwargs = _env_kwargs(args)
    jitter = float(env_kwargs.pop("start_jitter"))
    policy_dir, policy, out_dir = _prepare(args, err, f"suite-{suite.name}")
    with Progress(
        TextColumn(f"[bold]suite {suite.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=len(suite.cases), last="")

        def advance(result: CaseResult) -> None:
            bar.update(task, advance=1, last=f"{result.case.name}: {result.status}")

        report = run_suite(
            policy,
            suite,
            episodes=args.episodes,
            seed=args.seed,
            start_jitter=jitter,
            deterministic=not args.stochastic,
            env_kwargs=env_kwargs,
            progress=advance,
        )
    _open_output(out_dir)
    payload = report.to_dict()
    payload["policy"] = str(policy_dir.resolve())
    json_path, png_path = out_dir / "suite.json", out_dir / "suite.png"
    payload["outputs"] = {"json": str(json_path.resolve()), "plot": str(png_path.resolve())}
    files = {"plot": save_suite_plot(payload, png_path), "report": json_path}
    _write_json(json_path, payload)
    err.print(f"wrote [bold]{out_dir}[/]")
    if args.json:
        _print_json(out, payload)
    else:
        _print_suite_table(out, payload, files)
    return EXIT_OK


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.suite is not None:
        return _run_suite(args, out, err)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tm_algos.evaluation import evaluate

    env_kwargs = _env_kwargs(args)
    if args.no_video:
        env_kwargs.setdefault("render_mode", None)  # no frames to render
    episodes = 5 if args.episodes is None else args.episodes
    policy_dir, policy, out_dir = _prepare(args, err, "eval")

    with Progress(
        TextColumn("[bold]evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=episodes, last="")

        def advance(result: EpisodeResult) -> None:
            text = _lap_text(result.lap_time) if result.finished else f"{result.progress:.0%}"
            bar.update(task, advance=1, last=f"episode {result.index}: {text}")

        report = evaluate(
            policy,
            env_id=args.env_id,
            env_kwargs=env_kwargs,
            n_episodes=episodes,
            seed=args.seed,
            deterministic=not args.stochastic,
            keep_best=True,
            progress=advance,
        )

    _open_output(out_dir)
    with err.status("writing the best episode ...", spinner="dots"):
        files = save_best_episode(report, out_dir, video=not args.no_video)
    json_path = out_dir / "eval.json"
    payload = report.to_dict()
    payload["policy"] = str(policy_dir.resolve())
    payload["outputs"] = {
        "video": str(files["video"].resolve()) if "video" in files else None,
        "map": str(files["map"].resolve()) if "map" in files else None,
        "json": str(json_path.resolve()),
    }
    _write_json(json_path, payload)
    files["report"] = json_path
    err.print(f"wrote [bold]{out_dir}[/]")
    if args.json:
        _print_json(out, payload)
    else:
        title = f"{policy_dir} on {args.env_id}: {report.n_episodes} episode(s)"
        _print_table(out, report, title, files)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tm-eval`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):  # --help, or a usage error argparse has already explained
        return args
    # a bad env keyword or value can surface as any ValueError, an output folder as an OSError
    return run_cli(
        run,
        args,
        prog="tm-eval",
        debug=args.debug,
        exit_codes={ValueError: EXIT_ERROR, OSError: EXIT_ERROR},
    )


if __name__ == "__main__":
    sys.exit(main())
