"""``tm-eval``: evaluate a trained policy and write its best lap as a video and a map.

``tm-eval POLICY`` loads a policy directory (``policy.safetensors`` + ``policy.json``, written by
:func:`tm_algos.policy.export_policy`) or a training run directory holding one in ``policy/``,
drives ``--episodes`` episodes on the simulator with the env settings the policy was trained with
(``--env-kwarg KEY=VALUE`` overrides them), and writes into ``--out DIR`` (default
``POLICY/eval``):

- ``best_lap.mp4`` (``.gif`` when imageio-ffmpeg is missing): the driver's view of the best
  episode, the fastest finish or else the one that got furthest (skipped with ``--no-video``);
- ``trajectory.png``: the track from above, the best episode's line coloured by speed;
- ``eval.json``: the report (also printed on stdout, alone, with ``--json``).

A table of the episodes is printed on stdout and a progress bar on stderr. Exit codes: 0 success
(whether or not the policy finished), 2 bad arguments or files, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tm_algos.evaluation import EpisodeResult, EvalReport
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
    "build_parser",
    "main",
    "parse_env_kwargs",
    "resolve_policy_dir",
    "save_best_episode",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tm-eval",
        description=(
            "Evaluate a policy: drive N episodes, print lap times, finish rate and crashes, and "
            "write OUT/best_lap.mp4, OUT/trajectory.png and OUT/eval.json."
        ),
    )
    parser.add_argument(
        "policy",
        type=Path,
        metavar="POLICY",
        help="policy directory (policy.safetensors + policy.json) or a training run directory "
        "containing policy/",
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
        "--episodes", type=positive_int, default=5, metavar="N", help="default: %(default)s"
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="S",
        help="episode i is reset with seed S+i (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output folder (default: POLICY/eval)"
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
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    return parser


def resolve_policy_dir(path: Path) -> Path:
    """The policy directory for ``path``: ``path`` itself or its ``policy/`` subdirectory."""
    from tm_algos.policy.format import JSON_NAME, WEIGHTS_NAME

    for candidate in (path, path / "policy"):
        if (candidate / JSON_NAME).is_file():
            return candidate
    what = "does not exist" if not path.exists() else f"holds no {JSON_NAME} (nor policy/)"
    raise CLIError(
        f"POLICY {str(path)!r} {what}: expected a directory with {JSON_NAME} and {WEIGHTS_NAME} "
        "(written by tm_algos.policy.export_policy) or a training run directory containing "
        "policy/; check the path"
    )


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


def _load(policy_dir: Path, device: str) -> Any:
    import torch

    from tm_algos.policy.load import load_policy

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


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tm_algos.evaluation import evaluate

    env_kwargs = parse_env_kwargs(args.env_kwarg)
    if args.no_video:
        env_kwargs.setdefault("render_mode", None)  # no frames to render
    policy_dir = resolve_policy_dir(args.policy)
    out_dir: Path = args.out if args.out is not None else args.policy / "eval"
    policy = _load(policy_dir, args.device)

    with Progress(
        TextColumn("[bold]evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=args.episodes, last="")

        def advance(result: EpisodeResult) -> None:
            text = _lap_text(result.lap_time) if result.finished else f"{result.progress:.0%}"
            bar.update(task, advance=1, last=f"episode {result.index}: {text}")

        report = evaluate(
            policy,
            env_id=args.env_id,
            env_kwargs=env_kwargs,
            n_episodes=args.episodes,
            seed=args.seed,
            deterministic=not args.stochastic,
            keep_best=True,
            progress=advance,
        )

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
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    files["report"] = json_path
    if args.json:
        out.file.write(json.dumps(payload) + "\n")  # plain: rich would wrap or colour it
        out.file.flush()
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
