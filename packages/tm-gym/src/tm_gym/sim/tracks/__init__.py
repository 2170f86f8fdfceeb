"""The track catalogue: tracks by name, with the built-in track files (JSON, format tm-gym-track/1).

A track is named in one of three ways, everywhere a ``track=`` argument is taken:

* a built-in name (:func:`builtin_track_names`: ``default``, ``speedway``, ``technical``), read
  from the JSON files beside this module;
* ``gen:SEED``, the procedural track of that integer seed (:func:`tm_gym.sim.generator.generate_track`);
* the path of a JSON track file of one's own (format in :mod:`tm_gym.sim.track`).

This module sits above :mod:`~tm_gym.sim.track` (the data model and its validation) and
:mod:`~tm_gym.sim.generator` (which builds tracks of that model), so neither of those two needs
the other's loader.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tm_gym.error import TrackFormatError
from tm_gym.sim.generator import generate_track
from tm_gym.sim.track import MAX_TRACK_BYTES, Track, track_from_json

__all__ = ["GEN_PREFIX", "builtin_track_names", "load_track"]

GEN_PREFIX = "gen:"
"""The prefix of procedural track names: ``gen:42`` is :func:`generate_track` ``(42)``."""

_CACHE: dict[str, Track] = {}


def builtin_track_names() -> list[str]:
    """Names of the tracks shipped with tm-gym (``default`` first)."""
    names = sorted(
        p.name.removesuffix(".json")
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".json")
    )
    if "default" in names:
        names.remove("default")
        names.insert(0, "default")
    return names


def _generated(key: str) -> Track:
    try:
        seed = int(key[len(GEN_PREFIX) :])
    except ValueError:
        raise TrackFormatError(
            f"track {key!r}: expected gen:SEED with an integer seed, for example gen:42"
        ) from None
    return generate_track(seed)


def load_track(track: str | Path | Track) -> Track:
    """Load a track by built-in name, ``gen:SEED`` (procedural), or path to a JSON file.

    Built-in and generated tracks are cached, so repeated loads are cheap; files are read
    anew each time (they may change on disk).

    Raises:
        TrackFormatError: the file is not a valid track (the message says what and where),
            or exceeds a size limit of :mod:`tm_gym.sim.track` (checked before it is read).
        FileNotFoundError: the name is neither a built-in track nor an existing file.
    """
    if isinstance(track, Track):
        return track
    key = str(track)
    if key in _CACHE:
        return _CACHE[key]
    if key.startswith(GEN_PREFIX):
        result = _generated(key)
    elif isinstance(track, str) and track in builtin_track_names():
        text = resources.files(__name__).joinpath(f"{track}.json").read_text("utf-8")
        result = track_from_json(text, f"built-in track {track!r}")
    else:
        path = Path(track)
        if not path.is_file():
            raise FileNotFoundError(
                f"track {key!r} is neither a built-in track ({', '.join(builtin_track_names())}),"
                " gen:SEED, nor an existing .json file"
            )
        return track_from_json(_read_track_file(path), str(path))
    _CACHE[key] = result
    return result


def _read_track_file(path: Path) -> str:
    """The text of the track file ``path``, refused before reading when over the size limit."""
    size = path.stat().st_size
    if size > MAX_TRACK_BYTES:
        raise TrackFormatError(
            f"{path}: the file is {size:,} bytes, more than the limit of {MAX_TRACK_BYTES:,} "
            "for a track file (format in tm_gym.sim.track) — is this the right file?"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TrackFormatError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); a track file is JSON"
        ) from None
