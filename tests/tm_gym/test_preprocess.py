"""Screenshot preprocessing: the agent's frame and the pixel LIDAR, checked against the
simulator (its fast 64×64 camera path and its exact LIDAR)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tm_gym.core.geometry import LIDAR_ANGLES_DEG, LIDAR_BEAMS, LIDAR_RANGE, CameraSpec
from tm_gym.preprocess import (
    BORDER_THRESHOLD,
    DEFAULT_CAMERA,
    LIDAR_STEP,
    LidarScan,
    agent_frame,
    area_resize,
    ground_to_pixel,
    pixel_lidar,
    to_gray,
)
from tm_gym.sim.camera import ray_table
from tm_gym.sim.raster import CLEARANCE_CELL, GRAY_PALETTE, PALETTE, TrackRaster
from tm_gym.sim.simulator import Simulator
from tm_gym.sim.track import BORDER_WIDTH, Track

TRACKS = ("default", "speedway", "technical")
_ANGLES = np.radians(LIDAR_ANGLES_DEG)


@pytest.fixture(scope="module")
def sims() -> dict[str, Simulator]:
    return {name: Simulator(name, 1) for name in TRACKS}


def poses(track: Track, n: int, seed: int, margin: float = 2.0) -> np.ndarray:
    """(n, 3) poses x, y, heading on the road (at least ``margin`` m from the walls, heading
    within ±0.4 rad of the road's direction) whose view cannot reach the finish line: its
    checkered band is black like the borders, but the exact LIDAR ignores it."""
    rng = np.random.default_rng(seed)
    finish = track.centerline[int(np.searchsorted(track.s, track.finish_s))]
    reach = LIDAR_RANGE + track.widths.max()
    out: list[tuple[float, float, float]] = []
    while len(out) < n:
        i = int(np.searchsorted(track.s, rng.uniform(track.start_s, track.finish_s)))
        lat = rng.uniform(-1, 1) * (track.widths[i] / 2 - margin)
        x, y = track.centerline[i] + lat * track.normals[i]
        if math.hypot(x - finish[0], y - finish[1]) < reach:
            continue
        tx, ty = track.tangents[i]
        out.append((x, y, math.atan2(ty, tx) + rng.uniform(-0.4, 0.4)))
    return np.array(out)


def place(sim: Simulator, pose: np.ndarray) -> None:
    sim.x[:], sim.y[:], sim.psi[:] = pose[0], pose[1], pose[2]


# -- grayscale and resizing ---------------------------------------------------------------------
def test_to_gray_is_the_simulator_palette_conversion() -> None:
    np.testing.assert_array_equal(to_gray(PALETTE), GRAY_PALETTE)
    assert to_gray(np.array([[0, 0, 0], [255, 255, 255]], np.uint8)).tolist() == [0, 255]


def test_agent_frame_is_the_block_mean_of_the_gray_window() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)
    frame = agent_frame(rgb)
    assert frame.shape == (1, 64, 64) and frame.dtype == np.uint8
    blocks = to_gray(rgb).astype(np.int64).reshape(64, 2, 64, 4).sum(axis=(1, 3))
    np.testing.assert_array_equal(frame[0], np.rint(blocks / 8).astype(np.uint8))


def test_agent_frame_rgb_is_channels_first() -> None:
    rgb = np.zeros((128, 256, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 200, 77
    rgb[:64, :128] = (255, 0, 0)  # top-left quadrant red
    frame = agent_frame(rgb, size=32, grayscale=False)
    assert frame.shape == (3, 32, 32) and frame.flags.c_contiguous
    assert frame[:, 0, 0].tolist() == [255, 0, 0]
    assert frame[:, 31, 31].tolist() == [10, 200, 77]
    assert frame[:, :16, :16].min(axis=(1, 2)).tolist() == [255, 0, 0]


def _reference_area(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Dense-matrix box filter, written independently of the module's sparse kernel."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        edges = np.linspace(0.0, n_in, n_out + 1)
        j = np.arange(n_in)
        lo = np.maximum(edges[:-1, None], j[None])
        hi = np.minimum(edges[1:, None], j[None] + 1.0)
        m = np.clip(hi - lo, 0, None)
        return m / m.sum(axis=1, keepdims=True)

    f = img.astype(np.float64)
    rows = np.tensordot(weights(img.shape[0], h), f, axes=(1, 0))  # (h, W, ...)
    return np.moveaxis(np.tensordot(weights(img.shape[1], w), rows, axes=(1, 1)), 0, 1)


@pytest.mark.parametrize(("shape", "out"), [((488, 958), (64, 64)), ((100, 30), (7, 11))])
def test_area_resize_for_any_ratio(shape: tuple[int, int], out: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = area_resize(img, *out)
    assert got.shape == (*out, 3)
    ref = _reference_area(img, *out)
    # equal up to rounding of values within float error of a .5 tie
    assert np.abs(got.astype(np.float64) - ref).max() <= 0.5 + 1e-6
    gray = agent_frame(img, size=64)[0]
    assert np.abs(gray - _reference_area(to_gray(img), 64, 64)).max() <= 0.5 + 1e-6


@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    size=st.integers(1, 80),
    value=st.integers(0, 255),
)
def test_agent_frame_keeps_flat_images_flat(h: int, w: int, size: int, value: int) -> None:
    frame = agent_frame(np.full((h, w, 3), value, np.uint8), size=size)
    assert frame.shape == (1, size, size)
    assert np.all(frame == value)


def test_area_resize_two_dimensional_and_upscaling() -> None:
    img = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    up = area_resize(img, 4, 6)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(img, 2, axis=0), 2, axis=1))
    assert area_resize(img, 2, 3) is not img


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((8, 8, 3), np.float32), "dtype float32"),
        (np.zeros((8, 8), np.uint8), r"shape \(8, 8\)"),
        (np.zeros((8, 8, 4), np.uint8), "alpha"),
        (np.zeros((0, 8, 3), np.uint8), "non-empty"),
    ],
)
def test_bad_screenshots_are_rejected(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        agent_frame(bad)
    with pytest.raises(ValueError, match=match):
        pixel_lidar(bad)


def test_bad_arguments_are_rejected() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="list"):
        agent_frame([[0, 0, 0]])  # type: ignore[arg-type]
    for size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="size"):
            agent_frame(rgb, size=size)  # type: ignore[arg-type]
    for threshold in (0, 256, 5.5):
        with pytest.raises(ValueError, match="threshold"):
            pixel_lidar(rgb, threshold=threshold)  # type: ignore[arg-type]
    for max_range in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_range"):
            pixel_lidar(rgb, max_range=max_range)


def test_agent_frame_matches_the_simulators_fast_path(sims: dict[str, Simulator]) -> None:
    """The simulator renders the agent's 64×64 frame directly, one ray per pixel; the game
    backend squashes a 256×128 screenshot by area averaging. Both agree where the picture is
    uniform over a 4×2 block and differ along edges (anti-aliased vs point-sampled), by a few
    gray levels on average. Measured over 300 poses: 80% of pixels equal, mean absolute
    difference 2.6–3.0 per track, at most 3.9 for one frame."""
    means = []
    equal = []
    for k, sim in enumerate(sims.values()):
        for pose in poses(sim.track, 30, seed=10 + k):
            place(sim, pose)
            frame = agent_frame(sim.render_rgb()[0])[0].astype(np.int64)
            fast = sim.render_gray(64, 64)[0].astype(np.int64)
            means.append(np.abs(frame - fast).mean())
            equal.append((frame == fast).mean())
    assert max(means) < 5.0
    assert np.mean(means) < 3.5
    assert np.mean(equal) > 0.75


# -- pixel LIDAR ------------------------------------------------------------------------------
def test_ground_to_pixel_inverts_the_ray_table() -> None:
    for width, height in [(256, 128), (958, 488), (64, 64)]:
        table = ray_table(DEFAULT_CAMERA, width, height)
        ground = (table.kind == -3) | (table.kind >= 0)  # includes pixels under the car
        rows, cols = np.nonzero(ground)
        col, row, visible = ground_to_pixel(
            DEFAULT_CAMERA, width, height, table.ahead[rows, cols], table.left[rows, cols]
        )
        assert visible.all()
        np.testing.assert_allclose(col, cols + 0.5, atol=1e-6)
        np.testing.assert_allclose(row, rows + 0.5, atol=1e-6)


def _exit_distance(camera: CameraSpec, width: int, height: int, k: int) -> float:
    """Where beam k leaves the picture (or max range), by bisection on ground_to_pixel."""

    def seen(d: float) -> bool:
        a, lft = np.array([d * math.cos(_ANGLES[k])]), np.array([d * math.sin(_ANGLES[k])])
        return bool(ground_to_pixel(camera, width, height, a, lft)[2][0])

    if seen(LIDAR_RANGE):
        return LIDAR_RANGE
    lo, hi = 0.0, LIDAR_RANGE
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if seen(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize(("width", "height"), [(256, 128), (958, 488), (100, 100)])
def test_beams_over_a_blank_road(width: int, height: int) -> None:
    """Nothing dark in view: every beam runs to max_range, or reports where it left view."""
    rgb = np.full((height, width, 3), 120, np.uint8)
    scan = pixel_lidar(rgb)
    assert isinstance(scan, LidarScan)
    assert scan.distances.shape == (LIDAR_BEAMS,) and scan.distances.dtype == np.float32
    assert scan.in_view.shape == (LIDAR_BEAMS,) and scan.in_view.dtype == np.bool_
    for k in range(LIDAR_BEAMS):
        exit_d = _exit_distance(DEFAULT_CAMERA, width, height, k)
        assert scan.in_view[k] == (exit_d == LIDAR_RANGE), k
        assert scan.distances[k] == pytest.approx(exit_d, abs=LIDAR_STEP + 1e-4), k
    # the 90°-wide view shows the sides only close to the car; straight ahead runs to the end
    assert not scan.in_view[0] and not scan.in_view[18] and scan.in_view[9]
    assert scan.distances[9] == LIDAR_RANGE
    # a shorter range keeps every beam in view
    short = pixel_lidar(rgb, max_range=3.0)
    assert short.in_view.all() and np.all(short.distances == 3.0)


def test_dark_picture_and_threshold() -> None:
    black = np.full((128, 256, 3), BORDER_THRESHOLD - 1, np.uint8)
    scan = pixel_lidar(black)
    assert scan.in_view.all() and np.all(scan.distances == 0.0)
    # a pixel dark in two channels only is no border
    bright_blue = black.copy()
    bright_blue[..., 2] = BORDER_THRESHOLD
    assert pixel_lidar(bright_blue).distances[9] == LIDAR_RANGE
    assert pixel_lidar(bright_blue, threshold=BORDER_THRESHOLD + 1).distances[9] == 0.0


def test_far_plane_ends_the_view() -> None:
    camera = CameraSpec(far=60.0)
    scan = pixel_lidar(np.full((128, 256, 3), 120, np.uint8), camera)
    assert not scan.in_view[9]
    assert scan.distances[9] == pytest.approx(60.0 - camera.behind, abs=LIDAR_STEP)


def test_a_camera_that_cannot_see_the_car() -> None:
    camera = CameraSpec(pitch_deg=-30.0)  # looking up: the ground near the car is out of view
    scan = pixel_lidar(np.full((64, 64, 3), 120, np.uint8), camera)
    assert not scan.in_view.any() and np.all(scan.distances == 0.0)


def test_at_the_start(sims: dict[str, Simulator]) -> None:
    """Centred on the default track's 20 m-wide first straight: the side borders (9.2 m away)
    are beyond the picture's edge, which the side beams leave 5.84 m from the car; the oblique
    beams see them where the exact LIDAR does (up to the pixel footprint, which is large for
    the beams 10° off the axis that graze the borders 53 m ahead)."""
    sim = sims["default"]
    sim.reset()
    exact = sim.lidar()[0]
    for width, height in [(256, 128), (958, 488)]:
        scan = pixel_lidar(sim.render_rgb(width, height)[0])
        # beam 0 leaves the picture at left = depth × tan(45°) = 5.5 cos 9° + 2.6 sin 9°
        edge = 5.5 * math.cos(math.radians(9)) + 2.6 * math.sin(math.radians(9))
        assert not scan.in_view[0] and not scan.in_view[18]
        assert scan.distances[0] == pytest.approx(edge, abs=2 * LIDAR_STEP)
        assert scan.in_view[3:16].all()
        assert scan.distances[9] == LIDAR_RANGE
        # the borders run along the heading, so the error across them is the error along the
        # beam times |sin(beam angle)|: within 0.25 m plus the pixel footprint there
        across = np.abs(scan.distances - exact) * np.abs(np.sin(_ANGLES))
        fp = _footprint(sim.camera, width, height, exact)
        assert np.all(across[3:16] <= 0.25 + fp[3:16])
        np.testing.assert_allclose(scan.distances[4:8], exact[4:8], rtol=0.05, atol=0.3)
        np.testing.assert_allclose(scan.distances, scan.distances[::-1], atol=0.2)


def _clearance(raster: TrackRaster, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """The simulator's clearance field, interpolated bilinearly like its LIDAR does."""
    g = raster.clearance
    fx = (wx - raster.x0) / CLEARANCE_CELL - 0.5
    fy = (wy - raster.y0) / CLEARANCE_CELL - 0.5
    ix = np.clip(np.floor(fx).astype(np.int64), 0, g.shape[1] - 2)
    iy = np.clip(np.floor(fy).astype(np.int64), 0, g.shape[0] - 2)
    ax, ay = fx - ix, fy - iy
    top = g[iy, ix] * (1 - ax) + g[iy, ix + 1] * ax
    bottom = g[iy + 1, ix] * (1 - ax) + g[iy + 1, ix + 1] * ax
    return top * (1 - ay) + bottom * ay


def _incidence(raster: TrackRaster, pose: np.ndarray, d: np.ndarray) -> np.ndarray:
    """|cos| of the angle between each beam and the border's normal where it hits (from the
    clearance field's gradient): 1 for a beam hitting a border square on, 0 when grazing."""
    dx, dy = np.cos(pose[2] + _ANGLES), np.sin(pose[2] + _ANGLES)
    hx, hy = pose[0] + d * dx, pose[1] + d * dy
    h = 0.25
    gx = _clearance(raster, hx + h, hy) - _clearance(raster, hx - h, hy)
    gy = _clearance(raster, hx, hy + h) - _clearance(raster, hx, hy - h)
    return np.abs(dx * gx + dy * gy) / (np.hypot(gx, gy) + 1e-12)


def _footprint(camera: CameraSpec, width: int, height: int, d: np.ndarray) -> np.ndarray:
    """Ground size (m) of the pixel that shows each beam's point at distance ``d``: the larger
    of the steps between the ground points of neighbouring rows and columns."""
    table = ray_table(camera, width, height)
    col, row, _ = ground_to_pixel(camera, width, height, d * np.cos(_ANGLES), d * np.sin(_ANGLES))
    r = np.clip(np.floor(row).astype(np.int64), 0, height - 2)
    c = np.clip(np.floor(col).astype(np.int64), 0, width - 2)
    g = np.stack([table.ahead, table.left], axis=-1)
    down = np.linalg.norm(g[r + 1, c] - g[r, c], axis=-1)
    side = np.linalg.norm(g[r, c + 1] - g[r, c], axis=-1)
    return np.maximum(down, side)


@pytest.mark.parametrize(("width", "height"), [(256, 128), (958, 488)])
def test_pixel_lidar_agrees_with_the_exact_lidar(
    sims: dict[str, Simulator], width: int, height: int
) -> None:
    """The pixel LIDAR on simulator frames vs the simulator's exact LIDAR, 240 poses.

    Where the black border band is resolved — the ground footprint of a pixel at the exact hit
    is at most the band's width (0.8 m; about the first 15 m at 256×128, 30 m at 958×488) — the
    error measured across the border is at most 0.25 m plus one pixel footprint: the rendered
    band's edge is quantised to the 0.25 m material raster (≤ 0.18 m across), beams are marched
    in 0.05 m steps and a pixel is seen by its centre ray. Along the beam the same error is
    larger for beams that graze a border (it grows as 1 / cos of the incidence angle), so along
    the beam the bulk is checked: measured median 0.09 m, 90th percentile 0.23 m, 99th
    0.45–0.56 m, 99% within max(0.3 m, 5% of the distance).

    Farther away the flat, point-sampled band breaks up into gaps and beams can see through it
    (they then overshoot): that is the simulator's renderer, not the game, whose borders are
    walls; those beams are not checked here.
    """
    along: list[np.ndarray] = []
    distance: list[np.ndarray] = []
    n_view = n_out = 0
    for k, sim in enumerate(sims.values()):
        for pose in poses(sim.track, 80, seed=k):
            place(sim, pose)
            exact = sim.lidar()[0].astype(np.float64)
            scan = pixel_lidar(sim.render_rgb(width, height)[0])
            got = scan.distances.astype(np.float64)
            fp = _footprint(sim.camera, width, height, exact)
            cos = _incidence(sim.raster, pose, exact)
            resolved = (fp <= BORDER_WIDTH) & (exact < LIDAR_RANGE)
            # in view: the pixel LIDAR finds the border where the exact LIDAR does
            check = scan.in_view & resolved
            across = np.abs(got - exact) * cos
            bad = np.flatnonzero(check & (across > 0.25 + fp))
            assert bad.size == 0, (
                f"pose {pose.round(2).tolist()} on {sim.track.name}, beam {bad[0]}: pixel "
                f"{got[bad[0]]:.2f} m vs exact {exact[bad[0]]:.2f} m "
                f"(footprint {fp[bad[0]]:.2f} m, cos {cos[bad[0]]:.2f})"
            )
            along.append((got - exact)[check])
            distance.append(exact[check])
            n_view += int(check.sum())
            # out of view: no border was missed before the beam left the picture
            left_early = ~scan.in_view & resolved & (exact < got)
            assert np.all((got - exact)[left_early] * cos[left_early] <= 0.25 + fp[left_early])
            n_out += int((~scan.in_view).sum())
    err = np.abs(np.concatenate(along))
    d = np.concatenate(distance)
    print(
        "STATS",
        width,
        n_view,
        n_out,
        np.median(err),
        np.percentile(err, [90, 99, 100]),
        np.mean(err <= np.maximum(0.3, 0.05 * d)),
    )
    assert n_view > 1000 and n_out > 500  # both cases are well represented
    assert np.median(err) < 0.15
    assert np.percentile(err, 90) < 0.35
    assert np.percentile(err, 99) < 0.8
    assert np.mean(err <= np.maximum(0.3, 0.05 * d)) > 0.97


def test_window_sizes_agree(sims: dict[str, Simulator]) -> None:
    """The same view in three window sizes gives the same near scan (beams hitting within
    12 m, where every size resolves the border)."""
    sim = sims["technical"]
    for pose in poses(sim.track, 10, seed=7):
        place(sim, pose)
        scans = [
            pixel_lidar(sim.render_rgb(w, h)[0]) for w, h in [(256, 128), (512, 256), (958, 488)]
        ]
        near = np.all([s.in_view & (s.distances < 12.0) for s in scans], axis=0)
        for s in scans[1:]:
            np.testing.assert_allclose(s.distances[near], scans[0].distances[near], atol=0.8)
            np.testing.assert_array_equal(s.in_view[near], scans[0].in_view[near])


def test_strided_screenshots(sims: dict[str, Simulator]) -> None:
    """A BGRA buffer viewed as RGB (what a capture may hand over) gives the same results."""
    sim = sims["default"]
    sim.reset()
    rgb = sim.render_rgb()[0]
    bgra = np.concatenate([rgb[..., ::-1], np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    view = bgra[:, :, 2::-1]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(agent_frame(view), agent_frame(rgb))
    np.testing.assert_array_equal(pixel_lidar(view).distances, pixel_lidar(rgb).distances)
