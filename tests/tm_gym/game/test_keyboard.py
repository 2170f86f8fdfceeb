"""Tests for the keyboard controller (tm_gym.game.keyboard).

The xdotool backend is tested for real: an Xvfb server of the test's own, a small Tk window that
prints every KeyPress/KeyRelease it receives, and the controller sending keys to it. Those tests
skip when Xvfb, xdotool or Tk are missing (and fail under CI, which installs them).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tm_gym.core.ports import Controller
from tm_gym.error import ControllerError, InvalidActionError
from tm_gym.game import keyboard
from tm_gym.game.keyboard import KEYS, KeyboardController, keys_for
from tm_gym.game.keyboard import controller as keyboard_controller
from tm_gym.game.keyboard.xdotool import XdotoolBackend
from tm_gym.testing import VirtualDisplay

# --------------------------------------------------------------------------- keys_for


@pytest.mark.parametrize(
    ("action", "keys"),
    [
        ([0.0, 0.0, 0.0], set()),
        ([0.01, 0.0, 0.0], {"up"}),
        ([1.0, 1.0, 0.0], {"up", "down"}),
        ([-1.0, 0.5, 0.0], {"down"}),
        ([0.0, 0.0, 0.5], set()),  # the threshold itself does not steer
        ([0.0, 0.0, 0.51], {"right"}),
        ([0.0, 0.0, -0.5], set()),
        ([0.0, 0.0, -0.51], {"left"}),
        ([1.0, 0.0, -1.0], {"up", "left"}),
    ],
)
def test_keys_for_uses_tmrl_thresholds(action: list[float], keys: set[str]) -> None:
    assert keys_for(np.asarray(action, np.float32)) == frozenset(keys)


@given(st.lists(st.floats(-2, 2, allow_nan=False), min_size=3, max_size=3))
def test_keys_for_never_holds_left_and_right(action: list[float]) -> None:
    keys = keys_for(action)
    assert keys <= KEYS
    assert not {"left", "right"} <= keys


@pytest.mark.parametrize("action", [[0.0, 0.0], [float("inf"), 0.0, 0.0], None])
def test_keys_for_rejects_bad_actions(action: Any) -> None:
    with pytest.raises(InvalidActionError):
        keys_for(action)


# --------------------------------------------------------------------------- diff logic


class RecordingBackend:
    """Stands in for the xdotool backend; records what the controller asks for."""

    def __init__(self, **kw: Any) -> None:
        self.changes: list[tuple[list[str], list[str]]] = []
        self.taps = 0
        self.opened = False
        self.closed = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def change(self, up: list[str], down: list[str]) -> None:
        self.changes.append((up, down))

    def tap_respawn(self, hold: float) -> None:
        self.taps += 1


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordingBackend]]:
    made: list[RecordingBackend] = []

    def factory(**kw: Any) -> RecordingBackend:
        made.append(RecordingBackend(**kw))
        return made[-1]

    monkeypatch.setattr(keyboard_controller, "XdotoolBackend", factory)
    yield made


actions = st.lists(
    st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=3, max_size=3),
    max_size=30,
)


@given(actions)
def test_only_differences_are_sent(seq: list[list[float]]) -> None:
    backend = RecordingBackend()
    ctl = KeyboardController(backend="xdotool")
    ctl._impl = backend  # the monkeypatch fixture does not mix with @given
    held: set[str] = set()
    for action in seq:
        before = len(backend.changes)
        ctl.apply(action)
        want = set(keys_for(action))
        if want == held:
            assert len(backend.changes) == before  # nothing sent
        else:
            up, down = backend.changes[-1]
            assert set(up) == held - want
            assert set(down) == want - held
        held = want
        assert ctl.held == held


def test_release_and_close_lift_every_held_key(recording: list[RecordingBackend]) -> None:
    ctl = KeyboardController(backend="xdotool")
    assert recording == []  # nothing before open()
    with ctl:
        backend = recording[0]
        assert backend.opened
        ctl.apply([1.0, 0.0, 1.0])
        ctl.release()
        assert backend.changes[-1] == (["up", "right"], [])
        ctl.release()  # nothing held: nothing sent
        assert len(backend.changes) == 2
        ctl.apply([0.0, 1.0, -1.0])
    assert backend.changes[-1] == (["down", "left"], [])
    assert backend.closed
    ctl.close()  # idempotent
    with pytest.raises(ControllerError, match="not open"):
        ctl.apply([0.0, 0.0, 0.0])


def test_is_a_controller() -> None:
    assert isinstance(KeyboardController(backend="xdotool"), Controller)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"backend": "uinput"}, "unknown"),
        ({"window_id": 0}, "window_id"),
        ({"window_id": "Trackmania"}, "window_id"),
        ({"respawn_hold": -0.1}, "respawn_hold"),
    ],
)
def test_bad_arguments(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ControllerError, match=match):
        KeyboardController(**kw)


def test_missing_xdotool_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ControllerError, match="apt install xdotool"):
        KeyboardController(backend="xdotool").open()


@pytest.mark.usefixtures("x11_tools")
def test_no_display_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(ControllerError, match="DISPLAY"):
        KeyboardController(backend="xdotool").open()


@pytest.mark.usefixtures("x11_tools")
def test_unreachable_display_is_explained() -> None:
    ctl = KeyboardController(backend="xdotool", display=":999")
    with pytest.raises(ControllerError, match="cannot reach the X display"):
        ctl.open()
    ctl.close()


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows refusal")
def test_sendinput_needs_windows() -> None:
    with pytest.raises(ControllerError, match="needs Windows"):
        KeyboardController(backend="sendinput").open()


def test_sendinput_scan_codes() -> None:
    """The INPUT records are built the same way on every platform; check their fields."""
    from tm_gym.game.keyboard import sendinput as kw

    w = kw._key_input(keyboard.SCAN_CODES["up"], up=False)
    assert w.type == 1
    assert w.u.ki.wScan == 0x11
    assert w.u.ki.dwFlags == kw._KEYEVENTF_SCANCODE
    delete_up = kw._key_input(keyboard.SCAN_RESPAWN, up=True)
    assert delete_up.u.ki.wScan == 0x53
    assert delete_up.u.ki.dwFlags == (
        kw._KEYEVENTF_SCANCODE | kw._KEYEVENTF_KEYUP | kw._KEYEVENTF_EXTENDEDKEY
    )
    assert {k: keyboard.SCAN_CODES[k] for k in KEYS} == {
        "up": 0x11,  # W
        "left": 0x1E,  # A
        "down": 0x1F,  # S
        "right": 0x20,  # D
    }


# --------------------------------------------------------------------------- real X server

KEYLOG = textwrap.dedent(
    """
    import sys
    import tkinter as tk

    root = tk.Tk()
    root.title("tm-gym keylog")
    root.geometry("160x90+0+0")

    def log(kind, event):
        sys.stdout.write(kind + " " + event.keysym + "\\n")
        sys.stdout.flush()

    root.bind("<KeyPress>", lambda e: log("press", e))
    root.bind("<KeyRelease>", lambda e: log("release", e))
    root.wait_visibility(root)
    root.update()
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    root.mainloop()
    """
)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Stop one process we started, by its own PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture
def display_options() -> dict[str, Any]:
    # -ardelay: no key autorepeat while a key is held during the test
    return {"width": 320, "height": 240, "args": ("-ardelay", "60000")}


@pytest.fixture
def xvfb(virtual_display: VirtualDisplay) -> str:
    """This test's own X server (tests/conftest.py)."""
    return virtual_display.name


class KeyLog:
    """The Tk window's output, read line by line with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._buf = b""

    def _line(self, deadline: float) -> str | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode().strip()

    def take(self, n: int, timeout: float = 5.0) -> list[str]:
        """The next ``n`` lines (fewer if they do not come within ``timeout``)."""
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while len(out) < n:
            line = self._line(deadline)
            if line is None:
                break
            out.append(line)
        return out

    def quiet(self, wait: float = 0.2) -> list[str]:
        """Whatever arrives within ``wait`` seconds (expected: nothing)."""
        return self.take(100, timeout=wait)


@pytest.fixture
def keylog(xvfb: str, tmp_path: Path) -> Iterator[tuple[KeyLog, int]]:
    pytest.importorskip("tkinter")
    script = tmp_path / "keylog.py"
    script.write_text(KEYLOG)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "DISPLAY": xvfb},
    )
    try:
        log = KeyLog(proc)
        first = log.take(1, timeout=15.0)
        assert first == ["ready"], f"the Tk window did not start under Xvfb ({first})"
        # Like a user finding the game window: by title. This is Tk's top-level wrapper window,
        # the one that takes the keyboard focus.
        found = subprocess.run(
            ["xdotool", "search", "--name", "^tm-gym keylog$"],
            env={**os.environ, "DISPLAY": xvfb},
            capture_output=True,
            text=True,
            timeout=10,
        )
        ids = found.stdout.split()
        assert ids, f"xdotool search found no window: {found.stderr}"
        yield log, int(ids[0])
    finally:
        _stop(proc)


def test_xdotool_keys_reach_the_window(xvfb: str, keylog: tuple[KeyLog, int]) -> None:
    log, window = keylog
    with KeyboardController(backend="xdotool", window_id=window, display=xvfb) as ctl:
        ctl.apply([1.0, 0.0, 0.0])
        assert log.take(1) == ["press Up"]
        ctl.apply([0.7, 0.0, 0.8])
        assert log.take(1) == ["press Right"]
        ctl.apply([0.7, 0.0, 0.8])  # unchanged: nothing is sent
        assert log.quiet() == []
        ctl.apply([1.0, 0.0, 0.1])
        assert log.take(1) == ["release Right"]
        ctl.apply([0.0, 1.0, -0.9])
        assert log.take(3) == ["release Up", "press Down", "press Left"]
        ctl.release()
        assert log.take(2) == ["release Down", "release Left"]
        ctl.respawn()
        assert log.take(2) == ["press BackSpace", "release BackSpace"]
        ctl.apply([1.0, 0.0, 1.0])
        assert log.take(2) == ["press Up", "press Right"]
    # closing lifts what is still held
    assert log.take(2) == ["release Up", "release Right"]
    assert log.quiet() == []


def test_one_xdotool_process_serves_every_step(
    xvfb: str, keylog: tuple[KeyLog, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    log, window = keylog
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def counting_popen(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = real_popen(*args, **kw)
        started.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    ctl = KeyboardController(backend="xdotool", window_id=window, display=xvfb)
    ctl.open()
    try:
        n_open = len(started)  # the stdin probe, then the persistent process
        for i in range(40):
            ctl.apply([1.0, 0.0, 1.0 if i % 2 else -1.0])
        ctl.release()
        assert len(started) == n_open
        assert log.take(82)[-1] == "release Right"
        persistent = started[-1]
        assert persistent.poll() is None
    finally:
        ctl.close()
    assert persistent.poll() is not None  # close() ended it


def test_fallback_without_stdin_scripts(
    xvfb: str, keylog: tuple[KeyLog, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An xdotool that cannot read a script from stdin gets one process per change."""
    log, window = keylog
    monkeypatch.setattr(XdotoolBackend, "_stdin_scripts_work", lambda self: False)
    with KeyboardController(backend="xdotool", window_id=window, display=xvfb) as ctl:
        ctl.apply([1.0, 0.0, -1.0])
        assert log.take(2) == ["press Up", "press Left"]
        ctl.respawn()
        assert log.take(2) == ["press BackSpace", "release BackSpace"]
    assert log.take(2) == ["release Up", "release Left"]


def test_a_dead_xdotool_is_reported(xvfb: str, keylog: tuple[KeyLog, int]) -> None:
    _, window = keylog
    ctl = KeyboardController(backend="xdotool", window_id=window, display=xvfb)
    ctl.open()
    try:
        proc = ctl._impl._proc  # type: ignore[union-attr]
        assert proc is not None
        proc.kill()  # the process this controller started, by its own handle
        proc.wait()
        with pytest.raises(ControllerError, match="stopped accepting commands"):
            for _ in range(3):  # the first write may still land in the pipe buffer
                ctl.apply([1.0, 0.0, 0.0])
                ctl.apply([0.0, 0.0, 0.0])
    finally:
        ctl.close()
