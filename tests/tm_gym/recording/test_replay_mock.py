"""Recording with RecordEpisodes, and replaying bit for bit with ReplayEnv (mock mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import tm_gym  # noqa: F401
from tm_gym.error import EnvStateError, RecordingFormatError
from tm_gym.recording import (
    RecordEpisodes,
    builtin_recording,
    builtin_recording_names,
    load_recording,
)
from tm_gym.recording.replay import ReplayEnv

Seen = list[tuple[dict[str, Any], float | None]]


def _record(env: gym.Env[Any, Any], path: Path, drivers: list[str], max_steps: int) -> Seen:
    seen: Seen = []
    rng = np.random.default_rng(1)
    with RecordEpisodes(env, path, notes="test") as rec:
        for ep, driver in enumerate(drivers):
            obs, _ = rec.reset(seed=0 if ep == 0 else None)
            seen.append((obs, None))
            for _ in range(max_steps):
                if driver == "expert":
                    a = env.unwrapped.expert_action()  # type: ignore[attr-defined]
                elif driver == "random":
                    a = rng.uniform(-1, 1, 3).astype(np.float32)
                else:
                    a = np.array([1.0, 0.0, 0.1], np.float32)
                obs, r, term, trunc, _ = rec.step(a)
                seen.append((obs, float(r)))
                if term or trunc:
                    break
    return seen


def _assert_replays(path: Path, seen: Seen) -> list[dict[str, Any]]:
    env = ReplayEnv(path)
    infos = []
    k = 0
    for _ in range(env.num_episodes):
        obs, _ = env.reset()
        done = False
        while True:
            ref_obs, _ = seen[k]
            assert obs.keys() == ref_obs.keys()
            for key in obs:
                assert obs[key].dtype == ref_obs[key].dtype, key
                np.testing.assert_array_equal(obs[key], ref_obs[key], err_msg=f"{k} {key}")
            k += 1
            if done:
                break
            obs, rew, term, trunc, info = env.step(np.zeros(3, np.float32))
            assert rew == seen[k][1], k
            assert env.observation_space.contains(obs)
            infos.append(info)
            done = term or trunc
    assert k == len(seen)
    return infos


@pytest.mark.parametrize("obs_type", ["lidar", "images"])
def test_sim_expert_finish_and_random_failure_replay_bit_for_bit(
    tmp_path: Path, obs_type: str
) -> None:
    path = tmp_path / "run.tmrec"
    env = gym.make("TrackMania-Sim-v0", obs_type=obs_type, ep_max_length=2000)
    seen = _record(env, path, ["expert", "random"], 2000)
    rec = load_recording(path)
    assert rec.num_episodes == 2
    assert rec.frame_kind == ("agent" if obs_type == "images" else "none")
    assert bool(rec.terminated[rec.capture_episode[rec.step_capture] == 0][-1])  # finished
    infos = _assert_replays(path, seen)
    assert any(i["finished"] for i in infos)  # the expert's episode reached the finish
    assert infos[-1]["failed"]  # the random driver's episode failed
    # info shows what the recording saw
    np.testing.assert_array_equal(infos[0]["recorded_action"], rec.actions[0])
    assert infos[0]["recorded_reward"] == rec.rewards[0]
    np.testing.assert_array_equal(rec.rewards, [r for _, r in seen if r is not None])


def test_sim_full_frames_keep_windows_and_agent_frames(tmp_path: Path) -> None:
    path = tmp_path / "full.tmrec"
    env = gym.make("TrackMania-Sim-v0", obs_type="images", grayscale=False)
    with RecordEpisodes(env, path, full_frames=True) as rec:
        rec.reset(seed=0)
        seen = [rec.env.unwrapped.last_capture()]  # type: ignore[attr-defined]
        for _ in range(5):
            rec.step(np.array([1, 0, 0], np.float32))
    r = load_recording(path)
    assert r.frame_kind == "window" and r.frames.shape == (6, 128, 256, 3)
    assert r.agent_frames is not None and r.agent_frames.shape == (6, 3, 64, 64)
    assert seen[0] is not None
    np.testing.assert_array_equal(r.frames[0], seen[0].window)
    # replay: the stored agent frames (bit for bit) or, for another size, the windows
    ReplayEnv(path).reset()
    obs, _ = ReplayEnv(path, img_size=32, grayscale=True).reset()
    assert obs["images"].shape == (4, 32, 32)


def test_realtime_sim_window_recording_replays_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "rt.tmrec"
    env = gym.make("TrackMania-Sim-v0", obs_type="images", realtime=True)
    seen = _record(env, path, ["straight"], 15)
    rec = load_recording(path)
    assert rec.frame_kind == "window" and rec.frames.shape[1:] == (128, 256, 3)
    assert rec.meta["backend"] == "sim-realtime" and rec.meta["clock"] == "wall"
    infos = _assert_replays(path, seen)
    assert infos[-1]["race_time"] > 0
    # the same windows give LIDAR through the pixel LIDAR
    obs, _ = ReplayEnv(path, obs_type="lidar").reset()
    assert obs["lidar"].shape == (4, 19) and float(obs["lidar"].max()) > 0


def test_realtime_sim_lidar_recording_keeps_exact_scans(tmp_path: Path) -> None:
    path = tmp_path / "rtl.tmrec"
    env = gym.make("TrackMania-Sim-v0", obs_type="lidar_progress", realtime=True)
    seen = _record(env, path, ["straight"], 8)
    assert load_recording(path).lidar is not None
    _assert_replays(path, seen)


def test_obs_type_the_recording_cannot_give(tmp_path: Path) -> None:
    lidar_only = builtin_recording("sim-default-expert-lidar")
    with pytest.raises(RecordingFormatError, match="image observations") as e:
        ReplayEnv(lidar_only, obs_type="images")
    assert str(lidar_only) in str(e.value)
    path = tmp_path / "agent.tmrec"
    _record(gym.make("TrackMania-Sim-v0", obs_type="images"), path, ["straight"], 3)
    with pytest.raises(RecordingFormatError, match="LIDAR scans or window"):
        ReplayEnv(path, obs_type="lidar")
    with pytest.raises(RecordingFormatError, match="agent frames"):
        ReplayEnv(path, img_size=32)
    with pytest.raises(TypeError, match="time_step_duration"):
        gym.make("TrackMania-v0", backend="replay", recording=str(path), time_step_duration=0.1)


def test_replay_env_api(tmp_path: Path) -> None:
    env = gym.make(
        "TrackMania-v0",
        backend="replay",
        recording=str(builtin_recording("sim-default-expert-lidar")),
    )
    with pytest.raises(EnvStateError):
        ReplayEnv(builtin_recording("sim-default-expert-lidar")).step(np.zeros(3, np.float32))
    obs, info = env.reset(options={"episode": 0})
    assert env.observation_space.contains(obs)
    assert info["recording_episode"] == 0
    n = 0
    trunc = term = False
    while not (term or trunc):
        obs, _, term, trunc, info = env.step(np.zeros(3, np.float32))
        n += 1
    assert n == 300 and trunc and not term  # the recording stops after 300 steps
    with pytest.raises(ValueError, match="episode"):
        env.reset(options={"episode": 5})
    with pytest.raises(ValueError, match="recording=PATH"):
        gym.make("TrackMania-v0", backend="replay")
    with pytest.raises(ValueError, match="mode"):
        gym.make("TrackMania-v0", backend="replay", recording="x", mode="fast")


def test_builtin_recordings_match_the_simulator() -> None:
    """The shipped synchronous recording replays to what the simulator computes today when it
    is driven by the recorded actions (fails if the simulator's behaviour changed: then re-make
    the recordings, see data/recordings/README.md)."""
    assert {"sim-default-expert-lidar", "realtime-sim-default-images"} <= set(
        builtin_recording_names()
    )
    path = builtin_recording("sim-default-expert-lidar")
    rec = load_recording(path)
    sim = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    replay = ReplayEnv(path)
    o1, _ = sim.reset(seed=0)
    o2, _ = replay.reset()
    for a in rec.actions:
        for key in o1:
            np.testing.assert_array_equal(o1[key], o2[key])
        o1, r1, *_ = sim.step(a)
        o2, r2, *_ = replay.step(a)
        assert r1 == r2
    shipped = builtin_recording("realtime-sim-default-images")
    env = ReplayEnv(shipped)
    obs, _ = env.reset()
    assert obs["images"].shape == (4, 64, 64)
    with pytest.raises(KeyError, match="sim-default-expert-lidar"):
        builtin_recording("nope")
