"""A bounded dataset of labelled observations, storing each image frame once.

Imitation learning keeps every state the student (or the teacher) visited, with the action the
teacher would have taken there. A tm-gym ``images`` observation holds the last ``H`` frames,
so consecutive observations of one car share ``H - 1`` of them: :class:`ImitationDataset` keeps
the frames in one uint8 ring and each sample as ``H`` frame ids, about 5.2 KB per sample for
4 × 64 × 64 grayscale stacks (frame, ids, telemetry, label, a quarter more frame room) instead of
16 KB. Which frames a new observation shares is
checked against the pixels, never assumed: a stack that does not continue its stream's last one
(a new episode, a gap) is stored with its own frames.

When full, the oldest samples are dropped (and the frames only they used).

>>> import numpy as np
>>> from gymnasium import spaces
>>> from tm_algos.imitation.dataset import ImitationDataset
>>> space = spaces.Dict(
...     {
...         "images": spaces.Box(0, 255, (4, 8, 8), np.uint8),
...         "speed": spaces.Box(-1e3, 1e3, (1,), np.float32),
...     }
... )
>>> data = ImitationDataset(space, capacity=100)
>>> obs = {"images": np.zeros((2, 4, 8, 8), np.uint8), "speed": np.zeros((2, 1), np.float32)}
>>> data.add(obs, np.zeros((2, 3), np.float32), streams=np.array([0, 1]))
>>> len(data)
2
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from tm_algos.errors import InvalidValueError

__all__ = ["ImitationDataset"]

Obs = dict[str, NDArray[Any]]


class ImitationDataset:
    """Observations and the teacher's actions for them, at most ``capacity`` samples.

    :param observation_space: the environment's ``Dict`` observation space.
    :param capacity: samples kept; the oldest go first.
    :param action_dim: size of a label (tm-gym's actions: 3).
    :param frame_key: the key of the stacked frames, stored once per frame (``None``, or a key
        the space lacks: every key is stored as it is).
    :param frame_channels: channels of one frame in the stack (1 grayscale, 3 RGB).
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        capacity: int,
        *,
        action_dim: int = 3,
        frame_key: str | None = "images",
        frame_channels: int = 1,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict):
            raise InvalidValueError(
                f"observation_space is {type(observation_space).__name__}: expected a Dict "
                "space (tm-gym's observations)"
            )
        cap: object = capacity
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise InvalidValueError(f"capacity={capacity!r}: expected a positive integer")
        self.space = observation_space
        self.capacity = capacity
        self.action_dim = action_dim
        sub = observation_space.spaces.get(frame_key) if frame_key else None
        self.frame_key = (
            frame_key if isinstance(sub, spaces.Box) and sub.dtype == np.uint8 else None
        )
        self._vectors: dict[str, NDArray[Any]] = {}
        for key, box in observation_space.spaces.items():
            if key == self.frame_key:
                continue
            assert isinstance(box, spaces.Box), f"observation {key!r} is not a Box"
            self._vectors[key] = np.zeros((capacity, *box.shape), dtype=box.dtype)
        self.labels = np.zeros((capacity, action_dim), dtype=np.float32)
        self._size = 0
        self._next = 0
        self.added = 0
        """Samples added since creation (kept or not)."""
        if self.frame_key is not None:
            assert isinstance(sub, spaces.Box)
            channels = sub.shape[0]
            if frame_channels < 1 or channels % frame_channels:
                raise InvalidValueError(
                    f"frame_channels={frame_channels!r}: the {self.frame_key!r} stack has "
                    f"{channels} channels, expected a divisor of it (1 grayscale, 3 RGB)"
                )
            self.frame_channels = frame_channels
            self.history = channels // frame_channels
            self._frame_shape = (frame_channels, *sub.shape[1:])
            # each sample adds one frame, a few add a whole stack: a quarter more room
            self._frame_capacity = capacity + max(capacity // 4, 4 * self.history)
            self._frames = np.zeros((self._frame_capacity, *self._frame_shape), np.uint8)
            self._frame_ids = np.zeros((capacity, self.history), dtype=np.int64)
            self._frames_written = 0
            self._streams: dict[int, NDArray[np.int64]] = {}

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays."""
        total = self.labels.nbytes + sum(v.nbytes for v in self._vectors.values())
        if self.frame_key is not None:
            total += self._frames.nbytes + self._frame_ids.nbytes
        return total

    # -- adding ----------------------------------------------------------------------------

    def _write_frames(self, frames: NDArray[np.uint8]) -> NDArray[np.int64]:
        """Append frames (m, c, H, W) to the ring; their absolute ids."""
        ids = np.arange(self._frames_written, self._frames_written + len(frames))
        self._frames[ids % self._frame_capacity] = frames
        self._frames_written += len(frames)
        return ids

    def _frame_row(self, stack: NDArray[np.uint8], stream: int) -> NDArray[np.int64]:
        """The frame ids of one stack (C, H, W), writing only the frames not stored yet."""
        frames = stack.reshape(self.history, *self._frame_shape)
        last = self._streams.get(stream)
        if (
            last is not None
            and self._alive(last[1:]).all()
            and np.array_equal(self._frames[last[1:] % self._frame_capacity], frames[:-1])
        ):
            ids = np.concatenate([last[1:], self._write_frames(frames[-1:])])
            self._streams[stream] = ids
            return ids
        if all(np.array_equal(frames[0], f) for f in frames[1:]):
            ids = np.repeat(self._write_frames(frames[:1]), self.history)  # a first frame
        else:
            ids = self._write_frames(frames)
        self._streams[stream] = ids
        return ids

    def _alive(self, ids: NDArray[np.int64]) -> NDArray[np.bool_]:
        return ids >= self._frames_written - self._frame_capacity

    def add(
        self,
        obs: Mapping[str, NDArray[Any]],
        labels: NDArray[Any],
        *,
        streams: NDArray[np.integer[Any]] | None = None,
    ) -> None:
        """Add a batch of observations (each key ``(n, ...)``) with their labels ``(n, A)``.

        ``streams`` names where each row comes from (a car, an episode file): frames are shared
        only with the previous observation of the same stream. Default: ``0 … n-1``.
        """
        labels = np.asarray(labels, dtype=np.float32)
        n = len(labels)
        if labels.shape != (n, self.action_dim):
            raise InvalidValueError(
                f"labels have shape {labels.shape}: expected (n, {self.action_dim})"
            )
        missing = sorted(set(self.space.spaces) - set(obs))
        if missing:
            raise InvalidValueError(
                f"observation lacks {missing}; expected the keys {sorted(self.space.spaces)}"
            )
        ids = np.arange(n) if streams is None else np.asarray(streams)
        rows = (self._next + np.arange(n)) % self.capacity
        for key, store in self._vectors.items():
            store[rows] = np.asarray(obs[key]).reshape(n, *store.shape[1:])
        self.labels[rows] = labels
        if self.frame_key is not None:
            stacks = np.asarray(obs[self.frame_key], dtype=np.uint8)
            for row, stack, stream in zip(rows, stacks, ids, strict=True):
                self._frame_ids[row] = self._frame_row(stack, int(stream))
        self._next = int((self._next + n) % self.capacity)
        self._size = min(self._size + n, self.capacity)
        self.added += n

    # -- reading ---------------------------------------------------------------------------

    def valid_indices(self) -> NDArray[np.intp]:
        """Indices of the samples whose frames are all still stored."""
        idx = np.arange(self._size)
        if self.frame_key is None:
            return idx
        return idx[self._alive(self._frame_ids[: self._size].min(axis=1))]

    def observations(self, indices: NDArray[np.integer[Any]]) -> Obs:
        """The stored observations at ``indices``, as the environment gave them."""
        out: Obs = {key: store[indices] for key, store in self._vectors.items()}
        if self.frame_key is not None:
            frames = self._frames[self._frame_ids[indices] % self._frame_capacity]
            out[self.frame_key] = frames.reshape(len(indices), -1, *self._frame_shape[1:])
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[Obs, NDArray[np.float32]]:
        """``batch_size`` samples drawn uniformly (with replacement): observations, labels."""
        if self._size == 0:
            raise InvalidValueError("the dataset is empty: add samples before sampling")
        idx = rng.integers(0, self._size, size=batch_size)
        if self.frame_key is not None:
            dead = ~self._alive(self._frame_ids[idx].min(axis=1))
            if dead.any():
                valid = self.valid_indices()
                idx[dead] = rng.choice(valid, size=int(dead.sum()))
        return self.observations(idx), self.labels[idx]
