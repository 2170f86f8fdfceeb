"""The recording format: episodes as numpy arrays plus JSON metadata in one compressed file.

A recording (``.tmrec``, a zip written by :func:`numpy.savez_compressed`, read with
``allow_pickle=False``) holds every *capture* — what the environment observed at reset and after
each step — and every step between captures. With ``C`` captures and ``T`` steps:

===================  ==================  ===================================================
array                shape / dtype        meaning
===================  ==================  ===================================================
``telemetry``        (C, 19) float32      the telemetry record of each capture, in the order of
                                          :class:`~tm_gym.core.telemetry.TelemetryRecord`
``frames``           (C, H, W[, 3]) u8    the frame of each capture: the game window's RGB
                                          screenshot (``frame_kind="window"``) or the agent's
                                          own frame (``"agent"``: (C, 1|3, S, S))
``lidar``            (C, 19) float32      the LIDAR scan of each capture (when the backend
                                          measured one; absent otherwise)
``capture_time``     (C,) float64         seconds since the recording started
``capture_episode``  (C,) int32           episode index of each capture
``actions``          (T, 3) float32       the action of each step
``rewards``          (T,) float64         the reward each step returned
``terminated``       (T,) bool            ...
``truncated``        (T,) bool            ...
``step_capture``     (T,) int32           index of the capture each step returned
``reference``        (K, 2|3) float64     the reward's reference trajectory (optional)
``position``         (C, 3) float64       exact (x, y, z) of each capture, game axes (optional:
                                          simulators, whose positions are finer than float32)
``agent_frames``     (C, 1|3, S, S) u8    the agent's own frames when ``frames`` holds windows
                                          and the backend rendered its own agent frames (the
                                          synchronous simulator with ``full_frames``; optional)
``meta``             () str               JSON object, below
===================  ==================  ===================================================

``frame_kind`` ``"none"`` means no picture was kept (a LIDAR recording of the synchronous
simulator without full frames): ``frames`` is then (C, 0, 0).

Each frame is stored once (never once per position in a frame stack), and the file is
compressed. ``meta`` holds ``format`` (``"tm-gym-recording/1"``), ``tm_gym_version``,
``created`` (ISO 8601), ``backend``, ``track``, ``frame_kind``, ``settings`` (the
:class:`~tm_gym.core.settings.EnvSettings` fields), ``reward_config`` (the
:class:`~tm_gym.reward.RewardConfig` fields), ``observation_space`` (a description),
``env_id`` and free-form ``notes``.

A recording is untrusted input, and a few kilobytes of zip can declare gigabytes of array.
:func:`load_recording` therefore reads every member's ``.npy`` header first (its shape and
dtype, a few hundred bytes, without decompressing the data) and refuses the file before any
array is read when a member

* holds Python objects (pickles) or is not a plain ``.npy`` array,
* declares more (or fewer) bytes than the zip says the member holds,
* has one row per capture or step and more than ``max_captures`` rows (default
  :data:`MAX_CAPTURES`),
* or when all members together declare more than ``max_bytes`` (default
  :data:`MAX_RECORDING_BYTES`), or ``meta`` more than :data:`MAX_META_BYTES`.

Pass larger limits to :func:`load_recording` for a big recording you trust.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.telemetry import ROW_SIZE
from tm_gym.error import RecordingFormatError

__all__ = [
    "FORMAT",
    "FRAME_KINDS",
    "MAX_CAPTURES",
    "MAX_META_BYTES",
    "MAX_RECORDING_BYTES",
    "Recording",
    "load_recording",
    "save_recording",
]

FORMAT = "tm-gym-recording/1"
FRAME_KINDS = ("window", "agent", "none")
MAX_RECORDING_BYTES = 2 * 1024**3
"""Default limit on the uncompressed size of all arrays of a recording together (2 GiB):
about 21,000 captures of 256x128 RGB window frames, or 500,000 of 64x64 grayscale ones."""
MAX_CAPTURES = 1_000_000
"""Default limit on the rows of the per-capture and per-step arrays (14 hours at 20 Hz)."""
MAX_META_BYTES = 4 * 1024**2
"""Limit on the ``meta`` array (its JSON text, stored as UTF-32: a million characters)."""
_MAX_NPY_HEADER = 10_000
"""Longest ``.npy`` header read (numpy's own default; tm-gym writes about 128 bytes)."""

_REQUIRED = (
    "telemetry",
    "frames",
    "capture_time",
    "capture_episode",
    "actions",
    "rewards",
    "terminated",
    "truncated",
    "step_capture",
    "meta",
)
_OPTIONAL = ("lidar", "reference", "position", "agent_frames")
_PER_ROW = {f"{k}.npy" for k in _REQUIRED + _OPTIONAL if k not in ("meta", "reference")}
"""The members with one row per capture or per step (bounded by ``max_captures``)."""


@dataclass(frozen=True, eq=False)
class Recording:
    """A validated recording in memory (see the module docstring for the arrays)."""

    telemetry: NDArray[np.float32]
    frames: NDArray[np.uint8]
    capture_time: NDArray[np.float64]
    capture_episode: NDArray[np.int32]
    actions: NDArray[np.float32]
    rewards: NDArray[np.float64]
    terminated: NDArray[np.bool_]
    truncated: NDArray[np.bool_]
    step_capture: NDArray[np.int32]
    meta: dict[str, Any]
    lidar: NDArray[np.float32] | None = None
    reference: NDArray[np.float64] | None = None
    position: NDArray[np.float64] | None = None
    agent_frames: NDArray[np.uint8] | None = None
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_captures(self) -> int:
        return int(self.telemetry.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.capture_episode.max()) + 1 if self.num_captures else 0

    @property
    def frame_kind(self) -> str:
        return str(self.meta["frame_kind"])

    def episode_slices(self) -> list[tuple[int, int]]:
        """(first capture, one past the last capture) of each episode."""
        ep = self.capture_episode
        starts = np.flatnonzero(np.diff(ep, prepend=-1) != 0)
        ends = np.append(starts[1:], len(ep))
        return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def _fail(source: str, msg: str) -> RecordingFormatError:
    return RecordingFormatError(f"{source}: {msg}")


def validate(r: Recording) -> None:
    """Check shapes, dtypes and consistency; raises :class:`RecordingFormatError`.

    The checks run in a fixed order (arrays, metadata, then the values), so a recording with
    several faults always reports the same one first.
    """
    src = r.source
    c = r.telemetry.shape[0] if r.telemetry.ndim == 2 else -1
    t = r.actions.shape[0] if r.actions.ndim == 2 else -1
    _check_arrays(r, c, t)
    _check_image_arrays(r, c)
    _check_meta(src, r.meta)
    if not np.all(np.isfinite(r.telemetry[:, :11])):
        raise _fail(src, "telemetry contains NaN or infinite values in its first 11 fields")
    _check_frame_kind(src, r.meta["frame_kind"], r.frames, c)
    _check_values(r, c, t)


def _check_arrays(r: Recording, c: int, t: int) -> None:
    """The shape and dtype of every per-capture and per-step array (``-1``: not 2-D)."""
    checks: list[tuple[str, NDArray[Any], tuple[int, ...], type]] = [
        ("telemetry", r.telemetry, (c, ROW_SIZE), np.float32),
        ("capture_time", r.capture_time, (c,), np.float64),
        ("capture_episode", r.capture_episode, (c,), np.int32),
        ("actions", r.actions, (t, 3), np.float32),
        ("rewards", r.rewards, (t,), np.float64),
        ("terminated", r.terminated, (t,), np.bool_),
        ("truncated", r.truncated, (t,), np.bool_),
        ("step_capture", r.step_capture, (t,), np.int32),
    ]
    if r.lidar is not None:
        checks.append(("lidar", r.lidar, (c, 19), np.float32))
    if r.position is not None:
        checks.append(("position", r.position, (c, 3), np.float64))
    for name, arr, shape, dtype in checks:
        if arr.dtype != dtype or arr.shape != shape or -1 in shape:
            raise _fail(
                r.source,
                f"array {name!r} has shape {arr.shape} and dtype {arr.dtype}; "
                f"expected {shape} {np.dtype(dtype)} — the file is damaged or was not "
                "written by tm-gym",
            )


def _check_image_arrays(r: Recording, c: int) -> None:
    """The shape and dtype of ``frames``, ``agent_frames`` and ``reference``."""
    src = r.source
    if r.frames.dtype != np.uint8 or r.frames.shape[:1] != (c,) or r.frames.ndim not in (3, 4):
        raise _fail(
            src,
            f"array 'frames' has shape {r.frames.shape} and dtype {r.frames.dtype}; "
            f"expected ({c}, H, W[, 3]) uint8",
        )
    af = r.agent_frames
    if af is not None and (
        af.dtype != np.uint8 or af.ndim != 4 or af.shape[0] != c or af.shape[1] not in (1, 3)
    ):
        raise _fail(
            src,
            f"array 'agent_frames' has shape {af.shape} and dtype {af.dtype}; "
            f"expected ({c}, 1|3, S, S) uint8",
        )
    ref = r.reference
    if ref is not None and (
        ref.dtype != np.float64 or ref.ndim != 2 or ref.shape[1] not in (2, 3) or len(ref) < 2
    ):
        raise _fail(
            src,
            f"array 'reference' has shape {ref.shape} and dtype {ref.dtype}; "
            "expected (K >= 2, 2|3) float64",
        )


def _check_meta(src: str, meta: dict[str, Any]) -> None:
    """``meta`` names this format, a known frame kind, the settings and the backend."""
    if meta.get("format") != FORMAT:
        raise _fail(src, f"meta.format is {meta.get('format')!r}; expected {FORMAT!r}")
    if meta.get("frame_kind") not in FRAME_KINDS:
        raise _fail(
            src,
            f"meta.frame_kind is {meta.get('frame_kind')!r}; expected one of {list(FRAME_KINDS)}",
        )
    for key in ("settings", "backend"):
        if key not in meta:
            raise _fail(src, f"meta has no {key!r}")


def _check_frame_kind(src: str, kind: str, frames: NDArray[np.uint8], c: int) -> None:
    """``frames`` has the layout its ``frame_kind`` promises."""
    if kind == "agent" and (frames.ndim != 4 or frames.shape[1] not in (1, 3)):
        raise _fail(src, f"agent frames have shape {frames.shape}; expected ({c}, 1|3, S, S) uint8")
    if kind == "window" and (frames.ndim != 4 or frames.shape[3] != 3):
        raise _fail(src, f"window frames have shape {frames.shape}; expected ({c}, H, W, 3)")
    if kind == "none" and frames.shape != (c, 0, 0):
        raise _fail(src, f"frame_kind 'none' with frames of shape {frames.shape}")


def _check_values(r: Recording, c: int, t: int) -> None:
    """Episode numbering, finite actions, step-to-capture indices and time order."""
    src = r.source
    if c > 0 and (r.capture_episode[0] != 0 or np.any(np.diff(r.capture_episode) > 1)):
        raise _fail(src, "capture_episode must count episodes 0, 1, 2, ... without gaps")
    if not np.all(np.isfinite(r.actions)):
        raise _fail(src, "actions contain NaN or infinite values")
    if t > 0 and (r.step_capture.min() < 0 or r.step_capture.max() >= c):
        raise _fail(src, f"step_capture refers to captures outside 0..{c - 1}")
    if c > 0 and np.any(np.diff(r.capture_episode) < 0):
        raise _fail(src, "capture_episode must not decrease")
    if c > 0 and np.any(np.diff(r.capture_time) < 0):
        raise _fail(src, "capture_time must not decrease")


def save_recording(rec: Recording, path: str | Path) -> Path:
    """Write ``rec`` to ``path`` atomically (a temporary file renamed into place)."""
    p = Path(path)
    arrays: dict[str, Any] = {
        name: getattr(rec, name)
        for name in _REQUIRED + _OPTIONAL
        if name != "meta" and getattr(rec, name) is not None
    }
    arrays["meta"] = np.array(json.dumps(rec.meta, sort_keys=True))
    tmp = p.with_name(p.name + ".partial")
    with tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(p)
    return p


def _fmt_bytes(n: int) -> str:
    return f"{n:,} bytes ({n / 1024**3:.2f} GiB)" if n >= 1024**3 else f"{n:,} bytes"


def _declared_size(src: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_rows: float) -> int:
    """The bytes member ``info`` declares in its ``.npy`` header, checked against the zip.

    Reads only the header (it decompresses a few hundred bytes); refuses object dtypes,
    arrays with more than ``max_rows`` rows, and sizes the member cannot hold.
    """
    name = info.filename
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh, _MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh, _MAX_NPY_HEADER)
        else:
            raise _fail(
                src,
                f"member {name!r} is a .npy file of version {version}; expected 1.0 or 2.0 — "
                "the file was not written by tm-gym",
            )
        offset = fh.tell()
    if dtype.hasobject:
        raise _fail(
            src,
            f"member {name!r} holds Python objects (dtype {dtype}), which are never unpickled; "
            "a tm-gym recording holds only numbers and text — the file is not a recording",
        )
    if any(d < 0 for d in shape):
        raise _fail(src, f"member {name!r} declares the impossible shape {shape}")
    declared = math.prod(shape) * dtype.itemsize
    if offset + declared != info.file_size:
        raise _fail(
            src,
            f"member {name!r} declares shape {shape} {dtype} ({_fmt_bytes(declared)}) but the "
            f"zip holds {_fmt_bytes(max(info.file_size - offset, 0))} of data for it; the file "
            "is damaged or forged — record it again",
        )
    if shape and shape[0] > max_rows:
        raise _fail(
            src,
            f"member {name!r} declares {shape[0]:,} rows (shape {shape}), more than the limit "
            f"of {max_rows:,}; pass max_captures={shape[0]} to load_recording if you trust "
            "this file",
        )
    return declared


def _check_sizes(src: str, zf: zipfile.ZipFile, max_bytes: int, max_captures: int) -> None:
    """Refuse the recording before reading any array when its members declare too much."""
    known = {f"{k}.npy" for k in _REQUIRED + _OPTIONAL}
    sizes = {
        info.filename: _declared_size(
            src, zf, info, max_captures if info.filename in _PER_ROW else math.inf
        )
        for info in zf.infolist()
        if info.filename in known
    }
    meta = sizes.get("meta.npy", 0)
    if meta > MAX_META_BYTES:
        raise _fail(
            src,
            f"member 'meta.npy' declares {_fmt_bytes(meta)}, more than the limit of "
            f"{_fmt_bytes(MAX_META_BYTES)} for the metadata; the file is not a tm-gym recording",
        )
    total = sum(sizes.values())
    if total > max_bytes:
        big = max(sizes, key=sizes.__getitem__)
        raise _fail(
            src,
            f"its arrays declare {_fmt_bytes(total)} in all (member {big!r}: "
            f"{_fmt_bytes(sizes[big])}), more than the limit of {_fmt_bytes(max_bytes)}; pass "
            f"max_bytes={total} to load_recording if you trust this file and have the memory",
        )


def _read_arrays(src: str, p: Path, max_bytes: int, max_captures: int) -> dict[str, NDArray[Any]]:
    """The known arrays of the recording at ``p``, after :func:`_check_sizes` allowed them."""
    with p.open("rb") as f, zipfile.ZipFile(f) as zf:
        names = {n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")}
        missing = [k for k in _REQUIRED if k not in names]
        if missing:
            raise _fail(src, f"missing arrays {missing}; is this a tm-gym recording ({FORMAT})?")
        _check_sizes(src, zf, max_bytes, max_captures)
        arrays: dict[str, NDArray[Any]] = {}
        for k in _REQUIRED + _OPTIONAL:
            if k in names:
                with zf.open(f"{k}.npy") as fh:
                    arrays[k] = np.lib.format.read_array(
                        fh, allow_pickle=False, max_header_size=_MAX_NPY_HEADER
                    )
        return arrays


def load_recording(
    path: str | Path,
    *,
    max_bytes: int = MAX_RECORDING_BYTES,
    max_captures: int = MAX_CAPTURES,
) -> Recording:
    """Read and validate a recording (never unpickles anything).

    Every member's declared shape and size is checked against the zip and the limits before
    any array is read (see the module docstring), so a small forged file cannot make this
    allocate gigabytes.

    Args:
        path: the ``.tmrec`` file.
        max_bytes: the most bytes all arrays may declare together (uncompressed).
        max_captures: the most rows any array may declare (captures and steps).

    Raises:
        FileNotFoundError: no such file.
        RecordingFormatError: the file is truncated, corrupt, over a limit, or not a tm-gym
            recording; the message names the file, the member and what is wrong.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recording {str(p)!r} does not exist")
    src = str(p)
    try:
        arrays = _read_arrays(src, p, max_bytes, max_captures)
    except RecordingFormatError:
        raise
    except (
        ValueError,
        OSError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        KeyError,
        RuntimeError,  # an encrypted member
        NotImplementedError,  # an unsupported compression method
    ) as e:
        raise _fail(
            src,
            f"cannot read it ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt — record it again",
        ) from None
    meta_arr = arrays.pop("meta")
    if meta_arr.dtype.kind != "U" or meta_arr.shape != ():
        raise _fail(
            src, f"meta has shape {meta_arr.shape} and dtype {meta_arr.dtype}; expected a string"
        )
    try:
        meta = json.loads(str(meta_arr))
    except json.JSONDecodeError as e:
        raise _fail(src, f"meta is not valid JSON ({e})") from None
    except RecursionError:
        raise _fail(src, "meta is JSON nested too deeply to be tm-gym metadata") from None
    if not isinstance(meta, dict):
        raise _fail(src, "meta must be a JSON object")
    fields_ = {f.name for f in dataclasses.fields(Recording)}
    kwargs = {k: v for k, v in arrays.items() if k in fields_}
    return Recording(meta=meta, source=src, **kwargs)
