"""Recording episodes (a safe, compact, documented format) and replaying them.

* :mod:`tm_gym.recording.format` — the ``.tmrec`` file format (numpy arrays + JSON, no pickle);
* :class:`RecordEpisodes` — a wrapper recording any tm-gym environment;
* :class:`~tm_gym.recording.replay.ReplayEnv` — ``TrackMania-v0`` with ``backend="replay"``;
* :func:`builtin_recording` — the small recordings shipped with tm-gym (for tests and demos).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tm_gym.recording.format import Recording, load_recording, save_recording
from tm_gym.recording.recorder import RecordEpisodes, record_episodes

__all__ = [
    "RecordEpisodes",
    "Recording",
    "builtin_recording",
    "builtin_recording_names",
    "load_recording",
    "record_episodes",
    "save_recording",
]


def _folder() -> Path:
    return Path(str(resources.files("tm_gym") / "data" / "recordings"))


def builtin_recording_names() -> list[str]:
    """Names of the recordings shipped with tm-gym (see data/recordings/README.md)."""
    return sorted(p.stem for p in _folder().glob("*.tmrec"))


def builtin_recording(name: str) -> Path:
    """Path of the shipped recording ``name`` (with or without ``.tmrec``).

    Raises:
        KeyError: no such recording; the message lists those that exist.
    """
    stem = name[: -len(".tmrec")] if name.endswith(".tmrec") else name
    p = _folder() / f"{stem}.tmrec"
    if not p.is_file():
        raise KeyError(
            f"no built-in recording {name!r}; expected one of {builtin_recording_names()}"
        )
    return p
