"""What the car sees: the LIDAR (against an independent ray march) and the camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tm_gym.core.geometry import (
    LIDAR_ANGLES_DEG,
    LIDAR_BEAMS,
    LIDAR_RANGE,
    WINDOW_HEIGHT,
    WINDOW_WIDTH,
)
from tm_gym.sim.lidar import lidar
from tm_gym.sim.raster import GRAY_PALETTE, PALETTE
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.track import BORDER_WIDTH, Track
from tm_gym.sim.tracks import load_track


@pytest.fixture(scope="module")
def default_sim() -> Simulator:
    return Simulator("default", 1)


def random_poses(track: Track, n: int, seed: int, margin: float = 2.0) -> np.ndarray:
    """(n, 3) poses x, y, heading on the road: up to ``margin`` m from the walls and within
    ±0.6 rad of the direction of travel."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(track.start_s, track.finish_s, n)
    i = np.searchsorted(track.s, s)
    lat = rng.uniform(-1, 1, n) * (track.widths[i] / 2 - margin)
    xy = track.centerline[i] + lat[:, None] * track.normals[i]
    psi = np.arctan2(track.tangents[i, 1], track.tangents[i, 0]) + rng.uniform(-0.6, 0.6, n)
    return np.column_stack([xy, psi])


# -- LIDAR -----------------------------------------------------------------------------------
def test_beam_layout() -> None:
    assert LIDAR_BEAMS == 19
    assert LIDAR_ANGLES_DEG[0] == 90.0 and LIDAR_ANGLES_DEG[9] == 0.0
    assert LIDAR_ANGLES_DEG[-1] == -90.0
    assert np.all(np.diff(LIDAR_ANGLES_DEG) == -10.0)


def test_lidar_at_the_start(default_sim: Simulator) -> None:
    """Centred on a straight 20 m road: the side beams see the border band 10 − 0.8 m away."""
    sim = default_sim
    sim.reset()
    scan = sim.lidar()
    assert scan.shape == (1, 19) and scan.dtype == np.float32
    scan = scan[0]
    half = sim.track.widths[0] / 2 - BORDER_WIDTH
    assert half == pytest.approx(9.2)
    assert scan[0] == pytest.approx(9.2, abs=0.05)
    assert scan[18] == pytest.approx(9.2, abs=0.05)
    # the 170 m straight goes beyond the range
    assert scan[9] == pytest.approx(LIDAR_RANGE)
    # symmetric, and each oblique beam hits the side at 9.2 / sin(angle)
    np.testing.assert_allclose(scan, scan[::-1], atol=1e-3)
    for k in (0, 1, 2, 3, 4, 5, 6):
        angle = np.radians(LIDAR_ANGLES_DEG[k])
        assert scan[k] == pytest.approx(9.2 / np.sin(angle), abs=0.05), k


def test_beam_zero_is_left(default_sim: Simulator) -> None:
    t = default_sim.track
    x, y = 50.0, -6.0  # on the first straight, 6 m right of centre, heading east
    scan = lidar(default_sim.raster, np.array([x]), np.array([y]), np.array([0.0]))[0]
    assert scan[0] == pytest.approx(t.widths[0] / 2 - BORDER_WIDTH + 6.0, abs=0.05)
    assert scan[18] == pytest.approx(t.widths[0] / 2 - BORDER_WIDTH - 6.0, abs=0.05)
    # facing west the sides swap
    back = lidar(default_sim.raster, np.array([x]), np.array([y]), np.array([np.pi]))[0]
    assert back[0] == pytest.approx(scan[18], abs=0.05)
    # the beam straight back reaches the wall closing the road at x = 0 (its black band lies
    # behind it, outside the road)
    assert back[9] == pytest.approx(x, abs=0.05)


def _inside(track: Track, pts: np.ndarray) -> np.ndarray:
    """Inside the road up to the border band: the perpendicular offset from the nearest
    centre-line sample is below width/2 − 0.8, and the point is between the two end walls."""
    centre = pts.mean(axis=0)
    spread = np.linalg.norm(pts - centre, axis=1).max()
    d = np.linalg.norm(track.centerline - centre, axis=1)
    # every point's nearest sample is within d.min() + 2·spread of the chunk's centre
    cand = np.flatnonzero(d <= d.min() + 2 * spread + 1e-9)
    diff = pts[:, None, :] - track.centerline[cand][None]
    j = cand[np.argmin(np.einsum("pcd,pcd->pc", diff, diff), axis=1)]
    rel = pts - track.centerline[j]
    lat = np.einsum("pd,pd->p", rel, track.normals[j])
    lon = track.s[j] + np.einsum("pd,pd->p", rel, track.tangents[j])
    return (np.abs(lat) < track.widths[j] / 2 - BORDER_WIDTH) & (lon >= 0) & (lon <= track.s[-1])


def _march(track: Track, x: float, y: float, heading: float, step: float = 0.01) -> float:
    """Distance to the last inside point along a ray, marching ``step`` metres at a time."""
    ts = np.arange(1, round(LIDAR_RANGE / step) + 1) * step
    direction = np.array([np.cos(heading), np.sin(heading)])
    for k in range(0, len(ts), 500):
        t = ts[k : k + 500]
        inside = _inside(track, np.array([x, y]) + t[:, None] * direction)
        if not inside.all():
            return float(t[np.argmin(inside)] - step)
    return LIDAR_RANGE


def test_brute_force_march_agrees_with_geometry() -> None:
    """The reference itself: centred on the default track's first straight."""
    t = load_track("default")
    assert _march(t, 50.0, 0.0, np.pi / 2) == pytest.approx(9.2, abs=0.011)
    assert _march(t, 50.0, 3.0, -np.pi / 2) == pytest.approx(12.2, abs=0.011)
    assert _march(t, 50.0, 0.0, np.pi) == pytest.approx(50.0, abs=0.011)


@pytest.mark.parametrize(("name", "seed"), [("default", 0), ("technical", 1)])
def test_lidar_matches_ray_march(name: str, seed: int) -> None:
    track = load_track(name)
    sim = Simulator(track, 1)
    poses = random_poses(track, 6, seed)
    scans = lidar(sim.raster, poses[:, 0].copy(), poses[:, 1].copy(), poses[:, 2].copy())
    errors = []
    for pose, scan in zip(poses, scans, strict=True):
        ref = [_march(track, pose[0], pose[1], pose[2] + np.radians(a)) for a in LIDAR_ANGLES_DEG]
        errors.append(np.abs(scan - np.array(ref)))
    err = np.array(errors)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() < 0.1, (
        f"LIDAR off by {err.max():.3f} m at pose {poses[worst[0]].round(2).tolist()}, "
        f"beam {worst[1]} (LIDAR {scans[worst]:.3f} m)"
    )


def test_lidar_batch_equals_single(default_sim: Simulator) -> None:
    track = default_sim.track
    poses = random_poses(track, 5, seed=4)
    batch = lidar(default_sim.raster, *(poses[:, k].copy() for k in range(3)))
    for i, p in enumerate(poses):
        one = lidar(default_sim.raster, p[:1].copy(), p[1:2].copy(), p[2:3].copy())
        np.testing.assert_array_equal(one[0], batch[i])
    assert np.all((batch > 0) & (batch <= LIDAR_RANGE))


# -- camera ----------------------------------------------------------------------------------
def _gray_window(rgb: np.ndarray) -> np.ndarray:
    """TMRL's preprocessing of a 256×128 window: luma, then area-average to 64×64."""
    f = rgb.astype(np.float64)
    g = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    return g.reshape(*rgb.shape[:-3], 64, 2, 64, 4).mean(axis=(-3, -1))


def test_rgb_window_looks_like_a_road(default_sim: Simulator, tmp_path: Path) -> None:
    sim = default_sim
    sim.reset()
    frames = sim.render_rgb()
    assert frames.shape == (1, WINDOW_HEIGHT, WINDOW_WIDTH, 3) == (1, 128, 256, 3)
    assert frames.dtype == np.uint8
    img = frames[0].astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    # sky: the top rows are blue
    assert np.all(b[:12] > r[:12] + 60) and np.all(b[:12] > g[:12] + 20)
    # the car, red, at the bottom centre
    car = img[110:120, 120:136]
    assert np.all(car[..., 0] > 150) and np.all(car[..., 1] < 80)
    # the road is gray: ahead (between the horizon and the start line) and beside the car
    for road in (img[72:83, 96:160], img[92:128, 64:100]):
        assert np.all(road.max(axis=-1) - road.min(axis=-1) < 12)
        assert np.all(np.abs(road.mean(axis=-1) - 120) < 15)
    # black border pixels (TMRL's LIDAR looks for pixels darker than (55, 55, 55))
    black = np.all(img < 55, axis=-1)
    assert black.sum() > 100
    assert black[64:, :128].any() and black[64:, 128:].any(), "a border on each side"
    assert not black[68:, 112:144].any(), "no border right ahead on a straight road"
    # grass on both sides in the lower half
    green = (g > r + 40) & (g > b + 40)
    assert green[64:, :40].any() and green[64:, -40:].any()
    # a frame a person can open
    png = tmp_path / "driver_view.png"
    Image.fromarray(frames[0]).save(png)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), frames[0])


def test_gray_fast_path_is_the_palette_of_the_rgb_view() -> None:
    """At the same resolution, render_gray is exactly the luma of render_rgb."""
    track = load_track("technical")
    sim = Simulator(track, 6)
    p = random_poses(track, 6, seed=5)
    sim.x[:], sim.y[:], sim.psi[:] = p[:, 0], p[:, 1], p[:, 2]
    rgb = sim.render_rgb(64, 64).astype(np.float64)
    luma = np.rint(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    np.testing.assert_array_equal(sim.render_gray(64, 64), luma.astype(np.uint8))
    assert GRAY_PALETTE.shape == (len(PALETTE),)


@pytest.mark.parametrize("name", ["default", "technical", "speedway"])
def test_gray_fast_path_matches_resized_window(name: str) -> None:
    """64×64 grayscale ≈ the 256×128 window converted to gray and squashed to 64×64.

    The fast path samples one ray per pixel where the resize averages 8 window pixels, so
    edges differ; measured mean absolute differences are 2–7 gray levels per frame.
    """
    track = load_track(name)
    sim = Simulator(track, 8)
    p = random_poses(track, 8, seed=6)
    sim.x[:], sim.y[:], sim.psi[:] = p[:, 0], p[:, 1], p[:, 2]
    fast = sim.render_gray(64, 64)
    assert fast.shape == (8, 64, 64) and fast.dtype == np.uint8
    mad = np.abs(fast.astype(np.float64) - _gray_window(sim.render_rgb())).mean(axis=(1, 2))
    assert mad.max() < 8.0, mad
    assert mad.mean() < 5.0, mad
    # a wrong picture is far off: compare with the views of other cars
    shuffled = np.abs(fast.astype(np.float64) - _gray_window(np.roll(sim.render_rgb(), 1, 0)))
    assert shuffled.mean() > 2 * mad.mean()


def test_view_changes_when_the_car_moves_or_turns(default_sim: Simulator) -> None:
    sim = default_sim
    sim.reset()
    before = sim.render_gray().copy()
    sim.step(np.array([[1.0, 0.0, 0.0]]), 150)  # 1.5 s of full gas
    moved = sim.render_gray().copy()
    assert np.abs(moved.astype(int) - before).mean() > 1.0
    sim.psi[:] += 0.3
    turned = sim.render_gray()
    assert np.abs(turned.astype(int) - moved).mean() > 5.0
    # the sky and the car do not move with the world
    np.testing.assert_array_equal(turned[0, :10], before[0, :10])
    np.testing.assert_array_equal(turned[0, 58:61, 30:34], before[0, 58:61, 30:34])
    sim.reset()


def test_frame_buffers_are_reused(default_sim: Simulator) -> None:
    out = np.zeros((1, 64, 64), np.uint8)
    res = default_sim.render_gray(out=out)
    assert res is out and out.any()
