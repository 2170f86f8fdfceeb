"""Helpers to run the game path without the game: a virtual X display and the emulator process.

Both are context managers that start one process and stop exactly that process (by its PID).
The game env finds the window and sends keys on ``$DISPLAY``, so point it at the virtual one:

>>> import os
>>> import tempfile
>>> import gymnasium as gym
>>> import tm_gym
>>> from tm_gym.testing import EmulatorProcess, VirtualDisplay
>>> with (
...     tempfile.TemporaryDirectory() as tmp,
...     VirtualDisplay() as display,
...     EmulatorProcess(display=display.name) as emu,
... ):
...     os.environ["DISPLAY"] = display.name
...     env = gym.make(
...         "TrackMania-v0",
...         controller="keyboard",
...         telemetry_port=emu.port,
...         window_title=emu.title,
...         reward_trajectory=emu.save_reference(os.path.join(tmp, "reference.npz")),
...     )
...     obs, info = env.reset(seed=0)
...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
...     env.close()
>>> sorted(obs), obs["images"].shape
(['actions', 'gear', 'images', 'rpm', 'speed'], (4, 64, 64))

Used by tm-gym's own end-to-end tests and benchmarks; handy for CI of projects built on tm-gym.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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


# An X11 connection setup request: little-endian, protocol 11.0, no authorisation.
_X11_SETUP = b"l\0" + struct.pack("<HHHH", 11, 0, 0, 0) + b"\0\0"


def _x_server_accepts(number: int, timeout: float = 2.0) -> bool:
    """Whether the X server on display ``number`` completes a connection setup (local socket)."""
    path = f"/tmp/.X11-unix/X{number}"
    addresses = [path] if sys.platform != "linux" else ["\0" + path, path]  # abstract first
    for address in addresses:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(address)
                sock.sendall(_X11_SETUP)
                status = sock.recv(1)
            except OSError:
                continue
            return status == b"\x01"  # 0 refused, 2 needs authorisation
    return False


class VirtualDisplay:
    """An Xvfb server of its own: ``name`` (e.g. ``":3"``) is a display number nobody else holds.

    Xvfb picks the number itself (``-displayfd``), so two displays started at the same time, in
    one process or in several, never share one. ``open`` returns once the server completes a
    connection setup, and ``close`` stops that server by its PID. The server never resets
    (``-noreset``): by default an X server resets when its last client disconnects, and a client
    connecting during the reset (say, a screenshot right after a test window closed) fails with
    "connection lost".

    Args:
        width, height, depth: the screen.
        args: more Xvfb options, e.g. ``("-ardelay", "60000")`` (no key auto-repeat in practice).
        startup_timeout: seconds to wait for the server to accept connections.
    """

    def __init__(
        self,
        width: int = 1024,
        height: int = 768,
        depth: int = 24,
        *,
        args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.size = f"{width}x{height}x{depth}"
        self.args = tuple(args)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.name = ""

    @property
    def pid(self) -> int | None:
        """The PID of this display's Xvfb while it runs."""
        return None if self.proc is None else self.proc.pid

    def open(self) -> None:
        exe = shutil.which("Xvfb")
        if exe is None:
            raise BackendUnavailableError(
                "Xvfb is not installed; on Debian/Ubuntu: apt install xvfb xdotool x11-utils"
            )
        deadline = time.monotonic() + self.startup_timeout
        with tempfile.TemporaryFile() as log:
            read_fd, write_fd = os.pipe()
            try:
                cmd = [exe, "-displayfd", str(write_fd), "-screen", "0", self.size]
                cmd += ["-nolisten", "tcp", "-noreset", *self.args]
                self.proc = subprocess.Popen(
                    cmd, pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=log
                )
                os.close(write_fd)
                write_fd = -1
                number = self._read_number(read_fd, deadline)
                self._wait_until_ready(number, deadline)
                self.name = f":{number}"
            except BaseException as exc:
                _stop(self.proc)
                self.proc = None
                if isinstance(exc, BackendUnavailableError):
                    log.seek(0)
                    output = log.read().decode(errors="replace").strip()[-800:]
                    raise BackendUnavailableError(
                        f"{exc}; Xvfb said: {output or '(nothing)'}"
                    ) from None
                raise
            finally:
                os.close(read_fd)
                if write_fd >= 0:
                    os.close(write_fd)

    def _read_number(self, read_fd: int, deadline: float) -> int:
        """The display number Xvfb writes to the pipe (one line) once it is ready."""
        assert self.proc is not None
        data = b""
        closed = False
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read_fd, 16)
            if not chunk:
                closed = True
                break
            data += chunk
        if data.strip().isdigit():
            return int(data)
        if closed:  # Xvfb is exiting: give it a moment to report its exit code
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
            raise BackendUnavailableError(
                f"Xvfb exited (exit code {self.proc.poll()}) before reporting a display number"
            )
        raise BackendUnavailableError(
            f"Xvfb did not report a display number within {self.startup_timeout} s (got {data!r})"
        )

    def _wait_until_ready(self, number: int, deadline: float) -> None:
        while not _x_server_accepts(number):
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"Xvfb reported display :{number} but does not accept connections "
                    f"(exit code {self.proc.poll()})"
                )
            time.sleep(0.02)

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

    def save_reference(self, path: str | Path) -> Path:
        """Write the reward reference of the emulator's track (its centre line) to ``path``,
        for ``gym.make("TrackMania-v0", reward_trajectory=path)``; returns the path."""
        from tm_gym.envs.sim_core import default_reference
        from tm_gym.sim.tracks import load_track

        return default_reference(load_track(self.track)).save(path)

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
