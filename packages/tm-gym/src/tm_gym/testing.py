"""Helpers to run the game path without the game: a virtual X display and the emulator process.

Both are context managers that start one process and stop exactly that process (by its PID)::

    with VirtualDisplay() as display, EmulatorProcess(display=display.name) as emu:
        env = gym.make(
            "TrackMania-v0",
            controller="keyboard",
            telemetry_port=emu.port,
            window_title=emu.title,
            display=display.name,
        )

Used by tm-gym's own end-to-end tests and benchmarks; handy for CI of projects built on tm-gym.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tm_gym.error import BackendUnavailableError

__all__ = ["EmulatorProcess", "VirtualDisplay"]


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class VirtualDisplay:
    """An Xvfb server on a free display number (``name`` is e.g. ``":3"``)."""

    def __init__(self, width: int = 1024, height: int = 768, depth: int = 24) -> None:
        self.size = f"{width}x{height}x{depth}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.name = ""

    def open(self) -> None:
        exe = shutil.which("Xvfb")
        if exe is None:
            raise BackendUnavailableError(
                "Xvfb is not installed; on Debian/Ubuntu: apt install xvfb xdotool"
            )
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [exe, "-displayfd", str(write_fd), "-screen", "0", self.size, "-nolisten", "tcp"],
                pass_fds=(write_fd,),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            os.close(write_fd)
            write_fd = -1
            data = b""
            deadline = time.monotonic() + 10.0
            while not data.endswith(b"\n") and time.monotonic() < deadline:
                chunk = os.read(read_fd, 16)
                if not chunk:
                    break
                data += chunk
            if not data.strip():
                raise BackendUnavailableError("Xvfb started but did not report a display number")
            self.name = f":{int(data.strip())}"
        except BaseException:
            _stop(self.proc)
            raise
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)

    def close(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> VirtualDisplay:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EmulatorProcess:
    """``tm-gym emulate`` in a subprocess, on ``display``; ``port`` is known once open."""

    def __init__(
        self,
        *,
        display: str,
        track: str = "default",
        title: str | None = None,
        port: int = 0,
        countdown: float = 0.3,
        fps: float = 60.0,
        protocol: int = 2,
        startup_timeout: float = 60.0,
    ) -> None:
        self.display = display
        self.track = track
        self.title = title or f"Trackmania-emu-{os.getpid()}-{id(self) % 100000}"
        self.requested_port = port
        self.countdown = countdown
        self.fps = fps
        self.protocol = protocol
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def open(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tm-gym-emu-")
        port_file = Path(self._dir.name) / "port"
        log_file = Path(self._dir.name) / "log"
        env = dict(os.environ, DISPLAY=self.display)
        cmd = [
            sys.executable, "-m", "tm_gym", "emulate",
            "--track", self.track, "--title", self.title,
            "--port", str(self.requested_port), "--port-file", str(port_file),
            "--countdown", str(self.countdown), "--fps", str(self.fps),
            "--protocol", str(self.protocol),
        ]  # fmt: skip
        with log_file.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                self.port = int(port_file.read_text())
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        output = log_file.read_text(errors="replace")[-2000:]
        self.close()
        raise BackendUnavailableError(f"the emulator did not start: {output}")

    def close(self) -> None:
        _stop(self.proc)
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def kill(self) -> None:
        """Kill the emulator abruptly (as if the game crashed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5.0)

    def __enter__(self) -> EmulatorProcess:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
