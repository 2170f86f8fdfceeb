"""``tm-gym emulate --visuals ... --car ...``: parsed into the emulator's look and physics, with
one clear line (exit code 2) for a bad key or value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tm_gym.cli._common import CLIError
from tm_gym.cli.emulate import parse_car
from tm_gym.cli.main import main
from tm_gym.core.visuals import Visuals
from tm_gym.emulator import app
from tm_gym.emulator.app import EmulatorConfig, EmulatorCore
from tm_gym.sim.physics import CarParams


class _FakeWindow:
    """Stands in for the Tk window: keeps the config it was given, opens nothing."""

    configs: list[EmulatorConfig] = []

    def __init__(self, config: EmulatorConfig, *, port_file: str | None = None) -> None:
        _FakeWindow.configs.append(config)

    def run(self, max_seconds: float | None = None) -> None:
        return None


def test_options_reach_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "TkEmulator", _FakeWindow)
    _FakeWindow.configs.clear()
    argv = ["emulate", "--visuals", "sky=40,60,200", "brightness=0.8", "--car", "grip=20"]
    argv += ["upshift_kmh=50,100,160,230", "--visuals", "fov_deg=100"]
    assert main(argv) == 0
    (config,) = _FakeWindow.configs
    assert config.visuals == Visuals(sky=(40, 60, 200), brightness=0.8, fov_deg=100.0)
    assert config.car_params == CarParams(grip=20.0, upshift_kmh=(50.0, 100.0, 160.0, 230.0))


def test_no_options_mean_the_standard_look_and_car(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "TkEmulator", _FakeWindow)
    _FakeWindow.configs.clear()
    assert main(["emulate"]) == 0
    assert _FakeWindow.configs[0].visuals == Visuals()
    assert _FakeWindow.configs[0].car_params == CarParams()
    assert _FakeWindow.configs[0].finish_popup  # like the game
    assert main(["emulate", "--no-finish-popup"]) == 0
    assert not _FakeWindow.configs[1].finish_popup


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--visuals", "skye=1,2,3"], "--visuals: unknown key 'skye'; known keys: sky"),
        (["--visuals", "sky=1,2"], "--visuals sky: got '1,2'"),
        (["--visuals", "brightness=-1"], "--visuals brightness: got '-1'"),
        (["--visuals", "brightness"], "is not KEY=VALUE"),
        (["--car", "grip=fast"], "--car grip: got 'fast', expected a number"),
        (["--car", "gripp=1"], "--car: unknown key 'gripp'; known keys: accel_max"),
        (["--car", "grip=-2"], "CarParams.grip=-2.0"),
        (["--car", "upshift_kmh=1,2"], "expected 4 comma-separated numbers"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "TkEmulator", _FakeWindow)
    assert main(["emulate", *argv]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err


def test_parse_car_raises_cli_errors() -> None:
    assert parse_car([]) == CarParams()
    assert parse_car(["power=600", "downshift_kmh=[40, 90, 140, 200]"]) == CarParams(
        power=600.0, downshift_kmh=(40.0, 90.0, 140.0, 200.0)
    )
    with pytest.raises(CLIError):
        parse_car(["power=nan"])


def test_emulator_renders_its_look_and_drives_its_car() -> None:
    look = Visuals(sky=(250, 10, 10))

    def core(**kwargs: Any) -> EmulatorCore:
        clock = iter(np.arange(100.0, 200.0, 0.5))
        return EmulatorCore(
            EmulatorConfig(port=0, countdown=0.0, **kwargs), clock=lambda: next(clock)
        )

    red = core(visuals=look)
    assert np.abs(red.tick()[0].astype(int) - [250, 10, 10]).max() <= 2
    standard, weak = core(), core(car_params=CarParams(power=100.0, accel_max=2.0))
    for emu in (standard, weak):
        emu.respawn()
        emu.key_down("Up")
        for _ in range(6):
            emu.advance()
    assert 0.0 < weak.record().speed_kmh < standard.record().speed_kmh
