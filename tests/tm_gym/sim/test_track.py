"""Track files: the built-in tracks, procedural tracks, saving and loading, and every way a
track file can be malformed (each must name the file and the offending key)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tm_gym.error import TrackFormatError
from tm_gym.sim.generator import generate_track
from tm_gym.sim.track import FORMAT, SAMPLE_SPACING, Track, track_from_dict
from tm_gym.sim.tracks import builtin_track_names, load_track

BUILTINS = builtin_track_names()


def minimal(**overrides: Any) -> dict[str, Any]:
    """A valid 300 m straight track; keyword arguments replace or add keys."""
    data: dict[str, Any] = {"format": FORMAT, "name": "probe", "segments": [{"straight": 300}]}
    data.update(overrides)
    return data


def write(tmp_path: Path, data: Any, name: str = "track.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return p


def check_geometry(t: Track) -> None:
    steps = np.linalg.norm(np.diff(t.centerline, axis=0), axis=1)
    # arc-length resampling of a polyline: chords are 0.5 m, a hair shorter across a vertex
    assert np.all(steps <= SAMPLE_SPACING + 1e-9)
    assert np.all(steps > SAMPLE_SPACING - 0.01)
    assert t.widths.shape == (len(t.centerline),)
    assert np.all((t.widths >= 8.0) & (t.widths <= 80.0))
    assert np.allclose(np.linalg.norm(t.tangents, axis=1), 1.0)
    assert np.allclose(np.sum(t.tangents * t.normals, axis=1), 0.0, atol=1e-12)
    # normals point left: rotating the tangent by +90°
    assert np.allclose(t.normals[:, 0], -t.tangents[:, 1])
    points = [t.start_s, *t.checkpoints_s.tolist(), t.finish_s, t.total_length]
    assert all(a < b for a, b in itertools.pairwise(points)), points
    assert t.start_s > 0
    assert t.length == pytest.approx(t.finish_s - t.start_s)


def test_builtin_names_start_with_default() -> None:
    assert BUILTINS[0] == "default"
    assert {"default", "speedway", "technical"} <= set(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_track_loads_with_sane_geometry(name: str) -> None:
    t = load_track(name)
    assert t.name == name
    assert t.description
    check_geometry(t)
    assert 500.0 < t.length < 5000.0
    assert len(t.checkpoints_s) >= 1


def test_default_track_matches_its_file() -> None:
    t = load_track("default")
    assert t.widths.min() == pytest.approx(20.0)
    assert t.widths.max() == pytest.approx(22.0, abs=0.01)  # the hairpin is widened to 22 m
    assert t.start_s == 10.0
    assert t.checkpoints_s.tolist() == [400.0, 800.0, 1200.0, 1500.0]
    # 11 pieces: straights 1,170 m and turns of radius r and angle a: sum(r·a)
    arcs = np.radians([90, 120, 60, 150, 75]) * np.array([80, 55, 150, 35, 100])
    assert t.total_length == pytest.approx(1170.0 + arcs.sum(), abs=1.0)
    assert t.finish_s == pytest.approx(t.total_length - 30.0, abs=0.5)
    # the first piece is a 170 m straight heading east from the origin
    assert np.allclose(t.centerline[0], [0.0, 0.0])
    assert np.allclose(t.point_at(170.0), [170.0, 0.0], atol=1e-6)
    assert t.heading_at(50.0) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", [*BUILTINS, "gen:3"])
def test_round_trip_through_dict_and_file(name: str, tmp_path: Path) -> None:
    t = load_track(name)
    again = track_from_dict(t.to_dict())
    np.testing.assert_array_equal(again.centerline, t.centerline)
    np.testing.assert_array_equal(again.widths, t.widths)
    path = t.save(tmp_path / f"{name.replace(':', '_')}.json")
    loaded = load_track(path)
    assert loaded is not t
    np.testing.assert_array_equal(loaded.centerline, t.centerline)
    np.testing.assert_array_equal(loaded.widths, t.widths)
    np.testing.assert_array_equal(loaded.checkpoints_s, t.checkpoints_s)
    assert (loaded.start_s, loaded.finish_s, loaded.name) == (t.start_s, t.finish_s, t.name)
    # also accepted as a string path
    np.testing.assert_array_equal(load_track(str(path)).centerline, t.centerline)


def test_to_dict_is_a_copy() -> None:
    t = load_track("default")
    d = t.to_dict()
    d["segments"].clear()
    assert t.to_dict()["segments"], "mutating to_dict() output changed the track's source"


def test_centerline_format_with_widths(tmp_path: Path) -> None:
    data = minimal(centerline=[[0, 0], [100, 0], [200, 50]], widths=[12, 16, 20])
    del data["segments"]
    t = load_track(write(tmp_path, data))
    check_geometry(t)
    assert t.widths[0] == pytest.approx(12.0)
    assert t.widths[-1] == pytest.approx(20.0, abs=0.05)  # last sample ends < 0.5 m short
    assert t.total_length == pytest.approx(100.0 + np.hypot(100, 50), abs=0.5)


def test_generated_track_is_deterministic() -> None:
    a, b = generate_track(7), generate_track(7)
    assert a is not b
    np.testing.assert_array_equal(a.centerline, b.centerline)
    np.testing.assert_array_equal(a.widths, b.widths)
    np.testing.assert_array_equal(a.checkpoints_s, b.checkpoints_s)
    assert a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(load_track("gen:7").centerline, a.centerline)


def test_generated_tracks_differ_by_seed() -> None:
    shapes = [generate_track(seed) for seed in range(4)]
    for i in range(len(shapes)):
        for j in range(i + 1, len(shapes)):
            a, b = shapes[i], shapes[j]
            same = a.centerline.shape == b.centerline.shape and np.allclose(
                a.centerline, b.centerline
            )
            assert not same, f"seeds {i} and {j} gave the same track"


@pytest.mark.parametrize("seed", range(8))
def test_generated_tracks_are_valid(seed: int) -> None:
    t = load_track(f"gen:{seed}")
    assert t.name == f"gen:{seed}"
    check_geometry(t)
    assert 900.0 <= t.length <= 2000.0
    assert t.widths.min() >= 14.0 and t.widths.max() <= 24.0
    # it survives its own validation again (no overlap, turns not too tight)
    track_from_dict(t.to_dict())


def test_bad_gen_seed() -> None:
    with pytest.raises(TrackFormatError, match="gen:abc"):
        load_track("gen:abc")


def test_unknown_track_name_lists_builtins() -> None:
    with pytest.raises(FileNotFoundError) as e:
        load_track("no-such-track")
    msg = str(e.value)
    assert "no-such-track" in msg
    for name in BUILTINS:
        assert name in msg


# -- malformed files ----------------------------------------------------------------------
def _no_segments(**kw: Any) -> dict[str, Any]:
    d = minimal(**kw)
    del d["segments"]
    return d


LOOP_BACK = [
    {"straight": 150},
    {"turn": 180, "radius": 40},
    {"straight": 150},
    {"turn": 180, "radius": 40},
    {"straight": 120},
]

MALFORMED: list[tuple[str, Any, list[str]]] = [
    ("not-json", '{"format": "tm-gym-track/1", "name": ', ["not valid JSON", "line 1"]),
    ("top-level-list", "[1, 2]", ["JSON object"]),
    ("wrong-format", minimal(format="tm-gym-track/2"), ["format", "tm-gym-track/2"]),
    ("unknown-key", minimal(colour="red"), ["unknown key", "colour"]),
    ("missing-geometry", _no_segments(), ["centerline", "segments"]),
    (
        "both-geometries",
        minimal(centerline=[[0, 0], [300, 0]]),
        ["exactly one", "centerline", "segments"],
    ),
    (
        "non-number-point",
        _no_segments(centerline=[[0, 0], [50, 0], [100, 0], ["x", 0], [300, 0]]),
        ["centerline[3]", "'x'"],
    ),
    ("point-not-pair", _no_segments(centerline=[[0, 0], [100, 0, 1]]), ["centerline[1]"]),
    ("negative-width", minimal(width=-5), ["width", "-5"]),
    (
        "piece-width",
        minimal(segments=[{"straight": 100}, {"straight": 200, "width": 2}]),
        ["segments[1].width"],
    ),
    (
        "radius-too-tight",
        minimal(segments=[{"straight": 100}, {"turn": 90, "radius": 5}, {"straight": 100}]),
        ["segments[1].radius", "too tight"],
    ),
    (
        "unknown-piece-key",
        minimal(segments=[{"straight": 100}, {"strait": 100}]),
        ["segments[1]", "strait"],
    ),
    (
        "checkpoints-not-increasing",
        minimal(checkpoints=[200, 100]),
        ["checkpoints", "increase"],
    ),
    ("checkpoint-past-finish", minimal(checkpoints=[100, 290]), ["checkpoints[1]"]),
    ("finish-before-start", minimal(start=150, finish=100), ["finish", "100"]),
    ("self-overlap", minimal(segments=LOOP_BACK), ["overlaps itself"]),
    ("too-short", minimal(segments=[{"straight": 60}]), ["60.0 m long", "at least 100 m"]),
    ("bool-width", minimal(width=True), ["width", "True"]),
]


@pytest.mark.parametrize(("label", "data", "fragments"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_track_file(label: str, data: Any, fragments: list[str], tmp_path: Path) -> None:
    path = write(tmp_path, data, f"{label}.json")
    with pytest.raises(TrackFormatError) as e:
        load_track(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"


def test_valid_minimal_track_loads(tmp_path: Path) -> None:
    """The base of the malformed cases is itself valid (so each case tests its one defect)."""
    t = load_track(write(tmp_path, minimal(checkpoints=[100, 200])))
    check_geometry(t)
    assert t.total_length == pytest.approx(300.0)
    assert t.finish_s == pytest.approx(270.0)


def test_track_from_dict_names_origin() -> None:
    with pytest.raises(TrackFormatError, match=r"^my-origin: format"):
        track_from_dict(minimal(format="x"), "my-origin")


def test_format_error_is_a_value_error() -> None:
    """TrackFormatError can be caught as ValueError (and as tm_gym's base error)."""
    from tm_gym.error import TMGymError

    with pytest.raises(ValueError):
        track_from_dict(minimal(width="wide"))
    assert issubclass(TrackFormatError, TMGymError)
