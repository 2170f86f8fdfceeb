"""Fixtures shared by the tm-dist tests: every relay and link a test starts is stopped, then
killed by its own PID, whatever the test did."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tm_dist.testing import kill_by_pid


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Register relays and links to stop (then kill by PID) at the end of a test."""
    started: list[Any] = []

    def register(thing: Any) -> Any:
        started.append(thing)
        return thing

    try:
        yield register
    finally:
        for thing in reversed(started):
            pid = thing.pid
            try:
                thing.stop()
            finally:
                kill_by_pid(pid)
