"""Nox sessions: the project's checks, each in its own clean virtual environment.

    nox                      lint, mypy and tests
    nox -s tests -- -k sim   arguments after -- go to pytest (or to the session's main tool)
    nox -s bench             simulator throughput against Gymnasium's CarRacing

For everyday work `python3 dev.py test` is quicker: it keeps one environment in .venv.
"""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.3.2"
nox.options.sessions = ["lint", "mypy", "tests"]
# The standard library's venv with pip, like dev.py: pip reads the machine's pip configuration
# (where the CPU build of torch may lie) and honours constraints.txt the same way everywhere.
nox.options.default_venv_backend = "venv"

CONSTRAINTS = ("-c", "constraints.txt")
PACKAGES = (
    "-e",
    "./packages/tm-gym[viz,play,game,minari]",
    "-e",
    "./packages/tm-algos",
    "-e",
    "./packages/tm-dist",
)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite."""
    session.install(*CONSTRAINTS, *PACKAGES, "-r", "requirements-test.txt")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check code style and formatting with ruff (fixes nothing)."""
    session.install("-r", "requirements-lint.txt")  # ruff, pinned
    paths = session.posargs or ["."]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def mypy(session: nox.Session) -> None:
    """Type-check the three packages (the files are listed in pyproject.toml)."""
    session.install(*CONSTRAINTS, *PACKAGES, "mypy")
    session.run("mypy", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Measure simulator throughput against Gymnasium's CarRacing in the same run."""
    session.install(*CONSTRAINTS, "-e", "./packages/tm-gym", "gymnasium[box2d]")
    session.run("python", "benchmarks/sim_throughput.py", *session.posargs)
