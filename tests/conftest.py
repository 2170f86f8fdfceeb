"""Settings and shared fixtures for the whole test suite.

Test tiers
----------
``pytest -m "not slow"``
    The quick loop (about 90 s on two idle cores): unit and property tests, short simulations.
``pytest``
    Everything; this is what CI runs (``.ci/run`` → ``python3 dev.py test``).
``slow``
    A test over about 1.5 s, or one that starts an X server, the emulator or other processes, or
    trains a model. Tests using the ``virtual_display`` fixture get the marker automatically.
``live_game``
    Needs TrackMania 2020 running with the OpenPlanet plugin; runs only with ``--live-game``.
``gpu``
    Needs a CUDA device; skipped where PyTorch sees none.

Every run goes in a random order (pytest-randomly): the header prints the seed,
``--randomly-seed=N`` replays that order and ``-p no:randomly`` keeps the file order.

Windows and sound are faked for pygame (no screen or audio device in CI), plots go to files, and
Hypothesis has no per-example deadline: the first call of a Numba function compiles it, which
takes seconds on a small machine. Set CI=true for reproducible Hypothesis runs; under CI a test
that needs a missing system tool (Xvfb, xdotool, xwininfo) fails instead of skipping, because
``.ci/run`` installs them.
"""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from tm_gym.testing import VirtualDisplay

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

X11_TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool", "xwininfo": "x11-utils"}
"""The programs the X11 tests run, and the Debian package of each."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--live-game",
        action="store_true",
        help="also run tests marked live_game (TrackMania 2020 with the OpenPlanet plugin running)",
    )


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "virtual_display" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if not config.getoption("--live-game"):
        skip = pytest.mark.skip(reason="needs the game: run with --live-game")
        for item in items:
            if "live_game" in item.keywords:
                item.add_marker(skip)
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def x11_tools() -> None:
    """Xvfb, xdotool and xwininfo are installed: skip if not (fail under CI, which has them)."""
    missing = [tool for tool in X11_TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(sorted({X11_TOOLS[tool] for tool in missing}))
        reason = f"{', '.join(missing)} not installed (apt install {packages}; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the X11 tools: {reason}")
        pytest.skip(reason)


@pytest.fixture
def display_options() -> dict[str, Any]:
    """Keyword arguments for the test's VirtualDisplay; override this fixture in a module."""
    return {}


@pytest.fixture
def virtual_display(
    x11_tools: None, display_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[VirtualDisplay]:
    """This test's own X server, with $DISPLAY pointing at it.

    Xvfb picks a display number nobody else holds, the fixture returns once the server accepts
    connections, and stops that server (by its PID) after the test: tests with a display pass
    in any order and while other processes on the machine run X servers of their own.
    """
    from tm_gym.testing import VirtualDisplay

    with VirtualDisplay(**display_options) as display:
        monkeypatch.setenv("DISPLAY", display.name)
        yield display
