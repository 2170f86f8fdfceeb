"""Bounded readers (issue 15, item 7): a forged ``.tmrec`` or track file is refused by its
declared size or shape before any expensive work, with the library's own error class.

Each test here failed before the fix: a 4.4 MB recording declaring 4 GiB of frames was read
into 4 GiB of memory, deep JSON raised a raw RecursionError, and oversized tracks were
resampled and overlap-checked for minutes.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tm_gym.error import RecordingFormatError, TrackFormatError
from tm_gym.recording import builtin_recording, builtin_recording_names, load_recording
from tm_gym.sim.generator import generate_track_dict
from tm_gym.sim.track import FORMAT, SAMPLE_SPACING, track_from_dict, track_from_json
from tm_gym.sim.tracks import load_track

SHIPPED = builtin_recording("sim-default-expert-lidar")
BOMB_SHAPE = (43_690, 128, 256, 3)  # 4,294,901,760 bytes of uint8: just under the zip32 limit


# --------------------------------------------------------------------------------------------
# Hand-made zip files (zipfile cannot store a pre-compressed stream)
# --------------------------------------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: Any) -> bytes:
    buf = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _zeros_stream(head: bytes, n_zeros: int) -> bytes:
    """A raw deflate stream of ``head`` then ``n_zeros`` zero bytes, built in milliseconds.

    After a full flush the compressor forgets everything, so the bytes of one compressed MiB
    of zeros can be repeated: 4 GiB of zeros become 4 MB without compressing 4 GiB.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    mib = 1 << 20
    block = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
    q, r = divmod(n_zeros, mib)
    return first + block * q + c.compress(bytes(r)) + c.flush()


def _zip(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of deflated members ``(name, deflated data, crc32, uncompressed size)``."""
    out = io.BytesIO()
    central = []
    for name, data, crc, size in members:
        offset, raw = out.tell(), name.encode()
        local = struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 33, crc, len(data), size, len(raw), 0
        )
        out.write(local + raw + data)
        central.append(
            struct.pack(
                "<4s6H3L5H2L",
                *(b"PK\x01\x02", 20, 20, 0, 8, 0, 33, crc, len(data), size, len(raw)),
                *(0, 0, 0, 0, 0, offset),
            )
            + raw
        )
    cd_offset, cd = out.tell(), b"".join(central)
    out.write(cd)
    n = len(members)
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(cd), cd_offset, 0))
    return out.getvalue()


def _shipped_members(skip: str) -> list[tuple[str, bytes, int, int]]:
    with np.load(SHIPPED, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != skip}
    members = []
    for k, a in arrays.items():
        raw = _npy(a)
        members.append((f"{k}.npy", _deflate(raw), zlib.crc32(raw), len(raw)))
    return members


def write_bomb(path: Path) -> Path:
    """The shipped recording with a ``frames`` member that really inflates to 4 GiB of zeros.

    The central directory states the true uncompressed size; only its CRC is left at 0,
    since computing it would take seconds and a bounded reader never gets that far.
    """
    head = _npy_header(BOMB_SHAPE, np.uint8)
    n = math.prod(BOMB_SHAPE)
    frames = ("frames.npy", _zeros_stream(head, n), 0, len(head) + n)
    path.write_bytes(_zip([*_shipped_members("frames"), frames]))
    return path


# --------------------------------------------------------------------------------------------
# Recordings
# --------------------------------------------------------------------------------------------
_PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))  # a safety net only
from tm_gym.error import RecordingFormatError
from tm_gym.recording import load_recording
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_recording(sys.argv[1])
    outcome = "loaded"
except RecordingFormatError as e:
    outcome = "refused: " + str(e)
except BaseException as e:
    outcome = f"raw {type(e).__name__}: {e}"
growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(growth_kib)
print(outcome)
"""


def test_recording_declaring_4_gib_is_refused_before_reading(tmp_path: Path) -> None:
    bomb = write_bomb(tmp_path / "bomb.tmrec")
    assert bomb.stat().st_size < 8 * 1024**2  # a few MB on disk...
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(bomb)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    growth_line, outcome = run.stdout.strip().split("\n", 1)
    # ...refused with the recording's error, naming the member, its size and the fix
    assert outcome.startswith("refused: "), outcome
    assert "frames.npy" in outcome
    assert "4,294,901,760 bytes" in outcome
    assert "max_bytes=" in outcome
    # and the process never grew by anything like the declared 4 GiB
    assert int(growth_line) < 200 * 1024, f"peak RSS grew by {int(growth_line) / 1024:.0f} MiB"


def test_member_declaring_more_than_the_zip_holds(tmp_path: Path) -> None:
    head = _npy_header((301, 128, 256, 3), np.uint8)
    raw = head + bytes(1000)  # the header promises 29 MB, the member holds 1,000 bytes
    frames = ("frames.npy", _deflate(raw), zlib.crc32(raw), len(raw))
    p = tmp_path / "liar.tmrec"
    p.write_bytes(_zip([*_shipped_members("frames"), frames]))
    with pytest.raises(RecordingFormatError) as e:
        load_recording(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "'frames.npy' declares shape (301, 128, 256, 3) uint8 (29,589,504 bytes)" in msg
    assert "the zip holds 1,000 bytes" in msg
    assert "record it again" in msg


def test_limits_can_be_lowered_and_raised_by_the_caller() -> None:
    rec = load_recording(SHIPPED)  # the defaults admit a real recording
    with pytest.raises(RecordingFormatError, match=r"more than the limit of 1,000 bytes") as e:
        load_recording(SHIPPED, max_bytes=1000)
    assert "max_bytes=" in str(e.value)
    n = rec.num_captures
    with pytest.raises(RecordingFormatError, match=rf"declares {n} rows") as e:
        load_recording(SHIPPED, max_captures=n - 1)
    assert f"max_captures={n}" in str(e.value)
    again = load_recording(SHIPPED, max_bytes=10**9, max_captures=n)
    np.testing.assert_array_equal(again.telemetry, rec.telemetry)


def test_deeply_nested_meta_is_a_format_error(tmp_path: Path) -> None:
    with np.load(SHIPPED, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array("[" * 100_000 + "]" * 100_000)
    p = tmp_path / "deepmeta.tmrec"
    with p.open("wb") as f:
        np.savez_compressed(f, **arrays)
    with pytest.raises(RecordingFormatError, match=r"deepmeta\.tmrec: meta is JSON nested"):
        load_recording(p)


@pytest.mark.parametrize("name", builtin_recording_names())
def test_shipped_recordings_still_load_exactly(name: str) -> None:
    path = builtin_recording(name)
    rec = load_recording(path)
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            if k != "meta":
                np.testing.assert_array_equal(getattr(rec, k), z[k], err_msg=k)


# --------------------------------------------------------------------------------------------
# Tracks
# --------------------------------------------------------------------------------------------
def _track(**keys: Any) -> dict[str, Any]:
    return {"format": FORMAT, "name": "probe", **keys}


def test_json_nested_100000_deep_is_a_track_error(tmp_path: Path) -> None:
    p = tmp_path / "deep.json"
    p.write_text(
        '{"format": "tm-gym-track/1", "name": "deep", "segments": '
        + "[" * 100_000
        + "]" * 100_000
        + "}",
        encoding="utf-8",
    )
    with pytest.raises(TrackFormatError, match=r"nested 100,001 deep, more than the limit of 8"):
        load_track(p)


def test_moderate_nesting_names_the_nesting() -> None:
    text = json.dumps(_track(segments=[{"straight": 300}], checkpoints=[[[[[[[[[1]]]]]]]]]))
    with pytest.raises(TrackFormatError, match=r"<track>: the JSON is nested 10 deep"):
        track_from_json(text)


def test_nested_python_description_never_recurses() -> None:
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(TrackFormatError, match=r"nested more than 8 deep"):
        track_from_dict(_track(segments=[deep]))


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps(_track(description="[{" * 50, segments=[{"straight": 300}]))
    assert track_from_json(text).description == "[{" * 50


def test_too_many_segments_are_refused_by_count() -> None:
    text = json.dumps(_track(segments=[{"straight": 1}] * 20_001))
    with pytest.raises(TrackFormatError) as e:
        track_from_json(text)
    assert "segments: 20,001 pieces, more than the limit of 20,000" in str(e.value)
    assert "merge consecutive pieces" in str(e.value)


def test_too_many_centerline_points_are_refused_by_count() -> None:
    points = [[i * 0.01, 0.0] for i in range(100_001)]
    with pytest.raises(TrackFormatError, match=r"centerline: 100,001 points, more than the limit"):
        track_from_dict(_track(centerline=points))


def test_too_long_centre_lines_are_refused_before_resampling() -> None:
    with pytest.raises(
        TrackFormatError, match=r"centre line is 1e\+300 m long, more than the limit of 50,000 m"
    ):
        track_from_dict(_track(centerline=[[0.0, 0.0], [1e300, 0.0]]))
    with pytest.raises(TrackFormatError) as e:
        track_from_dict(_track(segments=[{"straight": 10_000}] * 6))
    assert "segments[5]: this 10,000 m piece takes the centre line past the limit of 50,000 m" in (
        str(e.value)
    )
    with pytest.raises(TrackFormatError, match=r"segments\[0\]: this 628,319 m piece"):
        track_from_dict(_track(segments=[{"turn": 360, "radius": 100_000}]))


def test_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    p = tmp_path / "padded.json"
    p.write_text(json.dumps(_track(segments=[{"straight": 300}])) + " " * (17 * 1024**2))
    with pytest.raises(TrackFormatError) as e:
        load_track(p)
    assert f"{p}: the file is {p.stat().st_size:,} bytes" in str(e.value)
    assert "limit of 16,777,216" in str(e.value)


def _serpentine(strips: int, length: float, pieces: int) -> dict[str, Any]:
    segs: list[dict[str, float]] = []
    for k in range(strips):
        segs += [{"straight": length / pieces}] * pieces
        segs.append({"turn": 180.0 if k % 2 == 0 else -180.0, "radius": 60.0})
    return _track(segments=segs)


def test_large_legitimate_track_still_loads() -> None:
    data = _serpentine(strips=20, length=2000.0, pieces=500)  # 10,020 pieces, 43.8 km
    t = track_from_json(json.dumps(data))
    assert len(data["segments"]) == 10_020
    assert t.total_length == pytest.approx(43_769, abs=5)
    assert len(t.centerline) == round(t.total_length / SAMPLE_SPACING) + 1


def _brute_first_clash(t_data: dict[str, Any]) -> tuple[float, float] | None:
    """The overlap rule, pair by pair (the old quadratic check): distances of the first clash."""
    from tm_gym.sim.track import _resample, _segments_polyline

    pts, wid = _segments_polyline("<t>", t_data, float(t_data["width"]))
    centre, widths = _resample(pts, wid, SAMPLE_SPACING)
    p, w = centre[::4], widths[::4]
    s = np.arange(len(p)) * 4 * SAMPLE_SPACING
    for i in range(len(p)):
        d = np.hypot(p[:, 0] - p[i, 0], p[:, 1] - p[i, 1])
        clash = (np.abs(s - s[i]) > (w[i] + w) * 1.6 + 10.0) & (d < (w[i] + w) / 2 + 4.0)
        if np.any(clash):
            return float(s[i]), float(s[int(np.argmax(clash))])
    return None


def test_overlap_check_agrees_with_the_pairwise_rule() -> None:
    seen = 0
    for seed in range(60):
        data = generate_track_dict(seed)
        expected = _brute_first_clash(data)
        if expected is None:
            track_from_dict(data)
            continue
        seen += 1
        with pytest.raises(TrackFormatError, match="overlaps itself") as e:
            track_from_dict(data)
        assert f"near {expected[0]:.0f} m and {expected[1]:.0f} m" in str(e.value)
    assert seen >= 2  # the sample really holds overlapping layouts
