"""Helpers for tests and benchmarks: episode chunks re-encoded with poisoned content,
:func:`kill_by_pid`, the last resort that stops a relay or link child a test started,
:func:`process_tree` and :func:`pid_running` to check that no process outlives its parent, and
:class:`TcpProxy`, a loopback proxy that forwards, throttles or black-holes a connection.

A buggy or hostile worker is simulated by decoding an honest :class:`~tm_dist.wire.EpisodeChunk`,
changing its transitions or its statistics, and encoding it again with the same codec, so the
poisoned chunk is well-formed on the wire and only the trainer's validation
(:mod:`tm_dist.validation`) can catch it.

Example:
    >>> bad = poison_chunk(chunk, "reward_nan", obs_space, act_space)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np
from gymnasium import spaces

from tm_dist.codec import EpisodeDecoder, EpisodeEncoder, Transitions
from tm_dist.errors import InvalidValueError
from tm_dist.wire import EpisodeChunk, StatValue

__all__ = [
    "POISON_KINDS",
    "TcpProxy",
    "encode_transitions",
    "kill_by_pid",
    "pid_running",
    "poison_chunk",
    "process_tree",
]


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


def _check_proc() -> None:
    if not sys.platform.startswith("linux"):
        raise NotImplementedError("process_tree and pid_running read /proc: Linux only")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...


def process_tree(pid: int) -> list[int]:
    """Every descendant of ``pid`` now (children first, then theirs), read from /proc (Linux).

    Take it *before* killing ``pid``: orphans are adopted by init or a subreaper at once.
    """
    _check_proc()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux, /proc)."""
    _check_proc()
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


class TcpProxy:
    """A loopback TCP proxy in threads, to put a slow or dead network in front of a relay.

    Each accepted connection is forwarded to ``target_host:target_port``. :meth:`blackhole`
    makes it a black hole: connections stay open but every byte, either way, is read and
    dropped (what a vanished peer or a broken route looks like: no reset, no FIN);
    :meth:`forward` forwards again (a stream that lost bytes is garbage: only new
    connections work). ``rate_bytes_per_s`` throttles each direction of each connection.
    A context manager; :attr:`port` is where to connect.
    """

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        rate_bytes_per_s: float | None = None,
    ) -> None:
        if rate_bytes_per_s is not None and rate_bytes_per_s <= 0:
            raise InvalidValueError(f"rate_bytes_per_s must be positive, got {rate_bytes_per_s}")
        self._target = (target_host, target_port)
        self._rate = rate_bytes_per_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.connections = 0
        self._spawn(self._accept_loop)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def blackhole(self) -> None:
        """Drop every byte from now on (connections stay open)."""
        self._forwarding.clear()

    def forward(self) -> None:
        """Forward bytes again."""
        self._forwarding.set()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.1)
        chunk = 1 << 16 if self._rate is None else max(1, min(1 << 16, int(self._rate / 20)))
        while not self._closed.is_set():
            try:
                data = src.recv(chunk)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if not self._forwarding.is_set():
                continue  # black hole
            try:
                dst.sendall(data)
            except OSError:
                break
            if self._rate is not None:
                time.sleep(len(data) / self._rate)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the listener and every connection; wait for the threads."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
