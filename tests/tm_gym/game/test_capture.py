"""Screen capture against a real X server: Xvfb, with Tk windows drawn by child processes.

Each test that needs the screen gets its own X server (the ``virtual_display`` fixture of
tests/conftest.py), so the tests pass in any order and beside other X servers on the machine.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tm_gym.core.ports import FrameSource
from tm_gym.error import CaptureError, DependencyNotInstalled
from tm_gym.game.capture import ScreenCapture, WindowGeometry, find_window, window_geometry
from tm_gym.testing import VirtualDisplay

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the capture tests run under Xvfb (Linux)"
)

SCREEN = (1024, 768)
QUADRANTS = {  # top-left, top-right, bottom-left, bottom-right
    (0, 0): (255, 0, 0),
    (0, 1): (0, 255, 0),
    (1, 0): (0, 0, 255),
    (1, 1): (255, 255, 0),
}

# A Tk window of a given title, position and size showing four coloured quadrants, drawn by a
# child process (so that Tk lives and dies outside the test process).
TK_WINDOW = r"""
import sys, tkinter as tk
title, x, y, w, h = sys.argv[1], *map(int, sys.argv[2:6])
root = tk.Tk()
root.title(title)
root.geometry(f"{w}x{h}+{x}+{y}")
canvas = tk.Canvas(root, width=w, height=h, highlightthickness=0, bd=0)
canvas.pack()
colours = {(0, 0): "#ff0000", (0, 1): "#00ff00", (1, 0): "#0000ff", (1, 1): "#ffff00"}
for (r, c), colour in colours.items():
    canvas.create_rectangle(c * w // 2, r * h // 2, (c + 1) * w // 2, (r + 1) * h // 2,
                            fill=colour, outline="")
root.update()
print("ready", flush=True)
root.mainloop()
"""


def _read_line(stream: int, timeout: float, what: str) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError(f"{what} did not answer within {timeout} s")
    return os.read(stream, 256)


@pytest.fixture
def display_options() -> dict[str, Any]:
    return {"width": SCREEN[0], "height": SCREEN[1]}


@pytest.fixture
def display(virtual_display: VirtualDisplay) -> str:
    """This test's own X server (tests/conftest.py), with DISPLAY pointing at it."""
    return virtual_display.name


Window = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def tk_window(display: str) -> Iterator[Window]:
    """Factory: open a Tk window (title, x, y, w, h); every one is killed by its PID after
    the test."""
    pytest.importorskip("tkinter")
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        title: str, x: int = 40, y: int = 30, w: int = 256, h: int = 128
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", TK_WINDOW, title, str(x), str(y), str(w), str(h)],
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = _read_line(proc.stdout.fileno(), 20.0, "the Tk window")
        assert line.strip() == b"ready", line
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def unique_title(prefix: str = "TrackMaster test") -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


def expected_image(w: int, h: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for (r, c), colour in QUADRANTS.items():
        img[r * h // 2 : (r + 1) * h // 2, c * w // 2 : (c + 1) * w // 2] = colour
    return img


def grab_until(cap: ScreenCapture, want: np.ndarray, timeout: float = 10.0) -> np.ndarray:
    """Grab until the picture is ``want`` (the X server draws a window asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        img = cap.grab()
        if img.shape == want.shape and np.array_equal(img, want):
            return img
        if time.monotonic() > deadline:
            return img
        time.sleep(0.02)


# -- finding windows ------------------------------------------------------------------------------
def test_find_window_reads_the_client_area(tk_window: Window) -> None:
    title = unique_title()
    tk_window(title, x=40, y=30, w=256, h=128)
    geom = find_window(title)
    assert (geom.left, geom.top, geom.width, geom.height) == (40, 30, 256, 128)
    assert geom.window_id > 0
    assert window_geometry(geom.window_id) == geom


def test_find_window_matches_the_exact_title(tk_window: Window) -> None:
    # regex characters, spaces and non-ASCII letters are matched literally
    odd = unique_title("Trackmania (test) 1.2 [é] $x^ *")
    tk_window(odd, x=10, y=10, w=64, h=32)
    assert find_window(odd).width == 64
    # a longer, a shorter and a differently cased title are other windows
    base = unique_title("Trackmania")
    tk_window(base + "2", x=100, y=100, w=64, h=32)
    with pytest.raises(CaptureError, match="no visible window"):
        find_window(base)
    with pytest.raises(CaptureError, match="no visible window"):
        find_window(base + "22")
    with pytest.raises(CaptureError, match="similar titles") as info:
        find_window((base + "2").upper())
    assert base + "2" in str(info.value)


def test_missing_window_says_how_to_fix(display: str) -> None:
    with pytest.raises(CaptureError) as info:
        find_window("No Such Window 1f2e3d")
    message = str(info.value)
    assert "'No Such Window 1f2e3d'" in message
    assert "tm-gym emulate" in message and "window_title=" in message
    with pytest.raises(CaptureError, match="no visible window"):
        ScreenCapture("No Such Window 1f2e3d").open()


def test_no_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(CaptureError, match="DISPLAY is not set"):
        find_window("Trackmania")


def test_missing_xdotool(display: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DependencyNotInstalled, match="apt-get install xdotool"):
        find_window("Trackmania")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="title"):
        find_window("")
    with pytest.raises(ValueError, match="window_title"):
        ScreenCapture("")
    with pytest.raises(ValueError, match="refresh_interval"):
        ScreenCapture(refresh_interval=-1.0)
    with pytest.raises(TypeError, match="WindowGeometry"):
        ScreenCapture(geometry=(0, 0, 10, 10))  # type: ignore[arg-type]
    with pytest.raises(CaptureError, match="0×10"):
        WindowGeometry(1, 0, 0, 0, 10)
    with pytest.raises(TypeError, match="left"):
        WindowGeometry(1, 0.5, 0, 10, 10)  # type: ignore[arg-type]


# -- grabbing ------------------------------------------------------------------------------------
def test_grab_returns_the_windows_pixels(tk_window: Window) -> None:
    title = unique_title()
    tk_window(title, x=40, y=30, w=256, h=128)
    with ScreenCapture(title) as cap:
        assert isinstance(cap, FrameSource)
        assert cap.geometry is not None and cap.geometry.width == 256
        img = grab_until(cap, expected_image(256, 128))
        assert img.shape == (128, 256, 3) and img.dtype == np.uint8
        assert img.flags.c_contiguous
        np.testing.assert_array_equal(img, expected_image(256, 128))


def test_fixed_region(tk_window: Window) -> None:
    """A region given by hand (window_id 0) is captured without looking anything up."""
    tk_window(unique_title(), x=200, y=100, w=100, h=60)
    region = WindowGeometry(window_id=0, left=200 + 50, top=100, width=50, height=30)
    with ScreenCapture("not used", geometry=region, refresh_interval=0.0) as cap:
        img = grab_until(cap, np.full((30, 50, 3), QUADRANTS[0, 1], np.uint8))
        assert np.all(img == QUADRANTS[0, 1])  # the top-right (green) quadrant
        assert cap.refresh() == region


def test_region_off_screen(display: str) -> None:
    region = WindowGeometry(0, SCREEN[0] - 100, 0, 256, 128)
    cap = ScreenCapture(geometry=region)
    with pytest.raises(CaptureError, match="not entirely on the screen"):
        cap.open()
    with pytest.raises(CaptureError, match="not open"):
        cap.grab()


def test_follows_a_moved_window(tk_window: Window, display: str) -> None:
    title = unique_title()
    tk_window(title, x=40, y=30, w=128, h=64)
    with ScreenCapture(title, refresh_interval=None) as cap:
        geom = cap.geometry
        assert geom is not None
        subprocess.run(["xdotool", "windowmove", str(geom.window_id), "300", "200"], check=True)
        deadline = time.monotonic() + 10
        while cap.refresh().left != 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cap.geometry == WindowGeometry(geom.window_id, 300, 200, 128, 64)
        np.testing.assert_array_equal(
            grab_until(cap, expected_image(128, 64)), expected_image(128, 64)
        )


def test_closed_window_raises(tk_window: Window) -> None:
    title = unique_title()
    proc = tk_window(title, w=64, h=32)
    with ScreenCapture(title, refresh_interval=0.0) as cap:
        cap.grab()
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        with pytest.raises(CaptureError, match="gone"):
            while time.monotonic() < deadline:
                cap.grab()  # re-reads the geometry every time (refresh_interval=0)
                time.sleep(0.02)
        with pytest.raises(CaptureError, match="gone"):
            cap.refresh()


def test_lifecycle_and_threads(tk_window: Window) -> None:
    title = unique_title()
    tk_window(title, w=64, h=32)
    cap = ScreenCapture(title)
    with pytest.raises(CaptureError, match="not open"):
        cap.grab()
    cap.open()
    cap.open()  # idempotent
    want = expected_image(64, 32)
    grab_until(cap, want)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.extend(cap.grab() for _ in range(3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(results) == 6
    for img in results:
        np.testing.assert_array_equal(img, want)
    assert len(cap._instances) == 3  # one mss instance per thread that grabbed
    cap.close()
    cap.close()  # idempotent
    assert cap._instances == []
    with pytest.raises(CaptureError, match="not open"):
        cap.grab()
    with cap:  # can be opened again
        np.testing.assert_array_equal(grab_until(cap, want), want)


def test_missing_mss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mss", None)
    with pytest.raises(DependencyNotInstalled, match="pip install mss"):
        ScreenCapture(geometry=WindowGeometry(0, 0, 0, 8, 8)).open()
