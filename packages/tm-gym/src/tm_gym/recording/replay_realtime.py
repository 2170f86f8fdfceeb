"""The replay backend's real-time mode: recorded telemetry and frames served by replay ports
behind the real-time layer, paced by rtgym at the recorded time step.

Each capture serves the recorded capture nearest to the time elapsed since the respawn; the
controller keeps the actions it receives (``info["sent_action"]``); an episode is truncated when
its recording runs out.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from tm_gym.core.geometry import CameraSpec
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import EnvStateError
from tm_gym.recording.format import Recording
from tm_gym.recording.replay import (
    ReplayPipeline,
    as_recording,
    episode_spans,
    record_of,
    recorded_reward_config,
    replay_settings,
)
from tm_gym.reward import ReferenceTrajectory, RewardConfig

__all__ = ["ReplayState", "make_realtime_replay_env"]


class ReplayState:
    """The replay ports of one recording (telemetry, frames, controller in one object, each
    protocol of :mod:`tm_gym.core.ports` satisfied by a view: :attr:`telemetry`, :attr:`frames`,
    :attr:`controller`).

    ``respawn()`` moves to the next recorded episode and restarts the clock; reads serve the
    capture of that episode whose recorded time (since its first capture) is nearest to the
    time elapsed since the respawn; the last capture stays once the episode's recording ends.
    """

    def __init__(self, rec: Recording, clock: Any = time.perf_counter) -> None:
        self.rec = rec
        self._episodes = episode_spans(rec)
        self._clock = clock
        self._lock = threading.Lock()
        self.episode = -1
        self._t0 = 0.0
        self._served: int | None = None
        self._last = 0
        self.sent_actions: list[NDArray[np.float32]] = []
        """Actions applied since the last respawn."""
        self.is_open = False
        windows = rec.frames if rec.frame_kind == "window" else None
        if windows is None and rec.frame_kind == "agent":  # (C, 1|3, S, S) -> (C, S, S, 3)
            f = rec.frames
            windows = np.ascontiguousarray(
                np.repeat(f, 3, axis=1).transpose(0, 2, 3, 1)
                if f.shape[1] == 1
                else f.transpose(0, 2, 3, 1)
            )
        self._windows = windows
        self.telemetry = _View(self, "telemetry")
        self.frames = _View(self, "frames")
        self.controller = _View(self, "controller")

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def _check(self) -> None:
        if not self.is_open:
            raise EnvStateError("the replay ports are not open; open() them first")

    def _times(self) -> tuple[int, NDArray[np.float64]]:
        first, steps = self._episodes[max(self.episode, 0)]
        last = first + len(steps)
        t = self.rec.capture_time[first : last + 1]
        return first, t - t[0]

    def _current(self) -> int:
        first, t = self._times()
        elapsed = self._clock() - self._t0
        i = int(np.searchsorted(t, elapsed))
        if i >= len(t):
            i = len(t) - 1
        elif i > 0 and elapsed - t[i - 1] < t[i] - elapsed:
            i -= 1
        return first + i

    # -- telemetry -----------------------------------------------------------------------
    def latest(self) -> TelemetryRecord:
        self._check()
        with self._lock:
            j = self._current()
            self._served = self._last = j
            return record_of(self.rec, j)

    def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
        self._check()
        first, t = self._times()
        with self._lock:
            j = self._current()
            if self._served is not None and j == self._served and j < first + len(t) - 1:
                time.sleep(max(t[j - first + 1] - (self._clock() - self._t0), 0.0))
                j = self._current()
            self._served = self._last = j
            return record_of(self.rec, j)

    # -- frames --------------------------------------------------------------------------
    def grab(self) -> NDArray[np.uint8]:
        self._check()
        if self._windows is None:
            from tm_gym.error import CaptureError

            raise CaptureError(
                f"{self.rec.source}: the recording has no frames (frame_kind 'none'); replay "
                "LIDAR observations, or record with full_frames"
            )
        return self._windows[self._last]

    def lidar(self) -> NDArray[np.float32]:
        assert self.rec.lidar is not None
        return self.rec.lidar[self._last]

    # -- controller ----------------------------------------------------------------------
    def apply(self, action: NDArray[np.float32]) -> None:
        self._check()
        self.sent_actions.append(np.asarray(action, dtype=np.float32).copy())

    def respawn(self) -> None:
        self._check()
        with self._lock:
            self.episode = (self.episode + 1) % len(self._episodes)
            self._t0 = self._clock()
            self._served = None
            self._last = self._episodes[self.episode][0]
            self.sent_actions = []

    def release(self) -> None:
        pass

    def episode_steps(self) -> NDArray[np.intp]:
        return self._episodes[max(self.episode, 0)][1]


class _View:
    """One port of a :class:`ReplayState` (open/close/context manager, methods forwarded)."""

    def __init__(self, state: ReplayState, what: str) -> None:
        self._state = state
        self._what = what

    def open(self) -> None:
        self._state.open()

    def close(self) -> None:
        self._state.close()

    def __enter__(self) -> _View:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def latest(self) -> TelemetryRecord:
        return self._state.latest()

    def wait_fresh(self, timeout: float | None = None) -> TelemetryRecord:
        return self._state.wait_fresh(timeout)

    def grab(self) -> NDArray[np.uint8]:
        return self._state.grab()

    def apply(self, action: NDArray[np.float32]) -> None:
        self._state.apply(action)

    def respawn(self) -> None:
        self._state.respawn()

    def release(self) -> None:
        self._state.release()


class _RealtimeReplay(gym.Wrapper[Any, Any, Any, Any]):
    """Truncates each episode when its recording runs out; adds the recorded action/reward."""

    def __init__(self, env: gym.Env[Any, Any], state: ReplayState) -> None:
        super().__init__(env)
        self.state = state
        self._k = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._k = 0
        info["recording_episode"] = self.state.episode
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        steps = self.state.episode_steps()
        rec = self.state.rec
        if self._k < len(steps):
            k = int(steps[self._k])
            info["recorded_action"] = rec.actions[k].copy()
            info["recorded_reward"] = float(rec.rewards[k])
        self._k += 1
        info["sent_action"] = np.clip(np.asarray(action, np.float32).reshape(3), -1, 1)
        info["recording_episode"] = self.state.episode
        if self._k >= len(steps) and not terminated:
            truncated = True
        return obs, reward, terminated, truncated, info


def make_realtime_replay_env(
    recording: str | Path | Recording,
    *,
    reward_config: RewardConfig | None = None,
    time_step_timeout_factor: float = 1.0,
    render_mode: str | None = None,
    **overrides: Any,
) -> gym.Env[Any, Any]:
    """The recording served by replay ports behind the real-time layer (``mode="realtime"``)."""
    from tm_gym.realtime.env import TrackManiaRealtimeEnv
    from tm_gym.realtime.interface import RealtimeBackend

    rec = as_recording(recording)
    settings = replay_settings(rec, **overrides)
    ReplayPipeline(
        rec, settings, reward_config or recorded_reward_config(rec)
    )  # fails early if impossible
    state = ReplayState(rec)
    cam = rec.meta.get("camera")
    use_lidar = rec.lidar is not None and settings.obs_type != "images"
    backend = RealtimeBackend(
        telemetry=state.telemetry,
        frames=state.frames,
        controller=state.controller,
        respawn_wait=0.0,
        lidar_source=state.lidar if use_lidar else None,
        camera=CameraSpec(**cam) if isinstance(cam, dict) else None,
        checkpoints_total=int(rec.meta.get("checkpoints_total", -1) or -1),
    )
    assert rec.reference is not None
    env = TrackManiaRealtimeEnv(
        backend,
        ReferenceTrajectory(np.ascontiguousarray(rec.reference)),
        settings,
        reward_config or recorded_reward_config(rec),
        time_step_timeout_factor=time_step_timeout_factor,
        render_mode=render_mode,
    )
    return _RealtimeReplay(env, state)
