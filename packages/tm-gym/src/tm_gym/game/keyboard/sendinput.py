"""The Windows backend of the keyboard controller: SendInput with DirectInput scan codes.

A click (how the finish pop-up is closed) is three mouse INPUTs in one SendInput call: an
absolute move over the whole virtual desktop (coordinates normalised to 0…65535, the centre of
the target pixel, so the round trip lands on it), left button down, left button up
(:func:`_click_inputs`, pure).

It can only run on Windows (it is type-checked, not exercised, on Linux CI; the INPUT records are
built and checked on every platform).
"""

from __future__ import annotations

import ctypes
import sys
import time
from typing import Any

from tm_gym.error import ControllerError
from tm_gym.game.keyboard.keys import SCAN_CODES, SCAN_RESPAWN

__all__ = ["SendInputBackend"]


_INPUT_MOUSE = 0
_INPUT_KEYBOARD = 1
_KEYEVENTF_EXTENDEDKEY = 0x0001
_KEYEVENTF_KEYUP = 0x0002
_KEYEVENTF_SCANCODE = 0x0008
_MOUSEEVENTF_MOVE = 0x0001
_MOUSEEVENTF_LEFTDOWN = 0x0002
_MOUSEEVENTF_LEFTUP = 0x0004
_MOUSEEVENTF_VIRTUALDESK = 0x4000
_MOUSEEVENTF_ABSOLUTE = 0x8000
_SM_XVIRTUALSCREEN, _SM_YVIRTUALSCREEN, _SM_CXVIRTUALSCREEN, _SM_CYVIRTUALSCREEN = 76, 77, 78, 79


class _KeybdInput(ctypes.Structure):
    _fields_ = [
        ("wVk", ctypes.c_ushort),
        ("wScan", ctypes.c_ushort),
        ("dwFlags", ctypes.c_ulong),
        ("time", ctypes.c_ulong),
        ("dwExtraInfo", ctypes.c_size_t),  # ULONG_PTR
    ]


class _MouseInput(ctypes.Structure):
    _fields_ = [
        ("dx", ctypes.c_long),
        ("dy", ctypes.c_long),
        ("mouseData", ctypes.c_ulong),
        ("dwFlags", ctypes.c_ulong),
        ("time", ctypes.c_ulong),
        ("dwExtraInfo", ctypes.c_size_t),
    ]


class _InputUnion(ctypes.Union):
    _fields_ = [("ki", _KeybdInput), ("mi", _MouseInput)]


class _Input(ctypes.Structure):
    _fields_ = [("type", ctypes.c_ulong), ("u", _InputUnion)]


def _key_input(dik: int, *, up: bool) -> _Input:
    """One keyboard INPUT for DirectInput scan code ``dik`` (bit 0x80 = extended key)."""
    flags = _KEYEVENTF_SCANCODE | (_KEYEVENTF_KEYUP if up else 0)
    if dik & 0x80:
        flags |= _KEYEVENTF_EXTENDEDKEY
    ki = _KeybdInput(wVk=0, wScan=dik & 0x7F, dwFlags=flags, time=0, dwExtraInfo=0)
    return _Input(type=_INPUT_KEYBOARD, u=_InputUnion(ki=ki))


def _mouse_input(dx: int, dy: int, flags: int) -> _Input:
    mi = _MouseInput(dx=dx, dy=dy, mouseData=0, dwFlags=flags, time=0, dwExtraInfo=0)
    return _Input(type=_INPUT_MOUSE, u=_InputUnion(mi=mi))


def _normalised(pixel: int, origin: int, size: int) -> int:
    """Absolute mouse coordinate (0…65535 across ``size`` pixels from ``origin``) of the centre
    of ``pixel``."""
    return min(max(((pixel - origin) * 2 + 1) * 65536 // (2 * size), 0), 65535)


def _click_inputs(x: int, y: int, desktop: tuple[int, int, int, int]) -> list[_Input]:
    """Mouse INPUTs of a left click at screen pixel ``(x, y)``; ``desktop`` is the virtual
    desktop's ``(left, top, width, height)`` in pixels (all monitors)."""
    left, top, width, height = desktop
    if width < 1 or height < 1:
        raise ControllerError(f"the virtual desktop is {width}x{height} pixels; cannot click")
    move = _MOUSEEVENTF_MOVE | _MOUSEEVENTF_ABSOLUTE | _MOUSEEVENTF_VIRTUALDESK
    return [
        _mouse_input(_normalised(x, left, width), _normalised(y, top, height), move),
        _mouse_input(0, 0, _MOUSEEVENTF_LEFTDOWN),
        _mouse_input(0, 0, _MOUSEEVENTF_LEFTUP),
    ]


class SendInputBackend:
    """Scan-code key presses with user32's SendInput (Windows only)."""

    def __init__(self, *, window_id: int | None) -> None:
        self.window_id = window_id
        self._user32: Any = None

    def open(self) -> None:
        if sys.platform != "win32":
            raise ControllerError(
                f"the sendinput keyboard backend needs Windows, but this is {sys.platform!r}; "
                "use backend='xdotool' (Linux) or 'auto'"
            )
        windll: Any = getattr(ctypes, "WinDLL")  # noqa: B009 (absent from Linux type stubs)
        self._user32 = windll("user32", use_last_error=True)
        if self.window_id is not None and not self._user32.SetForegroundWindow(self.window_id):
            raise ControllerError(
                f"cannot bring window {self.window_id:#x} to the foreground; is the game open?"
            )

    def close(self) -> None:
        self._user32 = None

    def change(self, up: list[str], down: list[str]) -> None:
        events = [_key_input(SCAN_CODES[k], up=True) for k in up]
        events += [_key_input(SCAN_CODES[k], up=False) for k in down]
        self._send(events)

    def tap_respawn(self, hold: float) -> None:
        self._send([_key_input(SCAN_RESPAWN, up=False)])
        time.sleep(hold)
        self._send([_key_input(SCAN_RESPAWN, up=True)])

    def click(self, x: int, y: int) -> None:
        """Left click at screen pixel ``(x, y)`` (physical pixels: the capture module makes the
        process DPI-aware)."""
        if self._user32 is None:
            raise ControllerError("the keyboard controller is not open")
        metrics = self._user32.GetSystemMetrics
        desktop = (
            int(metrics(_SM_XVIRTUALSCREEN)),
            int(metrics(_SM_YVIRTUALSCREEN)),
            int(metrics(_SM_CXVIRTUALSCREEN)),
            int(metrics(_SM_CYVIRTUALSCREEN)),
        )
        self._send(_click_inputs(x, y, desktop))

    def _send(self, events: list[_Input]) -> None:
        if not events:
            return
        if self._user32 is None:
            raise ControllerError("the keyboard controller is not open")
        array = (_Input * len(events))(*events)
        sent = self._user32.SendInput(len(events), array, ctypes.sizeof(_Input))
        if sent != len(events):
            raise ControllerError(
                f"SendInput sent {sent} of {len(events)} input events (error "
                f"{getattr(ctypes, 'get_last_error', lambda: '?')()}); another program may be blocking input (UIPI: run "
                "the agent with the same privileges as the game)"
            )
