"""``tm-gym record``: record episodes into a ``.tmrec`` file (see :mod:`tm_gym.recording`).

Backends: ``sim`` (the synchronous simulator, ``--realtime`` for the wall-clock one), ``game``
(the live game through OpenPlanet, ``TrackMania-v0``) and ``emulator`` (the same game path
against ``tm-gym emulate``, which the user starts first in another terminal; inputs go through
the keyboard controller to its window).

Drivers: ``expert`` (the simulator's scripted expert; ``sim`` only), ``random`` (uniform
actions), ``keyboard`` (a person drives the simulator in a pygame window: arrows or WASD, as
in ``tm-gym play``) and ``person`` (game or emulator: a person drives with their own keyboard or
pad in the game window; nothing is sent, and the inputs are read back from the telemetry).

Exit codes: 0 written, 2 usage or input error, 130 interrupted (what was recorded is written).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tm_gym.cli._common import EXIT_OK, CLIError, positive_int

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_parser", "run"]

BACKENDS = ("sim", "game", "emulator")
DRIVERS = ("expert", "random", "keyboard", "gamepad", "person")
PERSON_DRIVERS = ("keyboard", "gamepad", "person")
"""With the game or the emulator: a person drives with their own keyboard or gamepad (``person``:
either); nothing is sent to the game, and the inputs are read back from the telemetry."""


def add_parser(subparsers: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "record",
        parents=parents,
        help="record episodes (telemetry, frames, actions, rewards) into a .tmrec file",
        description=(
            "Record episodes from the simulator, the game or the emulator into FILE.tmrec "
            "(numpy arrays + JSON, no pickle), replayable with "
            "gymnasium.make('TrackMania-v0', backend='replay', recording=FILE)."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE.tmrec", help="file to write")
    p.add_argument("--backend", choices=BACKENDS, default="sim", help="(default: %(default)s)")
    p.add_argument(
        "--realtime", action="store_true", help="sim only: run the simulator on the wall clock"
    )
    p.add_argument(
        "--track", default="default", metavar="NAME_OR_PATH", help="sim track (default: default)"
    )
    p.add_argument(
        "--obs-type",
        choices=("images", "lidar", "lidar_progress"),
        default="images",
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--driver",
        choices=DRIVERS,
        default="expert",
        help=(
            "expert/random: scripted (sim); keyboard: you drive, in the simulator's window (sim) "
            "or in the game/emulator; gamepad: you drive the game with a pad; person: either "
            "(game/emulator: the inputs are read back from the telemetry). Default: %(default)s"
        ),
    )
    p.add_argument("--episodes", type=positive_int, default=1, help="(default: %(default)s)")
    p.add_argument(
        "--max-steps", type=positive_int, default=None, help="cut each episode after N steps"
    )
    p.add_argument(
        "--full-frames",
        action="store_true",
        help="sim: also store the 256x128 driver's view of every capture",
    )
    p.add_argument(
        "--reward-trajectory",
        default=None,
        metavar="PATH",
        help="game/emulator: the reference from `tm-gym record-reward` (required there)",
    )
    p.add_argument(
        "--telemetry-port", type=int, default=9000, help="game/emulator: telemetry port (9000)"
    )
    p.add_argument(
        "--window-title", default="Trackmania", help="game/emulator: window title (Trackmania)"
    )
    p.add_argument(
        "--controller",
        choices=("gamepad", "keyboard"),
        default=None,
        help="game: gamepad (default) or keyboard; the emulator always uses the keyboard",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first reset and the driver")
    p.add_argument("--notes", default="", help="free text stored in the file")
    p.set_defaults(handler=run)


def _make_env(args: argparse.Namespace) -> Any:
    import gymnasium as gym

    import tm_gym  # noqa: F401

    kw: dict[str, Any] = {"obs_type": args.obs_type}
    if args.backend == "sim":
        if args.driver in ("gamepad", "person"):
            raise CLIError(
                f"--driver {args.driver} is for the game or the emulator; in the simulator use "
                "--driver keyboard (its own window)"
            )
        if args.driver == "keyboard":
            kw["render_mode"] = "rgb_array"
        return gym.make("TrackMania-Sim-v0", track=args.track, realtime=args.realtime, **kw)
    _check_live_driver(args)
    if args.driver in PERSON_DRIVERS:
        kw["controller"] = "none"  # the person drives; their inputs come back in the telemetry
    elif args.backend == "emulator":
        kw["controller"] = "keyboard"
    else:
        kw["controller"] = args.controller or "gamepad"
    kw["telemetry_port"] = args.telemetry_port
    kw["window_title"] = args.window_title
    return gym.make("TrackMania-v0", backend="game", reward_trajectory=args.reward_trajectory, **kw)


def _check_live_driver(args: argparse.Namespace) -> None:
    """Refuse --driver/--backend pairs that cannot record the game or the emulator."""
    if args.driver == "expert":
        raise CLIError("--driver expert needs --backend sim (the expert reads the simulator)")
    if args.driver == "gamepad" and args.backend == "emulator":
        raise CLIError(
            "--driver gamepad: the emulator's window reads the keyboard only; "
            "use --driver keyboard with --backend emulator"
        )
    if args.reward_trajectory is None:
        raise CLIError(f"--backend {args.backend} needs --reward-trajectory PATH")


def _person_inputs(env: Any) -> np.ndarray:
    """The inputs the person applies, read back from the newest capture's telemetry."""
    from tm_gym.game.person import inputs_from_telemetry

    cap = env.unwrapped.last_capture()
    if cap is None:
        return np.zeros(3, dtype=np.float32)
    return inputs_from_telemetry(cap.record)


def _driver(args: argparse.Namespace, env: Any, window: Any) -> Callable[[], np.ndarray]:
    """The action source for ``--driver``: called once per step, it returns the next action.

    Raises:
        KeyboardInterrupt: the person closed the keyboard window (ends the recording cleanly).
    """
    if args.driver == "expert":
        return lambda: np.asarray(env.unwrapped.expert_action(), dtype=np.float32)
    if args.driver == "random":
        rng = np.random.default_rng(args.seed)
        return lambda: rng.uniform(-1.0, 1.0, 3).astype(np.float32)
    if args.backend != "sim":  # keyboard, gamepad, person: the person drives the game
        return lambda: _person_inputs(env)
    from tm_gym.human import action_from_keys

    def from_keys() -> np.ndarray:
        pressed, closed = window.poll()
        if closed:
            raise KeyboardInterrupt
        frame = env.render()
        if frame is not None:
            window.show(frame, [], [])
        window.wait()
        return action_from_keys(pressed)

    return from_keys


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tm_gym.recording import RecordEpisodes

    if args.realtime and args.backend != "sim":
        raise CLIError("--realtime applies to --backend sim only")
    if args.out.suffix != ".tmrec":
        raise CLIError(f"--out {str(args.out)!r}: expected a file name ending in .tmrec")
    env = _make_env(args)
    window: Any = None
    rec = RecordEpisodes(
        env,
        args.out,
        full_frames=args.full_frames,
        notes=f"driver: {args.driver}" + (f"; {args.notes}" if args.notes else ""),
        backend=None if args.backend != "emulator" else "emulator",
    )
    steps_total = 0
    try:
        if args.driver == "keyboard" and args.backend == "sim":
            from tm_gym.human import PlayWindow

            window = PlayWindow(title="tm-gym record").__enter__()
        next_action = _driver(args, env, window)
        with Progress(
            TextColumn("[bold]episode {task.fields[ep]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("reward {task.fields[ret]:.1f}"),
            console=err,
            transient=False,
        ) as progress:
            for ep in range(args.episodes):
                total = args.max_steps or env.unwrapped.settings.ep_max_length
                task = progress.add_task("", total=total, ep=ep + 1, ret=0.0)
                rec.reset(seed=args.seed if ep == 0 else None)
                ret, n = 0.0, 0
                while args.max_steps is None or n < args.max_steps:
                    _, r, term, trunc, _ = rec.step(next_action())
                    ret += float(r)
                    n += 1
                    progress.update(task, advance=1, ret=ret)
                    if term or trunc:
                        break
                steps_total += n
    finally:
        if window is not None:
            window.__exit__(None, None, None)
        rec.close()
    out.print(f"recorded {args.episodes} episode(s), {steps_total} steps to {args.out}")
    return EXIT_OK
