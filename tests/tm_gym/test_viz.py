"""Tests for tm_gym.viz with synthetic frames and a stand-in track (no simulator needed)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import imageio.v3 as imageio_v3
import imageio_ffmpeg
import numpy as np
import pytest

from tm_gym import viz


def read_mp4(path: Path) -> np.ndarray:
    """Decode an mp4 to (T, H, W, 3) uint8 with the ffmpeg that imageio-ffmpeg ships.

    (imageio's own ffmpeg reader leaves pipes open, which strict warnings turn into errors.)
    """
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    # Without an output file ffmpeg exits 1 after describing the input on stderr.
    probe = subprocess.run(
        [ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True, check=False
    )
    stream = re.search(r"Video: h264.*?yuv420p.*? (\d+)x(\d+)[, ]", probe.stderr)
    assert stream is not None, f"not an H.264 yuv420p video: {probe.stderr}"
    width, height = int(stream.group(1)), int(stream.group(2))
    raw = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3)


def moving_square_frames(count: int = 6, height: int = 16, width: int = 24) -> np.ndarray:
    """Frames that differ from each other (GIF writers merge identical frames)."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    frames[..., 2] = 120
    for t in range(count):
        frames[t, 4:10, 2 + 3 * t : 8 + 3 * t] = (255, 200, 0)
    return frames


def oval_track(name: str = "oval") -> types.SimpleNamespace:
    """A stand-in with the attributes of tm_gym.sim.track.Track: an 8 m wide oval."""
    angle = np.linspace(0.0, 2.0 * np.pi, 200)
    centre = np.stack([120.0 * np.cos(angle), 60.0 * np.sin(angle)], axis=1)
    outward = np.stack([np.cos(angle) / 120.0, np.sin(angle) / 60.0], axis=1)
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    # Driving anticlockwise, the left border is on the inside.
    return types.SimpleNamespace(
        name=name,
        centerline=centre,
        left_border=centre - 4.0 * outward,
        right_border=centre + 4.0 * outward,
        start_xy=centre[0],
        finish_xy=centre[-1],
        checkpoints_xy=centre[[50, 100, 150]],
        length=float(np.sum(np.linalg.norm(np.diff(centre, axis=0), axis=1))),
        description="test oval",
    )


# --------------------------------------------------------------------------- format_race_time


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0:00.000"),
        (38.42, "0:38.420"),
        (61.001, "1:01.001"),
        (59.9996, "1:00.000"),
        (3723.456, "1:02:03.456"),
    ],
)
def test_format_race_time(seconds: float, text: str) -> None:
    assert viz.format_race_time(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_format_race_time_rejects_bad_values(seconds: float) -> None:
    with pytest.raises(ValueError, match="race time"):
        viz.format_race_time(seconds)


# --------------------------------------------------------------------------- save_video


@pytest.mark.parametrize("scale", [1, 3])
def test_mp4_round_trip(tmp_path: Path, scale: int) -> None:
    frames = moving_square_frames()
    out = viz.save_video(frames, tmp_path / "lap.mp4", fps=20, scale=scale)
    assert out == tmp_path / "lap.mp4"
    back = read_mp4(out)
    assert back.shape == (len(frames), 16 * scale, 24 * scale, 3)
    # H.264 is lossy, but the yellow square must still be there in the first frame.
    big = np.repeat(np.repeat(frames[0], scale, axis=0), scale, axis=1).astype(np.int16)
    assert np.mean(np.abs(back[0].astype(np.int16) - big)) < 12


def test_mp4_pads_odd_sizes_to_even(tmp_path: Path) -> None:
    frames = moving_square_frames(count=3, height=15, width=21)
    out = viz.save_video(list(frames), tmp_path / "odd.mp4", scale=1)
    back = read_mp4(out)
    assert back.shape == (3, 16, 22, 3)


def test_gif_round_trip(tmp_path: Path) -> None:
    frames = moving_square_frames(count=5)
    out = viz.save_video(list(frames), tmp_path / "lap.gif", fps=10, scale=2)
    back = imageio_v3.imread(out, index=None)
    assert back.shape[:3] == (5, 32, 48)
    # GIF is palette based but these few flat colours survive exactly.
    assert np.array_equal(back[2, ..., :3], np.repeat(np.repeat(frames[2], 2, axis=0), 2, axis=1))


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        ([], "empty"),
        (np.zeros((2, 8, 8, 3), np.float32), "dtype float32, expected uint8"),
        (np.zeros((2, 8, 8), np.uint8), r"shape \(2, 8, 8\), expected \(T, H, W, 3\)"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"shape \(8, 8, 4\), expected \(H, W, 3\)"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], "same size"),
    ],
)
def test_save_video_rejects_bad_frames(tmp_path: Path, frames: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        viz.save_video(frames, tmp_path / "bad.mp4")  # type: ignore[arg-type]
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("clip.avi", {}, r"ending in \.mp4 or \.gif"),
        ("clip.mp4", {"scale": 0}, "scale must be an integer >= 1, got 0"),
        ("clip.mp4", {"scale": 1.5}, "scale must be an integer"),
        ("clip.mp4", {"fps": 0}, "fps must be a positive number, got 0"),
    ],
)
def test_save_video_rejects_bad_arguments(
    tmp_path: Path, name: str, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        viz.save_video(moving_square_frames(), tmp_path / name, **kwargs)  # type: ignore[arg-type]


def test_save_video_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viz.save_video(moving_square_frames(), tmp_path / "nowhere" / "lap.mp4")


# --------------------------------------------------------------------------- maps


def driven_line(track: types.SimpleNamespace) -> tuple[np.ndarray, np.ndarray]:
    wobble = np.sin(np.linspace(0.0, 12.0, len(track.centerline)))[:, None]
    positions = track.centerline + 1.5 * wobble
    speeds = 80.0 + 60.0 * np.abs(np.sin(np.linspace(0.0, 6.0, len(positions))))
    return positions, speeds


def read_rgb(path: Path) -> np.ndarray:
    image = imageio_v3.imread(path)
    assert image.dtype == np.uint8
    return image[..., :3]


def test_trajectory_map_png(tmp_path: Path) -> None:
    track = oval_track()
    positions, speeds = driven_line(track)
    out = viz.save_trajectory_map(track, positions, speeds, tmp_path / "map.png", lap_time=38.42)
    assert out == tmp_path / "map.png"
    image = read_rgb(out)
    height, width = image.shape[:2]
    assert width == 1200
    assert 600 <= height <= 1500
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 50, "a map coloured by speed has many colours"
    # Some strongly coloured pixels (the speed line), not just greys.
    saturation = image.max(axis=2).astype(int) - image.min(axis=2).astype(int)
    assert np.count_nonzero(saturation > 100) > 500
    # The road grey is drawn.
    assert np.count_nonzero(np.all(image == (0x8C, 0x8C, 0x8C), axis=2)) > 1000


def test_trajectory_map_single_point_and_custom_title(tmp_path: Path) -> None:
    track = oval_track()
    out = viz.save_trajectory_map(
        track, track.centerline[:1], np.array([0.0]), tmp_path / "one.png", title="just parked"
    )
    assert read_rgb(out).shape[1] == 1200


@pytest.mark.parametrize(
    ("positions", "speeds", "message"),
    [
        (np.zeros((5, 3)), np.zeros(5), r"positions has shape \(5, 3\), expected \(N, 2\)"),
        (np.zeros((5, 2)), np.zeros(4), r"speeds_kmh has shape \(4,\), expected \(5,\)"),
        (np.zeros((0, 2)), np.zeros(0), "positions is empty"),
        (np.full((3, 2), np.nan), np.zeros(3), "NaN"),
    ],
)
def test_trajectory_map_rejects_bad_input(
    tmp_path: Path, positions: np.ndarray, speeds: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        viz.save_trajectory_map(oval_track(), positions, speeds, tmp_path / "map.png")


def test_trajectory_map_needs_png_suffix(tmp_path: Path) -> None:
    track = oval_track()
    positions, speeds = driven_line(track)
    with pytest.raises(ValueError, match=r"\.png"):
        viz.save_trajectory_map(track, positions, speeds, tmp_path / "map.jpg")


def test_speed_profile_png(tmp_path: Path) -> None:
    times = np.arange(100) * 0.05
    speeds = 100.0 + 50.0 * np.sin(times)
    out = viz.save_speed_profile(times, speeds, tmp_path / "speed.png", title="oval")
    image = read_rgb(out)
    assert image.shape[:2] == (540, 1200)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10


def test_speed_profile_rejects_mismatched_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same non-zero length"):
        viz.save_speed_profile(np.zeros(3), np.zeros(4), tmp_path / "speed.png")


def test_viz_imports_lazily_and_never_uses_pyplot(tmp_path: Path) -> None:
    """Importing viz loads no plotting library; drawing a map does not load pyplot."""
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from tm_gym import viz
        assert "matplotlib" not in sys.modules
        assert "imageio" not in sys.modules
        track = type("T", (), {{}})()
        track.name = "square"
        track.centerline = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
        track.left_border = track.centerline + [[0.0, 1.0], [-1.0, 1.0], [-1.0, 10.0]]
        track.right_border = track.centerline + [[0.0, -1.0], [1.0, -1.0], [1.0, 10.0]]
        track.start_xy, track.finish_xy = track.centerline[0], track.centerline[-1]
        track.checkpoints_xy = track.centerline[1:2]
        viz.save_trajectory_map(track, track.centerline, np.array([0.0, 50.0, 90.0]),
                                {str(tmp_path / "map.png")!r})
        assert "matplotlib.pyplot" not in sys.modules
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "map.png").stat().st_size > 0
