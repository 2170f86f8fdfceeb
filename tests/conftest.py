"""Settings for the whole test suite.

Windows and sound are faked (no screen or audio device in CI), plots go to files, and
Hypothesis has no per-example deadline: the first call of a Numba function compiles it, which
takes seconds on a small machine. Set CI=true for reproducible Hypothesis runs.

Tests marked ``live_game`` run only with ``--live-game`` (TrackMania must be running); tests
marked ``gpu`` run only where PyTorch sees a CUDA device.
"""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
from hypothesis import settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


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
