"""TrackManiaRealtimeEnv on the wall-clock simulator, in real time (rtgym's thread and clock).

These tests check behaviour, not timing: bounds on race time per step are loose.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest

from tm_gym.backends.sim import sim_backend
from tm_gym.core.settings import EnvSettings
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.envs.sim_core import default_reference
from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.error import ControllerError, EnvStateError, TelemetryError
from tm_gym.realtime.env import TrackManiaRealtimeEnv
from tm_gym.realtime.interface import RealtimeBackend
from tm_gym.sim.wallclock import (
    SimController,
    SimFrames,
    SimTelemetry,
    WallClockSim,
)


def sim_ports(b: RealtimeBackend) -> tuple[SimTelemetry, SimFrames, SimController]:
    return cast(tuple[SimTelemetry, SimFrames, SimController], b.ports)


GAS = np.array([1.0, 0.0, 0.0], np.float32)
OBS_TYPES = ["images", "lidar", "lidar_progress"]


def make_env(
    obs_type: str = "lidar",
    ep_max_length: int = 15,
    backend: RealtimeBackend | None = None,
    **kw: Any,
) -> TrackManiaRealtimeEnv:
    sim = WallClockSim("default")
    return TrackManiaRealtimeEnv(
        backend or sim_backend(sim),
        default_reference(sim.track),
        EnvSettings(obs_type=obs_type, ep_max_length=ep_max_length),
        **kw,
    )


@pytest.fixture
def baseline_threads() -> Iterator[int]:
    """Thread count before the test; the test must end with the same count."""
    n = threading.active_count()
    yield n
    deadline = time.monotonic() + 5.0
    while threading.active_count() > n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == n, threading.enumerate()


@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_spaces_equal_the_synchronous_env(obs_type: str, baseline_threads: int) -> None:
    env = make_env(obs_type, ep_max_length=1000)
    ref = TrackManiaEnv(obs_type=obs_type)
    assert env.observation_space == ref.observation_space
    assert env.action_space == ref.action_space
    assert threading.active_count() == baseline_threads  # nothing started before reset()
    env.close()


@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_full_gas_episodes(obs_type: str, baseline_threads: int) -> None:
    sync_keys = set(TrackManiaEnv(obs_type=obs_type).reset(seed=0)[1])
    with make_env(obs_type, ep_max_length=12) as env:
        for _episode in range(2):  # reset after done works
            obs, info = env.reset()
            assert env.observation_space.contains(obs)
            assert set(info) == sync_keys | {"timeouts", "timeouts_total"}
            assert info["race_time"] == 0.0 and info["lap_time"] == math.inf
            total, times = 0.0, []
            for _ in range(100):
                obs, r, term, trunc, info = env.step(GAS)
                assert env.observation_space.contains(obs)
                assert set(info) == sync_keys | {"timeouts", "timeouts_total"}
                np.testing.assert_array_equal(obs["actions"][-1], GAS)
                total += float(r)
                times.append(info["race_time"])
                if term or trunc:
                    break
            assert trunc and not term and len(times) == 12
            assert total > 0 and info["progress"] > 0 and info["speed_kmh"] > 20
            # race time advances about 0.05 s a step (capture 0.04 s into each step); a busy
            # machine can only make it later, and by little unless a step timed out
            assert np.all(np.diff(times) >= 0)
            assert times[0] >= 0.04 - 1e-6
            assert times[-1] >= 0.05 * 12 - 0.01 - 1e-6
            if info["timeouts"] == 0:
                assert times[-1] <= 0.05 * 12 - 0.01 + 0.1
            with pytest.raises(EnvStateError, match="reset"):
                env.step(GAS)


def test_close_stops_thread_and_is_idempotent(baseline_threads: int) -> None:
    env = make_env()
    env.reset()
    assert threading.active_count() == baseline_threads + 1  # rtgym's one thread
    env.step(GAS)
    env.close()
    assert threading.active_count() == baseline_threads
    assert not any(p.is_open for p in sim_ports(env.backend))
    env.close()
    with pytest.raises(EnvStateError, match="closed"):
        env.reset()
    with pytest.raises(EnvStateError):
        env.step(GAS)


def test_late_steps_count_as_timeouts_without_warnings(baseline_threads: int) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make_env(ep_max_length=8) as env:
            env.reset()
            infos = []
            for _ in range(5):
                time.sleep(0.2)  # far beyond the 0.05 s step (and its 0.05 s elasticity)
                infos.append(env.step(GAS)[-1])
            assert infos[-1]["timeouts"] >= 3
            assert infos[-1]["timeouts_total"] == infos[-1]["timeouts"]
            assert [i["timeouts"] for i in infos] == sorted(i["timeouts"] for i in infos)
            # a new episode starts its own count; the total carries on
            _, info = env.reset()
            assert info["timeouts"] == 0 and info["timeouts_total"] >= 3
            _, *_, info = env.step(GAS)
            assert info["timeouts"] == 0
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("wait_on_done", [True, False])
def test_pause_between_episodes(wait_on_done: bool, baseline_threads: int) -> None:
    """With wait_on_done (the default) a pause after an episode is not a timeout; without, it
    is one (rtgym would warn). A wide elasticity keeps an ordinary hiccup from counting."""
    with make_env(ep_max_length=3, wait_on_done=wait_on_done, time_step_timeout_factor=4.0) as env:
        env.reset()
        for _ in range(3):
            *_, info = env.step(GAS)
        assert info["timeouts"] == 0
        time.sleep(0.5)  # e.g. a training update between episodes
        env.reset()
        *_, info = env.step(GAS)
        assert info["timeouts"] == (0 if wait_on_done else 1)
        assert info["timeouts_total"] == info["timeouts"]


def test_timing_stats_and_render(baseline_threads: int) -> None:
    with make_env(render_mode="rgb_array") as env:
        with pytest.raises(EnvStateError, match="reset"):
            env.timing_stats()
        env.reset()
        for _ in range(3):
            env.step(GAS)
        stats = env.unwrapped.timing_stats()  # type: ignore[attr-defined]
        assert {"time_step_duration", "get_obs_duration", "send_control_duration"} <= set(stats)
        avg, _dev = stats["time_step_duration"]
        assert avg is not None and avg > 0
        frame = env.render()
        assert frame is not None and frame.shape == (128, 256, 3) and frame.dtype == np.uint8


class StoppingTelemetry(SimTelemetry):
    """Works for ``ok`` reads of latest(), then reports a stalled stream."""

    def __init__(self, sim: WallClockSim, ok: int) -> None:
        super().__init__(sim)
        self.ok = ok

    def latest(self) -> TelemetryRecord:
        if self.ok <= 0:
            raise TelemetryError("no telemetry for 10 s (test)")
        self.ok -= 1
        return super().latest()


class StuckController(SimController):
    def respawn(self) -> None:
        raise ControllerError("respawn failed (test)")


def _backend(sim: WallClockSim, **ports: Any) -> RealtimeBackend:
    return RealtimeBackend(
        telemetry=ports.get("telemetry", SimTelemetry(sim)),
        frames=SimFrames(sim),
        controller=ports.get("controller", SimController(sim)),
        respawn_wait=0.0,
        lidar_source=sim.exact_lidar,
    )


def test_port_error_propagates_from_step(baseline_threads: int) -> None:
    sim = WallClockSim("default")
    env = make_env(backend=_backend(sim, telemetry=StoppingTelemetry(sim, ok=3)))
    try:
        env.reset()
        with pytest.raises(TelemetryError, match="no telemetry"):
            for _ in range(10):
                env.step(GAS)
        assert sim.controls.tolist() == [0.0, 0.0, 0.0]  # the episode ended: inputs released
        with pytest.raises(EnvStateError):
            env.step(GAS)
    finally:
        env.close()


def test_port_error_propagates_from_reset(baseline_threads: int) -> None:
    sim = WallClockSim("default")
    with make_env(backend=_backend(sim, controller=StuckController(sim))) as env:
        with pytest.raises(ControllerError, match="respawn failed"):
            env.reset()
        with pytest.raises(EnvStateError):
            env.step(GAS)


def test_reset_mid_episode(baseline_threads: int) -> None:
    with make_env(ep_max_length=50) as env:
        env.reset()
        for _ in range(5):
            env.step(GAS)
        obs, info = env.reset()
        assert info["race_time"] == 0.0 and info["speed_kmh"] == 0.0
        assert not obs["actions"].any()  # the action buffer restarts with default actions
        obs, *_ = env.step(GAS)
        assert env.observation_space.contains(obs)
