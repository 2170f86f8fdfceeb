"""Tests for the virtual gamepad controller (tm_gym.game.gamepad), with a fake pad."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from tm_gym.core.ports import Controller
from tm_gym.error import ControllerError, DependencyNotInstalled, InvalidActionError
from tm_gym.game.gamepad import BUTTONS, GamepadController, GamepadState, gamepad_state


class FakePad:
    """Records every call, like vgamepad.VX360Gamepad would receive them."""

    instances: list[FakePad] = []

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        FakePad.instances.append(self)

    def right_trigger_float(self, value_float: float) -> None:
        self.calls.append(("rt", value_float))

    def left_trigger_float(self, value_float: float) -> None:
        self.calls.append(("lt", value_float))

    def left_joystick_float(self, x_value_float: float, y_value_float: float) -> None:
        self.calls.append(("stick", x_value_float, y_value_float))

    def press_button(self, button: Any) -> None:
        self.calls.append(("press", button))

    def release_button(self, button: Any) -> None:
        self.calls.append(("release", button))

    def update(self) -> None:
        self.calls.append(("update",))

    def reset(self) -> None:
        self.calls.append(("reset",))

    def shown(self) -> tuple[float, float, float]:
        """(right trigger, left trigger, stick x) as of the last update()."""
        rt = lt = sx = float("nan")
        for call in self.calls:
            if call[0] == "rt":
                rt = call[1]
            elif call[0] == "lt":
                lt = call[1]
            elif call[0] == "stick":
                sx = call[1]
        return rt, lt, sx


@pytest.fixture
def pad() -> FakePad:
    return FakePad()


def controller_with(pad: FakePad, **kw: Any) -> GamepadController:
    return GamepadController(pad_factory=lambda: pad, **kw)


# --------------------------------------------------------------------------- pure mapping


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ([0.0, 0.0, 0.0], GamepadState(0.0, 0.0, 0.0)),
        ([1.0, 0.0, 0.0], GamepadState(1.0, 0.0, 0.0)),
        ([0.4, 0.7, -0.25], GamepadState(0.4, 0.7, -0.25)),
        ([-1.0, -0.5, 1.0], GamepadState(0.0, 0.0, 1.0)),  # negative gas/brake = released
        ([3.0, 2.0, -7.0], GamepadState(1.0, 1.0, -1.0)),  # clipped
    ],
)
def test_gamepad_state(action: list[float], expected: GamepadState) -> None:
    got = gamepad_state(np.asarray(action, dtype=np.float32))
    assert got == pytest.approx(expected)
    assert all(isinstance(v, float) for v in got)


@pytest.mark.parametrize("action", [[0.0, 0.0], [1.0, 0.0, 0.0, 0.0], "abc", None])
def test_gamepad_state_rejects_wrong_shapes(action: Any) -> None:
    with pytest.raises(InvalidActionError, match="gas, brake, steer"):
        gamepad_state(action)


def test_gamepad_state_rejects_nan() -> None:
    with pytest.raises(InvalidActionError, match="non-finite"):
        gamepad_state([float("nan"), 0.0, 0.0])


# --------------------------------------------------------------------------- controller


def test_is_a_controller(pad: FakePad) -> None:
    assert isinstance(controller_with(pad), Controller)


def test_nothing_happens_before_open() -> None:
    made: list[FakePad] = []

    def factory() -> FakePad:
        made.append(FakePad())
        return made[-1]

    ctl = GamepadController(pad_factory=factory)
    assert made == []
    with pytest.raises(ControllerError, match="not open"):
        ctl.apply(np.zeros(3, np.float32))
    with pytest.raises(ControllerError, match="not open"):
        ctl.respawn()
    ctl.close()  # closing an unopened controller is fine


def test_apply_sets_triggers_and_stick_then_updates(pad: FakePad) -> None:
    with controller_with(pad) as ctl:
        pad.calls.clear()
        ctl.apply(np.array([0.8, 0.0, -0.5], np.float32))
        assert pad.calls[-1] == ("update",)
        assert pad.shown() == pytest.approx((0.8, 0.0, -0.5))
        assert ctl.state == pytest.approx(GamepadState(0.8, 0.0, -0.5))
        ctl.apply(np.array([-0.2, 1.0, 0.9], np.float32))
        assert pad.shown() == pytest.approx((0.0, 1.0, 0.9))
        stick_y = [c[2] for c in pad.calls if c[0] == "stick"]
        assert set(stick_y) == {0.0}


def test_release_is_neutral(pad: FakePad) -> None:
    with controller_with(pad) as ctl:
        ctl.apply(np.array([1.0, 1.0, 1.0], np.float32))
        ctl.release()
        assert pad.shown() == (0.0, 0.0, 0.0)
        assert pad.calls[-1] == ("update",)


def test_respawn_presses_then_releases_b(pad: FakePad) -> None:
    with controller_with(pad, press_time=0.0) as ctl:
        pad.calls.clear()
        ctl.respawn()
    b = BUTTONS["B"]
    assert pad.calls[:4] == [("press", b), ("update",), ("release", b), ("update",)]


def test_respawn_button_is_configurable(pad: FakePad) -> None:
    with controller_with(pad, respawn_button="y", press_time=0.0) as ctl:
        ctl.respawn()
    assert ("press", BUTTONS["Y"]) in pad.calls


def test_open_is_idempotent_and_close_resets_once(pad: FakePad) -> None:
    calls = 0

    def factory() -> FakePad:
        nonlocal calls
        calls += 1
        return pad

    ctl = GamepadController(pad_factory=factory)
    ctl.open()
    ctl.open()
    assert calls == 1
    ctl.apply(np.array([1.0, 0.0, 0.5], np.float32))
    ctl.close()
    ctl.close()
    assert pad.calls[-2:] == [("reset",), ("update",)]
    assert pad.calls.count(("reset",)) == 1
    with pytest.raises(ControllerError, match="not open"):
        ctl.apply(np.zeros(3, np.float32))


def test_opening_starts_neutral(pad: FakePad) -> None:
    with controller_with(pad):
        assert pad.shown() == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"respawn_button": "Z"}, "not a pad button"),
        ({"press_time": -1.0}, "press_time"),
        ({"press_time": float("nan")}, "press_time"),
    ],
)
def test_bad_arguments(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ControllerError, match=match):
        GamepadController(pad_factory=FakePad, **kw)


def test_a_dying_pad_raises_controller_error(pad: FakePad) -> None:
    with controller_with(pad) as ctl:

        def broken(value_float: float) -> None:
            raise OSError("device gone")

        pad.right_trigger_float = broken  # type: ignore[method-assign]
        with pytest.raises(ControllerError, match="stopped working"):
            ctl.apply(np.ones(3, np.float32))


# --------------------------------------------------------------------------- errors


def raising(exc: BaseException) -> Any:
    def factory() -> FakePad:
        raise exc

    return factory


@pytest.mark.skipif(sys.platform == "win32", reason="Linux uinput errors")
def test_no_permission_on_uinput_explains_the_udev_rule() -> None:
    err = PermissionError(13, "Permission denied", "/dev/uinput")
    with pytest.raises(ControllerError) as info:
        GamepadController(pad_factory=raising(err)).open()
    text = str(info.value)
    assert 'KERNEL=="uinput"' in text
    assert 'GROUP="input"' in text
    assert "usermod -aG input" in text
    assert "/dev/uinput" in text


@pytest.mark.skipif(sys.platform == "win32", reason="Linux uinput errors")
def test_missing_uinput_says_modprobe() -> None:
    err = FileNotFoundError(2, "No such file or directory", "/dev/uinput")
    with pytest.raises(ControllerError, match="modprobe uinput"):
        GamepadController(pad_factory=raising(err)).open()


def test_missing_libevdev_is_a_dependency_error() -> None:
    err = OSError("libevdev.so.2: cannot open shared object file")
    with pytest.raises(DependencyNotInstalled, match="libevdev2"):
        GamepadController(pad_factory=raising(err)).open()


def test_vgamepad_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vgamepad", None)  # makes `import vgamepad` fail
    ctl = GamepadController()
    with pytest.raises(DependencyNotInstalled, match="pip install vgamepad"):
        ctl.open()
    ctl.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_vgamepad_not_installed_mentions_libevdev_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vgamepad", None)
    with pytest.raises(DependencyNotInstalled, match="apt install libevdev2"):
        GamepadController().open()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_real_vgamepad_without_a_writable_uinput_gives_a_clear_error() -> None:
    """On machines without a usable /dev/uinput (CI, containers) the real library's failure
    becomes a ControllerError that says how to fix it; where a pad can be made, it works."""
    pytest.importorskip("vgamepad")
    ctl = GamepadController(press_time=0.0)
    try:
        ctl.open()
    except ControllerError as exc:
        assert "uinput" in str(exc)
    else:
        try:
            ctl.apply(np.array([0.5, 0.0, 0.1], np.float32))
            ctl.respawn()
        finally:
            ctl.close()
