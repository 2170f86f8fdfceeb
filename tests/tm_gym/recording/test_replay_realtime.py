"""The real-time replay: recorded captures served by replay ports behind rtgym."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

import tm_gym  # noqa: F401
from tm_gym.recording import builtin_recording, load_recording


def test_realtime_replay_paced_at_the_recorded_time_step() -> None:
    path = builtin_recording("realtime-sim-default-images")
    rec = load_recording(path)
    env = gym.make("TrackMania-v0", backend="replay", recording=str(path), mode="realtime")
    try:
        t0 = time.perf_counter()
        obs, info = env.reset()
        assert env.observation_space.contains(obs)
        n = 0
        sent = np.array([0.5, 0.0, -0.25], np.float32)
        while True:
            obs, _, term, trunc, info = env.step(sent)
            n += 1
            assert env.observation_space.contains(obs)
            if term or trunc:
                break
        elapsed = time.perf_counter() - t0
        assert n == rec.num_steps and trunc
        np.testing.assert_array_equal(info["recorded_action"], rec.actions[-1])
        np.testing.assert_array_equal(info["sent_action"], sent)
        recorded = rec.capture_time[-1] - rec.capture_time[0]
        assert 0.5 * recorded < elapsed < 3 * recorded + 2.0  # loose: timing, not a benchmark
        # the controller received the actions (all but the episode's last, as rtgym does)
        state = env.unwrapped.backend.telemetry._state  # type: ignore[attr-defined]
        assert len(state.sent_actions) >= n - 1
        np.testing.assert_array_equal(state.sent_actions[-1], sent)
        # the next reset replays the (only) episode again
        obs, info = env.reset()
        assert info["recording_episode"] == 0
    finally:
        env.close()


def test_realtime_replay_of_a_lidar_recording() -> None:
    path = builtin_recording("sim-default-expert-lidar")
    env = gym.make("TrackMania-v0", backend="replay", recording=str(path), mode="realtime")
    try:
        obs, _ = env.reset()
        for _ in range(5):
            obs, *_ = env.step(np.zeros(3, np.float32))
            assert env.observation_space.contains(obs)
        assert float(obs["lidar"].max()) > 0
    finally:
        env.close()
