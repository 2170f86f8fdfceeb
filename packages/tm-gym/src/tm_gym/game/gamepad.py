"""A virtual Xbox 360 gamepad driving the car (:class:`~tm_gym.core.ports.Controller`).

The mapping is TMRL's: gas → right trigger, brake → left trigger (both analog, active above 0
only), steer → left stick X (−1 full left … +1 full right); respawn = press B for
``press_time`` seconds; closing the finish pop-up (:meth:`GamepadController.dismiss_finish`, a
:class:`~tm_gym.core.ports.FinishDismisser`) = press A (XInput button 0x1000) for ``press_time``
seconds. :func:`gamepad_state` is the pure part of that mapping.

The pad itself comes from `vgamepad <https://pypi.org/project/vgamepad/>`_, imported only in
:meth:`GamepadController.open`:

* Windows: needs the ViGEmBus driver (the vgamepad installer offers it).
* Linux: needs ``libevdev2`` (``sudo apt install libevdev2``) and write access to
  ``/dev/uinput``. The usual way to get it without running as root is a udev rule, for example
  ``/etc/udev/rules.d/60-uinput.rules`` containing
  ``KERNEL=="uinput", MODE="0660", GROUP="input", OPTIONS+="static_node=uinput"``, then
  ``sudo usermod -aG input $USER``, ``sudo modprobe uinput``, ``sudo udevadm control --reload``,
  ``sudo udevadm trigger`` and logging in again.

Example::

    with GamepadController() as pad:
        pad.apply(np.array([1.0, 0.0, -0.3], np.float32))  # full gas, a little left
        pad.respawn()
        pad.dismiss_finish()  # close the end-of-race menu after a finish
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from tm_gym.error import ControllerError, DependencyNotInstalled, InvalidActionError

__all__ = ["BUTTONS", "GamepadController", "GamepadState", "gamepad_state"]

logger = logging.getLogger(__name__)

BUTTONS: dict[str, int] = {
    "A": 0x1000,
    "B": 0x2000,
    "X": 0x4000,
    "Y": 0x8000,
    "START": 0x0010,
    "BACK": 0x0020,
}
"""XInput button bits (the values of ``vgamepad.XUSB_BUTTON.XUSB_GAMEPAD_*``)."""

UDEV_HELP = (
    "allow your user to write /dev/uinput: create /etc/udev/rules.d/60-uinput.rules with the "
    'line KERNEL=="uinput", MODE="0660", GROUP="input", OPTIONS+="static_node=uinput", run '
    "`sudo usermod -aG input $USER && sudo modprobe uinput && sudo udevadm control --reload && "
    "sudo udevadm trigger`, then log out and in again (or use --controller keyboard)"
)


class GamepadState(NamedTuple):
    """What the pad shows for one action."""

    right_trigger: float
    """Gas, 0…1."""
    left_trigger: float
    """Brake, 0…1."""
    stick_x: float
    """Steer, −1 (left) … +1 (right)."""


NEUTRAL = GamepadState(0.0, 0.0, 0.0)


def gamepad_state(action: Sequence[float] | Any) -> GamepadState:
    """Map ``[gas, brake, steer]`` to triggers and stick (pure).

    Gas and brake count above 0 only (negative values are released), and every value is clipped
    to its range. Raises :class:`~tm_gym.error.InvalidActionError` for a wrong length or a
    non-finite value.
    """
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
    return GamepadState(
        right_trigger=min(max(gas, 0.0), 1.0),
        left_trigger=min(max(brake, 0.0), 1.0),
        stick_x=min(max(steer, -1.0), 1.0),
    )


class Pad(Protocol):
    """The part of ``vgamepad.VX360Gamepad`` this controller uses (fakes implement it too)."""

    def right_trigger_float(self, value_float: float) -> None: ...

    def left_trigger_float(self, value_float: float) -> None: ...

    def left_joystick_float(self, x_value_float: float, y_value_float: float) -> None: ...

    def press_button(self, button: Any) -> None: ...

    def release_button(self, button: Any) -> None: ...

    def update(self) -> None: ...

    def reset(self) -> None: ...


class GamepadController:
    """Drives the car with a virtual Xbox 360 pad (implements :class:`~tm_gym.core.ports.Controller`).

    Args:
        pad_factory: Makes the pad (no arguments). Default: ``vgamepad.VX360Gamepad``, imported
            in :meth:`open`. Tests pass a fake.
        respawn_button: Pad button that respawns the car (TrackMania's default is B).
        dismiss_button: Pad button that closes the finish pop-up (A, like TMRL).
        press_time: Seconds :meth:`respawn` and :meth:`dismiss_finish` hold their button.

    Nothing happens before :meth:`open` (or ``with``); :meth:`close` resets the pad to neutral
    and lets it go, and may be called any number of times.
    """

    def __init__(
        self,
        *,
        pad_factory: Callable[[], Pad] | None = None,
        respawn_button: str = "B",
        dismiss_button: str = "A",
        press_time: float = 0.1,
    ) -> None:
        button = _button_name("respawn_button", respawn_button, "TrackMania respawns with B")
        dismiss = _button_name("dismiss_button", dismiss_button, "A closes the finish pop-up")
        if not _seconds_in(press_time, 0.0, 5.0):
            raise ControllerError(
                f"press_time={press_time!r} is invalid; expected seconds in [0, 5] (0.1 works)"
            )
        self._factory = pad_factory
        self.respawn_button = button
        self.dismiss_button = dismiss
        self.press_time = float(press_time)
        self._pad: Pad | None = None
        self._button: Any = BUTTONS[self.respawn_button]
        self._dismiss: Any = BUTTONS[self.dismiss_button]
        self._state = NEUTRAL

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create the virtual pad (does nothing if it exists already)."""
        if self._pad is not None:
            return
        factory = self._factory
        if factory is None:
            factory, self._button, self._dismiss = _vgamepad_factory(
                self.respawn_button, self.dismiss_button
            )
        try:
            pad = factory()
        except (DependencyNotInstalled, ControllerError):
            raise
        except Exception as exc:
            raise _explain_pad_error(exc) from exc
        self._pad = pad
        self._state = NEUTRAL
        self._send(NEUTRAL)
        logger.debug("virtual gamepad created (%r)", pad)

    def close(self) -> None:
        """Reset the pad to neutral and release it. Idempotent."""
        pad, self._pad = self._pad, None
        if pad is None:
            return
        try:
            pad.reset()
            pad.update()
        except Exception:  # closing must not fail because the device has gone
            logger.warning("could not reset the virtual gamepad while closing", exc_info=True)
        self._state = NEUTRAL

    def __enter__(self) -> GamepadController:
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
        return (
            f"GamepadController(respawn_button={self.respawn_button!r}, "
            f"dismiss_button={self.dismiss_button!r}, press_time={self.press_time})"
        )

    # -- Controller --------------------------------------------------------------------------

    @property
    def state(self) -> GamepadState:
        """What the pad shows now."""
        return self._state

    def apply(self, action: Sequence[float] | Any) -> None:
        """Set triggers and stick for ``[gas, brake, steer]`` and send them."""
        self._send(gamepad_state(action))

    def release(self) -> None:
        """Triggers released, stick centred."""
        self._send(NEUTRAL)

    def respawn(self) -> None:
        """Press the respawn button for ``press_time`` seconds (blocks that long)."""
        self._press(self._button)

    # -- FinishDismisser ---------------------------------------------------------------------

    def dismiss_finish(self) -> None:
        """Close the finish pop-up: press the dismiss button (A) for ``press_time`` seconds."""
        self._press(self._dismiss)

    # -- internals ---------------------------------------------------------------------------

    def _require_pad(self) -> Pad:
        if self._pad is None:
            raise ControllerError(
                "the gamepad controller is not open; call open() or use it in a `with` block"
            )
        return self._pad

    def _press(self, button: Any) -> None:
        pad = self._require_pad()
        try:
            pad.press_button(button)
            pad.update()
            if self.press_time > 0:
                time.sleep(self.press_time)
            pad.release_button(button)
            pad.update()
        except Exception as exc:
            raise ControllerError(f"the virtual gamepad stopped working: {exc!r}") from exc

    def _send(self, s: GamepadState) -> None:
        pad = self._require_pad()
        try:
            pad.right_trigger_float(s.right_trigger)
            pad.left_trigger_float(s.left_trigger)
            pad.left_joystick_float(s.stick_x, 0.0)
            pad.update()
        except Exception as exc:
            raise ControllerError(f"the virtual gamepad stopped working: {exc!r}") from exc
        self._state = s


def _seconds_in(value: object, lo: float, hi: float) -> bool:
    """Whether ``value`` is a real number (not a bool) in ``[lo, hi]``."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and lo <= value <= hi
    )


def _button_name(arg: str, value: object, hint: str) -> str:
    """``value`` as a :data:`BUTTONS` key, or a :class:`ControllerError` naming ``arg``."""
    button = str(value).upper()
    if button not in BUTTONS:
        raise ControllerError(
            f"{arg}={value!r} is not a pad button; expected one of {', '.join(BUTTONS)} "
            f"({hint} by default)"
        )
    return button


def _vgamepad_factory(respawn: str, dismiss: str) -> tuple[Callable[[], Pad], Any, Any]:
    """Import vgamepad; return its pad class and the enum members of the two buttons."""
    try:
        import vgamepad
    except ImportError as exc:
        raise DependencyNotInstalled(_install_hint(exc)) from exc
    except OSError as exc:  # libevdev's shared library failed to load
        raise DependencyNotInstalled(_install_hint(exc)) from exc
    members = [
        getattr(vgamepad.XUSB_BUTTON, f"XUSB_GAMEPAD_{b}", BUTTONS[b]) for b in (respawn, dismiss)
    ]
    factory: Callable[[], Pad] = vgamepad.VX360Gamepad
    return factory, members[0], members[1]


def _install_hint(exc: BaseException) -> str:
    msg = f"the virtual gamepad needs vgamepad, which cannot be imported ({exc}); run `pip install vgamepad`"
    if sys.platform.startswith("linux"):
        msg += " and `sudo apt install libevdev2` (its system library)"
    elif sys.platform == "win32":
        msg += " and install the ViGEmBus driver it offers"
    return msg + ", or use --controller keyboard"


def _explain_pad_error(exc: BaseException) -> Exception:
    """Turn what creating a vgamepad pad raised into an error that says how to fix it."""
    text = str(exc)
    if isinstance(exc, PermissionError) or "Permission denied" in text:
        return ControllerError(
            f"cannot create the virtual gamepad: no write access to /dev/uinput ({exc}); "
            + UDEV_HELP
        )
    if isinstance(exc, FileNotFoundError) and (
        exc.filename in (None, "/dev/uinput") or "uinput" in text
    ):
        return ControllerError(
            f"cannot create the virtual gamepad: /dev/uinput does not exist ({exc}); load the "
            "kernel module with `sudo modprobe uinput`, then " + UDEV_HELP
        )
    if isinstance(exc, OSError | ImportError) and "libevdev" in text:
        return DependencyNotInstalled(
            f"cannot create the virtual gamepad: libevdev is missing ({exc}); run "
            "`sudo apt install libevdev2` (or your distribution's libevdev package)"
        )
    if sys.platform == "win32":
        return ControllerError(
            f"cannot create the virtual gamepad ({exc!r}); is the ViGEmBus driver installed? "
            "Reinstall vgamepad (`pip install --force-reinstall vgamepad`) and accept its "
            "driver installer, or use --controller keyboard"
        )
    return ControllerError(
        f"cannot create the virtual gamepad ({exc!r}); check that vgamepad works on this "
        "machine, or use --controller keyboard"
    )
