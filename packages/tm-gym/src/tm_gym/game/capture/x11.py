"""Finding a window's client area on an X11 display with ``xdotool`` and ``xwininfo``.

``xdotool search`` lists the visible windows whose title matches, ``xdotool getwindowname``
confirms the exact title and ``xwininfo`` reads the geometry (Debian: ``sudo apt-get install
xdotool x11-utils``). Each tool gets a few seconds to answer; a missing tool or a silent X server
becomes a clear error.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess

from tm_gym.error import CaptureError, DependencyNotInstalled
from tm_gym.game.capture.geometry import HOW_TO_START, WindowGeometry

__all__ = ["x11_find", "x11_geometry"]

logger = logging.getLogger(__name__)

_TOOL_TIMEOUT = 5.0
_APT = {"xdotool": "xdotool", "xwininfo": "x11-utils"}


def _display() -> str:
    display = os.environ.get("DISPLAY", "")
    if not display:
        raise CaptureError(
            "DISPLAY is not set, so there is no X server to find the game window on; run from "
            "the desktop session that shows the game (or under Xvfb for tests: "
            "`Xvfb :99 & export DISPLAY=:99`)"
        )
    return display


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [tool, *args],
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT,
            check=False,
            errors="replace",
        )
    except FileNotFoundError:
        raise DependencyNotInstalled(
            f"{tool} is not installed; it is needed to find the game window on Linux. Install "
            f"it with `sudo apt-get install {_APT.get(tool, tool)}`"
        ) from None
    except subprocess.TimeoutExpired:
        raise CaptureError(
            f"`{tool} {' '.join(args)}` did not answer within {_TOOL_TIMEOUT} s; is the X "
            f"server on DISPLAY={os.environ.get('DISPLAY')!r} responding?"
        ) from None


def _title_pattern(title: str) -> str:
    """An anchored POSIX extended regex matching ``title`` literally.

    xdotool cannot match non-ASCII characters of a title, so each run of them becomes ``.*``;
    candidates are then compared with the exact title.
    """
    out: list[str] = []
    for ch in title:
        if ord(ch) > 127:
            if not out or out[-1] != ".*":
                out.append(".*")
        elif ch in "\\.[](){}*+?^$|":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "^" + "".join(out) + "$"


def x11_find(title: str) -> WindowGeometry:
    display = _display()
    res = _run("xdotool", "search", "--onlyvisible", "--name", _title_pattern(title))
    if res.returncode not in (0, 1) or (res.returncode == 1 and res.stderr.strip()):
        raise CaptureError(
            f"`xdotool search` failed on DISPLAY={display!r}: {res.stderr.strip() or res.returncode}"
        )
    near: list[str] = []
    for token in res.stdout.split():
        try:
            wid = int(token)
        except ValueError:
            continue
        name = _run("xdotool", "getwindowname", str(wid))
        if name.returncode != 0:
            continue  # closed in the meantime
        found = name.stdout.rstrip("\n")
        if found != title:
            near.append(found)
            continue
        try:
            geom = x11_geometry(wid)
        except CaptureError as exc:
            logger.debug("skipping window %#x titled %r: %s", wid, title, exc)
            continue
        logger.info("found window %r: %s", title, geom)
        return geom
    hint = f" (windows with similar titles: {sorted(set(near))})" if near else ""
    raise CaptureError(
        f"no visible window titled exactly {title!r} on DISPLAY={display!r}{hint}; " + HOW_TO_START
    )


_XWININFO_FIELDS = {
    "left": re.compile(r"Absolute upper-left X:\s*(-?\d+)"),
    "top": re.compile(r"Absolute upper-left Y:\s*(-?\d+)"),
    "width": re.compile(r"^\s*Width:\s*(\d+)", re.MULTILINE),
    "height": re.compile(r"^\s*Height:\s*(\d+)", re.MULTILINE),
}


def x11_geometry(window_id: int) -> WindowGeometry:
    _display()
    res = _run("xwininfo", "-id", str(window_id))
    if res.returncode != 0:
        raise CaptureError(
            f"window {window_id:#x} is gone (closed or restarted?): "
            f"{res.stderr.strip() or 'xwininfo failed'}; " + HOW_TO_START
        )
    values = {}
    for key, rx in _XWININFO_FIELDS.items():
        m = rx.search(res.stdout)
        if m is None:
            raise CaptureError(f"cannot read `{key}` from xwininfo's output: {res.stdout!r}")
        values[key] = int(m.group(1))
    if "IsViewable" not in res.stdout:
        raise CaptureError(
            f"window {window_id:#x} is not visible (minimised or on another workspace?); "
            "show it on screen"
        )
    return WindowGeometry(window_id=window_id, **values)
