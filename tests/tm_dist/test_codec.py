"""tm_dist.codec: exact round trips of real episodes, compactness, and refusal of bad payloads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import zstandard
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

import tm_gym  # noqa: F401  (registers the environments)
from tm_dist.codec import CodecError, EpisodeDecoder, EpisodeEncoder, Transitions
from tm_dist.wire import EpisodeChunk, encode_message

Obs = dict[str, NDArray[Any]]


@dataclass
class Recorded:
    """What an environment produced (the reference) and what the encoder made of it."""

    steps: list[tuple[Any, ...]] = field(default_factory=list)
    """(obs, action, reward, terminated, truncated, next_obs) of every step."""
    payloads: list[bytes] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)

    def step(self, enc: EpisodeEncoder, obs: Obs, *step: Any) -> bytes | None:
        """Record ``obs`` and one step (action, reward, terminated, truncated, next_obs),
        and encode it; keeps the payload, if any, and returns it."""
        self.steps.append((obs, *step))
        payload = enc.step(*step)
        if payload is not None:
            self.payloads.append(payload)
        return payload


def _make(**kwargs: Any) -> tuple[gym.Env[Any, Any], spaces.Dict, spaces.Box]:
    env = gym.make("TrackMania-Sim-v0", **kwargs)
    obs_space, act_space = env.observation_space, env.action_space
    assert isinstance(obs_space, spaces.Dict) and isinstance(act_space, spaces.Box)
    return env, obs_space, act_space


def _random_policy(rng: np.random.Generator) -> Any:
    return lambda env: rng.uniform(-1.0, 1.0, 3).astype(np.float32)


def _random_driving(rng: np.random.Generator) -> Any:
    """Random steering with the throttle open: the car moves through new scenery."""
    return lambda env: np.array([rng.uniform(0.3, 1.0), 0.0, rng.uniform(-1, 1)], np.float32)


def _expert(env: gym.Env[Any, Any]) -> NDArray[np.float32]:
    return np.asarray(env.unwrapped.expert_action(), dtype=np.float32)  # type: ignore[attr-defined]


def _drive(
    env: gym.Env[Any, Any], enc: EpisodeEncoder, policy: Any, seed: int, rec: Recorded
) -> None:
    """One episode through the encoder, recording the reference transitions."""
    obs, _ = env.reset(seed=seed)
    enc.reset(obs)
    while True:
        action = policy(env)
        nxt, reward, term, trunc, _ = env.step(action)
        rec.step(enc, obs, action, reward, term, trunc, nxt)
        obs = nxt
        if term or trunc:
            rec.ends.append("terminated" if term else "truncated")
            return


def _decode_all(dec: EpisodeDecoder, payloads: list[bytes]) -> list[Transitions]:
    return [dec.decode(p) for p in payloads]


def _same_bits(a: NDArray[Any], b: NDArray[Any]) -> bool:
    """Same dtype, shape and bytes (np.array_equal would take -0.0 for 0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_exact(rec: Recorded, chunks: list[Transitions]) -> None:
    assert sum(c.n_steps for c in chunks) == len(rec.steps)
    t = 0
    for c in chunks:
        assert c.reward.dtype == np.float64 and c.terminated.dtype == c.truncated.dtype == bool
        for i in range(c.n_steps):
            obs, action, reward, term, trunc, nxt = rec.steps[t]
            for k, v in obs.items():
                assert _same_bits(c.obs[k][i], v), (t, k)
                assert _same_bits(c.next_obs[k][i], nxt[k]), (t, k)
            assert _same_bits(c.action[i], action)
            assert c.reward[i] == float(reward)
            assert bool(c.terminated[i]) is term and bool(c.truncated[i]) is trunc
            t += 1


ENV_CASES = {
    "images": {"obs_type": "images"},
    "lidar": {"obs_type": "lidar"},
    "lidar_progress": {"obs_type": "lidar_progress"},
    "rgb": {"obs_type": "images", "grayscale": False},
}


@dataclass
class Episodes:
    space: spaces.Dict
    action_space: spaces.Box
    expert: Recorded
    random: Recorded
    mixed: Recorded


@pytest.fixture(scope="module", params=list(ENV_CASES))
def episodes(request: pytest.FixtureRequest) -> Episodes:
    """Per observation type: an expert lap to the finish, random driving, and a mix of
    terminated and truncated episodes encoded back to back by one encoder (chunks of 40)."""
    kwargs = ENV_CASES[request.param]
    env, obs_space, act_space = _make(**kwargs)
    short = gym.make("TrackMania-Sim-v0", ep_max_length=90, **kwargs)
    rng = np.random.default_rng(0)
    out = Episodes(obs_space, act_space, Recorded(), Recorded(), Recorded())
    _drive(env, EpisodeEncoder(obs_space, act_space), _expert, 0, out.expert)
    _drive(env, EpisodeEncoder(obs_space, act_space), _random_driving(rng), 1, out.random)
    enc = EpisodeEncoder(obs_space, act_space, chunk_steps=40)
    _drive(short, enc, _expert, 2, out.mixed)  # truncated at 90 steps
    _drive(env, enc, _random_policy(rng), 3, out.mixed)  # no progress: terminated
    _drive(short, enc, _random_driving(rng), 4, out.mixed)
    env.close()
    short.close()
    return out


def test_round_trip_is_exact_across_chunks_and_episode_ends(episodes: Episodes) -> None:
    rec = episodes.mixed
    assert {"terminated", "truncated"} <= set(rec.ends)
    assert len(rec.payloads) > len(rec.ends)  # some episodes span several chunks
    dec = EpisodeDecoder(episodes.space, episodes.action_space)
    chunks = _decode_all(dec, rec.payloads)
    _assert_exact(rec, chunks)
    # a chunk ends exactly where each episode ends
    done = [bool(c.terminated[-1] or c.truncated[-1]) for c in chunks]
    assert sum(done) == len(rec.ends)
    assert not any(bool(c.terminated[:-1].any() or c.truncated[:-1].any()) for c in chunks)


@pytest.mark.parametrize("who", ["expert", "random"])
def test_round_trip_of_an_expert_lap_and_random_driving(episodes: Episodes, who: str) -> None:
    rec: Recorded = getattr(episodes, who)
    if who == "expert":
        assert rec.ends == ["terminated"] and len(rec.steps) > 300  # reached the finish
    chunks = _decode_all(EpisodeDecoder(episodes.space, episodes.action_space), rec.payloads)
    _assert_exact(rec, chunks)


def _bytes_per_transition(rec: Recorded, dec: EpisodeDecoder) -> float:
    """Size on the wire (the whole EpisodeChunk message) per transition."""
    total = 0
    for i, p in enumerate(rec.payloads):
        msg = EpisodeChunk(
            worker="worker-01",
            episode=12,
            chunk=i,
            final=i == len(rec.payloads) - 1,
            test=False,
            weights_version=7,
            n_steps=dec.decode(p).n_steps,
            payload=p,
            stats={"return": 12.5, "lap_time": 39.997, "progress": 1.0, "finished": True},
        )
        total += len(encode_message(msg))
    return total / len(rec.steps)


@pytest.mark.parametrize("who", ["expert", "random"])
def test_wire_bytes_per_transition_meet_the_target(episodes: Episodes, who: str) -> None:
    rec: Recorded = getattr(episodes, who)
    per_step = _bytes_per_transition(rec, EpisodeDecoder(episodes.space, episodes.action_space))
    assert per_step <= 1500, f"{per_step:.0f} B per transition"
    if "lidar" in episodes.space.spaces:
        assert per_step <= 200, f"{per_step:.0f} B per LIDAR transition"


def _modes(payload: bytes, n_keys: int) -> NDArray[np.uint8]:
    """The per-step, per-key modes of a payload: 0 full, k shifted by k rows, 255 rebuilt."""
    fields = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(payload))
    return np.frombuffer(fields[4], np.uint8).reshape(-1, n_keys)


def _expected_modes(space: spaces.Dict) -> list[int]:
    def mode(key: str) -> int:
        if key == "actions":
            return 255
        if key in ("images", "lidar"):
            return 3 if space[key].shape[0] == 12 else 1  # one RGB frame / one gray frame
        return 0

    return [mode(k) for k in space.spaces]


def test_each_step_sends_only_what_the_rules_require(episodes: Episodes) -> None:
    """tm-gym follows the rules at every step: newest frame or scan only, no action buffer."""
    keys = list(episodes.space.spaces)
    expected = _expected_modes(episodes.space)
    for rec in (episodes.mixed, episodes.expert, episodes.random):
        for p in rec.payloads:
            modes = _modes(p, len(keys))
            assert (modes[0] == 0).all()  # each chunk opens with a full observation
            assert (modes[1:] == expected).all(), (keys, modes[1:3])


def test_actions_out_of_bounds_are_rebuilt_clipped_like_the_env() -> None:
    env, obs_space, act_space = _make(obs_type="lidar")
    enc = EpisodeEncoder(obs_space, act_space, chunk_steps=20)
    rng = np.random.default_rng(3)
    rec = Recorded()
    _drive(env, enc, lambda e: rng.uniform(-1.8, 1.8, 3).astype(np.float32), 6, rec)
    assert any(np.abs(step[1]).max() > 1 for step in rec.steps)
    chunks = _decode_all(EpisodeDecoder(obs_space, act_space), rec.payloads)
    _assert_exact(rec, chunks)
    assert (_modes(rec.payloads[0], len(obs_space.spaces))[1:] == _expected_modes(obs_space)).all()


def test_signed_zeros_and_nans_are_told_apart() -> None:
    """A stack equal to the shifted one but for a -0.0 or a NaN's bits is sent in full."""
    nan, odd_nan = np.float32(np.nan), np.frombuffer(b"\x01\x00\xc0\x7f", np.float32)[0]
    h0 = np.array([[0, 0, 0, 0], [nan, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    h1 = np.concatenate([h0[1:], [[nan, 1, 1, 1]]]).astype(np.float32)
    h1[0, 1] = -0.0  # was 0.0
    h2 = np.concatenate([h1[1:], np.ones((1, 4), np.float32)])
    h2[1, 0] = odd_nan  # another NaN
    h3 = np.concatenate([h2[1:], np.ones((1, 4), np.float32)])  # honest shift, NaNs kept
    a = np.array([-0.0, 0.5], np.float32)
    a1 = np.array([[0.0, 0.0], [-0.0, 0.5]], np.float32)  # rule followed, with a -0.0
    a2 = np.array([[-0.0, 0.5], [0.0, 0.5]], np.float32)  # +0.0 where the rule gives -0.0
    a3 = np.concatenate([a2[1:], a[None]])
    obs = [
        {"hist": h, "actions": x, "count": np.array(1), "pix": np.zeros((2, 2, 2), np.uint8)}
        for h, x in ((h0, np.zeros((2, 2), np.float32)), (h1, a1), (h2, a2), (h3, a3))
    ]
    enc = EpisodeEncoder(SMALL_SPACE, SMALL_ACTIONS, debug=True)
    enc.reset(obs[0])
    rec = Recorded()
    for t in range(3):
        rec.step(enc, obs[t], a, 0.0, False, t == 2, obs[t + 1])
    _assert_exact(rec, _decode_all(EpisodeDecoder(SMALL_SPACE, SMALL_ACTIONS), rec.payloads))
    modes, keys = _modes(rec.payloads[0], 4)[1:], list(SMALL_SPACE.spaces)
    assert modes[:, keys.index("hist")].tolist() == [0, 0, 1]
    assert modes[:, keys.index("actions")].tolist() == [255, 0, 255]


def test_flush_mid_episode_keeps_the_rebuild_exact() -> None:
    env, obs_space, act_space = _make(obs_type="lidar")
    enc = EpisodeEncoder(obs_space, act_space, chunk_steps=1000)
    dec = EpisodeDecoder(obs_space, act_space)
    assert enc.flush() is None
    rec = Recorded()
    obs, _ = env.reset(seed=5)
    enc.reset(obs)
    for t in range(25):
        a = np.array([1.0, 0.0, 0.1], np.float32)
        nxt, r, term, trunc, _ = env.step(a)
        assert rec.step(enc, obs, a, r, term, trunc, nxt) is None
        obs = nxt
        if t in (6, 7, 20):
            flushed = enc.flush()
            assert flushed is not None
            rec.payloads.append(flushed)
    assert enc.pending_steps == 4
    last = enc.flush()
    assert last is not None and enc.flush() is None
    rec.payloads.append(last)
    _assert_exact(rec, _decode_all(dec, rec.payloads))


# -- any Dict env: steps that break the rules are sent in full -----------------------------
SMALL_SPACE = spaces.Dict(
    {
        "hist": spaces.Box(-5.0, 5.0, shape=(3, 4), dtype=np.float32),
        "actions": spaces.Box(-1.0, 1.0, shape=(2, 2), dtype=np.float32),
        "count": spaces.Box(0, 9, shape=(), dtype=np.int64),
        "pix": spaces.Box(0, 255, shape=(2, 2, 2), dtype=np.uint8),
    }
)
SMALL_ACTIONS = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
_floats = st.floats(-4.0, 4.0, width=32, allow_subnormal=False) | st.sampled_from([0.0, -0.0])


@st.composite
def _small_episode(draw: st.DrawFn) -> list[tuple[NDArray[np.float32] | None, Obs]]:
    """(action, observation) pairs (the first without action) that follow the history/action
    rules at some steps and break them at others; actions out of bounds get clipped in the
    buffer, as tm-gym does."""

    def arr(*shape: int) -> NDArray[np.float32]:
        n = int(np.prod(shape))
        return np.array(draw(st.lists(_floats, min_size=n, max_size=n)), np.float32).reshape(shape)

    def pixels(rows: int) -> NDArray[np.uint8]:
        raw = draw(st.binary(min_size=4 * rows, max_size=4 * rows))
        return np.frombuffer(raw, np.uint8).reshape(rows, 2, 2).copy()

    def obs(hist: Any, actions: Any, pix: Any) -> Obs:
        count = np.array(draw(st.integers(0, 9)))
        return {"hist": hist, "actions": actions, "count": count, "pix": pix}

    out: list[tuple[Any, Obs]] = [(None, obs(arr(3, 4), arr(2, 2), pixels(2)))]
    for _ in range(draw(st.integers(1, 12))):
        a = np.array(draw(st.lists(st.floats(-2, 2, width=32), min_size=2, max_size=2)), np.float32)
        p = out[-1][1]
        if draw(st.booleans()):
            out.append((a, obs(arr(3, 4), arr(2, 2), pixels(2))))
        else:
            hist = np.concatenate([p["hist"][1:], arr(1, 4)])
            actions = np.concatenate([p["actions"][1:], np.clip(a, -1, 1)[None]])
            out.append((a, obs(hist, actions, np.concatenate([p["pix"][1:], pixels(1)]))))
    return out


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(episode=_small_episode(), chunk=st.integers(1, 5), debug=st.booleans())
def test_any_dict_env_rebuilds_exactly(
    episode: list[tuple[NDArray[np.float32], Obs]], chunk: int, debug: bool
) -> None:
    enc = EpisodeEncoder(SMALL_SPACE, SMALL_ACTIONS, chunk_steps=chunk, debug=debug)
    enc.reset(episode[0][1])
    rec = Recorded()
    for t in range(1, len(episode)):
        action, nxt = episode[t]
        rec.step(enc, episode[t - 1][1], action, t - 0.5, False, t == len(episode) - 1, nxt)
    _assert_exact(rec, _decode_all(EpisodeDecoder(SMALL_SPACE, SMALL_ACTIONS), rec.payloads))


# -- misuse and bad payloads ---------------------------------------------------------------
LidarChunk = tuple[spaces.Dict, spaces.Box, Recorded, bytes]


@pytest.fixture(scope="module")
def lidar_chunk() -> LidarChunk:
    """One 30-step LIDAR chunk (debug digests on) and its reference."""
    env, obs_space, act_space = _make(obs_type="lidar")
    enc = EpisodeEncoder(obs_space, act_space, chunk_steps=30, debug=True)
    rec = Recorded()
    _drive(env, enc, _expert, 0, rec)
    return obs_space, act_space, rec, rec.payloads[0]


def _repack(payload: bytes, edit: Any) -> bytes:
    """Decompress, let ``edit`` change the packed fields, compress again (a forged payload)."""
    fields = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(payload))
    edit(fields)
    return zstandard.ZstdCompressor().compress(msgpack.packb(fields, use_bin_type=True))


def _flip_images_or_scan_byte(fields: list[Any]) -> None:
    cols = fields[5]
    i = max(range(len(cols)), key=lambda j: len(cols[j]))  # the LIDAR column
    col = bytearray(cols[i])
    col[len(col) - 3] ^= 0x40
    cols[i] = bytes(col)


def test_debug_digests_catch_a_tampered_payload(
    lidar_chunk: LidarChunk,
) -> None:
    obs_space, act_space, _, payload = lidar_chunk
    dec = EpisodeDecoder(obs_space, act_space)
    assert dec.decode(payload).n_steps == 30
    forged = _repack(payload, _flip_images_or_scan_byte)
    with pytest.raises(CodecError, match=r"observation \d+ of the chunk does not match"):
        dec.decode(forged)

    def drop_digests(fields: list[Any]) -> None:
        _flip_images_or_scan_byte(fields)
        fields[3] = False
        fields[10] = b""

    # without digests the same forgery goes unnoticed: that is what debug mode is for
    dec.decode(_repack(payload, drop_digests))


def _edit(index: int, value: Any) -> Any:
    def edit(fields: list[Any]) -> None:
        fields[index] = value

    return edit


BAD_EDITS = {
    "version": (_edit(0, 99), "format version 99"),
    "fingerprint": (_edit(1, b"\0" * 8), "other observation/action spaces"),
    "too many steps": (_edit(2, 10**6), "steps"),
    "steps vs data": (_edit(2, 29), "expected"),
    "modes": (_edit(4, b"\0" * 3 + b"\x07" * 90), "invalid mode 7"),
    "columns": (_edit(5, [b"x"]), "key columns"),
    "rewards": (_edit(7, b"short"), "rewards"),
    "flags": (_edit(8, b"\x02" * 30), "0 or 1"),
    "layout": (lambda f: f.pop(), "wrong layout"),
}


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_malformed_chunks_raise_codec_error(lidar_chunk: LidarChunk, case: str) -> None:
    obs_space, act_space, _, payload = lidar_chunk
    edit, message = BAD_EDITS[case]
    with pytest.raises(CodecError, match=message):
        EpisodeDecoder(obs_space, act_space, max_steps=100).decode(_repack(payload, edit))


def test_corrupt_truncated_and_foreign_payloads_raise_codec_error(
    lidar_chunk: LidarChunk,
) -> None:
    obs_space, act_space, _, payload = lidar_chunk
    dec = EpisodeDecoder(obs_space, act_space)
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x01
    bad = [b"", payload[:10], payload[:-1], payload + b"\0", bytes(flipped), b"not zstd at all"]
    for data in bad:
        with pytest.raises(CodecError):
            dec.decode(data)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x90")
    with pytest.raises(CodecError, match="unknown"):
        dec.decode(no_size)
    with pytest.raises(CodecError, match="expected payload bytes"):
        dec.decode("text")  # type: ignore[arg-type]
    images = gym.make("TrackMania-Sim-v0", obs_type="images")
    other = EpisodeDecoder(images.observation_space, images.action_space)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="other observation/action spaces"):
        other.decode(payload)


def test_a_zstd_bomb_is_refused_before_decompression(
    lidar_chunk: LidarChunk,
) -> None:
    obs_space, act_space, _, _ = lidar_chunk
    dec = EpisodeDecoder(obs_space, act_space, max_steps=100)
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(64 * 1024 * 1024))
    assert len(bomb) < 10_000
    with pytest.raises(CodecError, match="would decompress to 67108864 bytes"):
        dec.decode(bomb)


@settings(max_examples=150)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_ever_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        EpisodeDecoder(SMALL_SPACE, SMALL_ACTIONS).decode(data)


@settings(max_examples=150)
@given(
    fields=st.lists(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40),
        max_size=12,
    )
)
def test_random_packed_chunks_only_ever_raise_codec_error(fields: list[Any]) -> None:
    data = zstandard.ZstdCompressor().compress(msgpack.packb(fields, use_bin_type=True))
    with pytest.raises(CodecError):
        EpisodeDecoder(SMALL_SPACE, SMALL_ACTIONS).decode(data)


def test_misuse_is_reported_clearly(
    lidar_chunk: LidarChunk,
) -> None:
    obs_space, act_space, rec, _ = lidar_chunk
    obs, nxt = rec.steps[0][0], rec.steps[0][5]
    enc = EpisodeEncoder(obs_space, act_space)
    a = np.zeros(3, np.float32)
    with pytest.raises(CodecError, match="before reset"):
        enc.step(a, 0.0, False, False, nxt)
    enc.reset(obs)
    with pytest.raises(CodecError, match=r"obs\['lidar'\] has shape \(19,\)"):
        enc.step(a, 0.0, False, False, {**nxt, "lidar": nxt["lidar"][0]})
    with pytest.raises(CodecError, match="keys"):
        enc.step(a, 0.0, False, False, {"speed": nxt["speed"]})
    with pytest.raises(CodecError, match=r"action has shape \(2,\)"):
        enc.step(a[:2], 0.0, False, False, nxt)
    enc.step(a, 0.0, False, False, nxt)
    with pytest.raises(CodecError, match="1 steps of the previous episode are pending"):
        enc.reset(obs)
    with pytest.raises(CodecError, match="chunk_steps=0"):
        EpisodeEncoder(obs_space, act_space, chunk_steps=0)
    with pytest.raises(CodecError, match="level=99"):
        EpisodeEncoder(obs_space, act_space, level=99)
    with pytest.raises(CodecError, match="Discrete"):
        EpisodeEncoder(spaces.Dict({"d": spaces.Discrete(3)}), act_space)
