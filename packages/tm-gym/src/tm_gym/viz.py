"""Pictures and videos of laps: driver's-view videos, trajectory maps and speed profiles.

Every function here is pure: it takes plain arrays (and, for maps, an object shaped like
:class:`tm_gym.sim.track.Track`), writes one file and returns its path. The heavy libraries
(matplotlib, imageio, pillow) are imported only when a function needs them, so importing this
module costs nothing; when one is missing the function raises
:class:`tm_gym.error.DependencyNotInstalled` telling how to install it.

Example::

    import numpy as np
    from tm_gym import viz

    frames = np.zeros((40, 128, 256, 3), np.uint8)
    viz.save_video(frames, "lap.mp4", fps=20, scale=3)
    viz.format_race_time(38.42)  # '0:38.420'
"""

from __future__ import annotations

import importlib
import math
import operator
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tm_gym.error import DependencyNotInstalled

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "TrackLike",
    "format_race_time",
    "save_speed_profile",
    "save_trajectory_map",
    "save_video",
]

_VIDEO_SUFFIXES = (".mp4", ".gif")
_MAP_WIDTH_PX = 1200
_DPI = 150
_ROAD_GREY = "#8c8c8c"
_BACKGROUND = "#eef2e6"


class TrackLike(Protocol):
    """The part of :class:`tm_gym.sim.track.Track` that the map needs."""

    @property
    def name(self) -> str: ...

    @property
    def centerline(self) -> np.ndarray: ...

    @property
    def left_border(self) -> np.ndarray: ...

    @property
    def right_border(self) -> np.ndarray: ...

    @property
    def start_xy(self) -> np.ndarray: ...

    @property
    def finish_xy(self) -> np.ndarray: ...

    @property
    def checkpoints_xy(self) -> np.ndarray: ...


# --------------------------------------------------------------------------- helpers


def _import_optional(module: str, *, package: str) -> ModuleType:
    """Import ``module`` or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyNotInstalled(
            f"{package} is not installed (needed by tm_gym.viz), run: pip install 'tm-gym[viz]'"
        ) from exc


def _output_path(path: str | os.PathLike[str], suffixes: Sequence[str]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(
            f"cannot tell the file format from {str(out)!r}: expected a name ending in "
            f"{' or '.join(suffixes)}"
        )
    if not out.parent.is_dir():
        raise FileNotFoundError(
            f"folder {str(out.parent)!r} does not exist: create it before saving {out.name!r}"
        )
    return out


def format_race_time(seconds: float) -> str:
    """Format a race time the way TrackMania shows it: ``0:38.420``, ``1:02:03.456`` past an hour.

    Raises:
        ValueError: if ``seconds`` is negative or not finite.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"race time must be a finite number of seconds >= 0, got {seconds!r}")
    total_ms = round(seconds * 1000)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}.{ms:03d}"
    return f"{minutes}:{secs:02d}.{ms:03d}"


# --------------------------------------------------------------------------- video


def _check_frame(frame: Any, index: int, expected_shape: tuple[int, ...] | None) -> np.ndarray:
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise ValueError(
            f"frame {index} has dtype {array.dtype}, expected uint8 RGB pixels "
            "(convert with np.clip(x, 0, 255).astype(np.uint8))"
        )
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"frame {index} has shape {array.shape}, expected (H, W, 3) RGB")
    if expected_shape is not None and array.shape != expected_shape:
        raise ValueError(
            f"frame {index} has shape {array.shape} but frame 0 has {expected_shape}: "
            "all frames of a video must have the same size"
        )
    return array


def _checked_frames(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Return the frames as a list of (H, W, 3) uint8 arrays, or raise ValueError."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(
                f"frames array has shape {frames.shape}, expected (T, H, W, 3) uint8 RGB"
            )
        items: Sequence[Any] = list(frames)
    else:
        items = list(frames)
    if not items:
        raise ValueError("frames is empty: a video needs at least one frame")
    first = _check_frame(items[0], 0, None)
    checked = [first]
    checked.extend(_check_frame(item, i, first.shape) for i, item in enumerate(items[1:], 1))
    return checked


def _upscaled(frames: list[np.ndarray], scale: int, *, even: bool) -> Iterator[np.ndarray]:
    """Yield each frame scaled by ``scale`` (nearest neighbour), padded to even size if asked."""
    for frame in frames:
        big = frame if scale == 1 else np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
        if even and (big.shape[0] % 2 or big.shape[1] % 2):
            big = np.pad(big, ((0, big.shape[0] % 2), (0, big.shape[1] % 2), (0, 0)), mode="edge")
        yield np.ascontiguousarray(big)


def save_video(
    frames: Sequence[np.ndarray] | np.ndarray,
    path: str | os.PathLike[str],
    *,
    fps: float = 20,
    scale: int = 3,
) -> Path:
    """Write RGB frames to an ``.mp4`` (H.264) or animated ``.gif`` file.

    Args:
        frames: a (T, H, W, 3) uint8 array, or a sequence of (H, W, 3) uint8 arrays of one size.
        path: output file; its suffix picks the format. Its folder must exist.
        fps: playback frame rate (the simulator samples frames at 20 Hz, so 20 is real time).
        scale: integer upscaling factor, nearest neighbour, so pixels stay sharp.

    Returns:
        The path written. MP4 uses yuv420p, which needs an even width and height: an odd
        dimension after scaling is padded by one row or column copied from the edge.

    Raises:
        ValueError: empty frames, wrong dtype or shape, non-positive fps or scale, unknown suffix.
        DependencyNotInstalled: imageio-ffmpeg (mp4) or pillow (gif) is missing.
    """
    out = _output_path(path, _VIDEO_SUFFIXES)
    try:
        factor = operator.index(scale)
    except TypeError:
        factor = 0
    if factor < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    checked = _checked_frames(frames)
    if out.suffix.lower() == ".mp4":
        _write_mp4(checked, out, fps=float(fps), scale=factor)
    else:
        _write_gif(checked, out, fps=float(fps), scale=factor)
    return out


def _write_mp4(frames: list[np.ndarray], out: Path, *, fps: float, scale: int) -> None:
    imageio_ffmpeg = _import_optional("imageio_ffmpeg", package="imageio-ffmpeg")
    height = frames[0].shape[0] * scale + (frames[0].shape[0] * scale) % 2
    width = frames[0].shape[1] * scale + (frames[0].shape[1] * scale) % 2
    writer = imageio_ffmpeg.write_frames(
        str(out),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=8,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in _upscaled(frames, scale, even=True):
            writer.send(frame)
    finally:
        writer.close()


def _write_gif(frames: list[np.ndarray], out: Path, *, fps: float, scale: int) -> None:
    image_module = _import_optional("PIL.Image", package="pillow")
    images = [image_module.fromarray(frame) for frame in _upscaled(frames, scale, even=False)]
    # GIF stores delays in hundredths of a second; pillow takes milliseconds.
    duration_ms = max(10, round(100.0 / fps) * 10)
    images[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=duration_ms,
        loop=0,
        optimize=False,
        disposal=1,
    )


# --------------------------------------------------------------------------- maps


def _as_points(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} has shape {array.shape}, expected (N, 2) x/y in metres")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; expected finite metres")
    return array


def _new_figure(width_px: int, height_px: int) -> Figure:
    """A figure on the Agg canvas, independent of pyplot and of the user's chosen backend."""
    _import_optional("matplotlib", package="matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _cross_line(track: TrackLike, point: np.ndarray) -> np.ndarray:
    """The road's cross-section (left border point, right border point) nearest ``point``."""
    centre = np.asarray(track.centerline, dtype=np.float64)
    index = int(np.argmin(np.sum((centre - point) ** 2, axis=1)))
    return np.stack([track.left_border[index], track.right_border[index]])


def _draw_road(axes: Axes, track: TrackLike) -> None:
    from matplotlib.collections import PolyCollection

    left = _as_points(track.left_border, "track.left_border")
    right = _as_points(track.right_border, "track.right_border")
    if left.shape != right.shape or len(left) < 2:
        raise ValueError(
            f"track borders have shapes {left.shape} and {right.shape}, expected two (M, 2) "
            "arrays of the same length with M >= 2"
        )
    # One quad per centreline segment fills any shape, including loops and crossings.
    quads = np.stack([left[:-1], left[1:], right[1:], right[:-1]], axis=1)
    road = PolyCollection(
        list(quads), facecolors=_ROAD_GREY, edgecolors=_ROAD_GREY, linewidths=0.6, zorder=1
    )
    axes.add_collection(road)
    for border in (left, right):
        axes.plot(border[:, 0], border[:, 1], color="black", linewidth=1.0, zorder=2)


def _draw_marks(axes: Axes, track: TrackLike) -> None:
    """Checkpoints as blue ticks across the road, a checkered finish line, a green start dot."""
    checkpoints = np.asarray(track.checkpoints_xy, dtype=np.float64).reshape(-1, 2)
    for i, checkpoint in enumerate(checkpoints):
        line = _cross_line(track, checkpoint)
        axes.plot(
            line[:, 0],
            line[:, 1],
            color="#1f5fd6",
            linewidth=2.2,
            zorder=6,
            solid_capstyle="butt",
            label="checkpoint" if i == 0 else None,
        )
    finish = _cross_line(track, np.asarray(track.finish_xy, dtype=np.float64))
    squares = 6
    edges = np.linspace(0.0, 1.0, squares + 1)
    for k in range(squares):
        piece = finish[0] + np.outer(edges[k : k + 2], finish[1] - finish[0])
        axes.plot(
            piece[:, 0],
            piece[:, 1],
            color="black" if k % 2 == 0 else "white",
            linewidth=6.0,
            zorder=8,
            solid_capstyle="butt",
            label="finish" if k == 0 else None,
        )
    start = np.asarray(track.start_xy, dtype=np.float64)
    axes.plot(
        start[0],
        start[1],
        marker="o",
        markersize=9,
        color="#1aa531",
        markeredgecolor="white",
        markeredgewidth=1.5,
        linestyle="none",
        zorder=9,
        label="start",
    )


def _map_height_px(track: TrackLike, positions: np.ndarray) -> int:
    """Pick a figure height so an equal-aspect map fills a 1200 px wide figure."""
    points = np.concatenate(
        [np.asarray(track.left_border), np.asarray(track.right_border), positions]
    )
    span = np.ptp(points, axis=0)
    aspect = float(span[1] / span[0]) if span[0] > 0 else 1.0
    plot_width_in = _MAP_WIDTH_PX / _DPI * 0.78  # what is left beside the colour bar
    height_in = plot_width_in * aspect + 1.1  # plus title and margins
    return round(min(max(height_in, 4.0), 10.0) * _DPI)


def save_trajectory_map(
    track: TrackLike,
    positions: np.ndarray,
    speeds_kmh: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    lap_time: float | None = None,
) -> Path:
    """Draw the track from above with the driven line coloured by speed, and save it as PNG.

    The road is grey between black borders; checkpoints are blue ticks across the road, the finish
    line is checkered and the start a green dot. The map is 1200 px wide at 150 dpi, equal aspect.

    Args:
        track: a :class:`tm_gym.sim.track.Track` (or anything with the same attributes).
        positions: (T, 2) x/y positions of the car in metres.
        speeds_kmh: (T,) speeds in km/h, one per position.
        path: output ``.png`` file; its folder must exist.
        title: figure title; by default the track name, with ``lap_time`` when given.
        lap_time: lap time in seconds, shown in the default title.

    Raises:
        ValueError: positions or speeds of the wrong shape, different lengths, or not finite.
        DependencyNotInstalled: matplotlib is missing.
    """
    out = _output_path(path, (".png",))
    xy = _as_points(positions, "positions")
    speeds = np.asarray(speeds_kmh, dtype=np.float64)
    if speeds.shape != (len(xy),):
        raise ValueError(
            f"speeds_kmh has shape {speeds.shape}, expected ({len(xy)},): one speed per position"
        )
    if len(xy) == 0:
        raise ValueError("positions is empty: a trajectory needs at least one point")
    if not np.all(np.isfinite(speeds)):
        raise ValueError("speeds_kmh contains NaN or infinite values")

    figure = _new_figure(_MAP_WIDTH_PX, _map_height_px(track, xy))
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    axes = figure.add_subplot()
    axes.set_facecolor(_BACKGROUND)
    _draw_road(axes, track)
    _draw_marks(axes, track)

    norm = Normalize(vmin=0.0, vmax=max(float(speeds.max()), 1.0))
    if len(xy) >= 2:
        segments = np.stack([xy[:-1], xy[1:]], axis=1)
        line = LineCollection(
            list(segments), cmap="turbo", norm=norm, linewidths=2.0, zorder=4, capstyle="round"
        )
        line.set_array(0.5 * (speeds[:-1] + speeds[1:]))
        axes.add_collection(line)
        mappable: Any = line
    else:
        mappable = axes.scatter(xy[:, 0], xy[:, 1], c=speeds, cmap="turbo", norm=norm, zorder=4)
    figure.colorbar(mappable, ax=axes, label="speed (km/h)", fraction=0.04, pad=0.02)

    axes.set_aspect("equal", adjustable="datalim")
    axes.autoscale_view()
    axes.set_xlabel("x (m)")
    axes.set_ylabel("y (m)")
    axes.legend(loc="best", fontsize="small", framealpha=0.85)
    if title is None:
        title = track.name if lap_time is None else f"{track.name}  —  {format_race_time(lap_time)}"
    axes.set_title(title)
    figure.savefig(out, dpi=_DPI, format="png")
    return out


def save_speed_profile(
    times: np.ndarray,
    speeds_kmh: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Plot speed (km/h) against race time (s) and save it as a 1200 px wide PNG.

    Raises:
        ValueError: times and speeds of different shapes, empty, or not finite.
        DependencyNotInstalled: matplotlib is missing.
    """
    out = _output_path(path, (".png",))
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(speeds_kmh, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape or len(t) == 0:
        raise ValueError(
            f"times has shape {t.shape} and speeds_kmh {v.shape}, expected two (T,) arrays "
            "of the same non-zero length"
        )
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
        raise ValueError("times and speeds_kmh must be finite")

    figure = _new_figure(_MAP_WIDTH_PX, 540)
    axes = figure.add_subplot()
    axes.plot(t, v, color="#d6461f", linewidth=1.5)
    axes.fill_between(t, v, color="#d6461f", alpha=0.15, linewidth=0)
    axes.set_xlim(float(t[0]), float(t[-1]) if t[-1] > t[0] else float(t[0]) + 1.0)
    axes.set_ylim(0.0, max(float(v.max()) * 1.08, 1.0))
    axes.set_xlabel("race time (s)")
    axes.set_ylabel("speed (km/h)")
    axes.grid(True, alpha=0.3)
    if title is not None:
        axes.set_title(title)
    figure.savefig(out, dpi=_DPI, format="png")
    return out
