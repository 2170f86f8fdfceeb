"""The ``game`` backend: TrackMania 2020 (or ``tm-gym emulate``) behind the real-time layer.

Three ports make the game an environment: :class:`~tm_gym.game.telemetry_client.TelemetryClient`
(the OpenPlanet plugin's stream), :class:`~tm_gym.game.capture.ScreenCapture` (the window's
client area) and a controller — the virtual gamepad
(:class:`~tm_gym.game.gamepad.GamepadController`), the keyboard aimed at the game window
(:class:`KeyboardForWindow`) or nobody (:class:`~tm_gym.game.person.PersonController`, a person
drives while a recording runs). rtgym paces them (:class:`~tm_gym.realtime.env.TrackManiaRealtimeEnv`).
This is the one place where the game's hardware is wired; each port is imported only when used.

The finish pop-up: after a finish the game shows its end-of-race menu, which swallows the respawn
input. With ``finish_popup="dismiss"`` (the default) the reset after a finished episode closes it
the way TMRL does — respawn, wait ``finish_settle`` seconds (0.5), then the gamepad presses A, or
the keyboard controller clicks the left mouse button at ``finish_button`` (fractions of the
window's client area; default :data:`~tm_gym.core.ports.FINISH_BUTTON` = (0.55, 0.60), TMRL's
spot for the "Improve" button, not yet verified in the game on our side) — and respawns again.
A person driving (``controller="none"``) closes it themselves. ``finish_popup="ignore"`` turns
this off. After a crash or a timeout nothing is pressed.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from tm_gym.backends.common import env_settings
from tm_gym.core.geometry import CameraSpec
from tm_gym.core.ports import FINISH_BUTTON, Controller
from tm_gym.core.settings import CONTROLLERS
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import (
    BackendUnavailableError,
    CaptureError,
    TelemetryError,
    TrajectoryFormatError,
)
from tm_gym.game.capture import ScreenCapture, find_window
from tm_gym.game.keyboard import KeyboardController
from tm_gym.game.keyboard.keys import check_relative_point
from tm_gym.game.telemetry_client import TelemetryClient
from tm_gym.realtime.env import TrackManiaRealtimeEnv
from tm_gym.realtime.interface import (
    FINISH_SETTLE,
    GAME_RESPAWN_WAIT,
    FinishPopup,
    RealtimeBackend,
)
from tm_gym.reward import ReferenceTrajectory, RewardConfig

__all__ = ["NO_GAME_HINT", "REWARD_FIX", "KeyboardForWindow", "make_controller", "make_game_env"]

NO_GAME_HINT = (
    "TrackMania-v0 drives the real game; without it, the built-in simulator is "
    "gymnasium.make('TrackMania-Sim-v0'). To reach the game: start TrackMania 2020 with "
    "OpenPlanet, run `tm-gym install-plugin`, load the plugin (Signature Mode → Developer, then "
    "Developer → (Re)load plugin), drive onto a map and run `tm-gym check`; `tm-gym emulate` "
    "stands in for the game while you set up"
)
"""What a machine without the game needs to hear: where the simulator is, how to reach the game."""
REWARD_FIX = (
    "record one by driving the track once while `tm-gym record-reward --out PATH.npz` runs "
    "(TMRL users: `tm-gym import-tmrl --reward reward.pkl --out PATH.npz`), then pass "
    "reward_trajectory='PATH.npz'"
)
"""The one instruction for a missing reference trajectory."""


class KeyboardForWindow:
    """The keyboard controller aimed at the window titled ``window_title`` (found on open).

    A :class:`~tm_gym.core.ports.Controller` and a :class:`~tm_gym.core.ports.FinishDismisser`:
    :meth:`dismiss_finish` clicks ``finish_button`` (fractions of the window's client area).
    """

    def __init__(
        self, window_title: str, *, finish_button: tuple[float, float] = FINISH_BUTTON
    ) -> None:
        self.window_title = window_title
        self.finish_button = check_relative_point("finish_button", finish_button)
        self._inner: Any = None

    def open(self) -> None:
        if self._inner is None:
            geometry = find_window(self.window_title)
            inner = KeyboardController(
                window_id=geometry.window_id or None, finish_button=self.finish_button
            )
            inner.open()
            self._inner = inner

    def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()

    def __enter__(self) -> KeyboardForWindow:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ctl(self) -> Any:
        if self._inner is None:
            self.open()
        return self._inner

    def apply(self, action: NDArray[np.float32]) -> None:
        self._ctl().apply(action)

    def respawn(self) -> None:
        self._ctl().respawn()

    def release(self) -> None:
        if self._inner is not None:
            self._inner.release()

    def dismiss_finish(self) -> None:
        self._ctl().dismiss_finish()


class _GameTelemetryClient(TelemetryClient):
    """The telemetry client whose errors, while nothing was ever received, end with
    :data:`NO_GAME_HINT` (the likely cause then: no game on this machine)."""

    def _explained(self, exc: TelemetryError) -> TelemetryError:
        if self.records_received > 0 or "TrackMania-Sim-v0" in str(exc):
            return exc
        return TelemetryError(f"{exc} ({NO_GAME_HINT})")

    def latest(self) -> TelemetryRecord:
        try:
            return super().latest()
        except TelemetryError as exc:
            raise self._explained(exc) from exc

    def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
        try:
            return super().wait_fresh(timeout)
        except TelemetryError as exc:
            raise self._explained(exc) from exc


class _GameScreenCapture(ScreenCapture):
    """The window capture whose errors while opening end with :data:`NO_GAME_HINT`."""

    def open(self) -> None:
        try:
            super().open()
        except CaptureError as exc:
            raise CaptureError(f"{exc} ({NO_GAME_HINT})") from exc


def _load_reference(reward_trajectory: str | None) -> ReferenceTrajectory:
    """The reference, or an error that gives :data:`REWARD_FIX` whatever is missing."""
    if reward_trajectory is None:
        raise BackendUnavailableError(
            "TrackMania-v0 needs reward_trajectory=PATH, the reference the progress reward "
            f"follows: {REWARD_FIX}. ({NO_GAME_HINT}.)"
        )
    path = Path(reward_trajectory).expanduser()
    if path.suffix == ".pkl":
        raise TrajectoryFormatError(
            f"reward_trajectory={str(path)!r} is a pickle (TMRL's format), which tm-gym never "
            f"loads; convert it: `tm-gym import-tmrl --reward {path} --out "
            f"{path.with_suffix('.npz')}`"
        )
    if not path.is_file():
        raise BackendUnavailableError(
            f"reward_trajectory={str(path)!r} does not exist; {REWARD_FIX}"
        )
    return ReferenceTrajectory.load(path)


def make_controller(
    controller: str, window_title: str, *, finish_button: tuple[float, float] = FINISH_BUTTON
) -> Controller:
    """The controller port named ``controller`` (:data:`~tm_gym.core.settings.CONTROLLERS`);
    ``finish_button`` is where the keyboard controller clicks to close the finish pop-up
    (checked whatever the controller, so a mistake shows before the keyboard is used)."""
    finish_button = check_relative_point("finish_button", finish_button)
    if controller == "gamepad":
        from tm_gym.game.gamepad import GamepadController

        return GamepadController()
    if controller == "keyboard":
        return KeyboardForWindow(window_title, finish_button=finish_button)
    if controller == "none":
        from tm_gym.game.person import PersonController

        return PersonController()
    raise ValueError(
        f"controller={controller!r}: expected one of {list(CONTROLLERS)} ('none': a person drives)"
    )


def make_game_env(
    *,
    controller: str = "gamepad",
    telemetry_host: str = "127.0.0.1",
    telemetry_port: int = 9000,
    telemetry_timeout: float = 10.0,
    window_title: str = "Trackmania",
    reward_trajectory: str | None = None,
    reward_config: RewardConfig | None = None,
    respawn_wait: float | None = None,
    finish_popup: FinishPopup = "dismiss",
    finish_settle: float = FINISH_SETTLE,
    finish_button: tuple[float, float] = FINISH_BUTTON,
    camera: CameraSpec | None = None,
    time_step_timeout_factor: float = 1.0,
    render_mode: str | None = None,
    **settings: Any,
) -> gym.Env[Any, Any]:
    """The live game (see the module docstring); ``settings`` are
    :class:`~tm_gym.core.settings.EnvSettings` fields.

    ``finish_popup`` (``"dismiss"`` or ``"ignore"``), ``finish_settle`` (seconds between the
    respawn and the dismissal, 0.5) and ``finish_button`` (where the keyboard clicks, fractions of
    the client area) say how the reset after a finish closes the game's finish pop-up.

    Raises:
        BackendUnavailableError: no ``reward_trajectory`` or no such file (the message says how
            to record one, and where the simulator is for a machine without the game).
        TrajectoryFormatError: the file is TMRL's pickle (the message gives the conversion) or
            not a tm-gym reference.

    Nothing connects here; at ``reset`` a missing game gives a
    :class:`~tm_gym.error.CaptureError` (no window) or :class:`~tm_gym.error.TelemetryError`
    (no plugin) that ends with :data:`NO_GAME_HINT`.
    """
    car_settings = env_settings(settings, "the game")
    reference = _load_reference(reward_trajectory)
    backend = RealtimeBackend(
        telemetry=_GameTelemetryClient(telemetry_host, telemetry_port, timeout=telemetry_timeout),
        frames=_GameScreenCapture(window_title),
        controller=make_controller(controller, window_title, finish_button=finish_button),
        respawn_wait=GAME_RESPAWN_WAIT if respawn_wait is None else respawn_wait,
        camera=camera,
        finish_popup=finish_popup,
        finish_settle=finish_settle,
    )
    return TrackManiaRealtimeEnv(
        backend,
        reference,
        car_settings,
        reward_config,
        time_step_timeout_factor=time_step_timeout_factor,
        render_mode=render_mode,
    )
