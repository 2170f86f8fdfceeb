"""Export recordings to Minari datasets, and import them back (the ``minari`` extra).

:func:`export_minari` turns a :class:`~tm_gym.recording.format.Recording` into a Minari dataset
that loads with ``minari.load_dataset(dataset_id)``. Each Minari episode holds, for an episode of
``T`` steps:

==================  ==========================  ===============================================
field               length                      content
==================  ==========================  ===============================================
``observations``    T + 1 (reset, then steps)   the Dict observations the environment returned,
                                                rebuilt from the captures by the observation
                                                pipeline (:class:`~tm_gym.realtime.observation.
                                                ObservationBuilder`) plus the action buffer
``actions``         T                           the actions sent
``rewards``         T                           the rewards returned
``terminations``    T
``truncations``     T
``infos``           T + 1                       per capture: ``race_time``, ``speed_kmh``,
                                                ``gear``, ``rpm``, ``position`` (x, y, z),
                                                ``distance``, ``checkpoint``, ``finished``,
                                                ``capture_time`` (from the telemetry)
==================  ==========================  ===============================================

Images are stored losslessly (Minari's JPEG encoding is turned off). The recording's own
metadata (``meta``, as JSON) is kept in the dataset metadata under ``"tm_gym_meta"``, which is
what lets :func:`import_minari` rebuild a recording.

:func:`import_minari` goes the other way. It is lossy where Minari holds less than a recording:

* the frame of each capture is the *newest* frame of the observation's stack (each frame is
  stored once), so recordings of window screenshots come back as agent frames
  (``frame_kind="agent"``), and LIDAR observations come back as their newest scan;
* telemetry fields that are neither in the infos nor in the observation (inputs, velocities,
  angles) come back as 0 (first 11 fields) or NaN (the others);
* the reward's reference trajectory is not exported.

Minari chooses its folder from the ``MINARI_DATASETS_PATH`` environment variable; ``data_path``
sets it for the duration of one call only (and restores it), never at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from numpy.typing import NDArray

from tm_gym.core.actions import action_space
from tm_gym.core.settings import EnvSettings, observation_space
from tm_gym.core.telemetry import ROW_FIELDS, ROW_SIZE, TelemetryRecord
from tm_gym.error import DependencyNotInstalled, RecordingFormatError
from tm_gym.realtime.observation import ObservationBuilder
from tm_gym.recording.format import (
    FORMAT,
    Recording,
    load_recording,
    save_recording,
)
from tm_gym.sim.tracks import GEN_PREFIX, builtin_track_names

__all__ = ["EpisodeArrays", "episode_arrays", "export_minari", "import_minari"]

logger = logging.getLogger(__name__)

META_KEY = "tm_gym_meta"
INSTALL_HINT = "pip install 'tm-gym[minari]'"
_TEL = {name: i for i, name in enumerate(ROW_FIELDS)}


def _minari() -> Any:
    try:
        import minari  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as e:
        raise DependencyNotInstalled(
            f"minari is not installed (import failed: {e}); run {INSTALL_HINT} to export and "
            "import Minari datasets"
        ) from None
    return minari


@contextlib.contextmanager
def _datasets_path(data_path: str | Path | None) -> Iterator[None]:
    """Point Minari at ``data_path`` for the duration of the block (restoring the old value)."""
    if data_path is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(data_path).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


class _StoredFrameBuilder(ObservationBuilder):
    """The observation pipeline fed with agent frames already stored in the recording."""

    def _frame(self, rgb: NDArray[np.uint8] | None) -> NDArray[np.uint8]:
        s = self.settings
        want = (1 if s.grayscale else 3, s.img_size, s.img_size)
        if rgb is None or rgb.shape != want:
            got = None if rgb is None else rgb.shape
            raise RecordingFormatError(
                f"agent frame of shape {got}; the recording's settings expect {want} — export "
                "with the settings the recording was made with"
            )
        return rgb


@dataclasses.dataclass(frozen=True)
class EpisodeArrays:
    """One episode as the environment returned it (observations and infos have T + 1 rows)."""

    observations: dict[str, NDArray[Any]]
    actions: NDArray[np.float32]
    rewards: NDArray[np.float64]
    terminations: NDArray[np.bool_]
    truncations: NDArray[np.bool_]
    infos: dict[str, NDArray[Any]]


def _settings(rec: Recording, obs_type: str | None) -> EnvSettings:
    raw = rec.meta.get("settings")
    if not isinstance(raw, dict):
        raise RecordingFormatError(f"{rec.source}: meta.settings is {raw!r}; expected an object")
    known = {f.name for f in fields(EnvSettings)}
    s = EnvSettings(**{k: v for k, v in raw.items() if k in known})
    if obs_type is not None:
        s = dataclasses.replace(s, obs_type=obs_type)
    if s.obs_type == "lidar_progress":
        raise ValueError(
            "obs_type='lidar_progress' needs the reward's progress, which a recording does not "
            "store; export with obs_type='lidar' or 'images'"
        )
    agent = getattr(rec, "agent_frames", None)
    frames = rec.frames if agent is None else agent
    if s.obs_type == "images" and (rec.frame_kind != "window" or agent is not None):
        want = (1 if s.grayscale else 3, s.img_size, s.img_size)
        if frames.shape[1:] != want:
            raise ValueError(
                f"obs_type='images' with img_size={s.img_size}, grayscale={s.grayscale} needs "
                f"agent frames of shape {want}; the recording's are {frames.shape[1:]}"
            )
    return s


def episode_arrays(rec: Recording, *, obs_type: str | None = None) -> list[EpisodeArrays]:
    """Rebuild each episode's observations, as the environment returned them, from ``rec``.

    Episodes without any step are skipped. ``obs_type`` overrides the recorded one (e.g.
    ``"lidar"`` from a recording of window screenshots).
    """
    s = _settings(rec, obs_type)
    # the backend's own agent frames, when it kept them beside the window screenshots, are the
    # frames the environment observed; otherwise window screenshots go through the pipeline
    agent = getattr(rec, "agent_frames", None)
    stored = rec.frames if agent is None else agent
    window = rec.frame_kind == "window" and agent is None
    lidar = rec.lidar
    cur = [0]

    def exact_scan() -> NDArray[np.float32]:
        assert lidar is not None
        return lidar[cur[0]]

    out: list[EpisodeArrays] = []
    step_ep = rec.capture_episode[rec.step_capture] if rec.num_steps else rec.step_capture
    for a, _end in rec.episode_slices():
        steps = np.flatnonzero(step_ep == rec.capture_episode[a])
        if steps.size == 0:
            continue
        src = lidar if lidar is not None else None
        builder: ObservationBuilder
        if window:
            builder = ObservationBuilder(s, lidar_source=exact_scan if src is not None else None)
        else:
            if s.obs_type != "images" and src is None:
                raise ValueError(
                    f"{rec.source}: a LIDAR observation needs the recording's 'lidar' array or "
                    "window screenshots; this recording has agent frames and no LIDAR"
                )
            builder = _StoredFrameBuilder(s, lidar_source=exact_scan if src is not None else None)

        need_frame = s.obs_type == "images" or src is None

        def parts(
            i: int, *, first: bool, b_: ObservationBuilder = builder, frame: bool = need_frame
        ) -> list[NDArray[Any]]:
            cur[0] = i
            rgb = stored[i] if frame else None
            tel = TelemetryRecord.from_row(rec.telemetry[i])
            return b_.reset(tel, rgb) if first else b_.update(tel, rgb)

        keys = builder.keys
        caps = [a]
        rows = [parts(a, first=True)]
        act_buf = np.zeros((len(steps) + 1, s.act_buf_len, 3), np.float32)
        buf = np.zeros((s.act_buf_len, 3), np.float32)
        last = a
        for j, t in enumerate(steps, start=1):
            c = int(rec.step_capture[t])
            if c < last:
                raise RecordingFormatError(
                    f"{rec.source}: step {t} returns capture {c}, older than capture {last} "
                    "returned before it"
                )
            row = rows[-1]
            for i in range(last + 1, c + 1):
                row = parts(i, first=False)
            last = c
            caps.append(c)
            rows.append(row)
            buf[:-1] = buf[1:]
            buf[-1] = rec.actions[t]
            act_buf[j] = buf
        obs = {k: np.stack([r[n] for r in rows]) for n, k in enumerate(keys)}
        obs["actions"] = act_buf
        order = list(observation_space(s).spaces)
        out.append(
            EpisodeArrays(
                observations={k: obs[k] for k in order},
                actions=rec.actions[steps],
                rewards=rec.rewards[steps],
                terminations=rec.terminated[steps],
                truncations=rec.truncated[steps],
                infos=_capture_infos(rec, caps),
            )
        )
    return out


def _capture_infos(rec: Recording, caps: list[int]) -> dict[str, NDArray[Any]]:
    """The ``infos`` of the captures ``caps`` (one row each), read from their telemetry."""
    cidx = np.asarray(caps)
    tel = rec.telemetry[cidx]
    return {
        "race_time": tel[:, _TEL["race_time"]].astype(np.float64),
        "speed_kmh": tel[:, _TEL["speed_kmh"]].astype(np.float64),
        "gear": np.rint(tel[:, _TEL["gear"]]).astype(np.int64),
        "rpm": tel[:, _TEL["rpm"]].astype(np.float64),
        "position": tel[:, [_TEL["x"], _TEL["y"], _TEL["z"]]].astype(np.float64),
        "distance": tel[:, _TEL["distance"]].astype(np.float64),
        "checkpoint": np.nan_to_num(tel[:, _TEL["checkpoint"]], nan=-1).astype(np.int64),
        "finished": tel[:, _TEL["finished"]] > 0.5,
        "capture_time": rec.capture_time[cidx],
    }


def simulator_spec(rec: Recording, settings: EnvSettings) -> EnvSpec | None:
    """The environment that recreates a simulator recording (``dataset.recover_environment()``):
    the synchronous ``TrackMania-Sim-v0`` on the recorded track with the recorded settings (for a
    recording of the real-time simulator too: the same dynamics, as fast as the machine runs) —
    None for the game, a replay, or a track that is not a built-in name or ``gen:SEED`` (a file
    path would not travel with the dataset)."""
    track = rec.meta.get("track")
    if rec.meta.get("backend") not in ("sim", "sim-realtime") or not isinstance(track, str):
        return None
    if not (track in builtin_track_names() or track.startswith(GEN_PREFIX)):
        return None
    import tm_gym  # noqa: F401  (registers the ids)

    base = gym.spec("TrackMania-Sim-v0")
    kwargs = {**base.kwargs, "track": track, **dataclasses.asdict(settings)}
    return dataclasses.replace(base, kwargs=kwargs)


def export_minari(
    recording: Recording | str | Path,
    dataset_id: str,
    *,
    data_path: str | Path | None = None,
    author: str = "tm-gym",
    author_email: str = "unknown",
    obs_type: str | None = None,
    description: str | None = None,
) -> str:
    """Write ``recording`` as the Minari dataset ``dataset_id``; returns the dataset id.

    Args:
        recording: a :class:`Recording` or the path of a ``.tmrec`` file.
        dataset_id: Minari's ``(namespace/)(env_name/)dataset_name-vN``; it must not exist yet.
        data_path: Minari's datasets folder (default: Minari's own, ``MINARI_DATASETS_PATH`` or
            ``~/.minari/datasets``).
        author, author_email, description: stored in the dataset metadata.
        obs_type: the observation type to rebuild (default: the recorded one).

    Raises:
        DependencyNotInstalled: minari is missing.
        ValueError: the dataset exists already, or the observations cannot be rebuilt.
    """
    minari = _minari()
    rec = recording if isinstance(recording, Recording) else load_recording(recording)
    episodes = episode_arrays(rec, obs_type=obs_type)
    if not episodes:
        raise ValueError(f"{rec.source}: the recording has no step; nothing to export")
    s = _settings(rec, obs_type)
    from minari.data_collector import EpisodeBuffer  # type: ignore[import-untyped,import-not-found,unused-ignore]

    buffers = [
        EpisodeBuffer(
            id=None,
            observations=ep.observations,
            actions=ep.actions,
            rewards=ep.rewards,
            terminations=ep.terminations,
            truncations=ep.truncations,
            infos=ep.infos,
        )
        for ep in episodes
    ]
    kwargs: dict[str, Any] = {
        "observation_space": observation_space(s),
        "action_space": action_space(),
        "algorithm_name": str(rec.meta.get("notes") or "recorded with tm-gym"),
        "author": author,
        "author_email": author_email,
        "code_permalink": "https://github.com/trackmaster/trackmaster",
        "description": description
        or (
            f"tm-gym recording of {rec.meta.get('env_id', '?')} on track "
            f"{rec.meta.get('track', '?')} ({rec.meta.get('backend', '?')} backend), "
            f"obs_type={s.obs_type}"
        ),
        "data_format": "hdf5",
    }
    spec = simulator_spec(rec, s)
    if spec is not None:
        kwargs["env"] = spec
    if "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters:
        kwargs["jpeg_encoding"] = False  # lossless frames
    meta = dict(rec.meta)
    meta["settings"] = dataclasses.asdict(s)
    with _datasets_path(data_path), warnings.catch_warnings():
        # minari warns about every optional field left None (eval_env, and env_spec for the game:
        # making TrackMania-v0 would connect to the game, so none is attached)
        warnings.filterwarnings("ignore", message=r".*is set to None", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"env_spec is None", category=UserWarning)
        ds = minari.create_dataset_from_buffers(dataset_id, buffers, **kwargs)
        ds.storage.update_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    logger.info(
        "exported %d episodes (%d steps) of %s to Minari dataset %s",
        len(episodes),
        sum(len(ep.rewards) for ep in episodes),
        rec.source,
        dataset_id,
    )
    return dataset_id


def _load(minari: Any, dataset_id: str, data_path: str | Path | None) -> Any:
    with _datasets_path(data_path):
        return minari.load_dataset(dataset_id)


def _episode_telemetry(obs: dict[str, Any], infos: dict[str, Any], n: int) -> NDArray[np.float32]:
    """(n, ROW_SIZE) telemetry rebuilt from one Minari episode's observations and infos.

    Fields found in neither are 0 (the first 11) or NaN (the others); see the module docstring.
    """
    tel = np.zeros((n, ROW_SIZE), np.float32)
    tel[:, 11:] = np.nan
    tel[:, _TEL["speed_kmh"]] = np.asarray(obs["speed"])[:, 0]
    for name in ("gear", "rpm"):
        if name in obs:
            tel[:, _TEL[name]] = np.asarray(obs[name])[:, 0]
    for name in ("speed_kmh", "gear", "rpm", "race_time", "distance", "checkpoint"):
        if name in infos:
            tel[:, _TEL[name]] = np.asarray(infos[name], dtype=np.float32)
    if "finished" in infos:
        tel[:, _TEL["finished"]] = np.asarray(infos["finished"], dtype=np.float32)
    if "position" in infos:
        tel[:, [_TEL["x"], _TEL["y"], _TEL["z"]]] = np.asarray(infos["position"], np.float32)
    return tel


def _read_meta(dataset_id: str, raw: str) -> tuple[dict[str, Any], EnvSettings]:
    """The recording metadata that :func:`export_minari` stored, and its env settings."""
    try:
        meta = json.loads(raw)
        return meta, EnvSettings(**meta["settings"])
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError) as e:
        raise RecordingFormatError(
            f"Minari dataset {dataset_id!r}: its {META_KEY!r} metadata is not what export_minari "
            f"writes ({type(e).__name__}: {e}); export the recording again"
        ) from None


def import_minari(
    dataset_id: str, out_path: str | Path | None = None, *, data_path: str | Path | None = None
) -> Recording:
    """Convert a Minari dataset written by :func:`export_minari` back into a :class:`Recording`.

    Lossy where the module docstring says. The recording is saved to ``out_path`` when given.

    Raises:
        DependencyNotInstalled: minari is missing.
        FileNotFoundError: no such dataset under ``data_path``.
        RecordingFormatError: the dataset was not written by :func:`export_minari`.
    """
    minari = _minari()
    ds = _load(minari, dataset_id, data_path)
    raw = ds.storage.metadata.get(META_KEY)
    if not isinstance(raw, str):
        raise RecordingFormatError(
            f"Minari dataset {dataset_id!r} has no {META_KEY!r} metadata; only datasets written "
            "by tm_gym.recording.minari_io.export_minari can be imported"
        )
    meta, s = _read_meta(dataset_id, raw)
    k = 1 if s.grayscale else 3
    tel_l: list[NDArray[np.float32]] = []
    frames_l: list[NDArray[np.uint8]] = []
    lidar_l: list[NDArray[np.float32]] = []
    time_l: list[NDArray[np.float64]] = []
    ep_l: list[NDArray[np.int32]] = []
    act_l: list[NDArray[np.float32]] = []
    rew_l: list[NDArray[np.float64]] = []
    term_l: list[NDArray[np.bool_]] = []
    trunc_l: list[NDArray[np.bool_]] = []
    cap_l: list[NDArray[np.int32]] = []
    n_caps = 0
    for e, ep in enumerate(ds.iterate_episodes()):
        obs, infos = ep.observations, ep.infos or {}
        n = len(ep.rewards) + 1
        tel_l.append(_episode_telemetry(obs, infos, n))
        if "images" in obs:
            frames_l.append(np.ascontiguousarray(np.asarray(obs["images"])[:, -k:]))
        else:
            frames_l.append(np.zeros((n, 1, 1, 1), np.uint8))
        if "lidar" in obs:
            lidar_l.append(np.asarray(obs["lidar"], np.float32)[:, -1])
        ct = infos.get("capture_time")
        dt = s.time_step_duration
        start = float(time_l[-1][-1]) + dt if time_l else 0.0
        times = np.asarray(ct if ct is not None else start + dt * np.arange(n), np.float64)
        time_l.append(times)
        ep_l.append(np.full(n, e, np.int32))
        act_l.append(np.asarray(ep.actions, np.float32))
        rew_l.append(np.asarray(ep.rewards, np.float64))
        term_l.append(np.asarray(ep.terminations, bool))
        trunc_l.append(np.asarray(ep.truncations, bool))
        cap_l.append(np.arange(n_caps + 1, n_caps + n, dtype=np.int32))
        n_caps += n
    meta = dict(meta)
    meta["format"] = FORMAT
    meta["frame_kind"] = "agent"
    meta["notes"] = f"imported from Minari dataset {dataset_id} (lossy: see minari_io)"
    rec = Recording(
        telemetry=np.concatenate(tel_l),
        frames=np.concatenate(frames_l),
        capture_time=np.maximum.accumulate(np.concatenate(time_l)),
        capture_episode=np.concatenate(ep_l),
        actions=np.concatenate(act_l),
        rewards=np.concatenate(rew_l),
        terminated=np.concatenate(term_l),
        truncated=np.concatenate(trunc_l),
        step_capture=np.concatenate(cap_l),
        meta=meta,
        lidar=np.concatenate(lidar_l) if lidar_l else None,
    )
    if out_path is not None:
        save_recording(rec, out_path)
    return rec
