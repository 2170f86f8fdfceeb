#!/usr/bin/env python3
"""One command to work on TrackMaster: it prepares .venv, then runs what you asked for.

    python3 dev.py demo [ARGS...]    the scripted driver laps the default track; output in out/demo
    python3 dev.py train [ARGS...]   train lidar-sac for 15 min, evaluate, write the lap video
    python3 dev.py test [ARGS...]    the test suite; ARGS go to pytest
    python3 dev.py lint [PATHS...]   ruff check and ruff format --check (the whole repo by default)
    python3 dev.py bench [ARGS...]   simulator throughput against Gymnasium's CarRacing

The first run creates a virtual environment in .venv and installs what the command needs;
later runs skip the install unless a pyproject.toml, a requirements-*.txt or constraints.txt
changed, or when an earlier command already installed everything this one needs (after `train`,
`demo` installs nothing). Packages are installed in editable mode, so edits to the sources need no reinstall.
Uses only the standard library; needs Python 3.10 or newer; Linux, macOS or Windows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "dev-py-installed.json"
MIN_PYTHON = (3, 10)


@dataclass(frozen=True)
class Command:
    """What one dev.py command installs into .venv and then runs."""

    summary: str
    install: tuple[str, ...]
    """Arguments for `pip install -c constraints.txt`, relative to the repository root."""
    steps: tuple[tuple[str, ...], ...]
    """Programs to run in order, each a program in .venv followed by its arguments."""
    default_args: tuple[str, ...] = ()
    """Arguments each step gets when the user gives none; the user's replace them."""


COMMANDS = {
    "demo": Command(
        summary="drive the scripted expert around the default track, output in out/demo",
        install=("-e", "./packages/tm-gym[viz]"),
        steps=(("tm-gym", "drive", "--expert", "--track", "default", "--out", "out/demo"),),
    ),
    "train": Command(
        summary="train lidar-sac (15 min on 2 cores), evaluate, write the best lap's video",
        install=("-e", "./packages/tm-gym[viz]", "-e", "./packages/tm-algos"),
        steps=(("tm-train",),),
        default_args=("lidar-sac", "--minutes", "15", "--evaluate", "3"),
    ),
    "test": Command(
        summary="run the test suite (arguments go to pytest)",
        install=(
            "-e",
            "./packages/tm-gym[viz,play,game,minari]",
            "-e",
            "./packages/tm-algos",
            "-e",
            "./packages/tm-dist",
            "-r",
            "requirements-test.txt",
        ),
        steps=(("python", "-m", "pytest"),),
    ),
    "lint": Command(
        summary="check style and formatting with ruff (arguments: paths, default the whole repo)",
        install=("-r", "requirements-lint.txt"),
        steps=(("ruff", "check"), ("ruff", "format", "--check")),
        default_args=(".",),
    ),
    "bench": Command(
        summary="measure simulator throughput against Gymnasium's CarRacing",
        install=("-e", "./packages/tm-gym", "gymnasium[box2d]"),
        steps=(("python", "benchmarks/sim_throughput.py"),),
    ),
}


def say(message: str) -> None:
    print(f"dev.py: {message}", flush=True)


def bin_dir() -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin")


def venv_python() -> Path:
    return bin_dir() / ("python.exe" if os.name == "nt" else "python")


def child_env() -> dict[str, str]:
    """The environment of an activated .venv, so that tests find its programs on PATH."""
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = str(bin_dir()) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONHOME", None)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def shown(arg: str) -> str:
    """An argument as printed: paths inside the repository relative to it."""
    try:
        return os.path.relpath(arg, ROOT) if Path(arg).is_relative_to(ROOT) else arg
    except ValueError:  # another drive, on Windows
        return arg


def run(argv: list[str]) -> int:
    """Run a program from the repository root, show it first, return its exit status."""
    print(f"$ {shlex.join(shown(a) for a in argv)}", flush=True)
    try:
        code = subprocess.run(argv, cwd=ROOT, env=child_env(), check=False).returncode
    except KeyboardInterrupt:
        return 130
    return code if code >= 0 else 128 - code  # killed by a signal: report it as a shell would


def venv_problem() -> str | None:
    """Why .venv cannot be used as it is, or None if it can."""
    python = venv_python()
    if not python.exists():
        return f"{python} is missing"
    check = f"import sys, pip; sys.exit(0 if sys.version_info >= {MIN_PYTHON!r} else 3)"
    try:
        result = subprocess.run([str(python), "-c", check], capture_output=True, check=False)
    except OSError as exc:
        return f"{python} does not start ({exc})"
    if result.returncode == 3:
        return f"its Python is older than {'.'.join(map(str, MIN_PYTHON))}"
    if result.returncode != 0:
        return f"{python} cannot import pip"
    return None


def ensure_venv() -> bool:
    """Make .venv usable: create it, or recreate it when broken. False if that failed."""
    if VENV.exists():
        problem = venv_problem()
        if problem is None:
            return True
        if not (VENV / "pyvenv.cfg").exists():
            say(f"{VENV} exists but is not a virtual environment; move it away and retry")
            return False
        say(f".venv is broken ({problem}); recreating it")
        shutil.rmtree(VENV)
    say(f"creating a virtual environment in .venv with {sys.executable}")
    if run([sys.executable, "-m", "venv", str(VENV)]) != 0:
        say(
            "could not create .venv; on Debian or Ubuntu install the venv module first "
            "(apt install python3-venv)"
        )
        return False
    # Editable installs from pyproject.toml need pip >= 21.3; Python 3.10 may bundle an older one.
    return run([str(venv_python()), "-m", "pip", "install", "pip>=21.3"]) == 0


def inputs_digest() -> str:
    """A hash of the files that decide what the installs resolve to (pyprojects, pins)."""
    digest = hashlib.sha256()
    inputs = [
        *sorted(ROOT.glob("packages/*/pyproject.toml")),
        *sorted(ROOT.glob("requirements-*.txt")),
        ROOT / "constraints.txt",
    ]
    for path in inputs:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()


def requirements(install: tuple[str, ...] | list[str]) -> dict[str, frozenset[str]]:
    """What pip arguments ask for: requirement (path or name, options kept) → its extras."""
    wanted: dict[str, frozenset[str]] = {}
    option = ""
    for arg in install:
        if arg in ("-e", "-r"):
            option = arg
            continue
        base, _, extras = arg.partition("[")
        names = frozenset(e.strip() for e in extras.rstrip("]").split(",") if e.strip())
        key = f"{option} {base}".strip()
        wanted[key] = wanted.get(key, frozenset()) | names
        option = ""
    return wanted


def covered(wanted: dict[str, frozenset[str]], stamp: dict[str, object], inputs: str) -> bool:
    """Whether the installs recorded in ``stamp`` (made from the same ``inputs``) together
    hold everything ``wanted`` asks for, extras included."""
    have: dict[str, frozenset[str]] = {}
    for entry in stamp.values():
        if isinstance(entry, dict) and entry.get("inputs") == inputs:
            for key, extras in requirements(list(entry.get("install", []))).items():
                have[key] = have.get(key, frozenset()) | extras
    return all(key in have and extras <= have[key] for key, extras in wanted.items())


def read_stamp() -> dict[str, object]:
    try:
        stamp = json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def ensure_installed(name: str, command: Command) -> bool:
    """Install what `command` needs into .venv unless earlier installs (this command's or a
    larger one's, from unchanged pyprojects and pins) already hold it."""
    stamp = read_stamp()
    inputs = inputs_digest()
    if covered(requirements(command.install), stamp, inputs):
        say(f"requirements for '{name}' are installed and unchanged; skipping pip")
        return True
    say(f"installing requirements for '{name}'")
    pip = [str(venv_python()), "-m", "pip", "install", "-c", "constraints.txt"]
    if run([*pip, *command.install]) != 0:
        say("pip failed; nothing was run")
        return False
    stamp[name] = {"inputs": inputs, "install": list(command.install)}
    STAMP.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def resolve(program: str) -> str | None:
    """The path of a program inside .venv (`python` is the venv's interpreter)."""
    if program == "python":
        return str(venv_python())
    return shutil.which(program, path=str(bin_dir()))


def execute(name: str, user_args: list[str]) -> int:
    command = COMMANDS[name]
    if not ensure_venv() or not ensure_installed(name, command):
        return 1
    args = user_args or list(command.default_args)
    status = 0
    for program, *fixed in command.steps:
        path = resolve(program)
        if path is None:
            say(f"'{program}' is not in {bin_dir()} although its install succeeded")
            return 1
        code = run([path, *fixed, *args])
        status = status or code
    return status


def parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {n:<7}{c.summary}" for n, c in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="dev.py",
        usage=f"python3 dev.py [-h] {{{','.join(COMMANDS)}}} [ARGS...]",
        description="Set up .venv for TrackMaster and run the demo, the tests, lint or benchmarks.",
        epilog=epilog + "\n\nArguments after the command go to the program it runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=COMMANDS, help="what to do (see below)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if sys.version_info < MIN_PYTHON:
        version = ".".join(map(str, MIN_PYTHON))
        say(f"needs Python {version} or newer, this is {sys.version.split()[0]}")
        return 1
    # Everything after a known command is forwarded as it is, options included, so
    # `dev.py test -x -k reward` reaches pytest untouched; argparse only shows help and errors.
    if argv and argv[0] in COMMANDS:
        return execute(argv[0], argv[1:])
    parser().parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
