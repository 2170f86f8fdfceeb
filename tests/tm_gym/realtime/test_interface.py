"""TMRealtimeInterface driven by hand on rtgym's schedule, over a fake-clock WallClockSim.

Without rtgym's thread and with a fake clock, the real-time pipeline must reproduce the
synchronous simulator environment exactly: same observations, rewards and lap time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

from tm_gym.core.settings import EnvSettings, observation_space
from tm_gym.core.telemetry import TelemetryRecord
from tm_gym.envs.sim_core import default_reference
from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.error import ControllerError, TelemetryError
from tm_gym.realtime.interface import RealtimeBackend, TMRealtimeInterface
from tm_gym.reward import ReferenceTrajectory
from tm_gym.sim.expert import ExpertDriver
from tm_gym.sim.wallclock import SimController, SimFrames, SimTelemetry, WallClockSim

D, C = 0.05, 0.04
GAS = np.array([1.0, 0.0, 0.0], np.float32)


class FakeClock:
    def __init__(self, t: float = 50.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


class BrokenTelemetry(SimTelemetry):
    """Fails after ``ok`` successful reads of latest()."""

    def __init__(self, sim: WallClockSim, ok: int, **kw: Any) -> None:
        super().__init__(sim, **kw)
        self.ok = ok

    def latest(self) -> TelemetryRecord:
        if self.ok <= 0:
            raise TelemetryError("telemetry stopped (test)")
        self.ok -= 1
        return super().latest()


class TmrlTelemetry(SimTelemetry):
    """Records as TMRL's plugin sends them: no race time, no checkpoint."""

    def _read(self) -> TelemetryRecord:
        rec = super()._read()
        return dataclasses.replace(rec, race_time=math.nan, checkpoint=-1, version=1)


def make(
    obs_type: str = "lidar",
    *,
    exact_lidar: bool = True,
    telemetry: type[SimTelemetry] = SimTelemetry,
    reference: ReferenceTrajectory | None = None,
    defer_errors: bool = False,
    **tel_kw: Any,
) -> tuple[TMRealtimeInterface, WallClockSim, FakeClock]:
    clock = FakeClock()
    sim = WallClockSim("default", clock=clock)
    backend = RealtimeBackend(
        telemetry=telemetry(sim, sleep=clock.sleep, **tel_kw),
        frames=SimFrames(sim),
        controller=SimController(sim),
        respawn_wait=0.0,
        lidar_source=sim.exact_lidar if exact_lidar else None,
        checkpoints_total=len(sim.track.checkpoints_s),
        wall_contacts=sim.wall_contacts,
    )
    backend.open()
    ref = reference or default_reference(sim.track)
    iface = TMRealtimeInterface(
        backend, EnvSettings(obs_type=obs_type), ref, defer_errors=defer_errors
    )
    return iface, sim, clock


class Driver:
    """Calls the interface the way rtgym's thread does, moving the fake clock."""

    def __init__(self, iface: TMRealtimeInterface, clock: FakeClock) -> None:
        self.iface, self.clock = iface, clock
        self.k = 0
        self.t0 = 0.0

    def reset(self) -> tuple[list[Any], dict[str, Any]]:
        obs, info = self.iface.reset()
        self.t0 = self.clock.t
        self.k = 0
        return obs, info

    def time_step(self, action: np.ndarray) -> tuple[list[Any], float, bool, dict[str, Any]]:
        """Start time step k applying ``action`` and capture its observation."""
        self.clock.t = self.t0 + self.k * D
        self.iface.send_control(action)
        self.clock.t = self.t0 + self.k * D + C
        self.k += 1
        return self.iface.get_obs_rew_terminated_info()


def as_dict(iface: TMRealtimeInterface, parts: list[Any]) -> dict[str, Any]:
    return dict(zip(iface.builder.keys, parts, strict=True))


@pytest.mark.parametrize("obs_type", ["images", "lidar", "lidar_progress"])
def test_spaces(obs_type: str) -> None:
    iface, *_ = make(obs_type)
    full = observation_space(EnvSettings(obs_type=obs_type))
    sp = iface.get_observation_space()
    assert isinstance(sp, spaces.Tuple)
    assert iface.builder.keys == tuple(k for k in full.spaces if k != "actions")
    assert list(sp.spaces) == [full[k] for k in iface.builder.keys]
    assert iface.get_action_space() == spaces.Box(-1.0, 1.0, (3,), np.float32)
    a = iface.get_default_action()
    assert a.dtype == np.float32 and a.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("obs_type", ["images", "lidar"])
def test_reset_fills_history_with_first_capture(obs_type: str) -> None:
    iface, _, clock = make(obs_type)
    obs, info = Driver(iface, clock).reset()
    assert iface.get_observation_space().contains(tuple(obs))
    hist = as_dict(iface, obs)["images" if obs_type == "images" else "lidar"]
    for h in hist[1:]:
        np.testing.assert_array_equal(h, hist[0])
    assert info["lap_time"] == math.inf and info["race_time"] == 0.0 and not info["failed"]
    ref_env = TrackManiaEnv(obs_type=obs_type)
    _, sync_info = ref_env.reset(seed=0)
    assert set(info) == set(sync_info)


@pytest.mark.parametrize("obs_type", ["lidar", "lidar_progress"])
def test_matches_synchronous_simulator_exactly(obs_type: str) -> None:
    """Same schedule, same physics, same exact LIDAR, same reward: identical episodes."""
    iface, _, clock = make(obs_type)
    drv = Driver(iface, clock)
    env = TrackManiaEnv(obs_type=obs_type)
    rng = np.random.default_rng(1)
    acts = rng.uniform(-1, 1, (120, 3)).astype(np.float32)
    acts[:, 0] = np.abs(acts[:, 0])
    acts[:, 2] *= 0.3
    parts, info = drv.reset()
    sobs, sinfo = env.reset(seed=0)
    prev = np.zeros(3, np.float32)  # reset applies the default action
    for a in acts:
        parts, rew, term, info = drv.time_step(prev)
        sobs, srew, sterm, _, sinfo = env.step(a)
        got = as_dict(iface, parts)
        for k, v in got.items():
            np.testing.assert_array_equal(v, sobs[k], err_msg=k)
        assert rew == srew and term == sterm
        for k in ("race_time", "progress", "checkpoint", "speed_kmh", "gear", "rpm", "failed"):
            assert info[k] == sinfo[k], k
        np.testing.assert_array_equal(info["position"], sinfo["position"])
        assert info["wall_contacts"] == sinfo["wall_contacts"]
        prev = a
        if term:
            break


def test_images_match_synchronous_simulator_up_to_sampling() -> None:
    iface, _, clock = make("images")
    drv = Driver(iface, clock)
    env = TrackManiaEnv(obs_type="images")
    drv.reset()
    env.reset(seed=0)
    prev = np.zeros(3, np.float32)
    for _ in range(30):
        parts, rew, *_ = drv.time_step(prev)
        sobs, srew, *_ = env.step(GAS)
        prev = GAS
        got = as_dict(iface, parts)
        for k in ("speed", "gear", "rpm"):
            np.testing.assert_array_equal(got[k], sobs[k])
        assert rew == srew
        diff = np.abs(got["images"].astype(int) - sobs["images"].astype(int))
        assert diff.mean() < 6.0  # the window squashed vs rendered at 64×64


def test_expert_finishes_with_the_synchronous_lap_time() -> None:
    iface, sim, clock = make("lidar")
    drv = Driver(iface, clock)
    expert = ExpertDriver(sim.track, sim.sim.params)
    env = TrackManiaEnv(obs_type="lidar")
    drv.reset()
    env.reset(seed=0)
    prev = np.zeros(3, np.float32)
    total = 0.0
    for _ in range(3000):
        _, rew, term, info = drv.time_step(prev)
        a = env.expert_action()
        _, srew, sterm, _, sinfo = env.step(a)
        prev = expert.act(sim.sim)[0].astype(np.float32)
        np.testing.assert_array_equal(prev, a)
        total += rew
        if term:
            break
    assert term and sterm
    assert info["finished"] and not info["failed"]
    assert info["lap_time"] == sinfo["lap_time"] is not None
    assert info["checkpoint"] == info["checkpoints_total"]
    assert rew == srew and rew >= 100.0  # finish bonus
    assert total > 100.0


def test_three_d_reference_uses_game_columns() -> None:
    """A (x, y, z) reference is matched against the game position, not the ground pair."""
    iface2, sim, clock2 = make("lidar")
    ground = default_reference(sim.track).points
    game = np.stack([ground[:, 0], np.zeros(len(ground)), ground[:, 1]], axis=1)
    iface3, _, clock3 = make("lidar", reference=ReferenceTrajectory(game))
    d2, d3 = Driver(iface2, clock2), Driver(iface3, clock3)
    d2.reset()
    d3.reset()
    prev = np.zeros(3, np.float32)
    rewards = []
    for _ in range(40):
        _, r2, _, i2 = d2.time_step(prev)
        _, r3, _, i3 = d3.time_step(prev)
        assert r2 == r3 and i2["progress"] == i3["progress"]
        rewards.append(r2)
        prev = GAS
    assert sum(rewards) > 0


def test_pixel_lidar_when_no_exact_lidar() -> None:
    iface, sim, clock = make("lidar", exact_lidar=False)
    drv = Driver(iface, clock)
    parts, _ = drv.reset()
    scan = as_dict(iface, parts)["lidar"][-1]
    exact = sim.exact_lidar()
    near = np.abs(scan[3:16] - exact[3:16]) < 1.0  # the beams the picture sees well
    assert near.mean() >= 0.8
    for _ in range(5):
        parts, *_ = drv.time_step(GAS)
        assert iface.get_observation_space().contains(tuple(parts))


def test_tmrl_layout_estimates_race_time() -> None:
    iface, _, clock = make("lidar", telemetry=TmrlTelemetry)
    drv = Driver(iface, clock)
    _, info = drv.reset()
    _, _, _, info = drv.time_step(GAS)
    assert info["checkpoint"] == -1
    assert info["race_time"] >= 0.0 and math.isfinite(info["race_time"])


def test_wait_releases_controls() -> None:
    iface, sim, clock = make("lidar")
    drv = Driver(iface, clock)
    drv.reset()
    drv.time_step(GAS)
    assert sim.controls.tolist() == [1.0, 0.0, 0.0]
    iface.wait()
    assert sim.controls.tolist() == [0.0, 0.0, 0.0]
    iface.send_control(None)  # rtgym's "do nothing"
    assert sim.controls.tolist() == [0.0, 0.0, 0.0]


def test_errors_raise_in_place_by_default() -> None:
    iface, _, clock = make("lidar", telemetry=BrokenTelemetry, ok=1)
    drv = Driver(iface, clock)
    drv.reset()
    drv.time_step(GAS)
    with pytest.raises(TelemetryError, match="stopped"):
        drv.time_step(GAS)


def test_deferred_errors_end_the_episode_and_are_kept() -> None:
    iface, sim, clock = make("lidar", telemetry=BrokenTelemetry, ok=2, defer_errors=True)
    drv = Driver(iface, clock)
    drv.reset()
    good, *_ = drv.time_step(GAS)
    parts, rew, term, _ = drv.time_step(GAS)  # still fine
    parts, rew, term, _ = drv.time_step(GAS)  # fails
    assert term and rew == 0.0
    np.testing.assert_array_equal(parts[0].shape, good[0].shape)
    assert iface.get_observation_space().contains(tuple(parts))
    iface.send_control(np.array([0.0, 1.0, 0.0], np.float32))  # skipped after an error
    assert sim.controls.tolist() == [1.0, 0.0, 0.0]
    iface.wait()  # but inputs are always released
    assert sim.controls.tolist() == [0.0, 0.0, 0.0]
    err = iface.pop_error()
    assert isinstance(err, TelemetryError)
    assert iface.pop_error() is None


class _Port:
    def __init__(self, log: list[str], name: str, fail_open: bool = False) -> None:
        self.log, self.name, self.fail_open = log, name, fail_open

    def open(self) -> None:
        if self.fail_open:
            raise ControllerError(f"{self.name} cannot open")
        self.log.append(f"open {self.name}")

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_backend_open_failure_closes_what_was_opened() -> None:
    log: list[str] = []
    b = RealtimeBackend(
        telemetry=_Port(log, "tel"),  # type: ignore[arg-type]
        frames=_Port(log, "frames"),  # type: ignore[arg-type]
        controller=_Port(log, "ctl", fail_open=True),  # type: ignore[arg-type]
    )
    with pytest.raises(ControllerError, match="ctl cannot open"):
        b.open()
    assert log == ["open tel", "open frames", "close frames", "close tel"]


def test_backend_validates_respawn_wait() -> None:
    sim = WallClockSim("default")
    with pytest.raises(ValueError, match="respawn_wait"):
        RealtimeBackend(SimTelemetry(sim), SimFrames(sim), SimController(sim), respawn_wait=-1)


class _FailingClose(_Port):
    def close(self) -> None:
        super().close()
        raise ControllerError(f"{self.name} cannot close")


def test_backend_close_closes_every_port_and_reraises() -> None:
    log: list[str] = []
    b = RealtimeBackend(
        telemetry=_Port(log, "tel"),  # type: ignore[arg-type]
        frames=_Port(log, "frames"),  # type: ignore[arg-type]
        controller=_FailingClose(log, "ctl"),  # type: ignore[arg-type]
    )
    with pytest.raises(ControllerError, match="ctl cannot close"):
        b.close()
    assert log == ["close ctl", "close frames", "close tel"]
