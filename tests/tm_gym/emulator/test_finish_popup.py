"""The emulator's finish pop-up behaves like the game's end-of-race menu (issue 12): it shows at
the finish, swallows the respawn key, keeps the telemetry's ``finished`` flag up, and only a click
on its "IMPROVE" button closes it and restarts the run. End to end (Xvfb, xdotool): a reset of
``TrackMania-v0`` with the keyboard controller closes it with a real mouse click."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import tm_gym  # noqa: F401  (registers the ids)
from tm_gym.core.ports import FINISH_BUTTON
from tm_gym.emulator.app import EmulatorConfig, EmulatorCore, finish_popup_layout
from tm_gym.game.capture import ScreenCapture
from tm_gym.testing import EmulatorProcess, VirtualDisplay

BUTTON_RGB = (230, 200, 40)
"""The colour the emulator paints its IMPROVE button."""
SHORT = {
    "format": "tm-gym-track/1",
    "name": "short",
    "width": 20,
    "segments": [{"straight": 120}],
    "start": 10,
    "finish": 50,
}
"""A 40 m straight: full gas reaches the finish in about 3 s."""
GAS = np.array([1.0, 0.0, 0.0], np.float32)
COUNTDOWN = 0.3


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def short_track(tmp_path: Path) -> Path:
    path = tmp_path / "short.json"
    path.write_text(json.dumps(SHORT))
    return path


def drive_to_finish(emu: EmulatorCore, clock: FakeClock) -> np.ndarray:
    emu.key_down("Up")
    frame = emu.tick()
    for _ in range(200):
        clock.t += 0.05
        frame = emu.tick()
        if emu.record().finished:
            break
    assert emu.record().finished
    return frame


def on_button(frame: np.ndarray, at: tuple[float, float] = FINISH_BUTTON) -> bool:
    h, w = frame.shape[:2]
    # the button's own colour around the spot (the letters are dark: look above the text)
    return bool(np.all(frame[int(at[1] * h) - 6, int(at[0] * w) - 20] == BUTTON_RGB))


def test_the_pop_up_shows_at_the_finish_and_swallows_respawn(short_track: Path) -> None:
    clock = FakeClock()
    emu = EmulatorCore(EmulatorConfig(track=str(short_track), port=0, countdown=0.5), clock=clock)
    with emu:
        assert not on_button(emu.tick())
        frame = drive_to_finish(emu, clock)
        assert emu.popup_shown and on_button(frame)
        at_finish = emu.record().x
        assert at_finish > 49.0

        respawns = emu.respawns
        emu.key_down("BackSpace")  # the game ignores respawn while its menu shows
        emu.key_down("Delete")
        clock.t += 1.0
        emu.tick()
        assert emu.respawns == respawns and emu.popup_shown
        assert emu.record().finished and emu.record().x >= at_finish  # still there, flag up
        assert emu.record().gas == 0.0  # and the held gas key does not reach the car

        width, height = emu.config.width, emu.config.height
        assert not emu.click(5, 5)  # a click beside the button does nothing
        assert emu.popup_shown
        assert emu.click(int(0.55 * width), int(0.60 * height))  # Improve
        assert not emu.popup_shown and emu.respawns == respawns + 1
        rec = emu.record()
        assert (rec.x, rec.speed_kmh, rec.finished) == (10.0, 0.0, False)
        assert not on_button(emu.tick())
        assert not emu.click(int(0.55 * width), int(0.60 * height))  # no pop-up: no effect


def test_without_the_pop_up_respawn_works_after_a_finish(short_track: Path) -> None:
    clock = FakeClock()
    config = EmulatorConfig(track=str(short_track), port=0, countdown=0.5, finish_popup=False)
    with EmulatorCore(config, clock=clock) as emu:
        frame = drive_to_finish(emu, clock)
        assert not emu.popup_shown and not on_button(frame)
        emu.key_down("BackSpace")
        assert emu.record().x == 10.0 and not emu.record().finished


@pytest.mark.parametrize(("width", "height"), [(256, 128), (942, 449), (958, 488), (64, 32)])
def test_tmrl_click_spots_are_on_the_button(width: int, height: int) -> None:
    layout = finish_popup_layout(width, height, FINISH_BUTTON)
    for across in (0.52, 0.55, 0.57):
        for down in (0.59, 0.60):
            assert layout.in_button(int(across * width), int(down * height))
    left, top, right, bottom = layout.panel
    assert 0 <= left < layout.button[0] and layout.button[2] < right <= width
    assert 0 <= top < layout.button[1] and layout.button[3] < bottom <= height


def test_config_checks_the_button_spot() -> None:
    with pytest.raises(ValueError, match="finish_button"):
        EmulatorConfig(finish_button=(0.5, 1.5))


# --------------------------------------------------------------------------- end to end


def make_env(emu: EmulatorProcess, reference: Path, **kw: Any) -> gym.Env[Any, Any]:
    return gym.make(
        "TrackMania-v0",
        controller="keyboard",
        telemetry_port=emu.port,
        window_title=emu.title,
        reward_trajectory=str(reference),
        respawn_wait=COUNTDOWN + 0.05,
        obs_type="lidar",
        ep_max_length=200,
        **kw,
    )


def finish(env: gym.Env[Any, Any]) -> dict[str, Any]:
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(GAS)
        if terminated or truncated:
            break
    assert terminated and info["finished"], info
    return info


@pytest.mark.slow
def test_a_reset_closes_the_pop_up_with_a_real_click(
    virtual_display: VirtualDisplay, short_track: Path, tmp_path: Path
) -> None:
    with EmulatorProcess(display=virtual_display.name, track=str(short_track)) as emu:
        reference = emu.save_reference(tmp_path / "short.npz")

        # without dismissal the respawn key is swallowed: the car stays past the line
        env = make_env(emu, reference, finish_popup="ignore")
        try:
            env.reset()
            finish(env)
            time.sleep(0.2)  # a few frames: the window shows the pop-up
            with ScreenCapture(emu.title) as screen:
                assert on_button(screen.grab())
            _, info = env.reset()
            assert info["finished"] and info["position"][0] > 49.0
        finally:
            env.close()

        # the default: the reset clicks IMPROVE, and the next episode starts at the start line
        env = make_env(emu, reference)
        try:
            _, info = env.reset()  # the pop-up from before is still up: this episode ends at once
            for _ in range(3):
                _, _, terminated, _, info = env.step(GAS)
                if terminated:
                    break
            assert terminated and info["finished"]
            _, info = env.reset()  # after a finished episode: respawn, 0.5 s, click, respawn
            assert not info["finished"]
            assert abs(info["position"][0] - 10.0) < 0.5 and info["speed_kmh"] == 0.0
            with ScreenCapture(emu.title) as screen:
                assert not on_button(screen.grab())
            for _ in range(20):  # and the next episode drives
                _, _, terminated, truncated, info = env.step(GAS)
            assert not (terminated or truncated) and info["speed_kmh"] > 20.0
            finish(env)  # all the way to the line again, and once more through the pop-up
            _, info = env.reset()
            assert not info["finished"] and abs(info["position"][0] - 10.0) < 0.5
        finally:
            env.close()
        assert emu.proc is not None and emu.proc.poll() is None
