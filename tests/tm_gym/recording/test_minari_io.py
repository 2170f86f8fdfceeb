"""Minari export/import: observations identical to the environment's, and back again."""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from tm_gym.envs.trackmania import TrackManiaEnv
from tm_gym.error import DependencyNotInstalled, RecordingFormatError
from tm_gym.recording.format import FORMAT, Recording, load_recording
from tm_gym.recording.minari_io import episode_arrays, export_minari, import_minari

minari = pytest.importorskip("minari")

Obs = dict[str, NDArray[Any]]


def _telemetry(info: dict[str, Any]) -> NDArray[np.float32]:
    row = np.full(19, np.nan, np.float32)
    row[:11] = 0.0
    row[0] = info["speed_kmh"]
    row[2:5] = info["position"]
    row[8] = float(info["finished"])
    row[9] = info["gear"]
    row[10] = info["rpm"]
    row[11] = info["race_time"]
    row[12] = info["checkpoint"]
    return row


def record_by_hand(
    env: TrackManiaEnv, episodes: list[int], seed: int = 0
) -> tuple[Recording, list[tuple[list[Obs], list[NDArray[np.float32]], list[float]]]]:
    """Drive ``env`` (random actions) and build the recording a recorder would write.

    Returns the recording and, per episode, the observations, actions and rewards the
    environment itself produced.
    """
    rng = np.random.default_rng(seed)
    tel: list[NDArray[np.float32]] = []
    frames: list[NDArray[np.uint8]] = []
    lidar: list[NDArray[np.float32]] = []
    ep_idx: list[int] = []
    times: list[float] = []
    acts: list[NDArray[np.float32]] = []
    rews: list[float] = []
    terms: list[bool] = []
    truncs: list[bool] = []
    caps: list[int] = []
    truth = []
    k = 1 if env.settings.grayscale else 3

    def capture(obs: Obs, info: dict[str, Any], e: int) -> None:
        tel.append(_telemetry(info))
        frames.append(obs["images"][-k:] if "images" in obs else np.zeros((1, 8, 8), np.uint8))
        if "lidar" in obs:
            lidar.append(obs["lidar"][-1])
        ep_idx.append(e)
        times.append(len(times) * 0.05)

    for e, n_steps in enumerate(episodes):
        obs, info = env.reset(seed=seed + e)
        capture(obs, info, e)
        ep_obs, ep_act, ep_rew = [obs], [], []
        for _ in range(n_steps):
            a = rng.uniform(-1, 1, 3).astype(np.float32)
            a[0] = abs(a[0])
            obs, r, term, trunc, info = env.step(a)
            capture(obs, info, e)
            acts.append(a)
            rews.append(float(r))
            terms.append(term)
            truncs.append(trunc)
            caps.append(len(tel) - 1)
            ep_obs.append(obs)
            ep_act.append(a)
            ep_rew.append(float(r))
            if term or trunc:
                break
        truth.append((ep_obs, ep_act, ep_rew))
    rec = Recording(
        telemetry=np.stack(tel),
        frames=np.stack(frames),
        capture_time=np.asarray(times, np.float64),
        capture_episode=np.asarray(ep_idx, np.int32),
        actions=np.asarray(acts, np.float32),
        rewards=np.asarray(rews, np.float64),
        terminated=np.asarray(terms, bool),
        truncated=np.asarray(truncs, bool),
        step_capture=np.asarray(caps, np.int32),
        meta={
            "format": FORMAT,
            "frame_kind": "agent",
            "backend": "sim",
            "track": "default",
            "env_id": "TrackMania-Sim-v0",
            "settings": dataclasses.asdict(env.settings),
        },
        lidar=np.stack(lidar) if lidar else None,
    )
    return rec, truth


@pytest.fixture(scope="module")
def images_run() -> tuple[Recording, list[tuple[list[Obs], list[Any], list[float]]]]:
    env = TrackManiaEnv(img_size=32, ep_max_length=30)
    try:
        return record_by_hand(env, [30, 12])
    finally:
        env.close()


def _same_obs(got: dict[str, NDArray[Any]], want: list[Obs]) -> None:
    assert set(got) == set(want[0])
    for key in want[0]:
        expected = np.stack([o[key] for o in want])
        assert got[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)


def test_rebuilt_observations_are_the_envs(images_run: Any) -> None:
    rec, truth = images_run
    eps = episode_arrays(rec)
    assert len(eps) == 2
    for ep, (obs, acts, rews) in zip(eps, truth, strict=True):
        _same_obs(ep.observations, obs)
        np.testing.assert_array_equal(ep.actions, np.stack(acts))
        np.testing.assert_array_equal(ep.rewards, rews)
        assert len(ep.infos["race_time"]) == len(obs)


def test_export_loads_with_minari_and_matches_the_env(images_run: Any, tmp_path: Path) -> None:
    rec, truth = images_run
    before = os.environ.get("MINARI_DATASETS_PATH")
    ds_id = export_minari(rec, "tmgym/sim/random-v0", data_path=tmp_path, author="tests")
    assert os.environ.get("MINARI_DATASETS_PATH") == before  # restored
    assert (tmp_path / "tmgym" / "sim" / "random-v0").is_dir()
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        ds = minari.load_dataset(ds_id)
    finally:
        if before is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = before
    assert ds.total_episodes == 2
    assert ds.total_steps == rec.num_steps
    for ep, (obs, acts, rews) in zip(ds.iterate_episodes(), truth, strict=True):
        _same_obs(ep.observations, obs)
        np.testing.assert_array_equal(ep.actions, np.stack(acts))
        np.testing.assert_array_equal(ep.rewards, rews)
        assert ep.truncations[-1] or ep.terminations[-1] or len(ep.rewards) == 12
        want_rt = [round(float(t), 3) for t in ep.infos["race_time"]]
        assert want_rt == sorted(want_rt)
    assert ds.observation_space["images"].shape == (4, 32, 32)
    # the simulator that made the data comes back with the dataset: same track, same settings,
    # and the same first observation for the same seed
    env = ds.recover_environment()
    try:
        assert env.spec is not None and env.spec.kwargs["track"] == "default"
        assert env.observation_space == ds.observation_space
        obs, _ = env.reset(seed=0)
        _same_obs({k: v[None] for k, v in obs.items()}, [truth[0][0][0]])
    finally:
        env.close()


def test_import_gives_back_the_recording(images_run: Any, tmp_path: Path) -> None:
    rec, truth = images_run
    export_minari(rec, "roundtrip-v0", data_path=tmp_path)
    out = tmp_path / "back.tmrec"
    back = import_minari("roundtrip-v0", out, data_path=tmp_path)
    again = load_recording(out)
    for r in (back, again):
        np.testing.assert_array_equal(r.frames, rec.frames)
        np.testing.assert_array_equal(r.actions, rec.actions)
        np.testing.assert_array_equal(r.rewards, rec.rewards)
        np.testing.assert_array_equal(r.terminated, rec.terminated)
        np.testing.assert_array_equal(r.truncated, rec.truncated)
        np.testing.assert_array_equal(r.step_capture, rec.step_capture)
        np.testing.assert_array_equal(r.capture_episode, rec.capture_episode)
        np.testing.assert_array_equal(r.capture_time, rec.capture_time)
        # speed, position, finished, gear, rpm, race time, checkpoint survive
        cols = [0, 2, 3, 4, 8, 9, 10, 11, 12]
        np.testing.assert_array_equal(r.telemetry[:, cols], rec.telemetry[:, cols])
        assert r.meta["settings"] == rec.meta["settings"]
    # and the imported recording exports to the same observations
    for ep, (obs, _, _) in zip(episode_arrays(back), truth, strict=True):
        _same_obs(ep.observations, obs)


def test_lidar_recording_round_trips(tmp_path: Path) -> None:
    env = TrackManiaEnv(obs_type="lidar", ep_max_length=15)
    try:
        rec, truth = record_by_hand(env, [15], seed=3)
    finally:
        env.close()
    export_minari(rec, "lidar-v0", data_path=tmp_path)
    back = import_minari("lidar-v0", data_path=tmp_path)
    assert back.lidar is not None and rec.lidar is not None
    np.testing.assert_array_equal(back.lidar, rec.lidar)
    (ep,) = episode_arrays(back)
    _same_obs(ep.observations, truth[0][0])


def test_existing_dataset_is_not_overwritten(images_run: Any, tmp_path: Path) -> None:
    rec, _ = images_run
    export_minari(rec, "twice-v0", data_path=tmp_path)
    with pytest.raises(ValueError, match="already exists"):
        export_minari(rec, "twice-v0", data_path=tmp_path)


def test_import_refuses_foreign_datasets(tmp_path: Path) -> None:
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer  # type: ignore[import-untyped,import-not-found,unused-ignore]

    buf = EpisodeBuffer(
        observations=np.zeros((3, 2), np.float32),
        actions=np.zeros((2, 1), np.float32),
        rewards=[0.0, 0.0],
        terminations=[False, True],
        truncations=[False, False],
    )
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        with pytest.warns(UserWarning):
            minari.create_dataset_from_buffers(
                "foreign-v0",
                [buf],
                observation_space=spaces.Box(-1, 1, (2,), np.float32),
                action_space=spaces.Box(-1, 1, (1,), np.float32),
            )
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    with pytest.raises(RecordingFormatError, match="export_minari"):
        import_minari("foreign-v0", data_path=tmp_path)


def test_missing_minari_names_the_extra(
    images_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_minari(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "minari" or name.startswith("minari."):
            raise ImportError("No module named 'minari'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minari)
    rec, _ = images_run
    with pytest.raises(DependencyNotInstalled, match=r"pip install 'tm-gym\[minari\]'"):
        export_minari(rec, "nope-v0", data_path=tmp_path)
    with pytest.raises(DependencyNotInstalled, match=r"pip install 'tm-gym\[minari\]'"):
        import_minari("nope-v0", data_path=tmp_path)


def test_progress_observations_are_refused(images_run: Any) -> None:
    rec, _ = images_run
    with pytest.raises(ValueError, match="lidar_progress"):
        episode_arrays(rec, obs_type="lidar_progress")


@pytest.mark.parametrize(
    ("kwargs", "full_frames"),
    [({"img_size": 32}, False), ({"img_size": 32}, True), ({"obs_type": "lidar"}, False)],
)
def test_recorder_output_exports_the_envs_observations(
    kwargs: dict[str, Any], full_frames: bool, tmp_path: Path
) -> None:
    recorder = pytest.importorskip("tm_gym.recording.recorder")

    class Keep:
        """A policy (random, gas on) that remembers the observations it was shown."""

        def __init__(self) -> None:
            self.rng = np.random.default_rng(1)
            self.seen: list[Obs] = []

        def __call__(self, obs: Obs, env: Any) -> NDArray[np.float32]:
            self.seen.append({k: v.copy() for k, v in obs.items()})
            a = self.rng.uniform(-1, 1, 3).astype(np.float32)
            a[0] = abs(a[0])
            return a

    policy = Keep()
    env = TrackManiaEnv(ep_max_length=20, **kwargs)
    path = recorder.record_episodes(
        env, tmp_path / "run.tmrec", policy, episodes=1, max_steps=20, full_frames=full_frames
    )
    ds_id = export_minari(path, "recorded-v0", data_path=tmp_path / "minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path / "minari")
    try:
        (ep,) = list(minari.load_dataset(ds_id).iterate_episodes())
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    # the policy saw every observation but the last (the final step's)
    n = len(policy.seen)
    assert n == len(ep.rewards)
    for key in policy.seen[0]:
        np.testing.assert_array_equal(
            ep.observations[key][:n], np.stack([o[key] for o in policy.seen]), err_msg=key
        )


def test_garbled_tm_gym_metadata_is_a_format_error(tmp_path: Path) -> None:
    env = TrackManiaEnv(obs_type="lidar", ep_max_length=5)
    try:
        rec, _ = record_by_hand(env, [5], seed=1)
    finally:
        env.close()
    export_minari(rec, "garbled-v0", data_path=tmp_path)
    (meta_file,) = tmp_path.rglob("metadata.json")
    meta = json.loads(meta_file.read_text())
    key = next(k for k, v in meta.items() if isinstance(v, str) and '"settings"' in v)
    meta[key] = "[" * 100_000  # nested past any recursion limit, and not what export writes
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(RecordingFormatError, match=r"garbled-v0.*export the recording again"):
        import_minari("garbled-v0", data_path=tmp_path)
