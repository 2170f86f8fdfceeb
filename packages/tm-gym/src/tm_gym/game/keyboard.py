"""Keyboard control of the car (:class:`~tm_gym.core.ports.Controller`), TMRL's fallback.

A keyboard is binary, so actions are thresholded with TMRL's rule (:func:`keys_for`): gas if
``a[0] > 0``, brake if ``a[1] > 0``, right if ``a[2] > 0.5``, left if ``a[2] < -0.5``.
:class:`KeyboardController` remembers which keys it holds and sends only the differences (key
up, then key down), so a step that changes nothing sends nothing.

Two backends, chosen by ``backend="auto"`` from the platform:

* ``"xdotool"`` (Linux, X11 or XWayland): arrow keys and BackSpace (respawn) through ONE
  persistent ``xdotool -`` process that reads commands on its stdin, so a step costs a pipe
  write (microseconds) instead of a process spawn (milliseconds). Events go to the focused
  window through XTEST; with ``window_id`` the window is focused once when opening. If this
  xdotool cannot run a script from stdin, each change spawns one ``xdotool`` process instead.
* ``"sendinput"`` (Windows): ``SendInput`` with hardware scan codes — W/A/S/D for
  gas/left/brake/right and Delete for respawn, like TMRL. It cannot be tested on Linux; it is
  kept small and separate (:mod:`tm_gym.game.keyboard_windows`).

Example::

    with KeyboardController(window_id=0x3A00007) as kb:
        kb.apply(np.array([1.0, 0.0, 0.8], np.float32))  # Up + Right held
        kb.apply(np.array([1.0, 0.0, 0.0], np.float32))  # Right released
        kb.respawn()
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import IO, Any, Protocol

from tm_gym.error import ControllerError, InvalidActionError

__all__ = ["KEYS", "KeyboardController", "keys_for"]

logger = logging.getLogger(__name__)

KEYS = frozenset({"up", "down", "left", "right"})
"""The logical keys: up = gas, down = brake, left/right = steer."""

_ORDER = ("up", "down", "left", "right")  # deterministic order for the commands sent

XDOTOOL_KEYS = {"up": "Up", "down": "Down", "left": "Left", "right": "Right"}
XDOTOOL_RESPAWN = "BackSpace"

SCAN_CODES = {"up": 0x11, "down": 0x1F, "left": 0x1E, "right": 0x20}
"""Windows scan codes (W, S, A, D) in DirectInput numbering, like TMRL."""
SCAN_RESPAWN = 0xD3
"""Delete (DirectInput ``DIK_DELETE``: an extended key, 0x53 with the E0 prefix)."""

BACKENDS = ("auto", "xdotool", "sendinput")

_PROBE_TIMEOUT = 2.0
_FOCUS_TIMEOUT = 5.0


def keys_for(action: Sequence[float] | Any) -> frozenset[str]:
    """The logical keys held for ``[gas, brake, steer]`` (TMRL's thresholds; pure)."""
    try:
        gas, brake, steer = (float(v) for v in action)
    except (TypeError, ValueError):
        raise InvalidActionError(
            f"action {action!r} is not three numbers; expected [gas, brake, steer]"
        ) from None
    if not (math.isfinite(gas) and math.isfinite(brake) and math.isfinite(steer)):
        raise InvalidActionError(
            f"action [{gas}, {brake}, {steer}] contains a non-finite value; expected finite "
            "[gas, brake, steer] (a NaN usually means the policy diverged)"
        )
    keys = set()
    if gas > 0:
        keys.add("up")
    if brake > 0:
        keys.add("down")
    if steer > 0.5:
        keys.add("right")
    elif steer < -0.5:
        keys.add("left")
    return frozenset(keys)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _seconds_in(value: object, lo: float, hi: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and lo <= value <= hi
    )


def _ordered(keys: Iterable[str]) -> list[str]:
    s = set(keys)
    return [k for k in _ORDER if k in s]


class _Backend(Protocol):
    def open(self) -> None: ...

    def close(self) -> None: ...

    def change(self, up: list[str], down: list[str]) -> None:
        """Release the logical keys ``up``, then press ``down``."""
        ...

    def tap_respawn(self, hold: float) -> None: ...


class KeyboardController:
    """Drives the car with key presses (implements :class:`~tm_gym.core.ports.Controller`).

    Args:
        backend: ``"xdotool"`` (Linux), ``"sendinput"`` (Windows) or ``"auto"`` (by platform).
        window_id: The game window (X11 window id on Linux, HWND on Windows) to focus once when
            opening; ``None`` sends to whatever window has the focus.
        display: X display for xdotool (``":1"``); ``None`` uses ``$DISPLAY``.
        respawn_hold: Seconds the respawn key is held down.

    Nothing is started before :meth:`open` (or ``with``); :meth:`close` releases every held key
    and stops the xdotool process, and may be called any number of times.
    """

    def __init__(
        self,
        *,
        backend: str = "auto",
        window_id: int | None = None,
        display: str | None = None,
        respawn_hold: float = 0.05,
    ) -> None:
        if backend not in BACKENDS:
            raise ControllerError(
                f"keyboard backend {backend!r} is unknown; expected one of {', '.join(BACKENDS)}"
            )
        if window_id is not None and not _positive_int(window_id):
            raise ControllerError(
                f"window_id={window_id!r} is invalid; expected a positive window id (as printed "
                "by `xdotool search --name Trackmania`) or None"
            )
        if not _seconds_in(respawn_hold, 0.0, 5.0):
            raise ControllerError(
                f"respawn_hold={respawn_hold!r} is invalid; expected seconds in [0, 5]"
            )
        if backend == "auto":
            backend = "sendinput" if sys.platform == "win32" else "xdotool"
        self.backend = backend
        self.window_id = window_id
        self.display = display
        self.respawn_hold = float(respawn_hold)
        self._impl: _Backend | None = None
        self._held: frozenset[str] = frozenset()

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Start the backend and focus ``window_id`` if given (does nothing if open)."""
        if self._impl is not None:
            return
        impl: _Backend
        if self.backend == "xdotool":
            impl = _XdotoolBackend(window_id=self.window_id, display=self.display)
        else:
            from tm_gym.game.keyboard_windows import SendInputBackend

            impl = SendInputBackend(window_id=self.window_id)
        impl.open()
        self._impl = impl
        self._held = frozenset()

    def close(self) -> None:
        """Release every held key and stop the backend. Idempotent."""
        impl = self._impl
        if impl is None:
            return
        try:
            self.release()
        except ControllerError:
            logger.warning("could not release the held keys while closing", exc_info=True)
        finally:
            self._impl = None
            self._held = frozenset()
            impl.close()

    def __enter__(self) -> KeyboardController:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyboardController(backend={self.backend!r}, window_id={self.window_id!r})"

    # -- Controller --------------------------------------------------------------------------

    @property
    def held(self) -> frozenset[str]:
        """The logical keys held down now."""
        return self._held

    def apply(self, action: Sequence[float] | Any) -> None:
        """Hold the keys of ``[gas, brake, steer]``, sending only what changed."""
        self._set(keys_for(action))

    def release(self) -> None:
        """Lift every held key."""
        self._set(frozenset())

    def respawn(self) -> None:
        """Tap the respawn key (BackSpace on Linux, Delete on Windows)."""
        self._require().tap_respawn(self.respawn_hold)

    # -- internals ---------------------------------------------------------------------------

    def _require(self) -> _Backend:
        if self._impl is None:
            raise ControllerError(
                "the keyboard controller is not open; call open() or use it in a `with` block"
            )
        return self._impl

    def _set(self, want: frozenset[str]) -> None:
        impl = self._require()
        if want == self._held:
            return
        impl.change(_ordered(self._held - want), _ordered(want - self._held))
        self._held = want


# -- Linux: xdotool ------------------------------------------------------------------------


def _xdotool_path() -> str:
    path = shutil.which("xdotool")
    if path is None:
        raise ControllerError(
            "xdotool is not installed (it sends the key presses on Linux); run "
            "`sudo apt install xdotool` (or your distribution's xdotool package), or use "
            "--controller gamepad"
        )
    return path


class _XdotoolBackend:
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
