"""Closing the game's finish pop-up (issue 12): the reset after a finished episode presses the
gamepad's A, or clicks the "Improve" button with the mouse, between two respawns, like TMRL; after
a crash or a timeout nothing is pressed. Fakes only (a recording pad, a recording key backend, a
scripted telemetry): no game, no display."""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytest

from tm_gym.backends import game as game_backend
from tm_gym.backends.game import KeyboardForWindow, make_controller, make_game_env
from tm_gym.core.config import ConfigError
from tm_gym.core.ports import FINISH_BUTTON, Controller, FinishDismisser
from tm_gym.core.settings import EnvSettings
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import ControllerError, TrackMasterError
from tm_gym.game.capture import WindowGeometry
from tm_gym.game.gamepad import BUTTONS, GamepadController
from tm_gym.game.keyboard import KeyboardController, sendinput
from tm_gym.game.keyboard import controller as keyboard_controller
from tm_gym.game.keyboard.keys import client_point
from tm_gym.game.keyboard.xdotool import click_commands
from tm_gym.game.person import PersonController
from tm_gym.realtime import interface as interface_module
from tm_gym.realtime.interface import RealtimeBackend, TMRealtimeInterface
from tm_gym.reward import ReferenceTrajectory

GAS = np.array([1.0, 0.0, 0.0], np.float32)
A, B = BUTTONS["A"], BUTTONS["B"]

# --------------------------------------------------------------------------- fakes


class _Port:
    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Port:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ScriptedTelemetry(_Port):
    """The car at ``x`` metres along a straight, with the game's ``finished`` flag."""

    def __init__(self) -> None:
        self.x = 10.0
        self.finished = False

    def latest(self) -> TelemetryRecord:
        return TelemetryRecord(50.0, 0.0, self.x, 0.0, 0.0, 0.0, 1.0, 0.0, self.finished, 1, 5000.0)

    def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
        return self.latest()


class NoFrames(_Port):
    def grab(self) -> np.ndarray:
        return np.zeros((128, 256, 3), np.uint8)


class FakePad:
    """Records what vgamepad's pad would receive, into a log shared with the fake clock."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    def right_trigger_float(self, value_float: float) -> None:
        self.log.append(("rt", value_float))

    def left_trigger_float(self, value_float: float) -> None:
        self.log.append(("lt", value_float))

    def left_joystick_float(self, x_value_float: float, y_value_float: float) -> None:
        self.log.append(("stick", x_value_float))

    def press_button(self, button: Any) -> None:
        self.log.append(("press", button))

    def release_button(self, button: Any) -> None:
        self.log.append(("release", button))

    def update(self) -> None:
        return None

    def reset(self) -> None:
        return None


class FakeTime:
    """Stands in for the interface's ``time`` module: sleeps are logged, not slept."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.t = 0.0

    def sleep(self, seconds: float) -> None:
        self.log.append(("sleep", seconds))
        self.t += seconds

    def perf_counter(self) -> float:
        return self.t


def presses(log: list[tuple[Any, ...]]) -> list[Any]:
    """The buttons pressed and the sleeps, in order."""
    return [e[1] if e[0] == "press" else e for e in log if e[0] in ("press", "sleep")]


def make_interface(
    controller: Controller, log: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> tuple[TMRealtimeInterface, ScriptedTelemetry]:
    monkeypatch.setattr(interface_module, "time", FakeTime(log))
    telemetry = ScriptedTelemetry()
    backend = RealtimeBackend(
        telemetry=telemetry,
        frames=NoFrames(),
        controller=controller,
        respawn_wait=1.5,
        lidar_source=lambda: np.full(19, 50.0, np.float32),
        **kw,
    )
    backend.open()
    xs = np.linspace(0.0, 200.0, 2001)
    reference = ReferenceTrajectory(np.stack([xs, np.zeros_like(xs)], axis=1))
    iface = TMRealtimeInterface(backend, EnvSettings(obs_type="lidar"), reference)
    return iface, telemetry


def drive_to_finish(iface: TMRealtimeInterface, telemetry: ScriptedTelemetry) -> dict[str, Any]:
    telemetry.finished = False
    telemetry.x = 10.0
    iface.reset()
    for k in range(1, 6):
        iface.send_control(GAS)
        telemetry.x = 10.0 + 10.0 * k
        telemetry.finished = k == 5
        *_, terminated, info = iface.get_obs_rew_terminated_info()
    assert terminated and info["finished"]
    return info


# --------------------------------------------------------------------------- the live backend


def test_gamepad_presses_a_after_a_finish_between_two_respawns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[tuple[Any, ...]] = []
    pad = GamepadController(pad_factory=lambda: FakePad(log), press_time=0.0)
    pad.open()
    iface, telemetry = make_interface(pad, log, monkeypatch)
    drive_to_finish(iface, telemetry)
    log.clear()
    telemetry.finished = False  # the game's flag drops once the pop-up is closed
    iface.reset()
    # TMRL's order: respawn (B), settle 0.5 s, close the pop-up (A), respawn again, start lights
    assert presses(log) == [B, ("sleep", 0.5), A, B, ("sleep", 1.5)]
    assert ("release", A) in log


def test_gamepad_presses_nothing_after_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[tuple[Any, ...]] = []
    pad = GamepadController(pad_factory=lambda: FakePad(log), press_time=0.0)
    pad.open()
    iface, telemetry = make_interface(pad, log, monkeypatch)
    iface.reset()
    for k in range(1, 6):  # an episode cut short (ep_max_length) before the finish
        iface.send_control(GAS)
        telemetry.x = 10.0 + 2.0 * k
        iface.get_obs_rew_terminated_info()
    log.clear()
    iface.reset()
    assert presses(log) == [B, ("sleep", 1.5)]


def test_gamepad_presses_nothing_after_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[tuple[Any, ...]] = []
    pad = GamepadController(pad_factory=lambda: FakePad(log), press_time=0.0)
    pad.open()
    iface, _ = make_interface(pad, log, monkeypatch)
    iface.reset()
    terminated, info = False, dict[str, Any]()
    for _ in range(200):  # stuck against a wall: no progress ends the episode as a failure
        iface.send_control(GAS)
        *_, terminated, info = iface.get_obs_rew_terminated_info()
        if terminated:
            break
    assert terminated and info["failed"] and not info["finished"]
    log.clear()
    iface.reset()
    assert A not in presses(log)
    assert presses(log) == [B, ("sleep", 1.5)]


def test_a_second_reset_after_a_finish_presses_nothing_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[tuple[Any, ...]] = []
    pad = GamepadController(pad_factory=lambda: FakePad(log), press_time=0.0)
    pad.open()
    iface, telemetry = make_interface(pad, log, monkeypatch)
    drive_to_finish(iface, telemetry)
    telemetry.finished = False
    iface.reset()
    log.clear()
    iface.reset()  # the episode before this one ended without a step
    assert A not in presses(log)


def test_ignore_setting_and_settle_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[tuple[Any, ...]] = []
    pad = GamepadController(pad_factory=lambda: FakePad(log), press_time=0.0)
    pad.open()
    iface, telemetry = make_interface(pad, log, monkeypatch, finish_popup="ignore")
    drive_to_finish(iface, telemetry)
    log.clear()
    with caplog.at_level(logging.WARNING, logger=interface_module.__name__):
        iface.reset()  # nobody closed the pop-up: the flag is still up
    assert presses(log) == [B, ("sleep", 1.5)]
    assert "finish_popup='ignore'" in caplog.text

    log2: list[tuple[Any, ...]] = []
    pad2 = GamepadController(pad_factory=lambda: FakePad(log2), press_time=0.0)
    pad2.open()
    iface2, telemetry2 = make_interface(pad2, log2, monkeypatch, finish_settle=0.0)
    drive_to_finish(iface2, telemetry2)
    log2.clear()
    telemetry2.finished = False
    iface2.reset()
    assert presses(log2) == [B, A, B, ("sleep", 1.5)]  # 0: no settle wait


def test_a_controller_without_the_capability_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    person = PersonController()
    assert isinstance(person, Controller)
    assert not isinstance(person, FinishDismisser)
    iface, telemetry = make_interface(person, [], monkeypatch)
    drive_to_finish(iface, telemetry)
    iface.reset()
    assert person.respawns == 2  # one per reset, nothing else
    assert not iface.backend.dismisses_finish


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"finish_popup": "close"}, "finish_popup='close'"),
        ({"finish_settle": -1.0}, "finish_settle=-1.0"),
        ({"finish_settle": float("nan")}, "finish_settle=nan"),
    ],
)
def test_backend_settings_are_checked(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        RealtimeBackend(ScriptedTelemetry(), NoFrames(), PersonController(), **kw)
    assert isinstance(info.value, TrackMasterError)


def test_make_game_env_passes_the_settings(tmp_path: Path) -> None:
    xs = np.linspace(0.0, 100.0, 11)
    ref = ReferenceTrajectory(np.stack([xs, np.zeros_like(xs)], axis=1)).save(tmp_path / "r.npz")
    env = make_game_env(
        controller="keyboard",
        reward_trajectory=str(ref),
        finish_popup="ignore",
        finish_settle=0.25,
        finish_button=(0.5, 0.7),
    )
    try:
        backend = env.unwrapped.backend  # type: ignore[attr-defined]
        assert (backend.finish_popup, backend.finish_settle) == ("ignore", 0.25)
        assert backend.controller.finish_button == (0.5, 0.7)
    finally:
        env.close()
    with pytest.raises(ControllerError, match="finish_button"):
        make_controller("gamepad", "Trackmania", finish_button=(0.5, 1.5))


# --------------------------------------------------------------------------- the gamepad


def test_gamepad_dismiss_presses_a_for_press_time(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[tuple[Any, ...]] = []
    monkeypatch.setattr("tm_gym.game.gamepad.time", FakeTime(log))
    pad = GamepadController(pad_factory=lambda: FakePad(log), press_time=0.1)
    assert isinstance(pad, FinishDismisser)
    with pad:
        log.clear()
        pad.dismiss_finish()
    assert log == [("press", 0x1000), ("sleep", 0.1), ("release", 0x1000)]
    with pytest.raises(ControllerError, match="dismiss_button='Z'"):
        GamepadController(dismiss_button="Z")
    with pytest.raises(ControllerError, match="not open"):
        pad.dismiss_finish()


# --------------------------------------------------------------------------- the keyboard


class ClickingBackend:
    """Stands in for the xdotool backend; records key changes and clicks."""

    def __init__(self, **kw: Any) -> None:
        self.clicks: list[tuple[int, int]] = []

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def change(self, up: list[str], down: list[str]) -> None:
        return None

    def tap_respawn(self, hold: float) -> None:
        return None

    def click(self, x: int, y: int) -> None:
        self.clicks.append((x, y))


def keyboard_with(
    monkeypatch: pytest.MonkeyPatch, geometry: WindowGeometry, **kw: Any
) -> tuple[KeyboardController, ClickingBackend]:
    made: list[ClickingBackend] = []

    def factory(**backend_kw: Any) -> ClickingBackend:
        made.append(ClickingBackend(**backend_kw))
        return made[-1]

    monkeypatch.setattr(keyboard_controller, "XdotoolBackend", factory)
    asked: list[int] = []

    def read_geometry(window_id: int) -> WindowGeometry:
        asked.append(window_id)
        return geometry

    ctl = KeyboardController(backend="xdotool", geometry=read_geometry, **kw)
    ctl.open()
    return ctl, made[0]


def test_keyboard_clicks_improve_in_the_client_area(monkeypatch: pytest.MonkeyPatch) -> None:
    # TMRL's 958×488 window at the top-left of a Windows screen: client area below the title bar
    geometry = WindowGeometry(window_id=77, left=8, top=31, width=942, height=449)
    ctl, backend = keyboard_with(monkeypatch, geometry, window_id=77)
    assert isinstance(ctl, FinishDismisser)
    ctl.dismiss_finish()
    assert backend.clicks == [(8 + int(0.55 * 942), 31 + int(0.60 * 449))]
    assert backend.clicks == [(526, 300)]
    ctl.close()


def test_keyboard_click_spot_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    geometry = WindowGeometry(window_id=5, left=100, top=50, width=256, height=128)
    ctl, backend = keyboard_with(monkeypatch, geometry, window_id=5, finish_button=(0.25, 1.0))
    ctl.dismiss_finish()
    assert backend.clicks == [(100 + 64, 50 + 127)]  # fraction 1 is the last pixel
    ctl.close()


def test_keyboard_without_a_window_cannot_click(monkeypatch: pytest.MonkeyPatch) -> None:
    geometry = WindowGeometry(window_id=5, left=0, top=0, width=256, height=128)
    ctl, backend = keyboard_with(monkeypatch, geometry)
    with pytest.raises(ControllerError, match="window_id"):
        ctl.dismiss_finish()
    assert backend.clicks == []
    ctl.close()


@pytest.mark.parametrize("spot", [(0.5,), (0.5, 1.2), (-0.1, 0.5), ("a", "b"), "ab", None])
def test_keyboard_rejects_a_bad_spot(spot: Any) -> None:
    with pytest.raises(ControllerError, match="finish_button"):
        KeyboardController(backend="xdotool", finish_button=spot)


def test_keyboard_for_window_clicks_the_found_window(monkeypatch: pytest.MonkeyPatch) -> None:
    geometry = WindowGeometry(window_id=9, left=10, top=20, width=200, height=100)
    monkeypatch.setattr(game_backend, "find_window", lambda title: geometry)
    made: list[ClickingBackend] = []

    def factory(**kw: Any) -> ClickingBackend:
        made.append(ClickingBackend(**kw))
        return made[-1]

    monkeypatch.setattr(keyboard_controller, "XdotoolBackend", factory)
    monkeypatch.setattr(keyboard_controller, "window_geometry", lambda wid: geometry)
    ctl = KeyboardForWindow("Trackmania", finish_button=(0.5, 0.5))
    assert isinstance(ctl, FinishDismisser)
    ctl.dismiss_finish()  # opens on first use, like apply()
    assert made[0].clicks == [(110, 70)]
    ctl.close()


def test_client_point_stays_inside() -> None:
    g = WindowGeometry(window_id=1, left=-5, top=3, width=10, height=4)
    assert client_point(g, (0.0, 0.0)) == (-5, 3)
    assert client_point(g, (1.0, 1.0)) == (4, 6)
    assert client_point(g, FINISH_BUTTON) == (0, 5)


def test_xdotool_click_commands() -> None:
    assert click_commands(526, 300) == ["mousemove 526 300", "click 1"]


@pytest.mark.parametrize(
    ("x", "y", "desktop"),
    [
        (526, 300, (0, 0, 1920, 1080)),
        (0, 0, (0, 0, 1920, 1080)),
        (1919, 1079, (0, 0, 1920, 1080)),
        (-1500, 200, (-1920, 0, 3840, 1080)),  # a monitor left of the primary one
    ],
)
def test_sendinput_click_events(x: int, y: int, desktop: tuple[int, int, int, int]) -> None:
    """The mouse INPUTs: an absolute move over the virtual desktop onto the pixel, then the
    left button down and up (built the same on every platform; sent only on Windows)."""
    move, down, up = sendinput._click_inputs(x, y, desktop)
    assert [e.type for e in (move, down, up)] == [0, 0, 0]  # INPUT_MOUSE
    assert move.u.mi.dwFlags == 0x0001 | 0x8000 | 0x4000  # MOVE | ABSOLUTE | VIRTUALDESK
    assert (down.u.mi.dwFlags, up.u.mi.dwFlags) == (0x0002, 0x0004)  # LEFTDOWN, LEFTUP
    left, top, width, height = desktop
    assert 0 <= move.u.mi.dx <= 65535 and 0 <= move.u.mi.dy <= 65535
    # Windows maps an absolute coordinate d to pixel d * size / 65536 from the desktop's origin
    assert left + move.u.mi.dx * width // 65536 == x
    assert top + move.u.mi.dy * height // 65536 == y


def test_sendinput_click_needs_an_open_backend() -> None:
    with pytest.raises(ControllerError, match="not open"):
        sendinput.SendInputBackend(window_id=None).click(1, 2)
