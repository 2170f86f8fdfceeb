"""Corrupt, truncated or foreign files give a RecordingFormatError naming the file."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tm_gym.error import RecordingFormatError
from tm_gym.recording import builtin_recording, load_recording, save_recording
from tm_gym.recording.replay import ReplayEnv

SHIPPED = builtin_recording("sim-default-expert-lidar")


def _arrays() -> dict[str, np.ndarray]:
    with np.load(SHIPPED, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write(path: Path, arrays: dict[str, Any]) -> Path:
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)
    return path


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.6, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, fraction: float) -> None:
    data = SHIPPED.read_bytes()
    p = tmp_path / "cut.tmrec"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(RecordingFormatError) as e:
        load_recording(p)
    assert str(p) in str(e.value)


def test_random_bytes_and_flipped_bytes(tmp_path: Path) -> None:
    p = tmp_path / "noise.tmrec"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(RecordingFormatError, match=r"noise\.tmrec"):
        load_recording(p)
    data = bytearray(SHIPPED.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)  # damage inside a compressed member
    p.write_bytes(bytes(data))
    with pytest.raises(RecordingFormatError, match=r"noise\.tmrec"):
        load_recording(p)


def test_zip_without_meta(tmp_path: Path) -> None:
    arrays = _arrays()
    del arrays["meta"]
    p = _write(tmp_path / "nometa.tmrec", arrays)
    with pytest.raises(RecordingFormatError, match=r"nometa\.tmrec.*missing arrays \['meta'\]"):
        load_recording(p)
    with zipfile.ZipFile(tmp_path / "empty.tmrec", "w") as z:
        z.writestr("hello.txt", "not a recording")
    with pytest.raises(RecordingFormatError, match=r"empty\.tmrec"):
        load_recording(tmp_path / "empty.tmrec")


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.target, "w"))


def test_pickle_inside_is_never_unpickled(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    arrays: dict[str, Any] = dict(_arrays())
    evil = np.empty(1, dtype=object)
    evil[0] = _Evil(str(target))
    arrays["meta"] = evil  # an object array: numpy would pickle it
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # allow_pickle defaults to True when saving
    p = tmp_path / "evil.tmrec"
    p.write_bytes(buf.getvalue())
    assert b"pwned" in p.read_bytes()  # the pickle really is in the file
    with pytest.raises(RecordingFormatError, match=r"evil\.tmrec"):
        load_recording(p)
    with pytest.raises(RecordingFormatError):
        ReplayEnv(p)
    assert not target.exists()
    pickle.dumps(1)  # (pickle imported only to make the intent explicit)


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("telemetry", np.zeros((3, 11), np.float32), "telemetry"),
        ("actions", np.zeros((300, 2), np.float32), "actions"),
        ("rewards", np.zeros(300, np.float32), "rewards"),
        ("lidar", np.zeros((301, 18), np.float32), "lidar"),
        ("frames", np.zeros((5, 0, 0), np.uint8), "frames"),
        ("step_capture", np.full(300, 9999, np.int32), "step_capture"),
        ("capture_episode", np.full(301, 3, np.int32), "capture_episode"),
        ("meta", np.array("{not json"), "JSON"),
        ("meta", np.array(json.dumps({"format": "other/9"})), "format"),
        ("position", np.zeros((301, 2)), "position"),
        ("reference", np.zeros((1, 2)), "reference"),
    ],
)
def test_wrong_shapes_and_values(tmp_path: Path, name: str, bad: np.ndarray, match: str) -> None:
    arrays = _arrays()
    arrays[name] = bad
    p = _write(tmp_path / "bad.tmrec", arrays)
    with pytest.raises(RecordingFormatError, match=match) as e:
        load_recording(p)
    assert str(p) in str(e.value)


def test_steps_out_of_order_are_caught_by_the_replay(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["step_capture"] = arrays["step_capture"][::-1].copy()
    p = _write(tmp_path / "order.tmrec", arrays)
    with pytest.raises(RecordingFormatError, match="in order"):
        ReplayEnv(p)


def test_missing_file_and_round_trip(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_recording(tmp_path / "none.tmrec")
    rec = load_recording(SHIPPED)
    out = save_recording(rec, tmp_path / "copy.tmrec")
    again = load_recording(out)
    np.testing.assert_array_equal(again.telemetry, rec.telemetry)
    assert again.meta == rec.meta
    assert not (tmp_path / "copy.tmrec.partial").exists()
