"""Tests for ``tm-gym check`` (tm_gym.game.check) and the game CLI commands
(tm_gym.cli.game_commands).

Telemetry is checked against loopback sockets this file opens itself (ports chosen by the OS):
one that streams records, one that accepts and stays silent, and a closed port.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from tm_gym.cli import game_commands
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import CaptureError, ControllerError
from tm_gym.game import check
from tm_gym.game.check import (
    BUDGET_FRACTION,
    CheckResult,
    check_controller,
    check_plugin,
    check_telemetry,
    check_time_budget,
    check_window,
    run_checks,
)
from tm_gym.game.install import PLUGIN_FILES, PLUGIN_FOLDER, install_plugin
from tm_gym.game.telemetry import MAGIC_V2, encode_record

RECORD = TelemetryRecord(
    speed_kmh=123.0,
    distance=10.0,
    x=1.0,
    y=2.0,
    z=3.0,
    steer=0.0,
    gas=1.0,
    brake=0.0,
    finished=False,
    gear=3,
    rpm=7000.0,
    race_time=1.5,
    checkpoint=0,
    vx=30.0,
    vy=0.0,
    vz=0.0,
    yaw=0.0,
    pitch=0.0,
    roll=0.0,
)

# --------------------------------------------------------------------------- fake plugin


class FakePlugin:
    """A loopback server that behaves like the plugin: one client, a record every 5 ms."""

    def __init__(self, version: int | None) -> None:
        self.version = version  # None: accept, then send nothing
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.server.settimeout(0.1)
        self.port: int = self.server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                try:
                    if self.version == 2:
                        conn.sendall(MAGIC_V2)
                    while not self._stop.is_set():
                        if self.version is not None:
                            conn.sendall(encode_record(RECORD, self.version))
                        time.sleep(0.005)
                except OSError:
                    pass  # the client went away: accept the next one

    def __enter__(self) -> FakePlugin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.close()


def closed_port() -> int:
    """A port nothing listens on (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- telemetry


@pytest.mark.parametrize("version", [1, 2])
def test_streaming_plugin_passes(version: int) -> None:
    with FakePlugin(version) as plugin:
        result = check_telemetry("127.0.0.1", plugin.port, timeout=2.0)
    assert result.ok, result
    assert result.name == "telemetry"
    assert f"protocol v{version}" in result.detail
    assert "123 km/h" in result.detail
    assert result.fix == ""
    if version == 1:
        assert "tm-gym plugin" in result.detail  # suggests v2


def test_nothing_listening_fails_with_the_plugin_fix() -> None:
    port = closed_port()
    result = check_telemetry("127.0.0.1", port, timeout=0.5)
    assert not result.ok
    assert "refused" in result.detail
    assert "install-plugin" in result.fix
    assert str(port) in result.fix


def test_silent_plugin_says_load_a_map() -> None:
    with FakePlugin(None) as plugin:
        result = check_telemetry("127.0.0.1", plugin.port, timeout=0.5)
    assert not result.ok
    assert "connected" in result.detail
    assert "load a map" in result.fix


def test_invalid_port_is_a_failed_check() -> None:
    result = check_telemetry("127.0.0.1", 70000, timeout=0.5)
    assert not result.ok
    assert "70000" in result.detail


# --------------------------------------------------------------------------- window


def test_missing_window_fails() -> None:
    def finder(title: str) -> Any:
        raise CaptureError(f"no visible window titled {title!r}")

    result = check_window("Trackmania", finder=finder)
    assert not result.ok
    assert "Trackmania" in result.detail
    assert "--window-title" in result.fix


@pytest.mark.skipif(sys.platform == "win32", reason="X11 lookup")
def test_missing_window_with_the_real_finder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    result = check_window("Trackmania")
    assert not result.ok
    assert "DISPLAY" in result.detail


def test_found_window_is_described() -> None:
    from tm_gym.game.capture import WindowGeometry

    geom = WindowGeometry(window_id=0x2A00007, left=10, top=20, width=256, height=128)
    result = check_window("Trackmania", finder=lambda title: geom)
    assert result.ok
    assert "256×128" in result.detail
    assert "0x2a00007" in result.detail


# --------------------------------------------------------------------------- controller


class FakeController:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.events: list[str] = []

    def open(self) -> None:
        self.events.append("open")
        if self.fail is not None:
            raise self.fail

    def close(self) -> None:
        self.events.append("close")


def test_working_controller_is_opened_and_closed() -> None:
    ctl = FakeController()
    result = check_controller("gamepad", factory=lambda kind: ctl)
    assert result.ok
    assert ctl.events == ["open", "close"]


def test_broken_controller_passes_on_its_fix() -> None:
    exc = ControllerError("cannot create the virtual gamepad; allow /dev/uinput with a udev rule")
    result = check_controller("gamepad", factory=lambda kind: FakeController(exc))
    assert not result.ok
    assert "udev rule" in result.fix
    assert "--controller keyboard" in result.fix


def test_unknown_controller() -> None:
    result = check_controller("joystick")
    assert not result.ok
    assert "keyboard" in result.fix


def test_keyboard_without_xdotool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if sys.platform == "win32":
        pytest.skip("xdotool is the Linux backend")
    monkeypatch.setenv("PATH", str(tmp_path))
    result = check_controller("keyboard")
    assert not result.ok
    assert "apt install xdotool" in result.fix


def test_gamepad_without_vgamepad(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vgamepad", None)
    result = check_controller("gamepad")
    assert not result.ok
    assert "pip install vgamepad" in result.fix


# --------------------------------------------------------------------------- time budget


class FakeCapture:
    def __init__(self, title: str, delay: float = 0.0) -> None:
        self.title = title
        self.delay = delay
        self.grabs = 0
        self.closed = False

    def __enter__(self) -> FakeCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def grab(self) -> np.ndarray[Any, np.dtype[np.uint8]]:
        self.grabs += 1
        if self.delay:
            time.sleep(self.delay)
        return np.zeros((128, 256, 3), np.uint8)


def test_fast_capture_fits_the_budget() -> None:
    caps: list[FakeCapture] = []

    def factory(title: str) -> FakeCapture:
        caps.append(FakeCapture(title))
        return caps[-1]

    result = check_time_budget("Trackmania", 0.05, capture_factory=factory, samples=5)
    assert result.ok, result
    assert "256×128" in result.detail
    assert caps[0].grabs == 7 and caps[0].closed


def test_slow_capture_fails_the_budget() -> None:
    step = 0.05
    delay = 2 * BUDGET_FRACTION * step  # twice the budget, whatever the machine
    result = check_time_budget(
        "Trackmania",
        step,
        capture_factory=lambda title: FakeCapture(title, delay=delay),
        samples=3,
    )
    assert not result.ok
    assert "window smaller" in result.fix


def test_failed_capture_is_not_measured() -> None:
    def factory(title: str) -> Any:
        raise CaptureError("window gone")

    result = check_time_budget("Trackmania", capture_factory=factory)
    assert not result.ok
    assert "not measured" in result.detail


def test_bad_step_duration_raises() -> None:
    with pytest.raises(ValueError, match="step_duration"):
        run_checks(step_duration=0.0)


# --------------------------------------------------------------------------- run_checks


def test_run_checks_order_and_all_passing(tmp_path: Path) -> None:
    geom = type("G", (), {"window_id": 1, "left": 0, "top": 0, "width": 256, "height": 128})()
    install_plugin(openplanet_dir=tmp_path)
    with FakePlugin(2) as plugin:
        results = run_checks(
            openplanet_dir=tmp_path,
            telemetry_port=plugin.port,
            timeout=2.0,
            window_finder=lambda title: geom,
            controller_factory=lambda kind: FakeController(),
            capture_factory=FakeCapture,
        )
    names = [r.name for r in results]
    assert names == ["plugin", "telemetry", "window", "controller", "time budget"]
    assert all(r.ok for r in results), results


def test_run_checks_without_game(tmp_path: Path) -> None:
    def no_window(title: str) -> Any:
        raise CaptureError("no window")

    results = run_checks(
        plugin_search={"home": tmp_path, "env": {}, "platform": "linux"},
        telemetry_port=closed_port(),
        timeout=0.3,
        window_finder=no_window,
        controller_factory=lambda kind: FakeController(),
    )
    assert [r.ok for r in results] == [False, False, False, True, False]
    assert all(r.fix for r in results if not r.ok)
    assert "no OpenPlanet folder" in results[0].detail
    assert "not measured" in results[4].detail


# --------------------------------------------------------------------------- plugin


def test_plugin_check_names_each_failing_step(tmp_path: Path) -> None:
    missing = check_plugin(tmp_path / "nowhere")
    assert not missing.ok and "OpenPlanet" in missing.detail and "--openplanet-dir" in missing.fix
    tmp_path.joinpath("Plugins").mkdir()
    absent = check_plugin(tmp_path)
    assert not absent.ok and "not installed" in absent.detail
    assert "tm-gym install-plugin" in absent.fix
    install_plugin(openplanet_dir=tmp_path)
    ok = check_plugin(tmp_path)
    assert ok.ok and "folder" in ok.detail and "Developer" in ok.detail
    (tmp_path / "Plugins" / "tm-gym" / "main.as").write_text("// an older plugin")
    old = check_plugin(tmp_path)
    assert not old.ok and "not the one this tm-gym ships" in old.detail
    assert "tm-gym install-plugin" in old.fix


def test_plugin_check_accepts_the_op_and_skips_remote_games(tmp_path: Path) -> None:
    install_plugin(openplanet_dir=tmp_path, op=True)
    assert check_plugin(tmp_path).ok and "packed" in check_plugin(tmp_path).detail
    results = run_checks(
        telemetry_host="192.0.2.1",
        telemetry_port=closed_port(),
        timeout=0.2,
        window_finder=lambda title: (_ for _ in ()).throw(CaptureError("no window")),
        controller_factory=lambda kind: FakeController(),
    )
    assert results[0].ok and "not checked" in results[0].detail


# --------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tm-gym")
    sub = p.add_subparsers(dest="command", required=True)
    game_commands.add_parsers(sub)
    return p


def consoles() -> tuple[Console, Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), Console(file=io.StringIO(), width=200), buf


def test_check_defaults() -> None:
    args = parser().parse_args(["check"])
    assert (args.host, args.port, args.window_title, args.controller) == (
        "127.0.0.1",
        9000,
        "Trackmania",
        "keyboard",
    )
    assert args.json is False
    assert args.handler is game_commands.run_check


@pytest.mark.parametrize(
    "argv", [["check", "--port", "0"], ["check", "--controller", "mouse"], ["check", "--port", "x"]]
)
def test_check_rejects_bad_options(argv: list[str]) -> None:
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parser().parse_args(argv)


@pytest.mark.parametrize("ok", [True, False])
def test_check_command_json(monkeypatch: pytest.MonkeyPatch, ok: bool) -> None:
    canned = [
        CheckResult("telemetry", True, "fine"),
        CheckResult("window", ok, "found" if ok else "missing", "" if ok else "start the game"),
    ]
    seen: dict[str, Any] = {}

    def fake_run_checks(**kw: Any) -> list[CheckResult]:
        seen.update(kw)
        return canned

    monkeypatch.setattr(check, "run_checks", fake_run_checks)
    args = parser().parse_args(["check", "--json", "--port", "9123", "--controller", "gamepad"])
    out, err, buf = consoles()
    code = args.handler(args, out, err)
    assert code == (0 if ok else 1)
    payload = json.loads(buf.getvalue())
    assert payload["ok"] is ok
    assert payload["checks"][1] == {
        "name": "window",
        "ok": ok,
        "detail": "found" if ok else "missing",
        "fix": "" if ok else "start the game",
    }
    assert seen["telemetry_port"] == 9123
    assert seen["controller"] == "gamepad"


def test_check_command_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        check,
        "run_checks",
        lambda **kw: [CheckResult("telemetry", False, "refused [9000]", "install the plugin")],
    )
    args = parser().parse_args(["check"])
    out, err, buf = consoles()
    assert args.handler(args, out, err) == 1
    text = buf.getvalue()
    assert "FAILED" in text
    assert "refused [9000]" in text  # markup-like text is escaped, not swallowed
    assert "install the plugin" in text


def test_install_plugin_command(tmp_path: Path) -> None:
    plugins = tmp_path / "Plugins"
    args = parser().parse_args(["install-plugin", "--plugins-dir", str(plugins), "--dry-run"])
    out, err, buf = consoles()
    assert args.handler(args, out, err) == 0
    assert not plugins.exists()
    assert "dry run" in buf.getvalue()

    args = parser().parse_args(["install-plugin", "--plugins-dir", str(plugins)])
    out, err, buf = consoles()
    assert args.handler(args, out, err) == 0
    assert sorted(p.name for p in (plugins / PLUGIN_FOLDER).iterdir()) == sorted(PLUGIN_FILES)
    assert "(Re)load plugin" in buf.getvalue()


def test_main_registers_the_game_commands() -> None:
    from tm_gym.cli.main import build_parser

    for argv in (["check", "--json"], ["install-plugin", "--dry-run"]):
        assert build_parser().parse_args(argv).command == argv[0]


def test_main_runs_install_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tm_gym.cli.main import main

    assert main(["install-plugin", "--plugins-dir", str(tmp_path), "--dry-run"]) == 0
    assert "main.as" in capsys.readouterr().out
