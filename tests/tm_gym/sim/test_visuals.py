"""Looks of the simulated world: the Visuals record and its ranges (validation, draws), and what
the renderer makes of them (sky, brightness, camera geometry, per-car looks, standard look)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from tm_gym.core.config import ConfigError
from tm_gym.core.geometry import CameraSpec
from tm_gym.core.visuals import (
    DEFAULT_VISUAL_RANGES,
    VISUAL_KEYS,
    VisualRanges,
    Visuals,
    VisualsSpec,
)
from tm_gym.error import TrackMasterError
from tm_gym.sim.camera import CarViews, ray_table, sky_rows
from tm_gym.sim.raster import GRAY_PALETTE, M_BORDER, M_FAR, PALETTE, palette_of
from tm_gym.sim.simulator import Simulator

# -- the record ------------------------------------------------------------------------------


def test_standard_look_is_the_standard_camera_and_palette() -> None:
    v = Visuals()
    assert v.camera() == CameraSpec()
    rgb, gray = palette_of(v)
    np.testing.assert_array_equal(rgb, PALETTE)
    np.testing.assert_array_equal(gray, GRAY_PALETTE)
    # today's sky: (70, 130, 210) at the top, light blue (185, 215, 240) a third of the way down
    frac = (np.arange(128) + 0.5) / 128
    top, bottom = np.array([70, 130, 210.0]), np.array([185, 215, 240.0])
    sky = np.rint(top + (bottom - top) * np.clip(frac * 3, 0, 1)[:, None]).astype(np.uint8)
    np.testing.assert_array_equal(sky_rows(v, 128)[0], sky)


@pytest.mark.parametrize(
    ("changes", "key", "allowed"),
    [
        ({"sky": (300, 0, 0)}, "sky", "0 to 255"),
        ({"grass": (1, 2)}, "grass", "RGB triple"),
        ({"road": "gray"}, "road", "0 to 255"),
        ({"border_dark": (-1, 0, 0)}, "border_dark", "0 to 255"),
        ({"brightness": 0.0}, "brightness", "0 (excluded)"),
        ({"brightness": -1.0}, "brightness", "0 (excluded)"),
        ({"fov_deg": 10.0}, "fov_deg", "10 (excluded) to 170"),
        ({"fov_deg": 170.0}, "fov_deg", "170 excluded"),
        ({"camera_pitch_deg": 95.0}, "camera_pitch_deg", "-30 to 89"),
        ({"camera_height_m": 0.1}, "camera_height_m", "0.5 to 30"),
        ({"camera_height_m": float("nan")}, "camera_height_m", "0.5 to 30"),
        ({"brightness": True}, "brightness", "a number"),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_range(
    changes: dict[str, Any], key: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Visuals(**changes)
    message = str(caught.value)
    assert f"Visuals.{key}" in message and repr(changes[key])[:4] in message and allowed in message
    assert isinstance(caught.value, TrackMasterError)


def test_colours_are_normalised_to_tuples() -> None:
    v = Visuals(sky=[1, 2, 3], brightness=2)  # type: ignore[arg-type]
    assert v.sky == (1, 2, 3) and v.brightness == 2.0 and isinstance(v.brightness, float)


def test_unknown_keys_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"visuals: unknown key 'skye'; known keys: .*sky"):
        VisualsSpec.parse({"skye": (1, 2, 3)})
    with pytest.raises(ConfigError, match=r"visuals\['random'\]: unknown key 'bright'"):
        VisualsSpec.parse({"random": {"bright": [0.5, 1.0]}})
    with pytest.raises(ConfigError, match=r"--visuals: unknown key 'hue'"):
        Visuals.from_assignments(["hue=3"])


def test_parse_every_spelling() -> None:
    assert VisualsSpec.parse(None) == VisualsSpec() == VisualsSpec.parse({})
    assert not VisualsSpec.parse(None).random
    assert VisualsSpec.parse(Visuals(brightness=0.5)).base.brightness == 0.5
    assert VisualsSpec.parse({"brightness": 0.5}).base == Visuals(brightness=0.5)
    assert VisualsSpec.parse("random").ranges == DEFAULT_VISUAL_RANGES
    assert VisualsSpec.parse({"random": "default"}).ranges == DEFAULT_VISUAL_RANGES
    ranges = VisualRanges(brightness=(0.5, 0.6))
    assert VisualsSpec.parse(ranges).ranges == ranges
    spec = VisualsSpec.parse({"sky": [40, 60, 200], "random": {"brightness": [0.6, 1.4]}})
    assert spec.random and spec.base.sky == (40, 60, 200) and spec.ranges is not None
    assert spec.ranges.keys == ("brightness",)
    for bad in ("randomly", 3, ["sky"], {"random": 5}):
        with pytest.raises(ConfigError, match="visuals"):
            VisualsSpec.parse(bad)


def test_ranges_are_checked_end_by_end() -> None:
    with pytest.raises(ConfigError, match=r"brightness: got \[1.4, 0.6\], expected low <= high"):
        VisualsSpec.parse({"random": {"brightness": [1.4, 0.6]}})
    with pytest.raises(ConfigError, match="in every channel"):
        VisualRanges(sky=((0, 0, 100), (10, 10, 50)))
    with pytest.raises(ConfigError, match=r"fov_deg: got 200"):
        VisualRanges(fov_deg=(80.0, 200.0))
    with pytest.raises(ConfigError, match=r"sky: got 3 .*\[\[r, g, b\], \[r, g, b\]\]"):
        VisualRanges.from_mapping({"sky": 3})
    with pytest.raises(ConfigError, match="sky_horizon"):
        VisualRanges(sky_horizon=(None, (1, 2, 3)))  # type: ignore[arg-type]


def test_command_line_assignments() -> None:
    v = Visuals.from_assignments(["sky=40,60,200", "brightness=0.8", "grass=[10, 20, 30]"])
    assert v == Visuals(sky=(40, 60, 200), brightness=0.8, grass=(10, 20, 30))
    with pytest.raises(ConfigError, match=r"--visuals sky: got '40,60'"):
        Visuals.from_assignments(["sky=40,60"])
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        Visuals.from_assignments(["brightness"])


def test_draws_stay_in_range_and_follow_the_seed() -> None:
    def draws(seed: int) -> list[Visuals]:
        rng = np.random.default_rng(seed)
        return [DEFAULT_VISUAL_RANGES.sample(rng) for _ in range(50)]

    a, b, c = draws(1), draws(1), draws(2)
    assert a == b and a != c
    assert len(set(a)) == 50
    r = DEFAULT_VISUAL_RANGES
    for v in a:
        for key in VISUAL_KEYS:
            bounds = getattr(r, key)
            if bounds is None:
                assert getattr(v, key) == getattr(Visuals(), key)
            elif key in ("brightness", "camera_height_m", "camera_pitch_deg", "fov_deg"):
                assert bounds[0] <= getattr(v, key) <= bounds[1]
            else:
                lo, hi = np.array(bounds[0]), np.array(bounds[1])
                assert np.all(lo <= getattr(v, key)) and np.all(getattr(v, key) <= hi)


def test_default_ranges_keep_the_pixel_lidar_contrast() -> None:
    """Borders darker than (55, 55, 55), everything else lighter in some channel, at the
    extreme brightnesses of the default range."""
    r = DEFAULT_VISUAL_RANGES
    assert r.brightness is not None and r.border_dark is not None
    dark = Visuals(border_dark=r.border_dark[1], brightness=r.brightness[1])
    assert (palette_of(dark)[0][M_BORDER] < 55).all()
    assert r.sky is not None and r.grass is not None and r.road is not None
    dim = Visuals(sky=r.sky[0], grass=r.grass[0], road=r.road[0], brightness=r.brightness[0])
    pal = palette_of(dim)[0].astype(int)
    bright_enough = [m for m in range(len(pal)) if (pal[m] >= 55).any()]
    # the border and the finish line's dark squares are the only dark materials
    assert sorted(set(range(len(pal))) - set(bright_enough)) == [M_BORDER, 7]
    assert (sky_rows(dim, 128)[0].max(axis=1) >= 55).all()


# -- rendering -------------------------------------------------------------------------------


def _frame(look: Visuals, rgb: bool = True) -> np.ndarray:
    sim = Simulator("default", 1, visuals=look)
    return sim.render_rgb()[0] if rgb else sim.render_gray()[0]


def test_sky_colour_fills_the_top_rows() -> None:
    frame = _frame(Visuals(sky=(200, 30, 40)))
    top = frame[0].astype(int)  # the gradient starts at the sky colour
    assert np.abs(top - [200, 30, 40]).max() <= 2
    standard = _frame(Visuals())
    assert np.abs(standard[0].astype(int) - [70, 130, 210]).max() <= 2
    np.testing.assert_array_equal(frame[64:], standard[64:])  # only the sky changed


def test_sky_horizon_sets_the_lower_sky() -> None:
    rgb, _ = sky_rows(Visuals(sky=(0, 0, 0), sky_horizon=(250, 0, 0)), 128)
    assert tuple(rgb[0]) < (10, 1, 1) and tuple(rgb[60]) == (250, 0, 0)
    derived, _ = sky_rows(Visuals(sky=(200, 200, 240)), 128)
    assert tuple(derived[60]) == (255, 255, 255)  # lightened and clipped


def test_ground_colours_change_their_materials() -> None:
    standard = _frame(Visuals())
    grass = _frame(Visuals(grass=(200, 0, 200)))
    changed = np.any(grass != standard, axis=2)
    assert changed.any() and not changed[:20].any()  # the sky stays
    magenta = (grass[..., 0] > 150) & (grass[..., 1] < 40)
    assert magenta.sum() > 100
    road = _frame(Visuals(road=(0, 0, 255)))
    assert ((road[..., 2] > 200) & (road[..., 0] < 30)).sum() > 500
    borders = _frame(Visuals(border_dark=(255, 0, 0)))
    assert (np.all(borders == [255, 0, 0], axis=2)).sum() > 20
    assert (np.all(standard == PALETTE[M_BORDER], axis=2)).sum() > 20


@pytest.mark.parametrize("brightness", [0.5, 0.8, 1.25])
def test_brightness_scales_mean_intensity(brightness: float) -> None:
    standard = _frame(Visuals(), rgb=False).astype(np.float64)
    scaled = _frame(Visuals(brightness=brightness), rgb=False).astype(np.float64)
    ratio = scaled.mean() / standard.mean()
    assert ratio == pytest.approx(brightness, rel=0.05)  # clipping at 255 costs a little


def test_gray_is_the_luma_of_rgb_for_any_look() -> None:
    look = Visuals(sky=(10, 200, 30), grass=(150, 20, 90), brightness=1.3, fov_deg=70.0)
    sim = Simulator("default", 1, visuals=look)
    rgb = sim.render_rgb(64, 64).astype(np.float64)
    luma = np.rint(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    np.testing.assert_array_equal(sim.render_gray(64, 64), luma.astype(np.uint8))


def _horizon_row(look: Visuals) -> int:
    """First row (from the top) that shows ground in the middle column."""
    sky = sky_rows(look, 128)[0]
    frame = _frame(look)
    is_sky = np.all(frame[:, 128] == sky, axis=1)
    return int(np.argmin(is_sky))


def test_camera_pitch_and_height_and_fov_change_the_geometry() -> None:
    standard = _horizon_row(Visuals())
    assert _horizon_row(Visuals(camera_pitch_deg=20.0)) < standard  # looking down: less sky
    assert _horizon_row(Visuals(camera_pitch_deg=0.0)) > standard
    # higher camera: the ground point under a given pixel is further away
    t_low = ray_table(Visuals(camera_height_m=1.5).camera(), 64, 64)
    t_high = ray_table(Visuals(camera_height_m=6.0).camera(), 64, 64)
    assert t_high.ahead[50, 32] > t_low.ahead[50, 32]
    assert not np.array_equal(_frame(Visuals(camera_height_m=6.0)), _frame(Visuals()))
    wide = ray_table(Visuals(fov_deg=120.0).camera(), 64, 64)
    narrow = ray_table(Visuals(fov_deg=60.0).camera(), 64, 64)
    assert abs(wide.left[50, 0]) > abs(narrow.left[50, 0])


def test_each_car_renders_its_own_look() -> None:
    sim = Simulator("default", 3)
    looks = [Visuals(), Visuals(brightness=0.5), Visuals(camera_pitch_deg=20.0)]
    sim.set_visuals(looks)
    both = sim.render_rgb()
    for i, look in enumerate(looks):
        np.testing.assert_array_equal(both[i], _frame(look))
    assert sim.visuals == tuple(looks)
    assert sim.camera_of(2).pitch_deg == 20.0
    only = sim.render_gray(cars=np.array([2, 0]))
    np.testing.assert_array_equal(only[0], _frame(looks[2], rgb=False))
    np.testing.assert_array_equal(only[1], _frame(looks[0], rgb=False))


def test_cars_with_one_camera_share_one_ray_table() -> None:
    n = 8
    views = CarViews(64, 64, [Visuals(brightness=1.0 + 0.1 * i) for i in range(n)])
    assert views.slots == 1 and views.ahead.shape[0] == 1
    rng = np.random.default_rng(0)
    for _ in range(5):  # redraw every car's camera: tables are reused, never more than N
        views.update(range(n), [DEFAULT_VISUAL_RANGES.sample(rng) for _ in range(n)])
        assert views.slots == n and views.ahead.shape[0] == n
        for i in range(n):
            expected = ray_table(views.looks[i].camera(), 64, 64)
            np.testing.assert_array_equal(views.ahead[views.table[i]], expected.ahead)
    views.update(range(n), [Visuals()] * n)
    assert views.slots == 1
    assert len(set(views.table.tolist())) == 1


def _reference_render(sim: Simulator, width: int, height: int) -> np.ndarray:
    """Today's renderer written plainly: standard palette, standard sky, CameraSpec()'s rays."""
    table = ray_table(CameraSpec(), width, height)
    frac = (np.arange(height) + 0.5) / height
    top, bottom = np.array([70, 130, 210.0]), np.array([185, 215, 240.0])
    sky = np.rint(top + (bottom - top) * np.clip(frac * 3, 0, 1)[:, None]).astype(np.uint8)
    c, s = np.cos(sim.psi[0]), np.sin(sim.psi[0])
    wx = sim.x[0] + table.ahead * c - table.left * s
    wy = sim.y[0] + table.ahead * s + table.left * c
    r = sim.raster
    ix = np.floor((wx - r.x0) / 0.25).astype(int)
    iy = np.floor((wy - r.y0) / 0.25).astype(int)
    inside = (ix >= 0) & (iy >= 0) & (iy < r.material.shape[0]) & (ix < r.material.shape[1])
    mat = np.full(ix.shape, M_FAR)
    mat[inside] = r.material[iy[inside], ix[inside]]
    mat = np.where(table.kind >= 0, table.kind, np.where(table.kind == -2, M_FAR, mat))
    out = PALETTE[mat]
    out[table.kind == -1] = np.broadcast_to(sky[:, None, :], out.shape)[table.kind == -1]
    return out


@pytest.mark.parametrize("pose", [(0.0, 0.0, 0.0), (120.0, 3.0, 0.4), (300.0, -2.0, -0.3)])
def test_the_standard_look_renders_exactly_todays_frames(pose: tuple[float, float, float]) -> None:
    sim = Simulator("default", 1)
    sim.x[0] += pose[0]
    sim.y[0] += pose[1]
    sim.psi[0] += pose[2]
    for w, h in ((256, 128), (64, 64)):
        np.testing.assert_array_equal(sim.render_rgb(w, h)[0], _reference_render(sim, w, h))
    changed = dataclasses.replace(Visuals(), border_light=(0, 0, 0))
    sim.set_visuals(changed)
    assert not np.array_equal(sim.render_rgb()[0], _reference_render(sim, 256, 128))
