"""``tm-gym import-tmrl``: bring TMRL's reward file and config over, without running TMRL's code.

* ``--reward reward.pkl --out reward.npz`` converts TMRL's recorded trajectory with a restricted
  unpickler (:mod:`tm_gym.game.tmrl_import`): a pickle that asks for anything but a numeric NumPy
  array is refused, and nothing from it is run.
* ``--config config.json`` prints (or, with ``--config-out FILE``, writes) the equivalent
  tm-gym env kwargs, RewardConfig fields, tm-algos preset and ``--set`` overrides and tm-dist
  settings, as TOML (``--format json`` for JSON), and lists the keys it could not map.

Both can be given at once. Exit codes: 0 done, 2 usage or input error (a refused pickle too).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tm_gym.cli._common import EXIT_OK, CLIError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``import-tmrl`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "import-tmrl",
        parents=parents,
        help="convert TMRL's reward.pkl and translate its config.json",
        description=(
            "Convert TMRL's reward trajectory (reward.pkl) into a tm-gym reference (.npz) "
            "without executing anything from the file, and/or translate TMRL's config.json into "
            "tm-gym env kwargs, RewardConfig fields, a tm-algos preset with --set overrides and "
            "tm-dist settings; keys that cannot be mapped are listed. Secrets (PASSWORD, "
            "WANDB_KEY) are never copied."
        ),
    )
    parser.add_argument("--reward", type=Path, metavar="PKL", help="TMRL's reward.pkl")
    parser.add_argument(
        "--out", type=Path, metavar="NPZ", help="where to write the reference (.npz or .json)"
    )
    parser.add_argument("--config", type=Path, metavar="JSON", help="TMRL's config.json")
    parser.add_argument(
        "--config-out",
        type=Path,
        metavar="FILE",
        help="write the translated settings here instead of printing them",
    )
    parser.add_argument(
        "--format",
        choices=("toml", "json"),
        default="toml",
        help="format of the translated settings (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Run ``import-tmrl`` (see the module docstring)."""
    if args.reward is None and args.config is None:
        raise CLIError("nothing to do: give --reward reward.pkl --out reward.npz and/or --config")
    if args.reward is not None:
        _convert_reward(args, err)
    elif args.out is not None:
        raise CLIError("--out is the converted reward: give --reward reward.pkl too")
    if args.config is not None:
        _translate_config(args, out, err)
    elif args.config_out is not None:
        raise CLIError("--config-out is the translated config: give --config config.json too")
    return EXIT_OK


def _convert_reward(args: argparse.Namespace, err: Console) -> None:
    from rich.markup import escape

    from tm_gym.game.tmrl_import import convert_tmrl_reward

    if args.out is None:
        raise CLIError("--reward needs --out FILE.npz: where to write the tm-gym reference")
    written, points = convert_tmrl_reward(args.reward, args.out)
    err.print(
        f"[green]wrote[/] {escape(str(written))}: {points} reference points "
        f"({(points - 1) * 0.1:.1f} m). Use it as reward_trajectory={escape(repr(str(written)))}."
    )


def _translate_config(args: argparse.Namespace, out: Console, err: Console) -> None:
    from rich.markup import escape

    from tm_gym.game.tmrl_import import read_tmrl_config, translate_tmrl_config

    translation = translate_tmrl_config(read_tmrl_config(args.config))
    text = translation.to_json() if args.format == "json" else translation.to_toml(args.config.name)
    if args.config_out is None:
        out.file.write(text)
        out.file.flush()
    else:
        try:
            args.config_out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CLIError(
                f"--config-out {str(args.config_out)!r}: cannot write ({exc.strerror or exc})"
            ) from None
        err.print(f"[green]wrote[/] {escape(str(args.config_out))}")
    if translation.unmapped:
        err.print(
            f"[yellow]{len(translation.unmapped)} TMRL keys not carried over[/] (see [unmapped]): "
            + escape(", ".join(translation.unmapped))
        )
