"""The replay backend: a recording played back through the game's observation pipeline.

``gymnasium.make("TrackMania-v0", backend="replay", recording=PATH)`` (through
:mod:`tm_gym.backends.replay`) turns a ``.tmrec`` file into an environment, so the game code path —
preprocessing of screenshots (:func:`~tm_gym.preprocess.agent_frame`), LIDAR read from the
pixels (:func:`~tm_gym.preprocess.pixel_lidar`), the progress reward on the recorded
positions — runs without the game.

Two modes:

* ``mode="mock"`` (:class:`ReplayEnv`): synchronous, as fast as it can. ``reset()`` goes to the
  next recorded episode (``options={"episode": i}`` picks one), ``step(a)`` *ignores* ``a``
  (it is still validated) and returns the next recorded capture rebuilt through
  :class:`~tm_gym.realtime.observation.ObservationBuilder` and
  :class:`~tm_gym.reward.ProgressReward`. The action buffer holds the recorded actions, and
  ``info["recorded_action"]`` / ``info["recorded_reward"]`` show what the recording saw.
  Replaying with the recorded settings reproduces, bit for bit, the observations and rewards
  the recorded environment returned.
* ``mode="realtime"`` (:func:`~tm_gym.recording.replay_realtime.make_realtime_replay_env`): replay ports (:class:`~tm_gym.recording.replay_realtime.ReplayState`)
  behind the real-time layer (:class:`~tm_gym.realtime.env.TrackManiaRealtimeEnv`), paced by
  rtgym: each capture serves the recorded capture nearest to the time elapsed since the
  respawn, and the controller keeps the actions it receives (``info["sent_action"]``). An
  episode is truncated when its recording runs out.

Which observations a recording can give: ``images`` need window frames (any ``img_size``) or
the recorded agent frames (the recorded size and colour only); ``lidar`` needs recorded LIDAR
scans or window frames (pixel LIDAR). The synchronous simulator's 64×64 agent frames are its
own fast rendering, not a preprocessed screenshot: they are stacked as stored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from tm_gym.core.actions import action_space, check_actions
from tm_gym.core.geometry import CameraSpec
from tm_gym.core.info import NO_LAP, RecordInfo
from tm_gym.core.settings import OBSERVATION_SETTINGS, EnvSettings, observation_space
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.error import EnvStateError, RecordingFormatError
from tm_gym.realtime.observation import ObservationBuilder
from tm_gym.recording.format import Recording, load_recording
from tm_gym.reward import ProgressReward, ReferenceTrajectory, RewardConfig

__all__ = [
    "MODES",
    "ReplayEnv",
    "ReplayPipeline",
    "as_recording",
    "episode_spans",
    "record_of",
    "recorded_reward_config",
    "replay_settings",
]

MODES = ("mock", "realtime")


def record_of(rec: Recording, j: int) -> TelemetryRecord:
    """The :class:`TelemetryRecord` of capture ``j`` (exact positions when recorded)."""
    r = TelemetryRecord.from_row(rec.telemetry[j])
    if rec.position is None:
        return r
    x, y, z = (float(v) for v in rec.position[j])
    return dataclasses.replace(r, x=x, y=y, z=z)


def as_recording(recording: str | Path | Recording) -> Recording:
    """``recording`` itself, or the recording loaded from that ``.tmrec`` path."""
    return recording if isinstance(recording, Recording) else load_recording(recording)


def replay_settings(rec: Recording, **overrides: Any) -> EnvSettings:
    """The recorded :class:`EnvSettings`, with ``overrides`` (observation settings only)."""
    bad = set(overrides) - set(OBSERVATION_SETTINGS)
    if bad:
        raise TypeError(
            f"unexpected keyword argument(s) {sorted(bad)} for a replay; the recording fixes "
            f"the timing, only {list(OBSERVATION_SETTINGS)} may change"
        )
    try:
        fields = {f.name for f in dataclasses.fields(EnvSettings)}
        stored = {k: v for k, v in rec.meta["settings"].items() if k in fields}
        return EnvSettings(**{**stored, **{k: v for k, v in overrides.items() if v is not None}})
    except (TypeError, ValueError, AttributeError) as e:
        raise RecordingFormatError(f"{rec.source}: meta.settings is unusable ({e})") from None


def episode_spans(rec: Recording) -> list[tuple[int, NDArray[np.intp]]]:
    """Per episode: (first capture, indices of its steps in order)."""
    out = []
    ep_of_step = rec.capture_episode[rec.step_capture] if rec.num_steps else np.zeros(0, np.int32)
    for e, (a, b) in enumerate(rec.episode_slices()):
        steps = np.flatnonzero(ep_of_step == e)
        if not np.array_equal(rec.step_capture[steps], np.arange(a + 1, a + 1 + len(steps))):
            raise RecordingFormatError(
                f"{rec.source}: the steps of episode {e} do not return its captures "
                f"{a + 1}..{b - 1} in order; the file is damaged"
            )
        out.append((a, steps))
    if not out:
        raise RecordingFormatError(f"{rec.source}: the recording holds no capture")
    return out


class ReplayPipeline:
    """Observation parts and reward of recorded captures (the game's pipeline)."""

    def __init__(self, rec: Recording, settings: EnvSettings, reward_config: RewardConfig) -> None:
        self.rec = rec
        self.settings = s = settings
        kind = rec.frame_kind
        self._agent: NDArray[np.uint8] | None = None
        self._windows: NDArray[np.uint8] | None = None
        ch = 1 if s.grayscale else 3
        stored_agent = rec.frames if kind == "agent" else rec.agent_frames
        if s.obs_type == "images":
            if stored_agent is not None and stored_agent.shape[1:] == (ch, s.img_size, s.img_size):
                self._agent = stored_agent
            elif kind == "window":
                self._windows = rec.frames
            else:
                have = (
                    f"agent frames {stored_agent.shape[1:]}"
                    if stored_agent is not None
                    else "no frames"
                )
                raise RecordingFormatError(
                    f"{rec.source}: image observations of {ch}×{s.img_size}×{s.img_size} need "
                    f"window screenshots or agent frames of that shape, but the recording has "
                    f"{have}; replay with obs_type/img_size/grayscale as recorded "
                    f"({rec.meta['settings']}) or record with full_frames"
                )
        elif rec.lidar is None:
            if kind != "window":
                raise RecordingFormatError(
                    f"{rec.source}: {s.obs_type!r} observations need LIDAR scans or window "
                    "screenshots, but the recording has neither; replay with "
                    f"obs_type={rec.meta['settings'].get('obs_type')!r}"
                )
            self._windows = rec.frames
        elif kind == "window":
            self._windows = rec.frames  # kept for render()
        cam = rec.meta.get("camera")
        try:
            camera = CameraSpec(**cam) if isinstance(cam, dict) else None
        except TypeError as e:
            raise RecordingFormatError(f"{rec.source}: meta.camera is unusable ({e})") from None
        self._j = 0
        lidar_source = self._lidar if (rec.lidar is not None and s.obs_type != "images") else None
        self.builder = ObservationBuilder(s, lidar_source=lidar_source, camera=camera)
        if self._agent is not None:
            self.builder._frame = self._stored_frame  # type: ignore[method-assign]
        if rec.reference is None:
            raise RecordingFormatError(
                f"{rec.source}: the recording has no reward reference; it cannot be replayed"
            )
        self.reference = ReferenceTrajectory(np.ascontiguousarray(rec.reference))
        self.reward = ProgressReward(self.reference, 1, reward_config)
        self._dims = self.reference.points.shape[1]
        self._pos = np.zeros((1, self._dims))

    def _lidar(self) -> NDArray[np.float32]:
        assert self.rec.lidar is not None
        return self.rec.lidar[self._j]

    def _stored_frame(self, rgb: NDArray[np.uint8] | None) -> NDArray[np.uint8]:
        assert self._agent is not None
        return self._agent[self._j]

    def window(self, j: int) -> NDArray[np.uint8] | None:
        return None if self._windows is None else self._windows[j]

    def _set(self, j: int) -> TelemetryRecord:
        self._j = j
        r = record_of(self.rec, j)
        self._pos[0] = (r.x, r.z) if self._dims == 2 else (r.x, r.y, r.z)
        return r

    def first(self, j: int) -> tuple[TelemetryRecord, list[NDArray[Any]]]:
        r = self._set(j)
        self.reward.reset(self._pos)
        return r, self.builder.reset(r, self.window(j), float(self.reward.progress[0]))

    def next(self, j: int) -> tuple[TelemetryRecord, list[NDArray[Any]], float, bool]:
        r = self._set(j)
        rew, term = self.reward.update(self._pos, np.array([r.finished]))
        parts = self.builder.update(r, self.window(j), float(self.reward.progress[0]))
        return r, parts, float(rew[0]), bool(term[0])


class ReplayEnv(gym.Env[dict[str, NDArray[Any]], NDArray[np.float32]]):
    """A recording replayed synchronously, actions ignored (``mode="mock"``, see the module
    docstring).

    Args:
        recording: a ``.tmrec`` path or a loaded :class:`Recording`.
        obs_type, img_size, img_hist_len, grayscale, act_buf_len, ep_max_length: override the
            recorded settings (None keeps them); the recording must be able to provide them.
        reward_config: the reward's settings (default: the recorded ones).
        render_mode: ``"rgb_array"`` returns the recorded window of the current capture.

    Raises:
        RecordingFormatError: the file is damaged, or cannot give the observations asked for.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        recording: str | Path | Recording,
        *,
        obs_type: str | None = None,
        img_size: int | None = None,
        img_hist_len: int | None = None,
        grayscale: bool | None = None,
        act_buf_len: int | None = None,
        ep_max_length: int | None = None,
        reward_config: RewardConfig | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        self.recording = rec = as_recording(recording)
        self.settings = replay_settings(
            rec,
            obs_type=obs_type,
            img_size=img_size,
            img_hist_len=img_hist_len,
            grayscale=grayscale,
            act_buf_len=act_buf_len,
            ep_max_length=ep_max_length,
        )
        self.reward_config = reward_config or recorded_reward_config(rec)
        self.render_mode = render_mode
        self.observation_space = observation_space(self.settings)  # type: ignore[assignment]
        self.action_space = action_space()  # type: ignore[assignment]
        self._episodes = episode_spans(rec)
        self._pipe = ReplayPipeline(rec, self.settings, self.reward_config)
        self._keys = self._pipe.builder.keys
        self._infos = RecordInfo(int(rec.meta.get("checkpoints_total", -1) or -1))
        self.episode = -1
        self._k = 0  # steps taken in the episode
        self._j = 0  # current capture
        self._running = False
        self._act_buf = np.zeros((self.settings.act_buf_len, 3), np.float32)

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def _obs(self, parts: list[NDArray[Any]]) -> dict[str, NDArray[Any]]:
        obs = dict(zip(self._keys, parts, strict=True))
        obs["actions"] = self._act_buf.copy()
        return obs

    def _info(self, r: TelemetryRecord, failed: bool) -> dict[str, Any]:
        rec = self.recording
        first = self._episodes[self.episode][0]
        info = self._infos.info(
            r,
            progress=float(self._pipe.reward.progress[0]),
            failed=failed,
            elapsed=lambda: float(rec.capture_time[self._j] - rec.capture_time[first]),
        )
        info["recording_episode"] = self.episode
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        super().reset(seed=seed)
        n = len(self._episodes)
        ep = (options or {}).get("episode")
        if ep is None:
            ep = (self.episode + 1) % n
        if not isinstance(ep, int) or not 0 <= ep < n:
            raise ValueError(f"options['episode']={ep!r}: expected an episode index in [0, {n})")
        self.episode = ep
        self._j = self._episodes[ep][0]
        self._k = 0
        self._infos.reset()
        self._act_buf[:] = 0.0
        r, parts = self._pipe.first(self._j)
        self._running = True
        info = self._info(r, failed=False)
        info["lap_time"] = NO_LAP
        return self._obs(parts), info

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[dict[str, NDArray[Any]], SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._running:
            raise EnvStateError(
                "step() called before reset() or after the episode ended; call reset() first"
            )
        check_actions(action, 1)  # ignored, but misuse is still caught
        rec = self.recording
        steps = self._episodes[self.episode][1]
        k = int(steps[self._k])
        self._k += 1
        self._j = int(rec.step_capture[k])
        recorded = rec.actions[k]
        self._act_buf[:-1] = self._act_buf[1:]
        self._act_buf[-1] = recorded
        r, parts, reward, terminated = self._pipe.next(self._j)
        ended = self._k >= len(steps)
        truncated = not terminated and (self._k >= self.settings.ep_max_length or ended)
        if terminated or truncated:
            self._running = False
        info = self._info(r, failed=terminated and not r.finished)
        info["recorded_action"] = recorded.copy()
        info["recorded_reward"] = float(rec.rewards[k])
        return self._obs(parts), reward, terminated, truncated, info

    def render(self) -> NDArray[np.uint8] | None:
        if self.render_mode is None:
            return None
        return self._pipe.window(self._j)


def recorded_reward_config(rec: Recording) -> RewardConfig:
    cfg = rec.meta.get("reward_config")
    if cfg is None:
        return RewardConfig()
    try:
        return RewardConfig(**cfg)
    except (TypeError, ValueError) as e:
        raise RecordingFormatError(f"{rec.source}: meta.reward_config is unusable ({e})") from None
