"""The progress reward and reference trajectories, tested with plain arrays."""

from __future__ import annotations

import gc
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tm_gym.error import TrajectoryFormatError
from tm_gym.reward import (
    REFERENCE_SPACING,
    ProgressReward,
    ReferenceTrajectory,
    RewardConfig,
    resample_polyline,
)


def straight(length: float = 200.0) -> ReferenceTrajectory:
    """A reference along the x axis from 0 to ``length`` metres."""
    return ReferenceTrajectory.from_polyline(np.array([[0.0, 0.0], [length, 0.0]]))


def start(
    ref: ReferenceTrajectory, x: float = 0.0, y: float = 0.0, config: RewardConfig | None = None
) -> ProgressReward:
    pr = ProgressReward(ref, 1, config)
    pr.reset(np.array([[x, y]]))
    return pr


def drive(pr: ProgressReward, xs, y: float = 0.0) -> list[float]:
    """Rewards for a car visiting x positions ``xs`` one update each."""
    out = []
    for x in xs:
        r, term = pr.update(np.array([[float(x), y]]), np.array([False]))
        assert not term[0]
        out.append(float(r[0]))
    return out


def test_reference_is_resampled() -> None:
    ref = straight(200.0)
    assert ref.points.shape == (2001, 2)
    assert ref.length == pytest.approx(200.0)
    np.testing.assert_allclose(np.diff(ref.points[:, 0]), REFERENCE_SPACING)
    corner = resample_polyline(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]))
    assert len(corner) == 201
    np.testing.assert_allclose(np.linalg.norm(np.diff(corner, axis=0), axis=1), 0.1, atol=1e-9)


def test_one_point_per_ten_metres() -> None:
    pr = start(straight())
    rewards = drive(pr, np.arange(1.0, 101.0))
    np.testing.assert_allclose(rewards, 0.1, atol=1e-12)  # 1 m per update
    assert sum(rewards) == pytest.approx(10.0)
    assert pr.progress[0] == pytest.approx(0.5)


def test_driving_the_same_stretch_twice_earns_nothing() -> None:
    pr = start(straight(), config=RewardConfig(max_no_progress=1000))
    forward = drive(pr, np.arange(1.0, 51.0))
    back = drive(pr, np.arange(49.0, 19.0, -1.0))
    again = drive(pr, np.arange(21.0, 51.0))
    further = drive(pr, np.arange(51.0, 81.0))
    assert sum(forward) == pytest.approx(5.0)
    assert sum(back) == 0.0 and sum(again) == 0.0
    assert sum(further) == pytest.approx(3.0)
    # followed the car backwards: it is localised at 20 m, not stuck at 50 m
    total = sum(forward) + sum(back) + sum(again) + sum(further)
    assert total == pytest.approx(80.0 / 10)


def test_reversing_is_tracked() -> None:
    pr = start(straight())
    drive(pr, [10.0, 20.0, 30.0])
    drive(pr, np.arange(29.0, 9.0, -1.0))
    assert pr.current[0] == 100  # at 10 m
    assert pr.best[0] == 300


def test_jump_ahead_on_a_straight() -> None:
    pr = start(straight())
    drive(pr, [10.0])
    assert drive(pr, [40.0]) == [pytest.approx(3.0)]


def _u_turn() -> ReferenceTrajectory:
    """East 30 m, north 10 m, west 30 m: the two long legs are 10 m apart."""
    return ReferenceTrajectory.from_polyline(
        np.array([[0.0, 0.0], [30.0, 0.0], [30.0, 10.0], [0.0, 10.0]])
    )


def test_corner_cut_pays_for_the_skipped_points() -> None:
    pr = start(_u_turn())
    drive(pr, [25.0])
    # straight across to the other leg: 5 + 10 + 5 m of reference skipped
    [r] = drive(pr, [25.0], y=10.0)
    assert r == pytest.approx(2.0)
    assert pr.current[0] == 450


def test_corner_cut_beyond_lookahead_is_not_found() -> None:
    # 3 m of look-ahead: the search gives up in the 5 m stretch where points get farther away
    pr = start(_u_turn(), config=RewardConfig(lookahead=30))
    drive(pr, [25.0])
    [r] = drive(pr, [25.0], y=10.0)
    assert r == 0.0
    assert pr.current[0] == 250


def test_stray_car_earns_nothing_and_keeps_its_place() -> None:
    pr = start(straight(), config=RewardConfig(max_stray=20.0))
    drive(pr, [30.0])
    before = int(pr.current[0])
    assert drive(pr, [60.0], y=25.0) == [0.0]
    assert pr.current[0] == before, "not relocalised while lost"
    # just inside the limit it is localised again and paid
    assert drive(pr, [60.0], y=19.0) == [pytest.approx(3.0)]


def test_finish_bonus_and_termination() -> None:
    pr = start(straight())
    drive(pr, [10.0])
    r, term = pr.update(np.array([[20.0, 0.0]]), np.array([True]))
    assert r[0] == pytest.approx(1.0 + 100.0)
    assert term[0]
    pr2 = start(straight(), config=RewardConfig(finish_bonus=7.5))
    r, _ = pr2.update(np.array([[0.0, 0.0]]), np.array([True]))
    assert r[0] == 7.5


def _first_termination(pr: ProgressReward, positions: list[float]) -> int | None:
    for k, x in enumerate(positions, start=1):
        _, term = pr.update(np.array([[x, 0.0]]), np.array([False]))
        if term[0]:
            return k
    return None


def test_stalled_car_fails_after_min_steps_plus_countdown() -> None:
    """TMRL's rule: no-progress steps are counted only once ``min_steps`` steps have passed,
    and the episode ends when more than ``max_no_progress`` have been counted. A car that never
    moves fails at update min_steps + max_no_progress + 1, not earlier."""
    cfg = RewardConfig(min_steps=5, max_no_progress=3)
    pr = start(straight(), config=cfg)
    assert _first_termination(pr, [0.0] * 30) == 5 + 3 + 1


def test_stall_after_progress_fails_after_countdown() -> None:
    cfg = RewardConfig(min_steps=5, max_no_progress=3)
    pr = start(straight(), config=cfg)
    xs = [float(k) for k in range(1, 21)] + [20.0] * 10  # progress for 20 updates, then stops
    assert _first_termination(pr, xs) == 20 + 3 + 1


def test_progress_resets_the_countdown() -> None:
    cfg = RewardConfig(min_steps=0, max_no_progress=3)
    pr = start(straight(), config=cfg)
    # three idle updates, one step forward, three idle again: never more than three in a row
    xs = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0]
    assert _first_termination(pr, xs) is None


def test_batched_cars_are_independent() -> None:
    ref = straight()
    batch = ProgressReward(ref, 3)
    batch.reset(np.zeros((3, 2)))
    singles = [start(ref) for _ in range(3)]
    rng = np.random.default_rng(0)
    pos = np.zeros((3, 2))
    for _ in range(50):
        pos[:, 0] = np.clip(pos[:, 0] + rng.uniform(-1, 3, 3), 0, 200)
        pos[:, 1] = rng.uniform(-3, 3, 3)
        r, term = batch.update(pos, np.zeros(3, bool))
        for i, single in enumerate(singles):
            ri, ti = single.update(pos[i : i + 1], np.array([False]))
            assert r[i] == ri[0] and term[i] == ti[0]
    np.testing.assert_array_equal(batch.best, [s.best[0] for s in singles])


def test_reset_mask_relocalises_only_selected() -> None:
    pr = ProgressReward(straight(), 2)
    pr.reset(np.zeros((2, 2)))
    pr.update(np.array([[30.0, 0.0], [40.0, 0.0]]), np.zeros(2, bool))
    pr.reset(np.array([[5.0, 0.0], [0.0, 0.0]]), np.array([True, False]))
    assert pr.current.tolist() == [50, 400]
    assert pr.best.tolist() == [50, 400]


def test_three_dimensional_reference() -> None:
    """Game references are (x, y up, z); a climbing stretch counts its length in 3-D."""
    pts = np.array([[0.0, 0.0, 0.0], [30.0, 0.0, 0.0], [30.0, 40.0, 0.0]])  # 30 m, then 40 up
    ref = ReferenceTrajectory.from_polyline(pts)
    assert ref.points.shape == (701, 3)
    pr = ProgressReward(ref, 1)
    pr.reset(np.array([[0.0, 0.0, 0.0]]))
    r1, _ = pr.update(np.array([[30.0, 0.0, 0.0]]), np.array([False]))
    r2, _ = pr.update(np.array([[30.0, 20.0, 0.0]]), np.array([False]))
    assert r1[0] == pytest.approx(3.0) and r2[0] == pytest.approx(2.0)
    # a car right below the climb (same x, z) is 20 m away in 3-D: not at 50 m
    pr.reset(np.array([[30.0, 0.0, 0.0]]))
    assert pr.current[0] == 300


# -- files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_load_round_trip(suffix: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ref = ReferenceTrajectory(np.cumsum(rng.normal(size=(50, 3)), axis=0))
    path = ref.save(tmp_path / f"ref{suffix}")
    loaded = ReferenceTrajectory.load(path)
    if suffix == ".npz":
        np.testing.assert_array_equal(loaded.points, ref.points)
    else:
        np.testing.assert_allclose(loaded.points, ref.points, atol=1e-4)  # 4 decimals
        data = json.loads(path.read_text())
        assert data["format"] == "tm-gym-reference/1" and data["spacing"] == 0.1


def test_other_spacing_is_resampled(tmp_path: Path) -> None:
    p = tmp_path / "coarse.json"
    p.write_text(
        json.dumps(
            {
                "format": "tm-gym-reference/1",
                "spacing": 1.0,
                "points": [[0, 0], [1, 0], [2, 0], [3, 0]],
            }
        )
    )
    ref = ReferenceTrajectory.load(p)
    assert ref.points.shape == (31, 2)


class _Payload:
    """Unpickling this creates the marker directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_in_npz_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, points=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(TrajectoryFormatError) as e:
        ReferenceTrajectory.load(path)
    assert str(path) in str(e.value)
    assert not marker.exists(), "loading a reference ran pickled code"
    # the payload is live: loading it the unsafe way does run it
    with np.load(path, allow_pickle=True) as z:
        z["points"]
    assert marker.exists()


def test_plain_pickle_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "ref.npz"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(TrajectoryFormatError, match=r"ref\.npz"):
        ReferenceTrajectory.load(path)
    assert not marker.exists()


def _saved(tmp_path: Path) -> bytes:
    return straight(50.0).save(tmp_path / "good.npz").read_bytes()


def _corrupt(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 3 : len(b) // 3 + 40] = bytes(40)
    return bytes(b)


BROKEN_NPZ = {
    "empty": lambda good: b"",
    "garbage": lambda good: b"not a zip file at all" * 4,
    "truncated-half": lambda good: good[: len(good) // 2],
    "truncated-tail": lambda good: good[:-12],
    "corrupted": _corrupt,
}


@pytest.mark.parametrize("kind", list(BROKEN_NPZ))
def test_broken_npz_gives_a_clear_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.npz"
    path.write_bytes(BROKEN_NPZ[kind](_saved(tmp_path)))
    with pytest.raises(TrajectoryFormatError) as e:
        ReferenceTrajectory.load(path)
    assert str(path) in str(e.value)
    # no file handle is left open (np.load leaks its file when the zip is unreadable, which
    # strict warnings report as a ResourceWarning in whichever test runs next)
    del e
    gc.collect()


def test_corrupted_bytes_really_break_the_zip(tmp_path: Path) -> None:
    """The 'corrupted' case above is not accidentally readable."""
    path = tmp_path / "c.npz"
    path.write_bytes(_corrupt(_saved(tmp_path)))
    with pytest.raises(Exception), zipfile.ZipFile(path) as z:  # noqa: B017
        for name in z.namelist():
            z.read(name)


BROKEN_JSON = {
    "not-json": '{"format": ',
    "wrong-format": json.dumps({"format": "other", "points": [[0, 0], [1, 0]]}),
    "not-an-object": json.dumps([[0, 0], [1, 0]]),
    "ragged": json.dumps({"format": "tm-gym-reference/1", "points": [[0, 0], [1]]}),
    "text-points": json.dumps({"format": "tm-gym-reference/1", "points": [["a", "b"], [1, 0]]}),
    "one-point": json.dumps({"format": "tm-gym-reference/1", "points": [[0, 0]]}),
    "four-columns": json.dumps({"format": "tm-gym-reference/1", "points": [[0, 0, 0, 0]] * 3}),
    "nan": '{"format": "tm-gym-reference/1", "points": [[0, 0], [NaN, 1]]}',
}


@pytest.mark.parametrize("kind", list(BROKEN_JSON))
def test_broken_json_gives_a_clear_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.json"
    path.write_text(BROKEN_JSON[kind])
    with pytest.raises(TrajectoryFormatError) as e:
        ReferenceTrajectory.load(path)
    assert str(path) in str(e.value)


def test_npz_without_points(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, xy=np.zeros((3, 2)))
    with pytest.raises(TrajectoryFormatError, match=r"no 'points' array.*xy"):
        ReferenceTrajectory.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        ReferenceTrajectory.load(tmp_path / "nope.npz")


@pytest.mark.parametrize(
    "kwargs",
    [{"lookahead": -1}, {"max_stray": float("inf")}, {"min_steps": 1.5}, {"finish_bonus": -1.0}],
)
def test_reward_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RewardConfig(**kwargs)


def _npz_declaring(path: Path, shape: tuple[int, ...]) -> None:
    """An npz whose ``points.npy`` header declares ``shape`` but holds only a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("points.npy", header.getvalue() + b"\0" * 64)


def test_a_reference_declaring_a_huge_array_is_refused_before_reading(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.npz"
    _npz_declaring(bomb, (500_000_000, 3))  # 12 GB of float64, declared in a 200-byte file
    with pytest.raises(TrajectoryFormatError, match=r"bomb\.npz.*declares shape \(500000000, 3\)"):
        ReferenceTrajectory.load(bomb)
    wide = tmp_path / "wide.npz"
    _npz_declaring(wide, (10, 20_000_000))
    with pytest.raises(TrajectoryFormatError, match=r"wide\.npz.*more than a reference may"):
        ReferenceTrajectory.load(wide)


def test_a_deeply_nested_json_reference_is_a_format_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TrajectoryFormatError, match=r"deep\.json.*nested too deeply"):
        ReferenceTrajectory.load(deep)
