"""Recording episodes from Python: :class:`RecordEpisodes`, a Gymnasium wrapper.

Wrap any tm-gym environment — the synchronous simulator (``TrackMania-Sim-v0``), the real-time
simulator (``realtime=True``), the live game or the emulator (``TrackMania-v0``) — and every
capture (the reset observation and each step's) and every step is kept, then written as one
``.tmrec`` file (:mod:`tm_gym.recording.format`) by :meth:`RecordEpisodes.close` or
:meth:`RecordEpisodes.flush`::

    import gymnasium as gym, tm_gym
    from tm_gym.recording import RecordEpisodes

    with RecordEpisodes(gym.make("TrackMania-Sim-v0", obs_type="lidar"), "run.tmrec") as env:
        obs, info = env.reset(seed=0)
        for _ in range(100):
            obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
            if terminated or truncated:
                obs, info = env.reset()

What a capture keeps depends on the backend:

* the synchronous simulator renders the agent's frame itself (no screenshot): ``frame_kind`` is
  ``"agent"`` (images) or ``"none"`` (LIDAR, whose exact scans are stored). With
  ``full_frames=True`` the 256×128 driver's view is stored as well (``frame_kind="window"``,
  the agent's frames in ``agent_frames``). Capture times are simulated time.
* real-time backends store the window screenshot the pipeline preprocessed
  (``frame_kind="window"``), the exact LIDAR when the backend has one (the simulator), and
  wall-clock capture times.

Frames are kept in memory until written: about 100 KB per capture for a 256×128 window (far
less once compressed), so record long sessions in several files (:meth:`flush` then a new
wrapper), or with the agent frames only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from tm_gym.core.capture import Capture
from tm_gym.core.telemetry import ROW_SIZE
from tm_gym.recording.format import FORMAT, Recording, save_recording

__all__ = ["RecordEpisodes", "make_builtin_recordings", "record_episodes"]

logger = logging.getLogger(__name__)


def _version() -> str:
    import tm_gym

    return tm_gym.__version__


def _stack(arrays: list[Any]) -> NDArray[Any]:
    return np.stack(arrays)


class RecordEpisodes(gym.Wrapper[Any, Any, Any, Any]):
    """Record every capture and step of ``env`` into the ``.tmrec`` file ``path``.

    Args:
        env: a tm-gym environment (its ``unwrapped`` has ``keep_captures``/``last_capture``).
        path: the file to write (replaced atomically at each :meth:`flush`).
        full_frames: the synchronous simulator also stores the 256×128 driver's view.
        notes: free text kept in the metadata.
        backend: the backend name stored in the metadata (default: guessed, ``"sim"``,
            ``"sim-realtime"`` or ``"game"``; pass ``"emulator"`` when recording the emulator).
        track: the track name stored in the metadata (default: the simulator's track, or
            ``"unknown"`` for the game).
        env_id: the environment id stored in the metadata (default: the spec's, if any).

    Raises:
        TypeError: ``env`` is not a tm-gym environment that can report its captures.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        path: str | Path,
        *,
        full_frames: bool = False,
        notes: str = "",
        backend: str | None = None,
        track: str | None = None,
        env_id: str | None = None,
    ) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not (hasattr(base, "keep_captures") and hasattr(base, "last_capture")):
            raise TypeError(
                f"cannot record {type(base).__name__}: expected a tm-gym environment "
                "(TrackMania-Sim-v0 or TrackMania-v0), which reports what it captured"
            )
        self.path = Path(path)
        self.full_frames = bool(full_frames)
        self.notes = notes
        base.keep_captures(self.full_frames)
        self._realtime = hasattr(base, "interface")
        self._backend_name = backend or self._guess_backend()
        self._track_name = track or self._guess_track()
        self._env_id = env_id or (env.spec.id if env.spec is not None else None)
        self._t0: float | None = None
        self._sim_time = 0.0
        self._ep_start_time = 0.0
        self._episode = -1
        self._ep_steps = 0
        self._closed = False
        self._clear()

    # -- metadata ------------------------------------------------------------------------
    def _guess_backend(self) -> str:
        base: Any = self.env.unwrapped
        if not self._realtime:
            return "sim"
        tel = type(base.backend.telemetry).__name__
        return "sim-realtime" if tel.startswith("Sim") else "game"

    def _guess_track(self) -> str:
        base: Any = self.env.unwrapped
        if not self._realtime:
            return str(base.track.name)
        sim = getattr(base.backend.telemetry, "sim", None)
        return str(sim.track.name) if sim is not None else "unknown"

    def _reward_parts(self) -> tuple[Any, NDArray[np.float64], Any, int]:
        """(reward config, reference points, camera, checkpoints_total)."""
        base: Any = self.env.unwrapped
        if self._realtime:
            itf = base.interface
            return (
                itf.reward.config,
                itf.reference.points,
                base.backend.camera,
                int(base.backend.checkpoints_total),
            )
        return base.core.reward.config, base.core.reward.reference.points, None, base._n_cps

    # -- buffers -------------------------------------------------------------------------
    def _clear(self) -> None:
        self._captures: list[Capture] = []
        self._times: list[float] = []
        self._cap_ep: list[int] = []
        self._actions: list[NDArray[np.float32]] = []
        self._rewards: list[float] = []
        self._terms: list[bool] = []
        self._truncs: list[bool] = []
        self._step_cap: list[int] = []

    def _now(self, first: bool) -> float:
        if self._realtime:
            t = time.perf_counter()
            if self._t0 is None:
                self._t0 = t
            return t - self._t0
        s = self.env.unwrapped.settings  # type: ignore[attr-defined]
        if first:  # a new episode starts one time step after the last capture
            self._ep_start_time = self._sim_time + (s.time_step_duration if self._captures else 0)
            self._sim_time = self._ep_start_time
        else:
            self._sim_time = (
                self._ep_start_time
                + s.start_obs_capture
                + (self._ep_steps - 1) * s.time_step_duration
            )
        return self._sim_time

    def _add_capture(self, first: bool) -> int:
        cap: Capture | None = self.env.unwrapped.last_capture()  # type: ignore[attr-defined]
        if cap is None:
            raise RuntimeError("the environment reported no capture; was keep_captures undone?")
        self._captures.append(cap)
        self._times.append(self._now(first))
        self._cap_ep.append(self._episode)
        return len(self._captures) - 1

    # -- gymnasium API -------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        if self._episode >= 0 and self._ep_steps == 0:  # an episode without steps: drop it
            self._captures.pop()
            self._times.pop()
            self._cap_ep.pop()
        else:
            self._episode += 1
        self._ep_steps = 0
        self._add_capture(True)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._episode < 0:
            return self.env.step(action)  # the env raises its own "call reset first" error
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._ep_steps += 1
        j = self._add_capture(False)
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(3), -1.0, 1.0)
        self._actions.append(a)
        self._rewards.append(float(reward))
        self._terms.append(bool(terminated))
        self._truncs.append(bool(truncated))
        self._step_cap.append(j)
        return obs, reward, terminated, truncated, info

    # -- output --------------------------------------------------------------------------
    def recording(self) -> Recording:
        """What was recorded so far, as a validated :class:`Recording`."""
        base: Any = self.env.unwrapped
        caps = self._captures
        c = len(caps)
        settings = base.settings
        cfg, ref, camera, n_cps = self._reward_parts()
        frames: NDArray[np.uint8]
        agent_frames: NDArray[np.uint8] | None = None
        lidar: NDArray[np.float32] | None = None
        if self._realtime:
            kind = "window"
            frames = _stack([cp.frame for cp in caps]) if c else np.zeros((0, 1, 1, 3), np.uint8)
        elif self.full_frames:
            kind = "window"
            frames = _stack([cp.window for cp in caps]) if c else np.zeros((0, 1, 1, 3), np.uint8)
            if settings.obs_type == "images":
                agent_frames = _stack([cp.frame for cp in caps]) if c else None
        elif settings.obs_type == "images":
            kind = "agent"
            ch = 1 if settings.grayscale else 3
            frames = (
                _stack([cp.frame for cp in caps])
                if c
                else np.zeros((0, ch, settings.img_size, settings.img_size), np.uint8)
            )
        else:
            kind = "none"
            frames = np.zeros((c, 0, 0), np.uint8)
        if c and all(cp.lidar is not None for cp in caps):
            lidar = _stack([cp.lidar for cp in caps]).astype(np.float32)
        position = (
            _stack([cp.position for cp in caps]).astype(np.float64)
            if c and all(cp.position is not None for cp in caps)
            else None
        )
        meta: dict[str, Any] = {
            "format": FORMAT,
            "tm_gym_version": _version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backend": self._backend_name,
            "track": self._track_name,
            "frame_kind": kind,
            "clock": "wall" if self._realtime else "simulated",
            "settings": dataclasses.asdict(settings),
            "reward_config": dataclasses.asdict(cfg),
            "camera": dataclasses.asdict(camera) if camera is not None else None,
            "checkpoints_total": n_cps,
            "observation_space": str(self.env.observation_space),
            "env_id": self._env_id,
            "notes": self.notes,
        }
        return Recording(
            telemetry=(
                np.stack([cp.record.to_row() for cp in caps])
                if c
                else np.zeros((0, ROW_SIZE), np.float32)
            ),
            frames=frames,
            capture_time=np.asarray(self._times, dtype=np.float64),
            capture_episode=np.asarray(self._cap_ep, dtype=np.int32),
            actions=np.asarray(self._actions, dtype=np.float32).reshape(-1, 3),
            rewards=np.asarray(self._rewards, dtype=np.float64),
            terminated=np.asarray(self._terms, dtype=np.bool_),
            truncated=np.asarray(self._truncs, dtype=np.bool_),
            step_capture=np.asarray(self._step_cap, dtype=np.int32),
            meta=meta,
            lidar=lidar,
            reference=np.asarray(ref, dtype=np.float64),
            position=position,
            agent_frames=agent_frames,
            source=str(self.path),
        )

    def flush(self) -> Path | None:
        """Write everything recorded so far to :attr:`path` (atomically); None if nothing was
        recorded yet."""
        if not self._captures:
            return None
        p = save_recording(self.recording(), self.path)
        logger.info(
            "recorded %d captures, %d steps, %d episodes to %s",
            len(self._captures),
            len(self._actions),
            self._episode + 1,
            p,
        )
        return p

    def close(self) -> None:
        """Write the file (if anything was recorded), then close the environment; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self.env.close()

    def __enter__(self) -> RecordEpisodes:
        return self


def record_episodes(
    env: gym.Env[Any, Any],
    path: str | Path,
    policy: Any,
    *,
    episodes: int = 1,
    max_steps: int | None = None,
    seed: int | None = 0,
    full_frames: bool = False,
    notes: str = "",
    backend: str | None = None,
) -> Path:
    """Record ``episodes`` episodes of ``env`` driven by ``policy(obs, env) -> action`` into
    ``path`` (the env is closed afterwards). ``max_steps`` cuts each episode short (the
    recording then ends it without terminated/truncated). Returns the path written."""
    rec = RecordEpisodes(env, path, full_frames=full_frames, notes=notes, backend=backend)
    try:
        for ep in range(episodes):
            obs, _ = rec.reset(seed=seed if ep == 0 else None)
            n = 0
            while max_steps is None or n < max_steps:
                obs, _, terminated, truncated, _ = rec.step(policy(obs, env))
                n += 1
                if terminated or truncated:
                    break
    finally:
        rec.close()
    return Path(path)


def make_builtin_recordings(folder: str | Path) -> list[Path]:
    """Re-make the recordings shipped in ``tm_gym/data/recordings`` into ``folder``.

    * ``sim-default-expert-lidar``: ``TrackMania-Sim-v0`` (synchronous), ``obs_type="lidar"``,
      the scripted expert for 300 steps on the default track (exact LIDAR, no frames).
    * ``realtime-sim-default-images``: ``TrackMania-Sim-v0`` with ``realtime=True`` (wall
      clock, 20 Hz), ``obs_type="images"``, full gas with a slight right steer for 20 steps:
      256×128 window screenshots, so a replay runs the game's preprocessing and pixel LIDAR.
    """
    import tm_gym  # noqa: F401  (registers the environment ids)

    out = Path(folder)
    paths = []

    def expert(obs: Any, env: gym.Env[Any, Any]) -> NDArray[np.float32]:
        return env.unwrapped.expert_action()  # type: ignore[attr-defined]

    def straight(obs: Any, env: gym.Env[Any, Any]) -> NDArray[np.float32]:
        return np.array([1.0, 0.0, 0.1], dtype=np.float32)

    paths.append(
        record_episodes(
            gym.make("TrackMania-Sim-v0", obs_type="lidar"),
            out / "sim-default-expert-lidar.tmrec",
            expert,
            max_steps=300,
            notes="make_builtin_recordings: expert driver, 300 steps",
        )
    )
    paths.append(
        record_episodes(
            gym.make("TrackMania-Sim-v0", obs_type="images", realtime=True),
            out / "realtime-sim-default-images.tmrec",
            straight,
            max_steps=20,
            notes="make_builtin_recordings: gas 1, steer 0.1, 20 steps at 20 Hz",
        )
    )
    return paths
