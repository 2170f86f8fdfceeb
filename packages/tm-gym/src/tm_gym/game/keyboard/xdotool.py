"""The Linux backend of the keyboard controller: one persistent ``xdotool -`` process.

Arrow keys and BackSpace (respawn) go through one ``xdotool -`` that reads commands on its stdin,
so a step costs a pipe write (microseconds) instead of a process spawn (milliseconds). Events go
to the focused window through XTEST; with ``window_id`` the window is focused once when opening.
If this xdotool cannot run a script from stdin, each change spawns one ``xdotool`` process.

A click (:meth:`XdotoolBackend.click`, how the finish pop-up is closed) goes the same way:
``mousemove X Y`` in screen pixels, then ``click 1``. Both are XTEST requests on one connection
(or from one process after the other), so the X server moves the pointer before it presses the
button; ``mousemove --sync`` is not used, because it can wait forever when the pointer is
already there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import tempfile
from typing import IO

from tm_gym.error import ControllerError

__all__ = ["XDOTOOL_KEYS", "XDOTOOL_RESPAWN", "XdotoolBackend", "click_commands"]

logger = logging.getLogger(__name__)

XDOTOOL_KEYS = {"up": "Up", "down": "Down", "left": "Left", "right": "Right"}
"""The X key names of the logical keys."""
XDOTOOL_RESPAWN = "BackSpace"
"""The key that respawns the car (TMRL's on Linux)."""

_PROBE_TIMEOUT = 2.0
_FOCUS_TIMEOUT = 5.0


def click_commands(x: int, y: int) -> list[str]:
    """The xdotool commands of a left click at screen pixel ``(x, y)`` (pure)."""
    return [f"mousemove {int(x)} {int(y)}", "click 1"]


def _xdotool_path() -> str:
    path = shutil.which("xdotool")
    if path is None:
        raise ControllerError(
            "xdotool is not installed (it sends the key presses on Linux); run "
            "`sudo apt install xdotool` (or your distribution's xdotool package), or use "
            "--controller gamepad"
        )
    return path


class XdotoolBackend:
    """Key presses through one persistent ``xdotool -`` (commands on stdin, one per line)."""

    def __init__(self, *, window_id: int | None, display: str | None) -> None:
        self.window_id = window_id
        self.display = display
        self._exe = ""
        self._env: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._persistent = True

    def open(self) -> None:
        self._exe = _xdotool_path()
        self._env = dict(os.environ)
        if self.display is not None:
            self._env["DISPLAY"] = self.display
        if not self._env.get("DISPLAY"):
            raise ControllerError(
                "no X display: $DISPLAY is not set, so xdotool cannot send keys; run from the "
                "desktop session where TrackMania runs, or set DISPLAY (for example DISPLAY=:0)"
            )
        self._persistent = self._stdin_scripts_work()
        if self.window_id is not None:
            self._focus(self.window_id)
        if self._persistent:
            # stderr goes to a file (read only to explain a failure): a pipe nobody reads
            # could fill up and block xdotool.
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
            try:
                self._proc = subprocess.Popen(
                    [self._exe, "-"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=self._stderr,
                    env=self._env,
                )
            except OSError as exc:
                self.close()
                raise ControllerError(f"cannot start {self._exe}: {exc}") from exc
            logger.debug("xdotool started (pid %d)", self._proc.pid)
        else:
            logger.info("this xdotool cannot read commands from stdin: one process per change")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()  # end of script: xdotool exits by itself
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def change(self, up: list[str], down: list[str]) -> None:
        lines = []
        if up:
            lines.append("keyup --delay 0 " + " ".join(XDOTOOL_KEYS[k] for k in up))
        if down:
            lines.append("keydown --delay 0 " + " ".join(XDOTOOL_KEYS[k] for k in down))
        self._send(lines)

    def tap_respawn(self, hold: float) -> None:
        key = XDOTOOL_RESPAWN
        # xdotool sleeps between the two events itself, so the caller does not wait.
        self._send([f"keydown --delay 0 {key}", f"sleep {hold:.3f}", f"keyup --delay 0 {key}"])

    def click(self, x: int, y: int) -> None:
        """Left click at screen pixel ``(x, y)`` (the pointer stays there)."""
        self._send(click_commands(x, y))

    # -- helpers -----------------------------------------------------------------------------

    def _send(self, lines: list[str]) -> None:
        if not self._persistent:
            for line in lines:
                self._run_once(line.split())
            return
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise ControllerError("the keyboard controller is not open")
        try:
            proc.stdin.write(("\n".join(lines) + "\n").encode())
            proc.stdin.flush()
        except OSError as exc:  # BrokenPipeError: xdotool has exited
            raise ControllerError(
                f"xdotool (pid {proc.pid}) stopped accepting commands ({exc}); "
                f"{self._died_message(proc)}"
            ) from exc

    def _died_message(self, proc: subprocess.Popen[bytes]) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        err = ""
        if self._stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace").strip()
        return (
            f"exit code {proc.returncode}, stderr: {err[-500:] or '(empty)'}. Is the X display "
            f"{self._env.get('DISPLAY')!r} still there? Reopen the controller."
        )

    def _run_once(self, args: list[str], timeout: float = _FOCUS_TIMEOUT) -> None:
        try:
            done = subprocess.run(
                [self._exe, *args], env=self._env, capture_output=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise ControllerError(
                f"`xdotool {' '.join(args)}` did not finish within {timeout:g} s"
            ) from exc
        if done.returncode != 0:
            raise ControllerError(
                f"`xdotool {' '.join(args)}` failed with exit code {done.returncode}: "
                f"{done.stderr.decode(errors='replace').strip() or '(no message)'}"
            )

    def _stdin_scripts_work(self) -> bool:
        """Whether ``xdotool -`` runs each command as soon as its line arrives.

        Runs a throw-away ``xdotool -``, sends ``getmouselocation`` and waits for its answer
        before closing stdin. Also reports a missing or unusable display clearly.
        """
        proc = subprocess.Popen(
            [self._exe, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env,
        )
        if proc.stdin is None or proc.stdout is None:  # cannot happen with PIPE; for typing
            proc.kill()
            raise ControllerError("could not open pipes to xdotool")
        try:
            proc.stdin.write(b"getmouselocation\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], _PROBE_TIMEOUT)
            answered = bool(ready) and bool(os.read(proc.stdout.fileno(), 4096))
        except OSError:
            answered = False
        finally:
            try:  # closes stdin (end of script), reads what is left, waits for the exit
                _, err = proc.communicate(timeout=_PROBE_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        if answered:
            return True
        message = err.decode(errors="replace").strip()
        if proc.returncode != 0 or "display" in message.lower():
            raise ControllerError(
                f"xdotool cannot reach the X display {self._env.get('DISPLAY')!r} (exit code "
                f"{proc.returncode}: {message or 'no message'}); run from the desktop session "
                "where TrackMania runs, or set DISPLAY"
            )
        return False

    def _focus(self, window_id: int) -> None:
        """Focus the game window: activate it through the window manager, or, without one,
        set the X input focus directly."""
        wid = str(window_id)
        try:
            self._run_once(["windowactivate", "--sync", wid])
        except ControllerError as exc:
            logger.debug("windowactivate failed (%s); trying windowfocus", exc)
            try:
                self._run_once(["windowfocus", "--sync", wid])
            except ControllerError as exc2:
                raise ControllerError(
                    f"cannot focus window {window_id:#x} ({exc2}); is the game still open? Find "
                    "its id with `xdotool search --name Trackmania`"
                ) from exc2
        logger.debug("focused window %#x", window_id)
