"""Is this machine ready to train on the live game? Five checks, each saying what to fix.

:func:`run_checks` runs, in order:

0. **plugin** — OpenPlanet's folder is found (or given) and our plugin is installed there, as a
   folder or an ``.op``, and is the one this tm-gym ships (the plugin is unsigned, so the detail
   reminds that OpenPlanet must be in Developer signature mode; that mode cannot be read from
   outside the game). Skipped when the telemetry host is another machine;
1. **telemetry** — the OpenPlanet plugin is reachable on ``host:port`` and streams records
   (protocol version and record rate are reported);
2. **window** — the game window is found by its exact title;
3. **controller** — the chosen controller can be used: for ``gamepad``, vgamepad imports and a
   virtual pad can be created; for ``keyboard``, xdotool runs against the X display (Linux) or
   SendInput is available (Windows). No input is sent;
4. **time budget** — grabbing the window and turning it into the agent's frame fits in the part
   of a time step left after the observation is captured: TMRL captures 0.04 s into a 0.05 s
   step, so capture, preprocessing and the policy share the last 20 % (10 ms at 20 Hz).

Each check returns a :class:`CheckResult`; a failing one names the fix. Checks never raise for
a problem they are meant to detect. The factories are parameters so that tests (and the
emulator) can stand in for the game.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.error import TMGymError

__all__ = [
    "BUDGET_FRACTION",
    "CONTROLLERS",
    "CheckResult",
    "check_controller",
    "check_plugin",
    "check_telemetry",
    "check_time_budget",
    "check_window",
    "run_checks",
]

logger = logging.getLogger(__name__)

CONTROLLERS = ("keyboard", "gamepad")
BUDGET_FRACTION = 0.2
"""Share of a time step left after the observation is captured (TMRL: 0.01 s of 0.05 s)."""
_RATE_WINDOW = 0.3
_BUDGET_SAMPLES = 20

_PLUGIN_FIX = (
    "start TrackMania 2020 with OpenPlanet, install the plugin with `tm-gym install-plugin`, "
    "load it (F3 → Developer → (Re)load plugin → tm-gym telemetry) and check that its Port "
    "setting (OpenPlanet → Settings → tm-gym telemetry) is {port}, or pass --port; TMRL's "
    "plugin works too"
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    ok: bool
    detail: str
    """What was found (or what went wrong)."""
    fix: str = ""
    """What to do about a failure; empty when the check passed."""


# -- 0. plugin -------------------------------------------------------------------------------

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_DEVELOPER_MODE = (
    "the plugin is unsigned: OpenPlanet runs it only in Openplanet → Signature Mode → Developer "
    "(which also turns on School mode)"
)


def check_plugin(
    openplanet_dir: Path | None = None,
    *,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> CheckResult:
    """Find OpenPlanet's Plugins folder and our plugin in it (folder or ``.op``), up to date.

    Args:
        openplanet_dir: The ``OpenplanetNext`` folder (default: searched, see
            :func:`tm_gym.game.install.plugin_dirs`).
        home, env, platform: See :func:`tm_gym.game.install.plugin_dirs`.
    """
    from tm_gym.game.install import OP_FILE, PLUGIN_FOLDER, build_op, find_plugins_dir, plugin_files

    name = "plugin"
    if openplanet_dir is not None:
        plugins: Path | None = Path(openplanet_dir).expanduser() / "Plugins"
        searched = [Path(openplanet_dir)]
        if not Path(openplanet_dir).is_dir():
            plugins = None
    else:
        plugins, searched = find_plugins_dir(home=home, env=env, platform=platform)
    if plugins is None:
        return CheckResult(
            name,
            False,
            f"no OpenPlanet folder found (looked in {len(searched)} places, e.g. {searched[0]})",
            "install OpenPlanet (https://openplanet.dev) and start TrackMania once with it; if "
            "it is elsewhere (another Wine/Proton prefix), pass --openplanet-dir DIR",
        )
    folder, packed = plugins / PLUGIN_FOLDER, plugins / OP_FILE
    install_fix = "run `tm-gym install-plugin`, then in the game: F3 → Developer → (Re)load plugin"
    if not folder.is_dir() and not packed.is_file():
        return CheckResult(
            name, False, f"the tm-gym plugin is not installed in {plugins}", install_fix
        )
    if folder.is_dir():
        current = all(
            (folder / file).is_file() and (folder / file).read_bytes() == data
            for file, data in plugin_files()
        )
        where = f"{folder} (folder)"
    else:
        current = packed.read_bytes() == build_op()
        where = f"{packed} (packed)"
    if not current:
        return CheckResult(
            name,
            False,
            f"the plugin in {where} is not the one this tm-gym ships (an older version?)",
            install_fix,
        )
    both = (
        " — a folder and an .op are both installed; Developer mode uses the folder"
        if (folder.is_dir() and packed.is_file())
        else ""
    )
    return CheckResult(name, True, f"installed at {where}, up to date; {_DEVELOPER_MODE}{both}")


# -- 1. telemetry ----------------------------------------------------------------------------


def check_telemetry(
    host: str,
    port: int,
    *,
    timeout: float = 3.0,
    step_duration: float = 0.05,
    client_factory: Callable[..., Any] | None = None,
) -> CheckResult:
    """Connect to the telemetry plugin and watch it stream for a moment.

    Args:
        client_factory: Called as ``client_factory(host, port, timeout=timeout)``; returns a
            context manager with ``wait_fresh``, ``protocol_version`` and ``connected``
            (default: :class:`~tm_gym.game.telemetry_client.TelemetryClient`).
    """
    name = "telemetry"
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if client_factory is None:
        from tm_gym.game.telemetry_client import TelemetryClient

        client_factory = TelemetryClient
    try:
        client = client_factory(host, port, timeout=timeout)
    except (TMGymError, ValueError, TypeError) as exc:
        return CheckResult(name, False, str(exc), f"pass a valid --host and --port ({exc})")
    try:
        with client:
            try:
                rec = client.wait_fresh(timeout)
            except TMGymError as exc:
                connected = bool(getattr(client, "connected", False))
                if connected:
                    return CheckResult(
                        name,
                        False,
                        f"connected to {address}, but no telemetry record came in {timeout:g} s",
                        "the plugin streams only while a car is on a map: load a map and start "
                        "driving (menus send nothing); if another program (a second tm-gym or "
                        "TMRL worker) is connected, stop it — the plugin serves one client",
                    )
                state = re.search(r"socket: (.+?)\. ", str(exc))
                reason = state.group(1) if state else str(exc)
                return CheckResult(
                    name,
                    False,
                    f"no telemetry from {address} in {timeout:g} s: {reason}",
                    _PLUGIN_FIX.format(port=port),
                )
            count = 0
            start = time.monotonic()
            while time.monotonic() - start < _RATE_WINDOW:
                try:
                    rec = client.wait_fresh(_RATE_WINDOW)
                except TMGymError:
                    break
                count += 1
            rate = count / max(time.monotonic() - start, 1e-9)
            version = client.protocol_version
    except OSError as exc:
        return CheckResult(
            name, False, f"telemetry client failed: {exc}", _PLUGIN_FIX.format(port=port)
        )
    layouts: dict[object, str] = {1: "TMRL layout", 2: "tm-gym v2"}
    layout = layouts.get(version, f"unknown version {version!r}")
    detail = (
        f"{address} streams protocol v{version} ({layout}), ~{rate:.0f} records/s; "
        f"speed {rec.speed_kmh:.0f} km/h, gear {rec.gear}"
    )
    if version == 1:
        detail += (
            " (TMRL's layout has no race time, velocity or angles: install the tm-gym plugin "
            "for protocol v2)"
        )
    if rate < 1.0 / step_duration:
        detail += (
            f"; fewer records than time steps ({1.0 / step_duration:.0f} Hz): raise the game's "
            "frame rate"
        )
    return CheckResult(name, True, detail)


# -- 2. window -------------------------------------------------------------------------------


def check_window(title: str, *, finder: Callable[[str], Any] | None = None) -> CheckResult:
    """Find the game window by its exact title.

    Args:
        finder: ``finder(title)`` returns the window's geometry or raises
            (default: :func:`tm_gym.game.capture.find_window`).
    """
    name = "window"
    if finder is None:
        from tm_gym.game.capture import find_window

        finder = find_window
    try:
        geom = finder(title)
    except (TMGymError, ValueError, OSError) as exc:
        return CheckResult(
            name,
            False,
            f"window {title!r} not found: {exc}",
            "start TrackMania in windowed mode (TMRL uses 256×128 for images, 958×488 for "
            "LIDAR) and keep it visible; pass --window-title if its title is not "
            f"{title!r} (on Linux: `xdotool search --name .` lists the titles)",
        )
    return CheckResult(name, True, f"window {title!r} found: {_describe_geometry(geom)}")


def _describe_geometry(geom: Any) -> str:
    try:
        return (
            f"id {int(geom.window_id):#x}, client area {geom.width}×{geom.height} at "
            f"({geom.left}, {geom.top})"
        )
    except (AttributeError, TypeError, ValueError):
        return repr(geom)


# -- 3. controller ---------------------------------------------------------------------------


def check_controller(kind: str, *, factory: Callable[[str], Any] | None = None) -> CheckResult:
    """Open and close the controller ``kind`` (``keyboard`` or ``gamepad``) without sending
    input.

    Args:
        factory: ``factory(kind)`` returns an unopened controller (default: a
            :class:`~tm_gym.game.keyboard.KeyboardController` or
            :class:`~tm_gym.game.gamepad.GamepadController`).
    """
    name = "controller"
    if kind not in CONTROLLERS:
        return CheckResult(
            name,
            False,
            f"unknown controller {kind!r}",
            f"choose --controller {' or '.join(CONTROLLERS)}",
        )
    if factory is None:
        factory = _default_controller
    try:
        controller = factory(kind)
        controller.open()
        controller.close()
    except (TMGymError, OSError) as exc:
        other = "gamepad" if kind == "keyboard" else "keyboard"
        fix = str(exc)  # our controller errors say what is wrong and how to fix it
        if "--controller" not in fix:
            fix += f" (or try --controller {other})"
        return CheckResult(name, False, f"the {kind} controller cannot be used", fix)
    what = "a virtual Xbox 360 pad was created" if kind == "gamepad" else "key input works"
    return CheckResult(name, True, f"{kind}: {what}")


def _default_controller(kind: str) -> Any:
    if kind == "gamepad":
        from tm_gym.game.gamepad import GamepadController

        return GamepadController()
    from tm_gym.game.keyboard import KeyboardController

    return KeyboardController()


# -- 4. time budget --------------------------------------------------------------------------


def check_time_budget(
    window_title: str,
    step_duration: float = 0.05,
    *,
    capture_factory: Callable[[str], Any] | None = None,
    preprocess: Callable[[NDArray[np.uint8]], Any] | None = None,
    samples: int = _BUDGET_SAMPLES,
) -> CheckResult:
    """Time ``grab()`` + preprocessing against :data:`BUDGET_FRACTION` of a time step.

    Args:
        capture_factory: ``capture_factory(window_title)`` returns an unopened frame source
            (default: :class:`~tm_gym.game.capture.ScreenCapture`).
        preprocess: Screenshot → agent frame (default: :func:`tm_gym.preprocess.agent_frame`).
        samples: Frames timed (after two untimed warm-up frames).
    """
    name = "time budget"
    _check_step(step_duration)
    budget = BUDGET_FRACTION * step_duration
    if capture_factory is None:
        from tm_gym.game.capture import ScreenCapture

        capture_factory = ScreenCapture
    if preprocess is None:
        from tm_gym.preprocess import agent_frame

        preprocess = agent_frame
    times: list[float] = []
    shape: tuple[int, ...] = ()
    try:
        with capture_factory(window_title) as cap:
            for i in range(samples + 2):
                t0 = time.perf_counter()
                frame = cap.grab()
                preprocess(frame)
                if i >= 2:  # the first grabs connect and compile
                    times.append(time.perf_counter() - t0)
                shape = tuple(np.shape(frame))
    except (TMGymError, ValueError, OSError) as exc:
        return CheckResult(
            name,
            False,
            f"not measured: capturing {window_title!r} failed: {exc}",
            "fix the window check first (the game window must be visible)",
        )
    median = statistics.median(times)
    worst = max(times)
    detail = (
        f"grab + preprocess of a {_describe_shape(shape)} frame: median {median * 1e3:.1f} ms, "
        f"worst {worst * 1e3:.1f} ms over {len(times)} frames; budget {budget * 1e3:.1f} ms "
        f"(the last {BUDGET_FRACTION:.0%} of a {step_duration * 1e3:.0f} ms step)"
    )
    if median > budget:
        return CheckResult(
            name,
            False,
            detail,
            "make the game window smaller (TMRL: 256×128 for images), close programs that load "
            "the CPU, or use a longer time step",
        )
    return CheckResult(name, True, detail)


def _check_step(step_duration: object) -> None:
    if not (
        isinstance(step_duration, int | float)
        and not isinstance(step_duration, bool)
        and 0 < step_duration <= 1
    ):
        raise ValueError(
            f"step_duration={step_duration!r}: expected seconds in (0, 1] (TMRL uses 0.05)"
        )


def _describe_shape(shape: tuple[int, ...]) -> str:
    if len(shape) >= 2:
        return f"{shape[1]}×{shape[0]}"
    return str(shape)


# -- all of them -----------------------------------------------------------------------------


def run_checks(
    *,
    telemetry_host: str = "127.0.0.1",
    telemetry_port: int = 9000,
    window_title: str = "Trackmania",
    controller: str = "keyboard",
    step_duration: float = 0.05,
    timeout: float = 3.0,
    telemetry_factory: Callable[..., Any] | None = None,
    window_finder: Callable[[str], Any] | None = None,
    controller_factory: Callable[[str], Any] | None = None,
    capture_factory: Callable[[str], Any] | None = None,
    openplanet_dir: Path | None = None,
    plugin_search: Mapping[str, Any] | None = None,
) -> list[CheckResult]:
    """Run the five checks in order: plugin, telemetry, window, controller, time budget.

    The plugin check is skipped (passes, saying so) when ``telemetry_host`` is another machine;
    ``plugin_search`` holds :func:`check_plugin`'s ``home``/``env``/``platform``. The time
    budget is measured only when the window was found. The ``*_factory`` and ``window_finder``
    arguments replace the real game's parts (see each check).
    """
    _check_step(step_duration)
    if telemetry_host in _LOCAL_HOSTS:
        plugin = check_plugin(openplanet_dir, **dict(plugin_search or {}))
    else:
        plugin = CheckResult(
            "plugin", True, f"not checked: the game runs on {telemetry_host}, not this machine"
        )
    results = [
        plugin,
        check_telemetry(
            telemetry_host,
            telemetry_port,
            timeout=timeout,
            step_duration=step_duration,
            client_factory=telemetry_factory,
        ),
    ]
    window = check_window(window_title, finder=window_finder)
    results.append(window)
    results.append(check_controller(controller, factory=controller_factory))
    if window.ok:
        results.append(
            check_time_budget(window_title, step_duration, capture_factory=capture_factory)
        )
    else:
        results.append(
            CheckResult(
                "time budget",
                False,
                "not measured: the game window was not found",
                "fix the window check first",
            )
        )
    for r in results:
        logger.debug("check %s: %s — %s", r.name, "ok" if r.ok else "FAILED", r.detail)
    return results
