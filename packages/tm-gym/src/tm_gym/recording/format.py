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
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.core.telemetry import ROW_SIZE
from tm_gym.error import RecordingFormatError

__all__ = ["FORMAT", "FRAME_KINDS", "Recording", "load_recording", "save_recording"]

FORMAT = "tm-gym-recording/1"
FRAME_KINDS = ("window", "agent", "none")

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


def load_recording(path: str | Path) -> Recording:
    """Read and validate a recording (never unpickles anything).

    Raises:
        FileNotFoundError: no such file.
        RecordingFormatError: the file is truncated, corrupt, or not a tm-gym recording; the
            message names the file and what is wrong.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recording {str(p)!r} does not exist")
    src = str(p)
    try:
        data = p.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            missing = [k for k in _REQUIRED if k not in z.files]
            if missing:
                raise _fail(
                    src, f"missing arrays {missing}; is this a tm-gym recording ({FORMAT})?"
                )
            arrays = {k: z[k] for k in z.files if k in _REQUIRED + _OPTIONAL}
    except RecordingFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise _fail(
            src,
            f"cannot read it ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt — record it again",
        ) from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as e:
        raise _fail(src, f"meta is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _fail(src, "meta must be a JSON object")
    fields_ = {f.name for f in dataclasses.fields(Recording)}
    kwargs = {k: v for k, v in arrays.items() if k in fields_}
    return Recording(meta=meta, source=src, **kwargs)
