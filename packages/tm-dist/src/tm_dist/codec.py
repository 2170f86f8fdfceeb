"""Episode codec: compact, exact, self-contained chunks of transitions for the wire.

A worker feeds :class:`EpisodeEncoder` with what its environment returns; every
``chunk_steps`` steps, and at the end of each episode, the encoder hands back a payload (bytes)
that :class:`EpisodeDecoder` turns into batched :class:`Transitions` on the trainer, equal
bit for bit (same values, same dtypes) to what the environment produced.

What travels per step, for a ``Dict`` observation of ``Box`` spaces:

* history keys (any key of two or more dimensions whose axis 0 is time, oldest first, such as
  tm-gym's ``images`` (H, S, S) and ``lidar`` (H, 19)): only the newest ``k`` rows when the new
  stack is the previous one shifted by ``k`` (1 for grayscale, 3 for RGB frames);
* ``actions`` (the last A actions, oldest first, as tm-gym and rtgym keep them): nothing when it
  is the previous buffer shifted by one with the action just taken appended (clipped to the
  action space, in the buffer's dtype), since the decoder rebuilds it;
* every other key (speed, gear, rpm, progress) in full;
* any key, at any step, that does not follow its rule is sent in full for that step, so the
  rebuild is exact for any ``Dict`` environment; only the size suffers.

Each chunk opens with its first observation in full, so a lost chunk never spoils another. The
packed chunk (msgpack, one column per key, multi-byte values split into byte planes) is
compressed with zstd (frame checksum on). The decoder refuses payloads that would decompress to
more than a chunk of ``max_steps`` steps can take (zstd bombs) and anything malformed, with
:class:`CodecError`. In debug mode the encoder adds an 8-byte BLAKE2b digest of every
observation and the decoder checks each one.

Example:
    >>> import gymnasium as gym, tm_gym
    >>> env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
    >>> enc = EpisodeEncoder(env.observation_space, env.action_space)
    >>> dec = EpisodeDecoder(env.observation_space, env.action_space)
    >>> obs, _ = env.reset(seed=0)
    >>> enc.reset(obs)
    >>> a = env.action_space.sample()
    >>> obs, r, term, trunc, _ = env.step(a)
    >>> enc.step(a, r, term, trunc, obs) is None  # the chunk is not full yet
    True
    >>> dec.decode(enc.flush()).reward.shape
    (1,)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final, NamedTuple, SupportsFloat

import msgpack
import numpy as np
import zstandard
from gymnasium import spaces
from numpy.typing import NDArray

from tm_dist.errors import TMDistError

__all__ = ["FORMAT_VERSION", "CodecError", "EpisodeDecoder", "EpisodeEncoder", "Transitions"]

FORMAT_VERSION: Final = 1
"""Version of the chunk layout inside the zstd frame."""

_FULL: Final = 0  # mode: the whole value is sent
_DERIVED: Final = 255  # mode: the action buffer is rebuilt from the previous one and the action
_SHIFTS: Final = (1, 3)  # history shifts tried: one grayscale frame or scan, one RGB frame
_DIGEST: Final = 8
_FIELDS: Final = 11  # entries of the packed chunk


class CodecError(TMDistError, ValueError):
    """An episode payload that cannot be built or decoded (says what was wrong)."""


class Transitions(NamedTuple):
    """T transitions in batched arrays, in the spaces' dtypes.

    ``obs`` and ``next_obs`` are views of one (T + 1, ...) array per key: ``next_obs[k][t]``
    is ``obs[k][t + 1]``. Copy before writing into them.
    """

    obs: dict[str, NDArray[Any]]
    action: NDArray[Any]
    reward: NDArray[np.float64]
    terminated: NDArray[np.bool_]
    truncated: NDArray[np.bool_]
    next_obs: dict[str, NDArray[Any]]

    @property
    def n_steps(self) -> int:
        return int(self.reward.shape[0])


class _Layout:
    """What encoder and decoder agree on, derived from the spaces alone."""

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Box) -> None:
        if not isinstance(observation_space, spaces.Dict):
            raise CodecError(
                f"observation_space is a {type(observation_space).__name__}; expected a "
                "gymnasium.spaces.Dict (tm-gym environments have one)"
            )
        if not isinstance(action_space, spaces.Box):
            raise CodecError(
                f"action_space is a {type(action_space).__name__}; expected a gymnasium.spaces.Box"
            )
        self.keys: list[str] = list(observation_space.spaces)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype[Any]] = {}
        self.rules: dict[str, str] = {}
        for key, space in observation_space.spaces.items():
            if not isinstance(space, spaces.Box):
                raise CodecError(
                    f"observation_space[{key!r}] is a {type(space).__name__}; the codec supports "
                    "Box sub-spaces only"
                )
            shape = tuple(int(n) for n in space.shape)
            self.shapes[key] = shape
            self.dtypes[key] = np.dtype(space.dtype)
            if key == "actions" and len(shape) >= 1 and shape[1:] == action_space.shape:
                self.rules[key] = "actions"
            elif len(shape) >= 2 and shape[0] >= 2:
                self.rules[key] = "history"
            else:
                self.rules[key] = "full"
        self.action_shape = tuple(int(n) for n in action_space.shape)
        self.action_dtype = np.dtype(action_space.dtype)
        self.action_low = np.asarray(action_space.low, dtype=self.action_dtype)
        self.action_high = np.asarray(action_space.high, dtype=self.action_dtype)
        self.obs_nbytes = sum(_size(self.shapes[k]) * self.dtypes[k].itemsize for k in self.keys)
        self.action_nbytes = _size(self.action_shape) * self.action_dtype.itemsize
        bounds = (self.action_low.tobytes(), self.action_high.tobytes())
        keys = [(k, self.shapes[k], self.dtypes[k].str, self.rules[k]) for k in self.keys]
        spec = repr((keys, self.action_shape, self.action_dtype.str, bounds))
        self.fingerprint = hashlib.blake2b(spec.encode(), digest_size=8).digest()

    def derive_action_row(self, action: NDArray[Any], key: str) -> NDArray[Any]:
        """The row an env appends to its action buffer: the action, clipped, in its dtype."""
        return np.clip(action, self.action_low, self.action_high).astype(self.dtypes[key])

    def digest(self, obs: Mapping[str, NDArray[Any]]) -> bytes:
        h = hashlib.blake2b(digest_size=_DIGEST)
        for k in self.keys:
            h.update(np.ascontiguousarray(obs[k]).tobytes())
        return h.digest()


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _shuffle(data: bytes, itemsize: int) -> bytes:
    """Byte planes: all first bytes, then all second bytes, ... (compresses floats better)."""
    if itemsize == 1 or not data:
        return data
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize == 1 or not data:
        return data
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


def _same(a: NDArray[Any], b: NDArray[Any]) -> bool:
    """Bitwise equality (tells -0.0 from 0.0, equal NaNs are equal)."""
    return a.shape == b.shape and a.tobytes() == b.tobytes()


class EpisodeEncoder:
    """Turns an environment's steps into compressed chunk payloads (see the module doc).

    Call :meth:`reset` with the first observation of every episode, then :meth:`step` with
    what each ``env.step`` returned. A payload comes back every ``chunk_steps`` steps and at the
    episode's end (terminated or truncated); :meth:`flush` returns the steps still pending.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        *,
        chunk_steps: int = 100,
        level: int = 3,
        debug: bool = False,
    ) -> None:
        _check_int_arg("chunk_steps", chunk_steps, 1, 10**7, "an int >= 1")
        _check_int_arg("level", level, 1, 22, "a zstd level, an int in [1, 22]")
        self.layout = _Layout(observation_space, action_space)
        self.chunk_steps = chunk_steps
        self.debug = bool(debug)
        self._zstd = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
        self._prev: dict[str, NDArray[Any]] | None = None
        self._shift: dict[str, int] = {k: _SHIFTS[0] for k in self.layout.keys}
        self._clear()

    @property
    def pending_steps(self) -> int:
        """Steps recorded and not yet returned in a payload."""
        return len(self._rewards)

    def _clear(self) -> None:
        self._modes = bytearray()
        self._cols: dict[str, list[bytes]] = {k: [] for k in self.layout.keys}
        self._actions: list[bytes] = []
        self._rewards: list[float] = []
        self._term = bytearray()
        self._trunc = bytearray()
        self._digests: list[bytes] = []

    def _check_obs(self, obs: Any, where: str) -> dict[str, NDArray[Any]]:
        lay = self.layout
        if not isinstance(obs, Mapping):
            raise CodecError(f"{where}: expected a dict observation, got {type(obs).__name__}")
        if set(obs) != set(lay.keys):
            raise CodecError(
                f"{where}: observation has keys {sorted(map(str, obs))}; the observation space "
                f"has {sorted(lay.keys)}"
            )
        out: dict[str, NDArray[Any]] = {}
        for k in lay.keys:
            v = np.asarray(obs[k])
            if v.shape != lay.shapes[k] or v.dtype != lay.dtypes[k]:
                raise CodecError(
                    f"{where}: obs[{k!r}] has shape {v.shape} and dtype {v.dtype}; expected "
                    f"{lay.shapes[k]} {lay.dtypes[k]} as in the observation space"
                )
            out[k] = np.array(v, copy=True, order="C")
        return out

    def _start(self, obs: dict[str, NDArray[Any]]) -> None:
        """Open a chunk with ``obs`` in full."""
        self._clear()
        for k in self.layout.keys:
            self._modes.append(_FULL)
            self._cols[k].append(obs[k].tobytes())
        if self.debug:
            self._digests.append(self.layout.digest(obs))
        self._prev = obs

    def reset(self, obs: Mapping[str, Any]) -> None:
        """Begin an episode with its first observation."""
        if self.pending_steps:
            raise CodecError(
                f"reset() while {self.pending_steps} steps of the previous episode are pending; "
                "call flush() first to get them (or let the episode end with terminated or "
                "truncated)"
            )
        self._start(self._check_obs(obs, "reset"))

    def step(
        self,
        action: Any,
        reward: SupportsFloat,
        terminated: bool,
        truncated: bool,
        next_obs: Mapping[str, Any],
    ) -> bytes | None:
        """Record one transition; returns a payload when a chunk is complete, else None."""
        prev = self._prev
        if prev is None:
            raise CodecError("step() before reset() or after the episode's end; call reset(obs)")
        lay = self.layout
        a = np.asarray(action)
        if a.shape != lay.action_shape or a.dtype.kind not in "biuf":
            raise CodecError(
                f"action has shape {a.shape} and dtype {a.dtype}; expected numbers of shape "
                f"{lay.action_shape} (the action space)"
            )
        a = a.astype(lay.action_dtype)
        try:
            r = float(reward)
        except (TypeError, ValueError):
            raise CodecError(f"reward={reward!r}: expected a real number") from None
        obs = self._check_obs(next_obs, f"step {self.pending_steps}")
        for k in lay.keys:
            mode, data = self._pack_value(k, prev[k], obs[k], a)
            self._modes.append(mode)
            if data:
                self._cols[k].append(data)
        self._actions.append(a.tobytes())
        self._rewards.append(r)
        self._term.append(bool(terminated))
        self._trunc.append(bool(truncated))
        if self.debug:
            self._digests.append(lay.digest(obs))
        if terminated or truncated:
            payload = self._finish()
            self._clear()
            self._prev = None
            return payload
        if self.pending_steps >= self.chunk_steps:
            payload = self._finish()
            self._start(obs)
            return payload
        self._prev = obs
        return None

    def _pack_value(
        self, key: str, old: NDArray[Any], new: NDArray[Any], action: NDArray[Any]
    ) -> tuple[int, bytes]:
        rule = self.layout.rules[key]
        if rule == "actions":
            row = self.layout.derive_action_row(action, key)
            if _same(new[:-1], old[1:]) and _same(new[-1], row):
                return _DERIVED, b""
        elif rule == "history":
            last = self._shift[key]
            for k in (last, *(s for s in _SHIFTS if s != last)):
                if k < new.shape[0] and _same(new[:-k], old[k:]):
                    self._shift[key] = k
                    return k, new[-k:].tobytes()
        return _FULL, new.tobytes()

    def flush(self) -> bytes | None:
        """The pending steps as a payload (None if there are none); the episode goes on."""
        if not self.pending_steps:
            return None
        assert self._prev is not None
        payload = self._finish()
        self._start(self._prev)
        return payload

    def _finish(self) -> bytes:
        lay = self.layout
        cols = [_shuffle(b"".join(self._cols[k]), lay.dtypes[k].itemsize) for k in lay.keys]
        packed = msgpack.packb(
            [
                FORMAT_VERSION,
                lay.fingerprint,
                self.pending_steps,
                self.debug,
                bytes(self._modes),
                cols,
                _shuffle(b"".join(self._actions), lay.action_dtype.itemsize),
                _shuffle(np.asarray(self._rewards, dtype=np.float64).tobytes(), 8),
                bytes(self._term),
                bytes(self._trunc),
                b"".join(self._digests),
            ],
            use_bin_type=True,
        )
        return bytes(self._zstd.compress(packed))


class EpisodeDecoder:
    """Rebuilds :class:`Transitions` from :class:`EpisodeEncoder` payloads.

    ``max_steps`` bounds the steps of one chunk, and with it how large a payload may
    decompress (a zstd bomb is refused before it is expanded).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        *,
        max_steps: int = 1000,
    ) -> None:
        _check_int_arg("max_steps", max_steps, 1, 10**7, "an int >= 1")
        self.layout = lay = _Layout(observation_space, action_space)
        self.max_steps = max_steps
        per_step = lay.obs_nbytes + len(lay.keys) + _DIGEST + lay.action_nbytes + 10
        self.max_decompressed = (max_steps + 1) * per_step + 4096
        self._zstd = zstandard.ZstdDecompressor()

    def _decompress(self, payload: bytes) -> bytes:
        try:
            size = zstandard.get_frame_parameters(payload).content_size
        except zstandard.ZstdError:
            raise CodecError("payload is not a zstd frame (corrupt or not from tm-dist)") from None
        if size == zstandard.CONTENTSIZE_UNKNOWN or size > self.max_decompressed:
            shown = "unknown" if size == zstandard.CONTENTSIZE_UNKNOWN else str(size)
            raise CodecError(
                f"payload would decompress to {shown} bytes; at most {self.max_decompressed} "
                f"are allowed for chunks of up to max_steps={self.max_steps} steps"
            )
        try:
            raw = self._zstd.decompress(payload, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise CodecError(f"corrupt payload: {e}") from None
        if len(raw) != size:
            raise CodecError(f"payload decompressed to {len(raw)} bytes, its header said {size}")
        return bytes(raw)

    def decode(self, payload: bytes) -> Transitions:
        """The transitions of one payload; raises :class:`CodecError` if it is malformed."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise CodecError(f"expected payload bytes, got {type(payload).__name__}")
        raw = self._decompress(bytes(payload))
        try:
            fields = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
        except Exception as e:  # msgpack raises several ValueError/TypeError kinds
            raise CodecError(f"payload holds no packed chunk ({type(e).__name__})") from None
        return self._rebuild(fields)

    def _rebuild(self, fields: Any) -> Transitions:
        lay = self.layout
        if not isinstance(fields, list) or len(fields) != _FIELDS:
            raise CodecError("payload content is not a packed chunk (wrong layout)")
        version, fingerprint, n, debug, modes, cols, act, rew, term, trunc, digests = fields
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise CodecError(
                f"chunk format version {version!r} is not supported (this decoder reads "
                f"{FORMAT_VERSION}); run the same tm-dist version on workers and trainer"
            )
        if fingerprint != lay.fingerprint:
            raise CodecError(
                "payload was encoded for other observation/action spaces; give the decoder "
                "the spaces of the workers' environment"
            )
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_steps:
            raise CodecError(f"chunk has {n!r} steps; expected 1 to max_steps={self.max_steps}")
        if not isinstance(debug, bool):
            raise CodecError("chunk debug flag is not a bool")
        nk = len(lay.keys)
        _expect_bytes(modes, "modes", (n + 1) * nk)
        _expect_bytes(act, "actions", n * lay.action_nbytes)
        _expect_bytes(rew, "rewards", n * 8)
        _expect_bytes(term, "terminated flags", n)
        _expect_bytes(trunc, "truncated flags", n)
        _expect_bytes(digests, "digests", (n + 1) * _DIGEST if debug else 0)
        if not isinstance(cols, list) or [type(c) for c in cols] != [bytes] * nk:
            raise CodecError(f"chunk has no list of {nk} key columns")
        terminated = np.frombuffer(term, np.uint8)
        truncated = np.frombuffer(trunc, np.uint8)
        if terminated.max() > 1 or truncated.max() > 1:
            raise CodecError("terminated/truncated flags must be 0 or 1")
        actions = np.frombuffer(_unshuffle(act, lay.action_dtype.itemsize), lay.action_dtype)
        actions = actions.reshape(n, *lay.action_shape)
        mode_rows = np.frombuffer(modes, np.uint8).reshape(n + 1, nk)
        all_obs = {
            k: self._rebuild_key(k, mode_rows[:, i], cols[i], actions)
            for i, k in enumerate(lay.keys)
        }
        if debug:
            for t in range(n + 1):
                got = lay.digest({k: v[t] for k, v in all_obs.items()})
                if got != digests[t * _DIGEST : (t + 1) * _DIGEST]:
                    raise CodecError(
                        f"observation {t} of the chunk does not match its digest (the payload "
                        "was altered or the encoder and decoder disagree)"
                    )
        return Transitions(
            obs={k: v[:-1] for k, v in all_obs.items()},
            action=actions.copy(),
            reward=np.frombuffer(_unshuffle(rew, 8), np.float64).copy(),
            terminated=terminated.astype(bool),
            truncated=truncated.astype(bool),
            next_obs={k: v[1:] for k, v in all_obs.items()},
        )

    def _rebuild_key(
        self, key: str, modes: NDArray[np.uint8], col: bytes, actions: NDArray[Any]
    ) -> NDArray[Any]:
        lay = self.layout
        shape, dtype, rule = lay.shapes[key], lay.dtypes[key], lay.rules[key]
        row_size, full = _size(shape[1:]), _size(shape)
        counts = np.zeros(len(modes), dtype=np.int64)  # items sent per observation
        for t, m in enumerate(modes.tolist()):
            if m == _FULL:
                counts[t] = full
            elif t == 0:
                raise CodecError(f"obs[{key!r}]: the chunk's first observation is not sent full")
            elif m == _DERIVED and rule == "actions":
                counts[t] = 0
            elif rule == "history" and m < min(shape[0], _DERIVED):
                counts[t] = m * row_size
            else:
                raise CodecError(f"obs[{key!r}] step {t}: invalid mode {m}")
        if int(counts.sum()) * dtype.itemsize != len(col):
            raise CodecError(
                f"obs[{key!r}]: column has {len(col)} bytes, the modes call for "
                f"{int(counts.sum()) * dtype.itemsize}"
            )
        items = np.frombuffer(_unshuffle(col, dtype.itemsize), dtype)
        out = np.empty((len(modes), *shape), dtype=dtype)
        pos = 0
        for t, m in enumerate(modes.tolist()):
            c = int(counts[t])
            if m == _FULL:
                out[t] = items[pos : pos + c].reshape(shape)
            elif m == _DERIVED:
                out[t, :-1] = out[t - 1, 1:]
                out[t, -1] = lay.derive_action_row(actions[t - 1], key)
            else:
                out[t, :-m] = out[t - 1, m:]
                out[t, -m:] = items[pos : pos + c].reshape((m, *shape[1:]))
            pos += c
        return out


def _check_int_arg(name: str, value: object, lo: int, hi: int, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CodecError(f"{name}={value!r}: expected {expected}")


def _expect_bytes(value: Any, what: str, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise CodecError(f"chunk {what}: got {got}, expected {size} bytes")
