"""End to end: ``TrackMania-v0`` with the live backend and the keyboard controller plays the
emulator exactly as it would play the game — frames captured from a real X window, telemetry
over TCP, keys sent with xdotool — under a virtual display (Xvfb)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import tm_gym  # noqa: F401  (registers the ids)
from tm_gym.cli.main import main
from tm_gym.envs.sim_core import default_reference
from tm_gym.error import TelemetryError
from tm_gym.recording import RecordEpisodes, load_recording
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.tracks import load_track
from tm_gym.testing import EmulatorProcess, VirtualDisplay

pytestmark = pytest.mark.slow  # processes, a window and the wall clock

GAS = np.array([1.0, 0.0, 0.0], np.float32)
GAS_RIGHT = np.array([1.0, 0.0, 1.0], np.float32)
COUNTDOWN = 0.3


@pytest.fixture
def on_display(virtual_display: VirtualDisplay) -> str:
    """This test's own X server (tests/conftest.py; it skips without Xvfb, xdotool and
    xwininfo), with DISPLAY pointing at it."""
    return virtual_display.name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ref") / "default.npz"
    default_reference(load_track("default")).save(path)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_env(emu: EmulatorProcess, port: int, reference: str, **kw: Any) -> gym.Env[Any, Any]:
    return gym.make(
        "TrackMania-v0",
        controller="keyboard",
        telemetry_port=port,
        window_title=emu.title,
        reward_trajectory=reference,
        respawn_wait=COUNTDOWN + 0.05,
        **kw,
    )


def test_plays_whole_episodes_through_window_tcp_and_keys(on_display: str, reference: str) -> None:
    threads_before = threading.active_count()
    with EmulatorProcess(display=on_display, countdown=COUNTDOWN) as emu:
        env = make_env(emu, emu.port, reference, obs_type="images", ep_max_length=50)
        try:
            obs, info = env.reset()
            assert env.observation_space.contains(obs)
            start = np.asarray(info["position"])
            assert info["speed_kmh"] == 0.0
            # the frame comes from the window: it is the simulator's view of the start line
            sim = Simulator("default", 1)
            expected = sim.render_gray(64, 64)[0].astype(np.float64)
            assert np.abs(obs["images"][-1] - expected).mean() < 6.0

            speeds, total = [], 0.0
            for _ in range(50):
                obs, reward, terminated, truncated, info = env.step(GAS)
                assert env.observation_space.contains(obs)
                speeds.append(info["speed_kmh"])
                total += float(reward)
                if terminated or truncated:
                    break
            assert truncated and not terminated
            assert speeds[-1] > 60.0 and speeds[-1] > speeds[10]  # the car obeys the gas key
            assert total > 1.0 and info["progress"] > 0.005  # reward accrues with progress
            assert obs["speed"][0] == pytest.approx(speeds[-1], rel=0.01, abs=0.5)
            assert not np.array_equal(obs["images"][0], obs["images"][-1])  # the view moves

            # respawn: back at the start, at rest
            obs, info = env.reset()
            assert np.allclose(info["position"], start, atol=0.5)
            assert info["speed_kmh"] == 0.0
            # steering right bends the path to the right (the game's -z for a car heading +x)
            for _ in range(40):
                obs, reward, terminated, truncated, info = env.step(GAS_RIGHT)
                if terminated or truncated:
                    break
            assert info["position"][2] < start[2] - 1.0
        finally:
            env.close()
        assert emu.proc is not None and emu.proc.poll() is None  # the game is left running
    assert threading.active_count() <= threads_before  # every thread we started has ended


def test_lidar_observations_come_from_the_screenshots(on_display: str, reference: str) -> None:
    with EmulatorProcess(display=on_display, countdown=COUNTDOWN) as emu:
        env = make_env(emu, emu.port, reference, obs_type="lidar", ep_max_length=20)
        try:
            obs, _ = env.reset()
            scan = obs["lidar"][-1]
            assert scan.shape == (19,)
            # at the start the road runs straight ahead: the forward beam is the longest, and the
            # beams pointing ahead-left and ahead-right are about the same length
            assert scan[9] == scan.max() and scan[9] > 30.0
            assert scan[7] == pytest.approx(scan[11], rel=0.15)
            for _ in range(20):
                obs, *_ = env.step(GAS)
            assert env.observation_space.contains(obs)
        finally:
            env.close()


def test_killed_emulator_gives_a_clear_error_and_a_new_one_works(
    on_display: str, reference: str, tmp_path: Path
) -> None:
    port = free_port()
    title = f"Trackmania-kill-{os.getpid()}"
    first = EmulatorProcess(display=on_display, countdown=COUNTDOWN, port=port, title=title)
    first.open()
    env = make_env(first, port, reference, obs_type="lidar", telemetry_timeout=1.0)
    try:
        env.reset()
        for _ in range(5):
            env.step(GAS)
        first.kill()  # the game crashes mid-episode
        with pytest.raises(TelemetryError, match=rf"port {port}"):
            for _ in range(200):  # 10 s of steps; the error must come after about 1 s
                env.step(GAS)
        first.close()
        with EmulatorProcess(
            display=on_display, countdown=COUNTDOWN, port=port, title=title
        ) as second:
            assert second.port == port
            obs, info = env.reset()
            for _ in range(15):
                obs, _, _, _, info = env.step(GAS)
            assert info["speed_kmh"] > 20.0
            assert env.observation_space.contains(obs)
    finally:
        env.close()
        first.close()


def test_recording_the_emulator_replays_bit_for_bit(
    on_display: str, reference: str, tmp_path: Path
) -> None:
    """Record TrackMania-v0 on the emulator (window frames, TCP telemetry), then replay the file
    through the game's observation pipeline: the same observations and rewards, exactly."""
    path = tmp_path / "emu.tmrec"
    seen: list[tuple[dict[str, np.ndarray], float]] = []
    rng = np.random.default_rng(0)
    with EmulatorProcess(display=on_display, countdown=COUNTDOWN) as emu:
        env = RecordEpisodes(
            make_env(emu, emu.port, reference, obs_type="lidar_progress", ep_max_length=25),
            path,
            backend="emulator",
        )
        try:
            obs, _ = env.reset()
            seen.append((obs, 0.0))
            for _ in range(25):
                a = np.array([1.0, 0.0, rng.uniform(-0.3, 0.3)], np.float32)
                obs, reward, terminated, truncated, _ = env.step(a)
                seen.append((obs, float(reward)))
                if terminated or truncated:
                    break
        finally:
            env.close()
    rec = load_recording(path)
    assert rec.frame_kind == "window" and rec.frames.shape[1:] == (128, 256, 3)
    replay = gym.make("TrackMania-v0", backend="replay", recording=str(path))
    try:
        obs, _ = replay.reset()
        got = [(obs, 0.0)]
        for _ in range(len(seen) - 1):
            obs, reward, *_ = replay.step(replay.action_space.sample())
            got.append((obs, float(reward)))
    finally:
        replay.close()
    for (o1, r1), (o2, r2) in zip(seen, got, strict=True):
        assert r1 == r2
        for k in o1:
            np.testing.assert_array_equal(o1[k], o2[k], err_msg=k)


@pytest.mark.parametrize("driver", ["person", "keyboard"])
def test_recording_a_person_driving_the_emulator(
    on_display: str, reference: str, tmp_path: Path, driver: str
) -> None:
    """`tm-gym record --driver keyboard|person`: nothing is sent; the person's keys (here pressed
    with xdotool, as a person would) are read back from the telemetry into the recorded actions
    (`--driver gamepad` in the game reads a pad's inputs back the same way)."""
    out = tmp_path / "person.tmrec"
    with EmulatorProcess(display=on_display, countdown=COUNTDOWN) as emu:
        env = {**os.environ, "DISPLAY": on_display}
        wid = subprocess.run(
            ["xdotool", "search", "--name", f"^{emu.title}$"],
            capture_output=True, text=True, env=env, check=True,
        ).stdout.split()[0]  # fmt: skip
        subprocess.run(["xdotool", "windowfocus", "--sync", wid], env=env, check=True)
        subprocess.run(["xdotool", "keydown", "Up", "Left"], env=env, check=True)
        try:
            code = main([
                "record", "--out", str(out), "--backend", "emulator", "--driver", driver,
                "--reward-trajectory", reference, "--telemetry-port", str(emu.port),
                "--window-title", emu.title, "--max-steps", "30", "--obs-type", "lidar",
            ])  # fmt: skip
        finally:
            subprocess.run(["xdotool", "keyup", "Up", "Left"], env=env, check=True)
    assert code == 0
    rec = load_recording(out)
    assert rec.num_steps == 30
    late = rec.actions[10:]
    assert np.all(late[:, 0] == 1.0) and np.all(late[:, 2] == -1.0)  # gas held, full left
    assert rec.telemetry[-1, 1] > 5.0  # and the car drove (distance driven, metres)
    assert rec.meta["notes"] == f"driver: {driver}"
