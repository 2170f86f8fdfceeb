"""Helpers for tests and benchmarks: episode chunks re-encoded with poisoned content, and
:func:`kill_by_pid`, the last resort that stops a relay or link child a test started.

A buggy or hostile worker is simulated by decoding an honest :class:`~tm_dist.wire.EpisodeChunk`,
changing its transitions or its statistics, and encoding it again with the same codec, so the
poisoned chunk is well-formed on the wire and only the trainer's validation
(:mod:`tm_dist.validation`) can catch it.

Example:
    >>> bad = poison_chunk(chunk, "reward_nan", obs_space, act_space)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Final

import numpy as np
from gymnasium import spaces

from tm_dist.codec import EpisodeDecoder, EpisodeEncoder, Transitions
from tm_dist.errors import InvalidValueError
from tm_dist.wire import EpisodeChunk, StatValue

__all__ = ["POISON_KINDS", "encode_transitions", "kill_by_pid", "poison_chunk"]


def kill_by_pid(pid: int | None) -> None:
    """Make sure the process ``pid`` is gone (SIGKILL; nothing if it already is, or is None).

    For after a child's own ``stop()``: a test or benchmark that started a process ends it by
    its PID, whatever happened."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return


POISON_KINDS: Final = (
    "reward_nan",
    "reward_inf",
    "reward_huge",
    "action_nonfinite",
    "obs_out_of_bounds",
    "obs_nan",
    "fake_lap_negative",
    "fake_lap_instant",
)
"""What :func:`poison_chunk` can do to a chunk (the findings of issue 14)."""


def encode_transitions(
    tr: Transitions, observation_space: spaces.Dict, action_space: spaces.Box
) -> bytes:
    """One codec payload holding exactly ``tr`` (any values, finite or not)."""
    n = tr.n_steps
    enc = EpisodeEncoder(observation_space, action_space, chunk_steps=max(n, 1))
    enc.reset({k: v[0] for k, v in tr.obs.items()})
    payload: bytes | None = None
    for t in range(n):
        nxt = {k: v[t] for k, v in tr.next_obs.items()}
        payload = enc.step(
            tr.action[t], float(tr.reward[t]), bool(tr.terminated[t]), bool(tr.truncated[t]), nxt
        )
    if payload is None:
        payload = enc.flush()
    assert payload is not None
    return payload


def _poisoned_transitions(tr: Transitions, kind: str, obs_space: spaces.Dict) -> Transitions:
    t = tr.n_steps // 2
    reward = tr.reward.copy()
    action = tr.action.copy()
    obs = {k: np.concatenate([v, tr.next_obs[k][-1:]]) for k, v in tr.obs.items()}
    if kind == "reward_nan":
        reward[t] = np.nan
    elif kind == "reward_inf":
        reward[t] = np.inf
    elif kind == "reward_huge":
        reward[t] = 1e308
    elif kind == "action_nonfinite":
        action[t] = np.asarray([1e30, -np.inf, np.nan][: action.shape[1]], dtype=action.dtype)
    else:  # an observation outside its Box (or NaN)
        key = next(k for k, s in obs_space.spaces.items() if np.issubdtype(s.dtype, np.floating))
        high = np.asarray(obs_space[key].high, dtype=np.float64)  # type: ignore[attr-defined]
        far = np.where(np.isfinite(high), np.abs(high) * 1000 + 1e6, 1e30)
        bad = np.nan if kind == "obs_nan" else far.astype(obs[key].dtype)
        row = obs[key][t + 1].copy()
        row[...] = bad
        obs[key][t + 1] = row
    return Transitions(
        obs={k: v[:-1] for k, v in obs.items()},
        action=action,
        reward=reward,
        terminated=tr.terminated,
        truncated=tr.truncated,
        next_obs={k: v[1:] for k, v in obs.items()},
    )


def poison_chunk(
    chunk: EpisodeChunk, kind: str, observation_space: spaces.Dict, action_space: spaces.Box
) -> EpisodeChunk:
    """``chunk`` with one poison of :data:`POISON_KINDS` applied, still well-formed on the wire.

    ``fake_lap_*`` kinds turn the chunk into the final chunk of a finished *test* episode
    with a lap of -5 s or 0.018 s; the others corrupt the middle transition of the payload.
    """
    if kind not in POISON_KINDS:
        raise InvalidValueError(f"poison kind {kind!r}: expected one of {list(POISON_KINDS)}")
    decoder = EpisodeDecoder(observation_space, action_space, max_steps=max(chunk.n_steps, 1))
    tr = decoder.decode(chunk.payload)
    if kind.startswith("fake_lap"):  # a consistent return: only the lap gives it away
        lap = -5.0 if kind == "fake_lap_negative" else 0.018
        stats: dict[str, StatValue] = {
            "return": round(float(tr.reward.sum()), 4),
            "progress": 1.0,
            "finished": True,
            "lap_time": lap,
        }
        return dataclasses.replace(chunk, final=True, test=True, stats=stats)
    payload = encode_transitions(
        _poisoned_transitions(tr, kind, observation_space), observation_space, action_space
    )
    return dataclasses.replace(chunk, payload=payload)
